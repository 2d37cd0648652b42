"""Shared pieces of the benchmarks: threads, the device, images/s and ratios, the run's table.

A benchmark of images records `images_per_s` and `ratio_vs_naive`, against a baseline measured in the
same session (a step or data case selected by -k without it times it first); every benchmark records
the device, torch's threads and the load (on a shared machine they move CPU numbers by several times),
and machine_info the machine kind bench/history.py compares by. After pytest-benchmark's table of
times, one row per benchmark (images/s, ratio, notes), also written beside --benchmark-json as .md.
"""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from history import machine
from workloads import sync, timed

# tests/conftest.py as a module, for its `device` fixture (the `cuda` marker's device). Loaded by path:
# both files are named conftest.
_spec = importlib.util.spec_from_file_location("tests_conftest", Path(__file__).parents[1] / "tests" / "conftest.py")
tests_conftest = sys.modules.setdefault("tests_conftest", importlib.util.module_from_spec(_spec))
if not hasattr(tests_conftest, "device"):
    _spec.loader.exec_module(tests_conftest)
device = tests_conftest.device

HIDDEN = {"images_per_s", "ratio_vs_naive", "speedup_vs_sequential", "name", "baseline", "device", "torch_threads",
          "loadavg_1m"}  # extra_info the table shows in its own columns, or not at all: the rest are its notes


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


@pytest.fixture(autouse=True)
def _environment(request, device):
    """What moves a number besides the code, recorded beside every benchmark as it finishes."""
    yield
    benchmark = request.node.funcargs.get("benchmark")
    if benchmark is not None:
        benchmark.extra_info.update(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                    torch_threads=torch.get_num_threads(), loadavg_1m=round(os.getloadavg()[0], 2))


@pytest.fixture(scope="session")
def rates() -> dict[str, float]:
    """images/s of each case measured so far in this session, by name."""
    return {}


@pytest.fixture(scope="session")
def measure(device, rates):
    """measure(benchmark, fn, name=, images=, baseline=, alone=, rounds=, warmup=) -> images/s; a round = one
    call of fn. baseline: the name of the case the ratio is against; alone(): that case's round function
    (the same images), timed here, best of two, when it has not run in this session."""

    def run(benchmark, fn, *, name: str, images: int, baseline: str | None = None, alone=None,
            rounds: int = 3, warmup: int = 1) -> float:
        if baseline is not None and baseline not in rates and alone is not None:
            base = alone()
            base()
            rates[baseline] = images / min(timed(base, device) for _ in range(2))
        benchmark.pedantic(lambda: (fn(), sync(device)), rounds=rounds, iterations=1, warmup_rounds=warmup)
        rate = rates[name] = images / benchmark.stats.stats.median
        benchmark.extra_info.update(images_per_s=round(rate, 1), name=name)
        if baseline in rates:  # `baseline` names it for bench/history.py, which finds its rounds' noise
            benchmark.extra_info.update(ratio_vs_naive=round(rate / rates[baseline], 2), baseline=baseline)
        return rate

    return run


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's table
def pytest_terminal_summary(terminalreporter, config):
    benchmarks = getattr(getattr(config, "_benchmarksession", None), "benchmarks", [])
    rows = ["| benchmark | images/s | vs baseline | notes | load (1 min) |", "| --- | --- | --- | --- | --- |"]
    for b in benchmarks:
        info = b.extra_info
        rate, ratio = info.get("images_per_s"), info.get("ratio_vs_naive", info.get("speedup_vs_sequential"))
        notes = "; ".join(f"{k} {v}" for k, v in info.items() if k not in HIDDEN and v is not None)
        rows.append(f"| {b.name} | {f'{rate:,.0f}' if rate else ''} | {f'{ratio:.2f}x' if ratio else ''} | "
                    f"{notes} | {info.get('loadavg_1m', '')} |")
    if benchmarks:
        terminalreporter.write_line("\n".join(rows))
        path = config.getoption("benchmark_json", None)
        if path:  # a Path in pytest-benchmark 5, an open file in 4
            Path(path.name if hasattr(path, "write") else path).with_suffix(".md").write_text("\n".join(rows) + "\n")
