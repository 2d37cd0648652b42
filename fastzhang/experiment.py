"""The one function that decides an experiment's fate.

    completed? -> check inputs -> lock -> checkpoint? -> resume or start -> train -> results

The CLI, the batch script, the local pool and the Ray backend all call
`run_experiment`. Everything that can be refused (config, data, resume file,
optional packages) is refused before the first byte is written.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastzhang import __version__, checkpoint, results
from fastzhang.config import ExperimentConfig
from fastzhang.errors import UsageError
from fastzhang.lock import ExperimentLock
from fastzhang.log import info, warn


@dataclass(frozen=True)
class RunOptions:
    checkpoint_dir: Path = Path("checkpoints")
    results_dir: Path = Path("results")
    force: bool = False
    resume_from: Path | None = None
    quiet: bool = False


@dataclass(frozen=True)
class Outcome:
    status: str  # "trained" | "already_completed"
    experiment_id: str
    results_path: Path
    results: dict


class Interrupted(Exception):
    """A stop signal arrived; a checkpoint was written. Exit code 128 + signal."""

    def __init__(self, signum: int, checkpoint_path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint saved to {checkpoint_path}")
        self.exit_code = 128 + signum


def run_experiment(cfg: ExperimentConfig, opts: RunOptions) -> Outcome:
    eid = cfg.experiment_id
    if not opts.force and opts.resume_from is None:
        done = _completed(opts, eid)
        if done:
            return done

    # Refuse bad input before anything is written.
    given = _load_resume_file(cfg, opts.resume_from) if opts.resume_from else None
    from fastzhang.data.cifar import load_dataset

    arrays = load_dataset(cfg.dataset, cfg.data_dir)
    wandb = _import_wandb() if cfg.use_wandb else None

    with ExperimentLock(opts.checkpoint_dir, eid):
        if not opts.force and opts.resume_from is None:
            done = _completed(opts, eid)  # finished by another process while we loaded data
            if done:
                return done
        latest = checkpoint.latest_path(opts.checkpoint_dir, eid)
        if given is not None:
            start = given
        elif opts.force:
            start = None
        else:
            found = checkpoint.load_latest(latest)
            start = _check_identity(cfg, found[0], found[1]) if found else None
        return _train(cfg, opts, arrays, start, wandb)


def _completed(opts: RunOptions, eid: str) -> Outcome | None:
    found = results.find_completed(opts.results_dir, eid)
    if found is None:
        return None
    path, payload = found
    return Outcome("already_completed", eid, path, payload)


def _load_resume_file(cfg: ExperimentConfig, path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume-from {path}: no such checkpoint file")
    try:
        payload = checkpoint.load(path)
    except checkpoint.CheckpointCorrupt as e:
        raise UsageError(f"--resume-from {path}: {e.reason}") from None
    return _check_identity(cfg, payload, path)


def _check_identity(cfg: ExperimentConfig, payload: dict, path: Path) -> dict:
    """A checkpoint is reused only for exactly the experiment it was written by."""
    try:
        stored = ExperimentConfig.from_mapping(payload["config"], source=str(path))
    except UsageError as e:
        raise UsageError(f"checkpoint {path} holds an unreadable config ({e})") from None
    theirs, ours = stored.identity(), cfg.identity()
    diff = [f"{k}: checkpoint {theirs[k]!r} vs requested {ours[k]!r}" for k in ours if theirs[k] != ours[k]]
    if diff:
        raise UsageError(
            f"checkpoint {path} belongs to a different configuration ({'; '.join(diff)}); "
            "use --force to start over, or pick the matching checkpoint"
        )
    return payload


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise UsageError("--use_wandb needs the wandb package: pip install 'fastzhang[wandb]'") from None
    return wandb


# ------------------------------------------------------------------------------------------


def _train(cfg: ExperimentConfig, opts: RunOptions, arrays, start: dict | None, wandb) -> Outcome:
    from fastzhang.data.batches import ResidentData
    from fastzhang.train import engine, state
    from fastzhang.train.fastpath import resolve_device, resolve_speed
    from fastzhang.train.loaders import make_loader

    device = resolve_device(cfg.device)
    speed = resolve_speed(cfg, device)
    if start is not None and start["data_fingerprint"] != arrays.fingerprint:
        raise UsageError(
            f"the checkpoint was trained on data with fingerprint {start['data_fingerprint'][:16]}…, "
            f"but {arrays.source} has {arrays.fingerprint[:16]}…; use the same data or --force"
        )
    data = ResidentData.build(
        arrays, randomization=cfg.randomization, corrupt_prob=cfg.corrupt_prob, seed=cfg.seed,
        train_subset=cfg.train_subset, device=device,
    )
    loader = make_loader(cfg.loader, data, cfg.batch_size, dtype=speed.input_dtype,
                         channels_last=speed.channels_last)
    run = engine.build_run(cfg, device, speed)
    if start is not None:
        state.restore(run, start)
        if not opts.quiet:
            info(f"{cfg.experiment_id}: resuming after epoch {run.epoch}"
                 + (f", step {run.step_in_epoch}" if run.step_in_epoch else ""))
    elif not opts.quiet:
        info(f"{cfg.experiment_id}: starting on {device} ({_speed_text(speed)})")

    latest = checkpoint.latest_path(opts.checkpoint_dir, cfg.experiment_id)
    best = checkpoint.best_path(opts.checkpoint_dir, cfg.experiment_id)
    logger = _WandbLogger(wandb, cfg, run, quiet=opts.quiet) if wandb else None

    def save(mid_epoch: bool) -> None:
        payload = state.to_payload(run, cfg, arrays.fingerprint)
        if not mid_epoch and run.metrics["test_acc"] and run.metrics["test_acc"][-1] >= run.best_test_acc:
            checkpoint.save(payload, best, keep_previous=False)  # best first: a crash re-runs the epoch
        checkpoint.save(payload, latest)

    def on_epoch(row: dict) -> None:
        if logger:
            logger.log(row)
        if not opts.quiet:
            info(f"{cfg.experiment_id} epoch {row['epochs']}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
                 f"acc {row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% "
                 f"| {row['epoch_seconds']:.1f}s, {row['images_per_second']:.0f} img/s")

    with _stop_signals() as stop:
        hooks = engine.Hooks(save=save, stop_requested=lambda: stop.signum is not None, on_epoch=on_epoch,
                             checkpoint_every_steps=cfg.checkpoint_every_steps, quiet=opts.quiet)
        if start is None:
            save(False)  # epoch 0: a --force restart supersedes the old checkpoint at once
        finished = engine.train(cfg, run, data, loader, speed, hooks)
        if not finished:
            if logger:
                logger.finish(exit_code=1)
            raise Interrupted(stop.signum, latest)
    payload = _results_payload(cfg, run, arrays, device)
    path = results.write(opts.results_dir, payload)
    if logger:
        logger.finish(exit_code=0, summary=payload["metrics"])
    return Outcome("trained", cfg.experiment_id, path, payload)


def _speed_text(speed) -> str:
    on = [name for name in ("amp", "compile", "cuda_graphs", "channels_last") if getattr(speed, name)]
    return "fast path: " + ", ".join(on) if on else "fp32 eager"


@dataclass
class _StopFlag:
    signum: int | None = None


@contextmanager
def _stop_signals():
    """SIGTERM / SIGINT ask the loop to finish its step, checkpoint and exit (143 / 130)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals are delivered to the main thread only (e.g. inside a Ray worker thread)
        return

    def handler(signum, frame):
        if flag.signum is not None:  # a second signal: the user insists
            raise KeyboardInterrupt
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _results_payload(cfg: ExperimentConfig, run, arrays, device) -> dict:
    import torch

    m = run.metrics
    seconds = sum(m["epoch_seconds"])
    images = sum(r * s for r, s in zip(m["images_per_second"], m["epoch_seconds"]) if r == r)
    return {
        "schema_version": results.SCHEMA_VERSION,
        "experiment_id": cfg.experiment_id,
        "config": {**cfg.to_dict(), "lr": cfg.effective_lr},
        "metrics": {
            **{k: list(v) for k, v in m.items()},
            "best_test_acc": run.best_test_acc,
            "final_train_acc": m["train_acc"][-1] if m["train_acc"] else None,
            "final_test_acc": m["test_acc"][-1] if m["test_acc"] else None,
            "fit_epoch": run.fit_epoch,
            "fit_step": run.fit_step,
        },
        "timestamp": time.strftime("%Y%m%d_%H%M%S"),
        "completed": True,
        "total_epochs": run.epoch,
        "target_epochs": cfg.epochs,
        "stopped_early": run.fitted and run.epoch < cfg.epochs,
        "data_fingerprint": arrays.fingerprint,
        "data_fingerprint_name": arrays.fingerprint_name,
        "environment": {
            "fastzhang": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "platform": platform.platform(),
            "hostname": platform.node(),
            "pid": os.getpid(),
        },
        "throughput": {
            "mean_images_per_second": images / seconds if seconds > 0 else None,
            "train_seconds": seconds,
        },
    }


class _WandbLogger:
    """Config and per-epoch metrics to W&B; a resumed run continues the same W&B run."""

    def __init__(self, wandb, cfg: ExperimentConfig, run, quiet: bool):
        self.wandb = wandb
        if run.wandb_run_id is None:
            run.wandb_run_id = uuid.uuid4().hex[:16]  # kept in the checkpoint so a resume continues it
        self.handle = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "fastzhang"), id=run.wandb_run_id, resume="allow",
            name=cfg.experiment_id, config={**cfg.to_dict(), "lr": cfg.effective_lr},
            settings=wandb.Settings(silent=quiet),
        )

    def log(self, row: dict) -> None:
        self.handle.log({k: v for k, v in row.items() if k != "epochs"}, step=row["epochs"])

    def finish(self, exit_code: int, summary: dict | None = None) -> None:
        if summary:
            for key in ("best_test_acc", "final_train_acc", "final_test_acc", "fit_epoch", "fit_step"):
                self.handle.summary[key] = summary[key]
        self.handle.finish(exit_code=exit_code)
