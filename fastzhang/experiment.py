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

from fastzhang import __version__, results
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
    if given is not None:
        _check_data(given, arrays)
    wandb = _import_wandb() if cfg.use_wandb else None
    ready = _prepare(cfg, arrays)  # device, train_subset, loader: refused here, before the lock file

    from fastzhang import checkpoint  # imports torch: only once the run will really start

    with ExperimentLock(opts.checkpoint_dir, eid):
        if not opts.force and opts.resume_from is None:
            done = _completed(opts, eid, report=False)  # finished by another process while we loaded data
            if done:
                return done
        _remove_stale_temporaries(opts, eid)
        latest = checkpoint.latest_path(opts.checkpoint_dir, eid)
        if given is not None:
            start = given
        elif opts.force:
            start = None
        else:
            found = checkpoint.load_latest(latest)
            start = _check_identity(cfg, found[0], found[1]) if found else None
            if start is not None:
                _check_data(start, arrays)
        return _train(cfg, opts, ready, start, wandb)


def _completed(opts: RunOptions, eid: str, report: bool = True) -> Outcome | None:
    found = results.find_completed(opts.results_dir, eid, report=report)
    if found is None:
        return None
    path, payload = found
    return Outcome("already_completed", eid, path, payload)


def _load_resume_file(cfg: ExperimentConfig, path: Path) -> dict:
    from fastzhang import checkpoint

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume-from {path}: no such checkpoint file")
    try:
        payload = checkpoint.load(path)
    except checkpoint.CheckpointCorrupt as e:
        raise UsageError(f"--resume-from {path}: {e.reason}") from None
    return _check_identity(cfg, payload, path)


# What train/state.py restores; an intact file without them was not written by a run.
_RESUME_KEYS = (
    "config", "epoch", "step_in_epoch", "global_step", "model_state_dict", "optimizer_state_dict",
    "scheduler_state_dict", "best_test_acc", "all_metrics", "partial_epoch", "fit", "rng_state", "data_fingerprint",
)


def _check_identity(cfg: ExperimentConfig, payload: dict, path: Path) -> dict:
    """A checkpoint is reused only for exactly the experiment it was written by."""
    missing = [key for key in _RESUME_KEYS if key not in payload]
    if "config" in missing:
        raise UsageError(f"checkpoint {path} has no config: it was not written by `fastzhang run`")
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
    if missing:
        raise UsageError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by `fastzhang run`")
    return payload


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise UsageError("--use_wandb needs the wandb package: pip install 'fastzhang[wandb]'") from None
    return wandb


# ------------------------------------------------------------------------------------------


def _check_data(start: dict, arrays) -> None:
    if start["data_fingerprint"] != arrays.fingerprint:
        raise UsageError(
            f"the checkpoint was trained on data with fingerprint {str(start['data_fingerprint'])[:16]}…, "
            f"but {arrays.source} has {arrays.fingerprint[:16]}…; use the same data or --force"
        )


def _remove_stale_temporaries(opts: RunOptions, eid: str) -> None:
    """Delete `.tmp` files that a killed writer of this experiment left behind.

    Only the lock holder writes this experiment's files, so under the lock every
    such file is garbage; a run preempted again and again inside its checkpoint
    writes would otherwise fill the disk with full-size copies.
    """
    from fastzhang import checkpoint

    stale = [p for p in checkpoint.experiment_files(opts.checkpoint_dir, eid) if p.name.endswith(".tmp")]
    stale += [p for p in results.experiment_files(opts.results_dir, eid) if p.name.endswith(".tmp")]
    for path in stale:
        try:
            path.unlink()
        except OSError:
            pass  # best effort: a leftover never affects what is loaded
    if stale and not opts.quiet:
        info(f"{eid}: removed {len(stale)} temporary file(s) left by an interrupted write")


@dataclass(frozen=True)
class _Ready:
    """What training needs besides the checkpoint, built before the lock is taken."""

    arrays: object
    device: object
    speed: object
    data: object
    loader: object


def _prepare(cfg: ExperimentConfig, arrays) -> _Ready:
    from fastzhang.data.batches import ResidentData
    from fastzhang.train.fastpath import resolve_device, resolve_speed
    from fastzhang.train.loaders import make_loader

    device = resolve_device(cfg.device)
    speed = resolve_speed(cfg, device)
    data = ResidentData.build(
        arrays, randomization=cfg.randomization, corrupt_prob=cfg.corrupt_prob, seed=cfg.seed,
        train_subset=cfg.train_subset, device=device,
    )
    loader = make_loader(cfg.loader, data, cfg.batch_size, dtype=speed.input_dtype,
                         channels_last=speed.channels_last)
    return _Ready(arrays, device, speed, data, loader)


def _train(cfg: ExperimentConfig, opts: RunOptions, ready: _Ready, start: dict | None, wandb) -> Outcome:
    from fastzhang import checkpoint
    from fastzhang.train import engine, state

    arrays, device, speed, data, loader = ready.arrays, ready.device, ready.speed, ready.data, ready.loader
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

    def save(mid_epoch: bool) -> None:  # called only inside `with _stop_signals() as stop` below
        payload = state.to_payload(run, cfg, arrays.fingerprint)
        improved = not mid_epoch and run.metrics["test_acc"] and run.metrics["test_acc"][-1] >= run.best_test_acc
        with stop.holding():
            # best is written before latest: a crash between them re-runs the epoch
            checkpoint.save(payload, latest, copy_to=best if improved else None)

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
            save(False)  # epoch 0: `status` sees the run, and a --force restart supersedes the old checkpoint
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
    writing: bool = False  # a checkpoint is being written: a second signal waits for it
    insisted: bool = False

    @contextmanager
    def holding(self):
        """Checkpoint writes finish before a second signal stops the run.

        KeyboardInterrupt raised by a handler inside torch.save's writer callbacks
        comes out as an unrelated RuntimeError (and a traceback); the file itself
        is safe either way (atomicio). So the second signal is noted during the
        write and acted on right after it.
        """
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.insisted:
            raise KeyboardInterrupt


@contextmanager
def _stop_signals():
    """SIGTERM / SIGINT ask the loop to finish its step, checkpoint and exit (143 / 130)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals are delivered to the main thread only (e.g. inside a Ray worker thread)
        return

    def handler(signum, frame):
        if flag.signum is None:
            flag.signum = signum
        elif flag.writing:
            flag.insisted = True
        else:  # a second signal: the user insists
            raise KeyboardInterrupt

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
