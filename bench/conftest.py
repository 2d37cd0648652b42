"""Shared pieces of the benchmarks: the data, the device, threads, and images/s bookkeeping.

Every benchmark reports `images_per_s` in its extra_info and, when it is not the
baseline itself, `ratio_vs_naive`: its images/s over its baseline's (the naive
per-sample DataLoader, or fp32 eager for a training mode), measured in the same
session on the same data. The machine's load and torch's thread count are
recorded too: on a shared 2-core machine they move CPU numbers by several times.
`make bench` also saves the run into bench/history/ (pytest-benchmark's storage);
pytest_benchmark_update_machine_info adds the machine kind that bench/history.py
compares absolute numbers by.

Threads: FASTZHANG_BENCH_THREADS (default: every core) is set once for the
session, so every case in one run shares one setting. Compiler caches start
empty in every session (see pytest_configure).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from clock import environment, sync
from history import machine

# tests/conftest.py as a module: its `device` fixture (the `cuda` marker's device) and its `fastzhang`
# process helpers serve the benchmarks too. Loaded by path: both files are named conftest.
_spec = importlib.util.spec_from_file_location("tests_conftest", Path(__file__).parents[1] / "tests" / "conftest.py")
tests_conftest = sys.modules.setdefault("tests_conftest", importlib.util.module_from_spec(_spec))
if not hasattr(tests_conftest, "device"):
    _spec.loader.exec_module(tests_conftest)
device = tests_conftest.device

N_IMAGES = 10_000  # one round = one epoch over the synthetic set's training images
ROUNDS = 3


def pytest_configure(config):
    torch.set_num_threads(int(os.environ.get("FASTZHANG_BENCH_THREADS", os.cpu_count() or 1)))
    # Cold compiler caches: time-to-first-step is what a fresh machine pays, not a cache hit
    # left by an earlier session. (Within the session, a graph compiled twice hits the cache.)
    fresh = tempfile.mkdtemp(prefix="fastzhang-bench-compile-")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(fresh, "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(fresh, "triton"))


def pytest_benchmark_update_machine_info(config, machine_info):
    """What pytest-benchmark's machine_info lacks for bench/history.py: the machine kind, torch, the load."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["fastzhang"] = {**machine(machine_info.get("cpu", {}), os.cpu_count() or 1, gpu),
                                 "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                                 "loadavg_1m": round(os.getloadavg()[0], 2)}


@pytest.fixture(scope="session")
def bench_device(device) -> torch.device:
    return device


@pytest.fixture(scope="session")
def cifar_like():
    """CifarArrays: the synthetic CIFAR-shaped set, N_IMAGES training images (uint8 numpy)."""
    from fastzhang.data.synthetic import make_synthetic

    return make_synthetic(N_IMAGES, 256)


@pytest.fixture(scope="session")
def rates() -> dict[str, float]:
    """images/s (or seconds, for timings) of each benchmark run so far in this session, by name."""
    return {}


@pytest.fixture(scope="session")
def measure(bench_device, rates):
    """measure(benchmark, fn, name=, images=, baseline=, rounds=, warmup=) -> images/s; a round = one call of fn."""

    def run(benchmark, fn, *, name: str, images: int, baseline: float | None, rounds: int = ROUNDS,
            warmup: int = 1) -> float:
        def round_():
            fn()
            sync(bench_device)

        benchmark.pedantic(round_, rounds=rounds, iterations=1, warmup_rounds=warmup)
        rate = images / benchmark.stats.stats.median
        benchmark.extra_info.update(images_per_s=round(rate, 1), name=name, **environment(bench_device))
        if baseline is not None:
            benchmark.extra_info["ratio_vs_naive"] = round(rate / baseline, 2)
            # The baseline's name, by which bench/history.py finds its rounds' noise. A baseline timed
            # apart (a case run alone with -k) has no benchmark of that name in the run, or no name.
            benchmark.extra_info["baseline"] = next((k for k, v in rates.items() if v == baseline), None)
        rates[name] = rate
        return rate

    return run
