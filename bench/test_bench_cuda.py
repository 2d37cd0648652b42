"""The GPU check's speed figures (`make gpu-check`, marker `cuda`), on the `device` fixture.

- images/s of the training step per switch (off, each one alone, all) for mlp1 and
  inception (compile alone: mlp1), with the first step's seconds: cold (an empty compiler
  cache) and, for `all`, warm (the same model built again: dynamo reset, the inductor
  cache on disk filled);
- how far the host runs ahead of the device at the end of a round (off and all);
- an epoch as `fastzhang run` trains it: training seconds (the engine's clock) against
  evaluation seconds;
- 1, 2 and 4 runs sharing the GPU (`fastzhang batch --runs-per-gpu K`), images/s in all.
On the CPU (FASTZHANG_GPU_DRY_RUN=1, or no CUDA) the same cases at tiny sizes: mlp1 only,
no CUDA graphs and no compile (those cases skip), 1 and 2 runs packed with --max-parallel.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import pytest
import torch

from clock import sync
from fastzhang.models.registry import MODELS
from fastzhang.train.fastpath import Speed
from workloads import fastzhang_epoch, train_steps

pytestmark = pytest.mark.cuda

SWITCHES = {
    "off": {}, "amp": {"amp": True}, "channels_last": {"channels_last": True}, "cuda_graphs": {"cuda_graphs": True},
    "compile": {"compile": True}, "all": {"amp": True, "compile": True, "cuda_graphs": True, "channels_last": True},
}
# alexnet, and compile alone for inception, are left to `make bench-gpu` (test_bench_train.py): their cold
# compiles (15-30 s each for alexnet, 40-90 s for inception; bench/NOTES.md §10) would not fit the 6 minutes.
CASES = [(model, mode) for model in ("mlp1", "inception") for mode in (*SWITCHES, "all-warm")
         if (mode != "channels_last" or MODELS[model].convolutional) and (model, mode) != ("inception", "compile")]
SIZES = {"cuda": {"batch": 128, "steps": 50, "rounds": 5, "epoch": (49_920, 10_000)},  # 390 full batches
         "cpu": {"batch": 64, "steps": 4, "rounds": 2, "epoch": (1_024, 256)}}
COLD_FIRST_STEP: dict[str, float] = {}  # model -> the `all` case's first step, for its warm twin
PACKS = {"cuda": (1, 2, 4), "cpu": (1, 2)}
RECIPES = {  # inception without compile: four cold compiles at once would measure the compiler
    "cuda": 'model: inception\ndataset: synthetic\nepochs: 8\nbatch_size: 128\ncompile: "off"\nseed: {seed}\n',
    "cpu": "model: mlp1\ndataset: synthetic\nepochs: 3\nbatch_size: 32\ntrain_subset: 256\ndevice: cpu\nseed: {seed}\n",
}


@pytest.fixture(scope="module")
def resident(device):
    from fastzhang.data.batches import ResidentData
    from fastzhang.data.synthetic import make_synthetic

    return ResidentData.build(make_synthetic(512, 16), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device=device)


def _speed(model: str, mode: str, device) -> Speed:
    on = dict(SWITCHES[mode.removesuffix("-warm")])
    if not MODELS[model].convolutional:
        on.pop("channels_last", None)  # as auto: an MLP only pays a copy for it
    if device.type != "cuda":
        if mode in ("compile", "cuda_graphs"):
            pytest.skip("on the CPU: no CUDA graphs, no compile")
        on.pop("compile", None), on.pop("cuda_graphs", None)
    if device.type != "cuda" and model != "mlp1":
        pytest.skip("on the CPU: mlp1 only")
    return Speed(**{name: name in on for name in ("amp", "compile", "cuda_graphs", "channels_last")})


def _host_lead(steps, device) -> dict:
    """How many steps the device still had queued when the host had issued a round's last one."""
    sync(device)
    start = time.perf_counter()
    steps.round()
    host = time.perf_counter() - start
    sync(device)
    total = time.perf_counter() - start
    return {"host_s": round(host, 5), "device_s": round(total, 5),
            "steps_ahead": round((total - host) / (total / (steps.images // steps.batch)), 2)}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("model,mode", CASES, ids=[f"{m}-{mode}" for m, mode in CASES])
def test_switch(benchmark, measure, rates, resident, device, model, mode):
    speed = _speed(model, mode, device)
    size = SIZES[device.type]
    torch.manual_seed(0)
    steps = train_steps(model, speed, resident, device, batch=size["batch"], steps=size["steps"])
    assert steps.fallbacks == [], steps.fallbacks  # a silent fallback would measure the wrong path
    rate = measure(benchmark, steps.round, name=f"cuda-{model}-{mode}", images=steps.images,
                   baseline=rates.get(f"cuda-{model}-off"), rounds=size["rounds"])
    benchmark.extra_info.update(model=model, mode=mode, batch=steps.batch, first_step_s=round(steps.first_step_s, 3),
                                switches=dataclasses.asdict(steps.step.speed))
    if mode == "all-warm" and model in COLD_FIRST_STEP:
        benchmark.extra_info["cold_first_step_s"] = COLD_FIRST_STEP[model]
    if mode == "all":
        COLD_FIRST_STEP[model] = round(steps.first_step_s, 3)
    if mode in ("off", "all"):
        benchmark.extra_info["host_lead"] = _host_lead(steps, device)
    assert rate > 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("model", ["mlp1", "inception"])
def test_epoch_train_against_eval(benchmark, device, model):
    from fastzhang.data.synthetic import make_synthetic

    if device.type != "cuda" and model != "mlp1":
        pytest.skip("on the CPU: mlp1 only")
    n, m = SIZES[device.type]["epoch"]
    epoch, speed, run = fastzhang_epoch(model, make_synthetic(n, m), device)
    started = time.perf_counter()
    epoch()  # the first: compile, capture
    sync(device)
    first = time.perf_counter() - started
    benchmark.pedantic(lambda: (epoch(), sync(device)), rounds=1, iterations=1)
    train = run.metrics["epoch_seconds"][-1]
    total = benchmark.stats.stats.median
    benchmark.extra_info.update(model=model, images_per_s=round(n / train, 1), train_s=round(train, 4),
                                eval_s=round(total - train, 4), first_epoch_s=round(first, 2),
                                switches=dataclasses.asdict(speed))
    assert 0 < train < total


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_runs_sharing_the_device(benchmark, tmp_path, device, rates, k):
    """K copies of one recipe (different seeds) in one batch; each run's images/s from its results file
    (the median over its epochs after the first, which captures the graphs), summed."""
    from fastzhang import results
    from tests_conftest import Fz, fz_env  # tests/conftest.py, as bench/conftest.py loaded it

    kind = device.type
    if k not in PACKS[kind]:
        pytest.skip(f"on the CPU: {PACKS[kind]} runs at once")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for seed in range(k):
        (recipes / f"seed{seed}.yaml").write_text(RECIPES[kind].format(seed=seed))
    pack = ["--runs-per-gpu", str(k)] if kind == "cuda" else ["--max-parallel", str(k)]
    args = ["batch", recipes, "--quiet", *pack, "--checkpoint-dir", tmp_path / "checkpoints",
            "--results-dir", tmp_path / "results"]

    def batch():
        fz = Fz(args, tmp_path, name="batch", env=fz_env())
        assert fz.wait(timeout=170) == 0, fz.stderr[-2000:]

    benchmark.pedantic(batch, rounds=1, iterations=1)
    entries = results.scan(tmp_path / "results")
    assert len(entries) == k and not any(e.problem for e in entries), [(e.path.name, e.problem) for e in entries]
    per_run = [statistics.median(e.payload["metrics"]["images_per_second"][1:]) for e in entries]
    total = sum(per_run)
    rates.setdefault("packing-alone", total)
    benchmark.extra_info.update(runs=k, images_per_s=round(total, 1), per_run=[round(r, 1) for r in per_run],
                                ratio_vs_one_run=round(total / rates["packing-alone"], 3),
                                wall_s=round(benchmark.stats.stats.median, 2))
