"""The checkpoint payload: the one place that builds, checks and reads it.

A payload is a `Run` (train/engine.py) as plain dicts, tensors and scalars, so
`torch.load(weights_only=True)` reads it and a checkpoint is code-free data.
Data order and crop offsets are functions of (seed, epoch) and the randomized
data set of the data seed, so the payload needs no loader state for resumption
to be exact. checkpoint.py stores a payload (adding `format`, `format_version`
and `checksum`); everything else, the resume checks in experiment.py and
`fastzhang status` included, reads it through this module. docs/architecture.md shows SCHEMA as a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastzhang.config import ExperimentConfig
from fastzhang.errors import ConfigMismatch, UsageError
from fastzhang.train.engine import METRIC_KEYS, Run, end_cause

# key -> what it holds. Every key is written by to_payload and needed by restore.
SCHEMA = {
    "experiment_id": "the experiment ID (config.experiment_id)",
    "config": "ExperimentConfig.to_dict(): identity and execution fields, data_seed resolved",
    "epoch": "epochs fully completed",
    "step_in_epoch": "steps done in epoch + 1 (0 at an epoch boundary)",
    "global_step": "optimizer steps since the start",
    "model_state_dict": "the model's weights and BatchNorm statistics",
    "optimizer_state_dict": "SGD's momentum buffers and hyperparameters",
    "scheduler_state_dict": "the exponential learning-rate decay",
    "best_test_acc": "best test accuracy (%) over finished epochs",
    "all_metrics": "the results file's metric series so far",
    "partial_epoch": "running sums of the unfinished epoch: loss_sum, correct, seen, seconds ({} at a boundary)",
    "fit": "{epoch, step} at which stop_at_train_acc was reached, else nulls",
    "rng_state": "{torch: the CPU generator's state}",
    "data_fingerprint": "sha256 of the data set before randomization",
    "wandb_run_id": "the W&B run continued on resume, or null",
}
# What restore cannot do without; the other two are for people (experiment_id) or read with a default.
REQUIRED = tuple(key for key in SCHEMA if key not in ("experiment_id", "wandb_run_id"))
_EXECUTION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def to_payload(run: Run, cfg: ExperimentConfig, data_fingerprint: str) -> dict:
    partial = run.partial
    return {
        "experiment_id": cfg.experiment_id,
        "config": {**cfg.to_dict(), "data_seed": cfg.effective_data_seed},  # older ones lack it: = seed
        "epoch": run.epoch,
        "step_in_epoch": run.step_in_epoch,
        "global_step": run.global_step,
        "model_state_dict": run.model.state_dict(),
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "best_test_acc": run.best_test_acc,
        "all_metrics": {k: list(v) for k, v in run.metrics.items()},
        "partial_epoch": {
            "loss_sum": partial["loss_sum"].detach().cpu(),
            "correct": partial["correct"].detach().cpu(),
            "seen": partial["seen"],
            "seconds": partial["seconds"],
        } if partial else {},
        "fit": {"epoch": run.fit_epoch, "step": run.fit_step},
        "rng_state": {"torch": torch.get_rng_state()},
        "data_fingerprint": data_fingerprint,
        "wandb_run_id": run.wandb_run_id,
    }


def is_best(run: Run, mid_epoch: bool) -> bool:
    """Whether the payload of `run` now is also the best checkpoint: the epoch that first reached the
    best test accuracy, an equal one later is no improvement (results.best_epoch)."""
    test_acc = run.metrics["test_acc"]
    return not mid_epoch and bool(test_acc) and test_acc[-1] > max(test_acc[:-1], default=-math.inf)


# ------------------------------------------------------------------------------------------
# Checking a payload before resuming from it


def check_resumable(payload: dict, cfg: ExperimentConfig, path: Path) -> dict:
    """`payload` if it was written by the experiment `cfg`, or by the same one with fewer epochs
    than `cfg.epochs` (extending: the schedule, lr x lr_decay after each epoch, and the epoch plans do not
    depend on the total, so it trains on exactly as a `cfg.epochs` run from scratch); else a UsageError."""
    missing = [key for key in REQUIRED if key not in payload]
    stored = stored_config(payload, path)
    theirs, ours, trained = stored.identity(), cfg.identity(), payload.get("epoch", 0)
    # a data seed that follows the seed on both sides differs only as the seed does: one field to name
    follows = stored.data_seed is None and cfg.data_seed is None
    differ = [k for k in ours if theirs[k] != ours[k] and not (k == "epochs" and ours[k] > trained)
              and not (k == "data_seed" and follows)]
    if differ:
        text = "; ".join(f"{k}: checkpoint {theirs[k]!r} vs requested {ours[k]!r}" for k in differ)
        more = f", and --epochs must exceed the {trained} it has trained" if "epochs" in differ else ""
        raise ConfigMismatch(f"checkpoint {path} belongs to a different configuration ({text}{more})", differ)
    if missing:
        raise UsageError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by `fastzhang run`")
    return payload


def finished(payload: dict, cfg: ExperimentConfig) -> bool:
    """Whether a verified payload has no epoch left to train under `cfg` (engine.end_cause on it)."""
    from types import SimpleNamespace

    stored = SimpleNamespace(epoch=payload["epoch"], fitted=payload["fit"]["epoch"] is not None,
                             metrics=payload["all_metrics"])
    return end_cause(cfg, stored) is not None


def stored_config(payload: dict, path: Path) -> ExperimentConfig:
    """The configuration a checkpoint was written with (`run --resume-from PATH` alone continues it)."""
    if "config" not in payload:
        raise UsageError(f"checkpoint {path} has no config: it was not written by `fastzhang run`")
    try:
        return ExperimentConfig.from_mapping(payload["config"], source=str(path))
    except UsageError as e:
        raise UsageError(f"checkpoint {path} holds an unreadable config ({e})") from None


def check_data(payload: dict, fingerprint: str, source: str) -> None:
    """A checkpoint continues only on the data it was trained on."""
    if payload["data_fingerprint"] != fingerprint:
        raise UsageError(
            f"the checkpoint was trained on data with fingerprint {str(payload['data_fingerprint'])[:16]}…, "
            f"but {source} has {fingerprint[:16]}…; use the same data or --force"
        )


# ------------------------------------------------------------------------------------------
# Reading a payload for display (`fastzhang status`)


@dataclass(frozen=True)
class Progress:
    epoch: int | None  # epochs fully completed
    target_epochs: int | None
    step_in_epoch: int
    best_test_acc: float | None
    last_test_acc: float | None  # of the last finished epoch
    last_train_acc: float | None = None
    images_per_second: float | None = None  # of the last finished epoch
    metrics: dict = field(default_factory=dict)  # the per-epoch series so far (results.METRIC_SERIES)


def progress(payload: dict) -> Progress:
    """What a verified checkpoint says about its run; tolerant of missing keys (status shows '?')."""
    metrics = {k: list(v) for k, v in (payload.get("all_metrics") or {}).items() if isinstance(v, list)}
    last = {key: (metrics.get(key) or [None])[-1] for key in ("test_acc", "train_acc", "images_per_second")}
    return Progress(
        epoch=payload.get("epoch"), target_epochs=(payload.get("config") or {}).get("epochs"),
        step_in_epoch=payload.get("step_in_epoch") or 0, best_test_acc=payload.get("best_test_acc"),
        last_test_acc=last["test_acc"], last_train_acc=last["train_acc"],
        images_per_second=last["images_per_second"], metrics=metrics,
    )


# ------------------------------------------------------------------------------------------
# Restoring a Run


def restore(run: Run, payload: dict) -> None:
    """Load a verified payload into a freshly built `run` (same config)."""
    device = next(run.model.parameters()).device
    run.model.load_state_dict(payload["model_state_dict"])
    run.optimizer.load_state_dict(_optimizer_state_for(run.optimizer, payload["optimizer_state_dict"]))
    _lay_out_like_parameters(run.optimizer)
    run.scheduler.load_state_dict(payload["scheduler_state_dict"])
    run.epoch = int(payload["epoch"])
    run.step_in_epoch = int(payload["step_in_epoch"])
    run.global_step = int(payload["global_step"])
    run.best_test_acc = float(payload["best_test_acc"])
    # a series the checkpoint predates (eval_seconds) is unknown for its epochs
    run.metrics = {k: list(payload["all_metrics"].get(k, [None] * run.epoch)) for k in METRIC_KEYS}
    partial = payload["partial_epoch"]
    run.partial = {
        "loss_sum": partial["loss_sum"].to(device),
        "correct": partial["correct"].to(device),
        "seen": int(partial["seen"]),
        "seconds": float(partial["seconds"]),
    } if partial else {}
    run.fit_epoch, run.fit_step = payload["fit"]["epoch"], payload["fit"]["step"]
    run.wandb_run_id = payload.get("wandb_run_id")
    torch.set_rng_state(payload["rng_state"]["torch"])


def _lay_out_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter buffer its parameter's memory layout.

    `Optimizer.load_state_dict` keeps the checkpoint's strides, so a run saved in
    NCHW and resumed with channels_last meets NCHW momentum beside channels_last
    weights: CUDA's fused SGD refuses such pairs (the CPU kernel accepts them).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _optimizer_state_for(optimizer: torch.optim.Optimizer, saved: dict) -> dict:
    """The saved optimizer state, fitted to the live optimizer's execution settings.

    A run may resume on another device or with other speed switches: the saved
    hyperparameters are kept, but how the step runs (fused, foreach, ...) is the
    live optimizer's, and lr keeps the live form. Under CUDA graphs that is a
    float32 tensor on the parameters' device (torch.load maps a saved tensor to
    the CPU, where fused SGD would read it once and the graph would freeze it).
    """
    groups = []
    for live, stored in zip(optimizer.param_groups, saved["param_groups"]):
        group = dict(stored)
        for key in _EXECUTION_KEYS:
            if key in live:
                group[key] = live[key]
        for key in ("lr", "initial_lr"):
            if key not in stored:
                continue
            if isinstance(live.get(key), torch.Tensor):
                group[key] = torch.tensor(float(stored[key]), dtype=live[key].dtype, device=live[key].device)
            elif isinstance(stored[key], torch.Tensor):
                group[key] = float(stored[key])
        groups.append(group)
    return {"state": saved["state"], "param_groups": groups}
