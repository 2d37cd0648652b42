"""Wall time of a batch on the local backend against the same runs one after another.

Four small synthetic MLP experiments (2 epochs of 1,024 images, batch 16). The
baseline runs them one at a time (`--max-parallel 1`: each run gets all cores);
a second baseline runs them one at a time with the thread count a packed run
gets, which separates the gain of packing from that of fewer threads per run
(on a busy machine, OpenMP threads that wait on each other lose a lot). The
batch packs them: 2 at once on the CPU (cores // 2 threads each), or K = 4 per
GPU. Both go through `run_local`, so both pay the same per-run process start
(Python, torch import, data, model). One round each (pedantic): every round
trains fresh experiments in fresh folders. extra_info holds both wall times and
`speedup_vs_sequential` = sequential seconds / batch seconds (and the same
against the second baseline), measured in the same session, with the
machine's 1-minute load beside them.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from fastzhang.batch.local import THREAD_VARS, capacity, run_local, usable_cores, visible_gpus
from fastzhang.batch.plan import BatchOptions, collect

N_RUNS = 4
RECIPE = "model: mlp1\ndataset: synthetic\nepochs: 2\nbatch_size: 16\nseed: {seed}\n"
CUDA = torch.cuda.is_available()
PACKED = {"runs_per_gpu": 4} if CUDA else {"max_parallel": 2}
PACKED_SLOTS = capacity(visible_gpus() if CUDA else [], PACKED.get("runs_per_gpu", 1), PACKED.get("max_parallel"))


def timed_batch(root, **limits) -> float:
    root.mkdir(parents=True)
    for seed in range(N_RUNS):
        (root / f"seed{seed}.yaml").write_text(RECIPE.format(seed=seed))
    tasks, _ = collect([root])
    opts = BatchOptions(root / "ckpt", root / "res", quiet=True)
    start = time.perf_counter()
    report = run_local(tasks, opts, **limits)
    seconds = time.perf_counter() - start
    assert [r.status for r in report.results] == ["ran"] * N_RUNS, report.summary()
    return seconds


@pytest.fixture(scope="module")
def seconds() -> dict[str, float]:
    return {}


def _info(benchmark, seconds: float, limits: dict) -> None:
    benchmark.extra_info.update(
        runs=N_RUNS, wall_s=round(seconds, 2), device="cuda" if CUDA else "cpu", cores=usable_cores(),
        loadavg_1m=round(os.getloadavg()[0], 2), **limits,
    )


@pytest.mark.parametrize("threads", ["all", "same"])
def test_bench_batch_sequential(benchmark, tmp_path, seconds, monkeypatch, threads):
    """One at a time; `same`: with the threads each packed run gets, to separate packing from threads."""
    if threads == "same":
        for name in THREAD_VARS:
            monkeypatch.setenv(name, str(max(1, usable_cores() // PACKED_SLOTS)))
    limits = {"max_parallel": 1}
    seconds[threads] = benchmark.pedantic(lambda: timed_batch(tmp_path / "seq", **limits), rounds=1, iterations=1)
    _info(benchmark, seconds[threads], limits)


def test_bench_batch_packed(benchmark, tmp_path, seconds):
    packed = benchmark.pedantic(lambda: timed_batch(tmp_path / "packed", **PACKED), rounds=1, iterations=1)
    _info(benchmark, packed, PACKED)
    if "all" not in seconds:  # run alone: measure the baseline now
        seconds["all"] = timed_batch(tmp_path / "seq", max_parallel=1)
    benchmark.extra_info.update(sequential_s=round(seconds["all"], 2),
                                speedup_vs_sequential=round(seconds["all"] / packed, 2))
    if "same" in seconds:
        benchmark.extra_info.update(sequential_same_threads_s=round(seconds["same"], 2),
                                    speedup_vs_sequential_same_threads=round(seconds["same"] / packed, 2))
