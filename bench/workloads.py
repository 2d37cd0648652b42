"""What the benchmarks and the GPU check (bench/test_bench_cuda.py) time: training steps and whole epochs.

- train_steps: rounds of train.fastpath.TrainStep (the engine's step: forward, loss,
  backward, SGD, device-side sums) with the engine's optimizer (engine.build_run) on
  two fixed whitened batches, in the speed switches' dtype and layout; the first call
  (compile, CUDA-graph warm-up and capture) is timed apart.
- fastzhang_epoch: what `fastzhang run` does for one epoch (engine._train_epoch with
  the loader `auto` picks, then engine._finish_epoch: evaluation and metrics), nothing
  saved; the run's `epoch_seconds` is the training part, read by the engine's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from clock import timed
from fastzhang.config import ExperimentConfig
from fastzhang.data.batches import ResidentData, epoch_plan, train_batch
from fastzhang.train import engine
from fastzhang.train.fastpath import Speed, TrainStep, resolve_speed
from fastzhang.train.loaders import make_loader

EPOCH_BATCH = 128


@dataclass
class Steps:
    round: Callable[[], None]  # `steps` optimizer steps
    first_step_s: float  # the first call: compile, graph warm-up and capture
    batch: int
    images: int  # per round
    step: TrainStep  # its `speed` is what ran: a failed capture or compile turns a switch off
    fallbacks: list[str] = field(default_factory=list)  # "switch: reason", as TrainStep reported them


def train_steps(model_name: str, speed: Speed, resident: ResidentData, device: torch.device, *, batch: int,
                steps: int, compile_mode: str | None = None) -> Steps:
    cfg = ExperimentConfig.from_mapping({"model": model_name, "dataset": "synthetic", "batch_size": batch,
                                         "device": device.type})
    run = engine.build_run(cfg, device, speed)
    if speed.compile:
        torch.compiler.reset()  # dynamo would reuse an earlier case's code for this model class
    fallbacks: list[str] = []
    step = TrainStep(run.model, run.optimizer, speed, compile_mode=compile_mode,
                     on_fallback=lambda switch, reason: fallbacks.append(f"{switch}: {reason}"))
    plan = epoch_plan(0, 1, resident.num_train, True, device)
    batches = [train_batch(resident, plan, i, batch, dtype=speed.input_dtype, channels_last=speed.channels_last)
               for i in range(2)]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)

    def round_():
        for i in range(steps):
            step(*batches[i % 2], loss_sum, correct)

    first = timed(lambda: step(*batches[0], loss_sum, correct), device)
    return Steps(round_, first, batch, batch * steps, step, fallbacks)


def epoch_config(model: str, device: torch.device) -> ExperimentConfig:
    return ExperimentConfig.from_mapping({"model": model, "dataset": "synthetic", "batch_size": EPOCH_BATCH,
                                          "random_crop": True, "lr": 0.01, "device": device.type,
                                          "epochs": 1_000})


def fastzhang_epoch(model: str, arrays, device: torch.device):
    """(one-epoch function, its Speed, the Run): the engine's own epoch and evaluation, nothing saved."""
    cfg = epoch_config(model, device)
    speed = resolve_speed(cfg, device)
    data = ResidentData.build(arrays, randomization="none", corrupt_prob=0.0, seed=0, train_subset=None,
                              device=device)
    loader = make_loader("auto", data, EPOCH_BATCH, dtype=speed.input_dtype, channels_last=speed.channels_last)
    run = engine.build_run(cfg, device, speed)
    step = TrainStep(run.model, run.optimizer, speed)
    hooks = engine.Hooks(save=lambda mid_epoch: None, quiet=True)

    def epoch():
        assert engine._train_epoch(cfg, run, data, loader, speed, step, hooks)
        engine._finish_epoch(cfg, run, data, speed)

    return epoch, speed, run
