"""Training-step throughput per model per speed mode (MODES), and the first step's cost.

A round = `steps` of the engine's TrainStep (bench/workloads.py); channels_last for convolutional
models only, as `auto`. Ratios: against the model's fp32 eager case; alexnet's eager case against
`torch_lrn` (nn.LocalResponseNorm for models/lrn.py's fast LRN: the same function); `auto` (the
switches `fastzhang run` picks on this device for a 100-epoch run) against `naive`
(workloads.naive_steps: a typical reproduction's step on the same batches); `kernels`: amp_cl with
the LRN's compiled tails. `first_step_s` is cold (compiler caches start empty); `full-warm` builds
`full` again, inductor's cache filled. A fallback (a switch turned off) fails the case: it would
time the wrong path. Marked `cuda`: the GPU check's cases (its CPU dry run: mlp1, not compiled),
with `host_lead` on CUDA.
"""

import dataclasses
import time

import pytest
import torch

from fastzhang.config import ExperimentConfig
from fastzhang.data.batches import ResidentData
from fastzhang.data.synthetic import make_synthetic
from fastzhang.models.registry import MODELS
from fastzhang.train.fastpath import Speed, resolve_speed
from workloads import DRY, GPU, Steps, naive_steps, sync, train_steps

MODES = {"naive": "", "auto": "", "torch_lrn": "", "eager": "", "amp": "amp", "cl": "channels_last",
         "amp_cl": "amp channels_last", "kernels": "amp channels_last compile_kernels",
         "compile": "compile", "compile_max": "compile",
         "cuda_graphs": "cuda_graphs", "graphs": "amp channels_last cuda_graphs",
         "full": "amp channels_last compile cuda_graphs", "full-warm": "amp channels_last compile cuda_graphs"}
COMPILE_MODE = {"compile_max": "max-autotune-no-cudagraphs"}
CPU_MODES = {
    "mlp1": ("eager", "amp", "compile", "compile_max"),
    "mlp3": ("eager", "amp", "compile"),
    "alexnet": ("naive", "auto", "torch_lrn", "eager", "amp", "cl", "amp_cl", "kernels", "compile"),
    "inception": ("naive", "auto", "eager", "amp", "cl", "amp_cl"),
    "inception_no_bn": ("naive", "auto", "eager", "amp"),
}
CUDA_MODES = {
    "mlp1": ("eager", "amp", "compile", "cuda_graphs", "graphs", "full", "full-warm"),
    "mlp3": ("eager", "amp", "graphs", "full"),
    "alexnet": ("torch_lrn", "eager", "amp", "amp_cl", "graphs", "full"),
    "inception": ("eager", "amp", "cl", "amp_cl", "cuda_graphs", "graphs", "full", "full-warm"),
    "inception_no_bn": ("eager", "amp", "amp_cl", "graphs"),  # its `full` compiles as long as inception's
}
# The GPU check's: alexnet's compiles and inception's compile alone (15-90 s each, cold; bench/NOTES.md §10)
# would not fit its 6 minutes.
CHECK = {"mlp1": ("eager", "amp", "cuda_graphs", "compile", "full", "full-warm"),
         "inception": ("eager", "amp", "cl", "cuda_graphs", "full", "full-warm")}
# (batch, steps per round): a CPU round of inception costs ~1-3 s, of mlp1 ~0.1 s.
SIZES = {"mlp1": (128, 8), "mlp3": (128, 8), "alexnet": (128, 2), "inception": (32, 1), "inception_no_bn": (32, 1)}
CASES = [pytest.param(model, mode, id=f"{model}-{mode}", marks=[pytest.mark.cuda] * (mode in CHECK.get(model, ())))
         for model, modes in (CUDA_MODES if GPU else CPU_MODES).items() for mode in modes]
COLD_FIRST_STEP: dict[str, float] = {}  # model -> the `full` case's first step, for its warm twin


@pytest.fixture(scope="module")
def resident(device):
    return ResidentData.build(make_synthetic(512, 16), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device=device)


def make_steps(model: str, mode: str, resident, device: torch.device) -> Steps:
    batch, steps = (128, 50) if device.type == "cuda" else SIZES[model]
    if mode == "naive":
        return naive_steps(model, resident, device, batch=batch, steps=steps)
    on = MODES[mode].split()
    if not MODELS[model].convolutional:  # as resolve_speed's auto: an MLP only pays a copy for it
        on = [switch for switch in on if switch != "channels_last"]
    speed = Speed(**{switch: switch in on for switch in ("amp", "compile", "cuda_graphs", "channels_last",
                                                         "compile_kernels")})
    if mode == "auto":
        speed = resolve_speed(ExperimentConfig.from_mapping({"model": model, "batch_size": batch}), device)
    return train_steps(model, speed, resident, device, batch=batch, steps=steps, compile_mode=COMPILE_MODE.get(mode),
                       torch_lrn=mode == "torch_lrn")


def _host_lead(steps: Steps, device) -> dict:
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
@pytest.mark.parametrize("model,mode", CASES)
def test_train_step(benchmark, measure, resident, device, model, mode):
    if DRY and (model != "mlp1" or "compile" in MODES[mode]):
        pytest.skip("the dry run: mlp1 only, nothing compiled")
    torch.manual_seed(0)
    steps = make_steps(model, mode, resident, device)
    assert steps.fallbacks == [], steps.fallbacks
    base = {"eager": "torch_lrn" if model == "alexnet" else None, "torch_lrn": None, "naive": None,
            "auto": "naive"}.get(mode, "eager")
    measure(benchmark, steps.round, name=f"train-{model}-{mode}", images=steps.images,
            baseline=base and f"train-{model}-{base}", alone=lambda: make_steps(model, base, resident, device).round,
            rounds=5 if device.type == "cuda" else 3)
    benchmark.extra_info.update(model=model, mode=mode, batch=steps.batch, first_step_s=round(steps.first_step_s, 3),
                                compile_mode=COMPILE_MODE.get(mode, "default") if steps.speed().compile else None,
                                switches=dataclasses.asdict(steps.speed()))
    if mode == "full":
        COLD_FIRST_STEP[model] = round(steps.first_step_s, 3)
    if mode == "full-warm" and model in COLD_FIRST_STEP:
        benchmark.extra_info["cold_first_step_s"] = COLD_FIRST_STEP[model]
    if device.type == "cuda" and mode in ("eager", "full"):
        benchmark.extra_info["host_lead"] = _host_lead(steps, device)
