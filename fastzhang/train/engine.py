"""The training loop: epochs of SGD over the resident data set, resumable at any step.

All mutable training state lives in one `Run`; `train/state.py` turns it into
a checkpoint payload and back. The loop knows nothing about files: it calls
`save(mid_epoch: bool)` when a checkpoint is due and `stop_requested()` after
every step, and returns when the run is finished or interrupted.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from fastzhang.data.batches import epoch_plan, eval_batches, steps_per_epoch
from fastzhang.data.sources import classes
from fastzhang.models.build import build_model
from fastzhang.results import LATER_SERIES, METRIC_SERIES, best_epoch
from fastzhang.train.fastpath import Speed, TrainStep, evaluate

METRIC_KEYS = METRIC_SERIES + LATER_SERIES  # the results file's series, one row per epoch

# Images per evaluation batch: a GPU wants large ones; a CPU is fastest where a batch's activations stay in
# its caches (AlexNet at 100: 2.2x the images/s of 1,000, Inception at 64-128: 1.4x; bench/NOTES.md §13).
EVAL_BATCH = {"cuda": 1000, "cpu": 100}


@dataclass
class Run:
    """Everything that changes while training; restored whole from a checkpoint."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0  # epochs fully completed
    step_in_epoch: int = 0  # steps done in epoch + 1
    global_step: int = 0
    best_test_acc: float = 0.0
    metrics: dict = field(default_factory=lambda: {k: [] for k in METRIC_KEYS})
    partial: dict = field(default_factory=dict)  # device sums of the unfinished epoch
    fit_epoch: int | None = None
    fit_step: int | None = None
    wandb_run_id: str | None = None

    @property
    def fitted(self) -> bool:
        return self.fit_epoch is not None


