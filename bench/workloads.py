"""What the benchmarks time, and their clock: train/engine.clock, which waits for the device.

- naive_*: the baseline of the data, step and epoch ratios, as a typical reproduction writes it: a DataLoader
  over a Dataset that crops, scales and whitens one sample at a time (data.preprocess's operations),
  an fp32 eager model (NCHW), plain SGD, a `.item()` after every step to log the loss.
- train_steps: rounds of the engine's step (TrainStep, engine.build_run's optimizer) on two fixed
  batches; the first call (compile, CUDA-graph capture) is timed apart.
- fastzhang_epoch: one epoch as `fastzhang run` trains and evaluates it, nothing saved.
"""

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fastzhang.config import ExperimentConfig
from fastzhang.data.batches import ResidentData, epoch_plan, train_batch
from fastzhang.data.preprocess import CENTER, CROP, MAX_OFFSET, MIN_STD
from fastzhang.models.build import build_model
from fastzhang.models.lrn import torch_equivalent
from fastzhang.train import engine
from fastzhang.train.fastpath import Speed, TrainStep, resolve_speed
from fastzhang.train.loaders import make_loader

DRY = os.environ.get("FASTZHANG_GPU_DRY_RUN") == "1"  # `make gpu-check`'s dry run: on the CPU, tiny sizes
GPU = torch.cuda.is_available() and not DRY  # the `device` fixture's rule (tests/conftest.py), at collection
EPOCH_BATCH = 128


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (the epoch clock read and thrown away)."""
    engine.clock(device)(0.0)


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of fn, the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    return engine.clock(device)(start)


class PerSampleCifar(Dataset):
    """Random (or center) crop, ToTensor-like scaling, per-image whitening, one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, random_crop: bool = True):
        self.images, self.labels, self.seed, self.random_crop = images, labels, seed, random_crop

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.random_crop:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            dy, dx = torch.randint(0, MAX_OFFSET + 1, (2,), generator=g).tolist()
        else:
            dy = dx = CENTER
        x = torch.from_numpy(self.images[i, :, dy : dy + CROP, dx : dx + CROP]).float().div(255.0)
        x = (x - x.mean()) / x.std(correction=0).clamp_min(MIN_STD)
        return x, int(self.labels[i])


def naive_loader(images, labels, device: torch.device, *, batch: int, workers: int = 0, train: bool = True,
                 seed: int = 0) -> DataLoader:
    return DataLoader(PerSampleCifar(images, labels, seed, random_crop=train), batch_size=batch, shuffle=train,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def naive_model(model_name: str, device: torch.device):
    """(model, step(x, y)): a typical reproduction's fp32 eager model and SGD step, `.item()` every step."""
    model = build_model(model_name, seed=0).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()  # the per-step host sync of a logging loop

    return model, step


def naive_epoch(model_name: str, arrays, device: torch.device, workers: int) -> Callable[[], float]:
    """One epoch as a typical reproduction writes it: fp32 eager, `.item()` every step, then a test pass."""
    model, step = naive_model(model_name, device)
    train = naive_loader(arrays.train_images, arrays.train_labels, device, batch=EPOCH_BATCH, workers=workers)
    test = naive_loader(arrays.test_images, arrays.test_labels, device, batch=1000, workers=workers, train=False)

    def epoch() -> float:
        model.train()
        for x, y in train:
            step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        model.eval()
        with torch.no_grad():
            correct = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in test)
        return correct / len(arrays.test_labels)

    return epoch


@dataclass
class Steps:
    round: Callable[[], None]  # `steps` optimizer steps
    first_step_s: float  # the first call: compile, graph warm-up and capture
    batch: int
    images: int  # per round
    speed: Callable[[], Speed]  # what ran: a failed capture or compile turns a switch off
    fallbacks: list[str] = field(default_factory=list)  # "switch: reason", as TrainStep reported them


def naive_steps(model_name: str, resident: ResidentData, device: torch.device, *, batch: int, steps: int) -> Steps:
    """`train_steps`' rounds with naive_model's step on the same two batches, fp32 and NCHW."""
    _, step = naive_model(model_name, device)
    plain = Speed(amp=False, compile=False, cuda_graphs=False, channels_last=False)
    return _two_batch_rounds(step, lambda: plain, resident, device, batch=batch, steps=steps, fallbacks=[])


def _two_batch_rounds(step: Callable, speed: Callable[[], Speed], resident: ResidentData, device: torch.device, *,
                      batch: int, steps: int, fallbacks: list[str]) -> Steps:
    """Rounds of `steps` calls of step(x, y) alternating over two fixed batches laid out for speed(); the first
    call (compile, capture) timed apart."""
    plan = epoch_plan(0, 1, resident.num_train, True, device)
    batches = [train_batch(resident, plan, i, batch, dtype=speed().input_dtype, channels_last=speed().channels_last)
               for i in range(2)]

    def round_():
        for i in range(steps):
            step(*batches[i % 2])

    first = timed(lambda: step(*batches[0]), device)
    return Steps(round_, first, batch, batch * steps, speed, fallbacks)


def train_steps(model_name: str, speed: Speed, resident: ResidentData, device: torch.device, *, batch: int,
                steps: int, compile_mode: str | None = None, torch_lrn: bool = False) -> Steps:
    cfg = ExperimentConfig.from_mapping({"model": model_name, "dataset": "synthetic", "batch_size": batch,
                                         "device": device.type})
    run = engine.build_run(cfg, device, speed)
    if torch_lrn:  # alexnet with nn.LocalResponseNorm in place of models/lrn.py's fast LRN: the same function
        run.model.norm1, run.model.norm2 = torch_equivalent(), torch_equivalent()
    if speed.compile:
        torch.compiler.reset()  # dynamo would reuse an earlier case's code for this model class
    fallbacks: list[str] = []
    step = TrainStep(run.model, run.optimizer, speed, compile_mode=compile_mode,
                     on_fallback=lambda switch, reason: fallbacks.append(f"{switch}: {reason}"))
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    return _two_batch_rounds(lambda x, y: step(x, y, loss_sum, correct), lambda: step.speed, resident, device,
                             batch=batch, steps=steps, fallbacks=fallbacks)


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
