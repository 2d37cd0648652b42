"""Runs sharing the machine: K copies of one recipe (seeds 0..K-1) in one batch, K at once.

Through `fastzhang batch`'s local pool: K = 1, 2, 4 per GPU (inception, not compiled: four cold
compiles at once would time the compiler); K = 1, 2 on the CPU, every run at cores // 2 threads (the
gain of packing, not of fewer threads). images/s in all: the sum of each run's own (its median epoch
after the first, from its results file); `speedup_vs_sequential`: that over one run's alone.
Marked `cuda`: the GPU check's 1, 2 and 4 runs.
"""

import statistics

import pytest

from fastzhang import results
from fastzhang.batch.local import THREAD_VARS, run_local, usable_cores
from fastzhang.batch.plan import BatchOptions, collect
from workloads import GPU

PACKS = (1, 2, 4) if GPU else (1, 2)
RECIPE = {
    "cuda": 'model: inception\ndataset: synthetic\nepochs: 8\nbatch_size: 128\ncompile: "off"\nseed: {seed}\n',
    "cpu": "model: mlp1\ndataset: synthetic\nepochs: 3\nbatch_size: 32\ntrain_subset: 1024\ndevice: cpu\n"
           "seed: {seed}\n",
}


def packed(folder, k: int, device) -> float:
    """K runs at once in `folder`: their images/s in all."""
    folder.mkdir(parents=True)
    for seed in range(k):
        (folder / f"seed{seed}.yaml").write_text(RECIPE[device.type].format(seed=seed))
    tasks, _ = collect([folder])
    pack = {"runs_per_gpu": k} if device.type == "cuda" else {"max_parallel": k, "gpus": []}
    report = run_local(tasks, BatchOptions(folder / "checkpoints", folder / "results", quiet=True), **pack)
    assert [r.status for r in report.results] == ["ran"] * k, report.summary()
    entries = results.scan(folder / "results")
    assert len(entries) == k and not any(e.problem for e in entries), [(e.path.name, e.problem) for e in entries]
    return sum(statistics.median(e.payload["metrics"]["images_per_second"][1:]) for e in entries)


@pytest.mark.cuda
@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("k", PACKS)
def test_runs_sharing_the_device(benchmark, tmp_path, monkeypatch, device, rates, k):
    for var in THREAD_VARS if device.type == "cpu" else ():
        monkeypatch.setenv(var, str(max(1, usable_cores() // PACKS[-1])))
    total = benchmark.pedantic(lambda: packed(tmp_path / "packed", k, device), rounds=1, iterations=1)
    if "batch-1" not in rates:  # selected without K = 1 (-k): one run alone first
        rates["batch-1"] = total if k == 1 else packed(tmp_path / "alone", 1, device)
    benchmark.extra_info.update(runs=k, images_per_s=round(total, 1), wall_s=round(benchmark.stats.stats.median, 2))
    if k > 1:
        benchmark.extra_info["speedup_vs_sequential"] = round(total / rates["batch-1"], 3)