def build_run(cfg, device: torch.device, speed: Speed) -> Run:
    """Fresh model, SGD with momentum, and the per-epoch exponential decay of Appendix A. Weight decay applies
    to every trainable tensor (PyTorch's SGD convention); the paper gives no value (recipes choose 5e-4)."""
    model = build_model(cfg.model, num_classes=len(classes(cfg.dataset)), seed=cfg.seed).to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Under CUDA graphs the learning rate lives in a float32 device tensor (what fused
    # SGD reads through a pointer), so the scheduler's in-place updates reach the
    # captured step; a CPU tensor or a float would be baked into the graph.
    lr = torch.tensor(cfg.effective_lr, dtype=torch.float32, device=device) if speed.cuda_graphs \
        else cfg.effective_lr
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        fused=True,  # one kernel for all parameters, on CUDA and on the CPU (NOTES §4: 1.7x the for-loop)
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    return Run(model=model, optimizer=optimizer, scheduler=scheduler)


@dataclass
class Hooks:
    """How the loop talks to the outside world (files, signals, logging, progress)."""

    save: Callable[[bool], None]  # save(mid_epoch)
    stop_requested: Callable[[], bool] = lambda: False
    on_epoch: Callable[[dict], None] = lambda row: None
    on_fallback: Callable[[str, str], None] = lambda switch, reason: None  # a speed switch turned off
    quiet: bool = False


def train(cfg, run: Run, data, loader, speed: Speed, hooks: Hooks) -> bool:
    """Train until the target epoch, the fit threshold or early stopping; False if interrupted by a stop request."""
    step_fn = TrainStep(run.model, run.optimizer, speed, on_fallback=hooks.on_fallback)
    while not finished(cfg, run):
        if not _train_epoch(cfg, run, data, loader, speed, step_fn, hooks):
            return False
        row = _finish_epoch(cfg, run, data, speed, hooks.stop_requested, hooks.quiet)
        if row is None:  # stopped during evaluation: the epoch's steps are kept, evaluated again on resume
            hooks.save(True)
            return False
        hooks.save(False)
        hooks.on_epoch(row)
        if hooks.stop_requested():
            return finished(cfg, run)
    return True


def finished(cfg, run: Run) -> bool:
    return end_cause(cfg, run) is not None


def end_cause(cfg, run: Run) -> str | None:
    """Why no epoch is left: "epochs" (the target), "fit" (stop_at_train_acc), "early_stopping"; else None.
    A function of the finished epochs' metrics, so a run resumed at any point ends where it would have."""
    if run.epoch >= cfg.epochs:
        return "epochs"
    if run.fitted:
        return "fit"
    if early_stop_due(cfg, run.metrics["epochs"], run.metrics["test_acc"]):
        return "early_stopping"
    return None


def early_stop_due(cfg, epochs: list, test_acc: list) -> bool:
    """Early stopping: from epoch early_stop_min_epochs on, stop once the best test accuracy is
    early_stop_patience epochs old, counted from the epoch that first reached it (results.best_epoch)."""
    if cfg.early_stop_patience is None or not epochs:
        return False
    last = epochs[-1]
    return last >= cfg.early_stop_min_epochs and last - (best_epoch(epochs, test_acc) or 0) >= \
        cfg.early_stop_patience


def _train_epoch(cfg, run: Run, data, loader, speed: Speed, step_fn: TrainStep, hooks: Hooks) -> bool:
    """Run the remaining steps of epoch run.epoch + 1; False if a stop was requested."""
    epoch = run.epoch + 1
    device = data.train_x.device
    n = data.train_x.shape[0]
    steps = steps_per_epoch(n, cfg.batch_size)
    plan = epoch_plan(cfg.seed, epoch, n, cfg.random_crop, device)
    if not run.partial:
        run.partial = _empty_partial(device)
    sums = run.partial
    resumed_at = run.step_in_epoch
    elapsed = clock(device)
    start = time.perf_counter()
    bar = tqdm(
        total=steps, initial=resumed_at, desc=f"epoch {epoch}/{cfg.epochs}", unit="step",
        disable=hooks.quiet, leave=False, dynamic_ncols=True,
    )
    display = _Display(bar, sums, device)
    run.model.train()
    for step in range(resumed_at, steps):
        x, y = loader(plan, step)
        step_fn(x, y, sums["loss_sum"], sums["correct"])
        sums["seen"] += y.shape[0]
        run.step_in_epoch = step + 1
        run.global_step += 1
        display.update(step + 1 - resumed_at, time.perf_counter() - start)
        if hooks.stop_requested():
            sums["seconds"] += elapsed(start)
            bar.close()
            hooks.save(True)
            return False
        every = cfg.checkpoint_every_steps
        if every and run.global_step % every == 0 and step + 1 < steps:
            sums["seconds"] += elapsed(start)
            start = time.perf_counter()
            hooks.save(True)
    sums["seconds"] += elapsed(start)
    bar.close()
    return True


def clock(device: torch.device) -> Callable[[float], float]:
    """elapsed(start): seconds since `start`, once the work queued on `device` is done: the host runs
    ahead of a GPU by many steps, and a clock read without waiting would overstate images/s."""
    def elapsed(start: float) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return elapsed


def _empty_partial(device: torch.device) -> dict:
    return {
        "loss_sum": torch.zeros((), dtype=torch.float32, device=device),
        "correct": torch.zeros((), dtype=torch.int64, device=device),
        "seen": 0,
        "seconds": 0.0,
    }


class _Display:
    """Progress-bar postfix without stalling the device: the device sums are copied to pinned host
    memory asynchronously and shown one refresh later, so the bar never forces a host sync."""

    EVERY = 20

    def __init__(self, bar: tqdm, sums: dict, device: torch.device):
        self.bar, self.sums = bar, sums
        self.pin = device.type == "cuda"
        self.host = torch.zeros(2, dtype=torch.float64, pin_memory=self.pin)
        self.copied = torch.cuda.Event() if self.pin else None  # query() never blocks
        self.shown_seen = 0

    def update(self, steps_done: int, seconds: float) -> None:
        self.bar.update(1)
        if self.bar.disable or steps_done % self.EVERY:
            return
        if self.copied is not None and self.shown_seen and not self.copied.query():
            return  # the last copy is still in flight: show it at a later refresh
        loss, correct = self.host.tolist()
        if self.shown_seen:
            self.bar.set_postfix(
                loss=f"{loss / self.shown_seen:.3f}", acc=f"{100 * correct / self.shown_seen:.1f}%",
                img_s=f"{self.sums['seen'] / max(seconds, 1e-9):.0f}", refresh=False,
            )
        stacked = torch.stack([self.sums["loss_sum"].double(), self.sums["correct"].double()])
        self.host.copy_(stacked, non_blocking=self.pin)
        if self.copied is not None:
            self.copied.record()
        self.shown_seen = self.sums["seen"]


def _finish_epoch(cfg, run: Run, data, speed: Speed,
                  stop_requested: Callable[[], bool] = lambda: False, quiet: bool = True) -> dict | None:
    """Evaluate (a progress bar unless `quiet`), record the epoch's metrics, step the schedule; returns the
    epoch's row, or None (and changes nothing) when a stop was requested during the evaluation."""
    epoch = run.epoch + 1
    sums = run.partial
    seen = max(sums["seen"], 1)
    train_loss = sums["loss_sum"].item() / seen  # the epoch's one host sync for training
    train_acc = 100.0 * sums["correct"].item() / seen
    eval_size = EVAL_BATCH.get(data.test_x.device.type, 1000)
    start = time.perf_counter()  # evaluate ends with .item(): the device is done when it returns
    batches = eval_batches(data.test_x, data.test_y, eval_size, dtype=speed.input_dtype,
                           channels_last=speed.channels_last)
    shown = tqdm(batches, total=math.ceil(data.test_x.shape[0] / eval_size), desc=f"test {epoch}/{cfg.epochs}",
                 unit="batch", disable=quiet, leave=False, dynamic_ncols=True)
    # A stop request ends evaluation within a batch; the epoch is evaluated again on resume.
    test_loss, test_acc = evaluate(run.model, itertools.takewhile(lambda _: not stop_requested(), shown), speed)
    if stop_requested():
        return None
    seconds = sums["seconds"]
    row = {
        "epochs": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
        "test_acc": test_acc, "lr": float(run.optimizer.param_groups[0]["lr"]), "epoch_seconds": seconds,
        "images_per_second": sums["seen"] / seconds if seconds > 0 else math.nan,
        "steps": run.global_step, "eval_seconds": time.perf_counter() - start,
    }
    for key in METRIC_KEYS:
        run.metrics[key].append(row[key])
    run.best_test_acc = max(run.best_test_acc, test_acc)
    if cfg.stop_at_train_acc is not None and train_acc >= cfg.stop_at_train_acc:
        run.fit_epoch, run.fit_step = epoch, run.global_step
    run.scheduler.step()
    run.epoch, run.step_in_epoch, run.partial = epoch, 0, {}
    return row
