"""Training-step throughput per model per fast-path mode, and the cost of the first step.

A round = STEPS[model] optimizer steps of train.fastpath.TrainStep (the
engine's step: forward, loss, backward, SGD, device-side loss/accuracy sums)
with the engine's optimizer (engine.build_run) on fixed whitened batches of
the synthetic set in the mode's dtype and layout. images/s is over the median
round; `ratio_vs_naive` is against the same model's fp32 eager case in the same
session; `first_step_s` is the first call's time (compilation, CUDA-graph
warm-up and capture), i.e. the time-to-first-step a run pays once.

Modes (Speed switches): eager (fp32), amp (bf16 autocast), cl (channels_last),
amp_cl, compile (torch.compile, default mode), compile_max (mode
"max-autotune-no-cudagraphs"), amp_cl_compile, graphs (CUDA graphs, amp+cl),
full (amp + cl + compile + graphs: what `auto` gives on CUDA). channels_last
applies to the convolutional models only, as `auto` does. On the CPU,
compiling the Inceptions takes minutes, so they are not compiled there
(MODES_CPU); the GPU suite compiles every model once, in `full`. Compiler
caches start empty (conftest.py), so `first_step_s` of a compiled mode is a
cold compile (the first one in a process also pays inductor's start-up).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clock import timed
from fastzhang.data.batches import ResidentData
from fastzhang.models.registry import MODELS
from fastzhang.train.fastpath import Speed
from workloads import Steps, train_steps

CUDA = torch.cuda.is_available()
MODES = {
    "eager": dict(amp=False, compile=False, cuda_graphs=False, channels_last=False),
    "amp": dict(amp=True, compile=False, cuda_graphs=False, channels_last=False),
    "cl": dict(amp=False, compile=False, cuda_graphs=False, channels_last=True),
    "amp_cl": dict(amp=True, compile=False, cuda_graphs=False, channels_last=True),
    "compile": dict(amp=False, compile=True, cuda_graphs=False, channels_last=False),
    "compile_max": dict(amp=False, compile=True, cuda_graphs=False, channels_last=False),
    "amp_cl_compile": dict(amp=True, compile=True, cuda_graphs=False, channels_last=True),
    "graphs": dict(amp=True, compile=False, cuda_graphs=True, channels_last=True),
    "full": dict(amp=True, compile=True, cuda_graphs=True, channels_last=True),
}
COMPILE_MODE = {"compile_max": "max-autotune-no-cudagraphs"}
MODES_CPU = {
    "mlp1": ("eager", "amp", "compile", "compile_max"),
    "mlp3": ("eager", "amp", "compile"),
    "alexnet": ("eager", "amp", "cl", "amp_cl", "compile"),
    "inception": ("eager", "amp", "cl", "amp_cl"),
    "inception_no_bn": ("eager", "amp"),
}
MODES_CUDA = {
    name: ("eager", "amp", *(("amp_cl",) if MODELS[name].convolutional else ()), "graphs", "full")
    for name in ("mlp1", "mlp3", "alexnet", "inception", "inception_no_bn")
}
MODES_CUDA["inception_no_bn"] = MODES_CUDA["inception_no_bn"][:-1]  # its compile ~ inception's: budget
# (batch, steps per round): a CPU round of inception costs ~1-3 s, of mlp1 ~0.1 s.
SIZES_CPU = {"mlp1": (128, 8), "mlp3": (128, 8), "alexnet": (128, 2), "inception": (32, 1), "inception_no_bn": (32, 1)}
SIZES_CUDA = {name: (128, 20) for name in MODES_CUDA}
CASES = [(m, mode) for m, modes in (MODES_CUDA if CUDA else MODES_CPU).items() for mode in modes]


@pytest.fixture(scope="module")
def resident(bench_device):
    from fastzhang.data.synthetic import make_synthetic

    return ResidentData.build(make_synthetic(512, 16), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device=bench_device)


def make_steps(model_name: str, mode: str, resident, device: torch.device) -> Steps:
    speed = Speed(**MODES[mode])
    if not MODELS[model_name].convolutional:  # as resolve_speed's auto: an MLP only pays a copy for it
        speed = dataclasses.replace(speed, channels_last=False)
    batch, steps = (SIZES_CUDA if CUDA else SIZES_CPU)[model_name]
    return train_steps(model_name, speed, resident, device, batch=batch, steps=steps,
                       compile_mode=COMPILE_MODE.get(mode))


@pytest.mark.parametrize("model_name,mode", CASES, ids=[f"{m}-{mode}" for m, mode in CASES])
def test_train_step(benchmark, measure, rates, resident, bench_device, model_name, mode):
    torch.manual_seed(0)
    steps = make_steps(model_name, mode, resident, bench_device)
    baseline = None
    if mode != "eager":
        baseline = rates.get(f"train-{model_name}-eager")
        if baseline is None:  # run alone (-k): time the baseline here
            eager = make_steps(model_name, "eager", resident, bench_device)
            baseline = eager.images / min(timed(eager.round, bench_device) for _ in range(2))
    rate = measure(benchmark, steps.round, name=f"train-{model_name}-{mode}", images=steps.images,
                   baseline=baseline, rounds=3, warmup=1)
    compiled = MODES[mode]["compile"]
    benchmark.extra_info.update(model=model_name, mode=mode, batch=steps.batch,
                                first_step_s=round(steps.first_step_s, 3),
                                compile_mode=COMPILE_MODE.get(mode, "default") if compiled else None)
    print(f"\n{model_name} {mode}: {rate:,.0f} images/s, first step {steps.first_step_s:.2f} s")
