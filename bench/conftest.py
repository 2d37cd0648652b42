"""Shared pieces of the benchmarks: the data, the device, and images/s bookkeeping.

Every benchmark reports `images_per_s` in its extra_info and, when it is not the
baseline itself, `ratio_vs_naive`: its images/s over the naive per-sample
DataLoader's, measured in the same session on the same data. The machine's
load and torch's thread count are recorded too: on a shared 2-core machine
they move CPU numbers by several times.
"""

from __future__ import annotations

import os

import pytest
import torch

N_IMAGES = 10_000  # one round = one epoch over the synthetic set's training images
ROUNDS = 3


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def cifar_like():
    """CifarArrays: the synthetic CIFAR-shaped set, N_IMAGES training images (uint8 numpy)."""
    from fastzhang.data.synthetic import make_synthetic

    return make_synthetic(N_IMAGES, 256)


@pytest.fixture(scope="session")
def rates() -> dict[str, float]:
    """images/s of each benchmark run so far in this session, by name."""
    return {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture(scope="session")
def measure(bench_device, rates):
    """measure(benchmark, fn, name=, images=, baseline=) -> images/s, one round = one call of fn."""

    def run(benchmark, fn, *, name: str, images: int, baseline: float | None) -> float:
        def round_():
            fn()
            sync(bench_device)

        benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        rate = images / benchmark.stats.stats.median
        rates[name] = rate
        benchmark.extra_info.update(
            images_per_s=round(rate, 1),
            device=str(bench_device),
            torch_threads=torch.get_num_threads(),
            loadavg_1m=round(os.getloadavg()[0], 2),
        )
        if baseline is not None:
            benchmark.extra_info["ratio_vs_naive"] = round(rate / baseline, 2)
        return rate

    return run
