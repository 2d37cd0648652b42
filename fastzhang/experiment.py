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
import time
from dataclasses import dataclass
from pathlib import Path

from fastzhang import __version__, results, runlog, tracking
from fastzhang.config import SPEED_SWITCHES, ExperimentConfig
from fastzhang.errors import CheckpointError, UsageError
from fastzhang.lock import ExperimentLock
from fastzhang.log import info
from fastzhang.provenance import provenance
from fastzhang.runlog import RunLog
from fastzhang.stop import stop_signals


@dataclass(frozen=True)
class RunOptions:
    checkpoint_dir: Path = Path("checkpoints")
    results_dir: Path = Path("results")
    force: bool = False
    resume_from: Path | None = None
    resume_payload: dict | None = None  # the --resume-from file, when the caller has already read it
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
    # Refuse bad input before anything is written, a completed experiment's included.
    _refuse_bad_settings(cfg, opts)
    given = _load_resume_file(cfg, opts) if opts.resume_from else None
    if given is not None:
        from fastzhang.train import state
    # A completed experiment trains again only with --force, or from a --resume-from checkpoint that has
    # epochs left (a snapshot, or an extension to more epochs).
    check_done = not opts.force and (given is None or state.finished(given, cfg))
    if check_done:
        done = _completed(opts, eid)
        if done:
            return done

    from fastzhang.data.sources import load_dataset

    arrays = load_dataset(cfg.dataset, cfg.data_dir)
    from fastzhang import checkpoint  # imports torch: only once the run will really start
    from fastzhang.train import state

    if given is not None:
        state.check_data(given, arrays.fingerprint, arrays.source)
    wandb = tracking.import_wandb() if cfg.use_wandb else None
    prepared = _prepare(cfg, arrays)  # device, train_subset, loader: refused here, before the lock file

    with ExperimentLock(opts.checkpoint_dir, eid):
        if check_done:
            done = _completed(opts, eid, report=False)  # finished by another process while we loaded data
            if done:
                return done
        _remove_stale_temporaries(opts, eid)
        latest = checkpoint.latest_path(opts.checkpoint_dir, eid)
        notes: list[str] = []  # a .prev fallback's warning, for the terminal and the run's log
        if given is not None:
            start = given
        elif opts.force:
            start = None
        else:
            found = checkpoint.load_latest(latest, warn=notes.append)
            start = state.check_resumable(found[0], cfg, found[1]) if found else None
            if start is not None:
                state.check_data(start, arrays.fingerprint, arrays.source)
        return _train(cfg, opts, arrays, prepared, start, wandb, latest, notes)


def _refuse_bad_settings(cfg: ExperimentConfig, opts: RunOptions) -> None:
    """What can be refused without loading data: output folders, a named data folder, a CUDA device."""
    for flag, folder in (("--checkpoint-dir", opts.checkpoint_dir), ("--results-dir", opts.results_dir)):
        if Path(folder).exists() and not Path(folder).is_dir():
            raise UsageError(f"{flag} {folder}: not a folder")
    if cfg.dataset != "synthetic":
        from fastzhang.data import cifar, download

        download.refuse_missing_named_folder(download.resolve_data_dir(cfg.data_dir), cfg.data_dir,
                                             cifar.SPECS[cfg.dataset])
    if cfg.device.startswith("cuda"):  # needs torch, so only when CUDA is asked for by name
        from fastzhang.train.fastpath import resolve_device

        resolve_device(cfg.device)


def _completed(opts: RunOptions, eid: str, report: bool = True) -> Outcome | None:
    found = results.find_completed(opts.results_dir, eid, report=report)
    if found is None:
        return None
    path, payload = found
    from fastzhang import checkpoint  # names only: no torch

    latest = checkpoint.latest_path(opts.checkpoint_dir, eid)
    if latest.exists() and latest.stat().st_mtime > path.stat().st_mtime:
        return None  # a --force run started since and was stopped: resume it, as its stop message says
    return Outcome("already_completed", eid, path, payload)


def _load_resume_file(cfg: ExperimentConfig, opts: RunOptions) -> dict:
    from fastzhang.train import state

    if opts.force:
        raise UsageError("--force trains from epoch 1 and --resume-from continues a checkpoint: give one of them "
                         "(--resume-from alone trains a completed experiment again from that checkpoint)")
    payload = opts.resume_payload if opts.resume_payload is not None else read_resume_file(opts.resume_from)
    return state.check_resumable(payload, cfg, Path(opts.resume_from))


def resume_settings(payload: dict, path: Path) -> dict:
    """The settings stored in a --resume-from checkpoint: what `run --resume-from PATH` alone continues."""
    from fastzhang.train import state

    return state.stored_config(payload, Path(path)).to_dict()


def read_resume_file(path: Path) -> dict:
    """The verified payload of a --resume-from file; refused with one line (exit 2, or 4 if damaged)."""
    from fastzhang import checkpoint

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume-from {path}: no such checkpoint file")
    try:
        payload = checkpoint.load(path)
    except checkpoint.CheckpointCorrupt as e:
        # A damaged checkpoint (e.g. a snapshot) is exit 4 like any unusable checkpoint; a
        # file that never was one (empty, foreign, an exploit) is bad input.
        error = CheckpointError if e.was_ours else UsageError
        raise error(f"--resume-from {path}: {e.reason}") from None
    return payload


# ------------------------------------------------------------------------------------------


def _remove_stale_temporaries(opts: RunOptions, eid: str) -> None:
    """Delete `.tmp` files that a killed writer of this experiment left behind: under the lock every such file
    is garbage, and a run preempted again and again inside its checkpoint writes would fill the disk with them."""
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


def _prepare(cfg: ExperimentConfig, arrays) -> tuple:
    """(data on the device, speed switches, loader): what training needs besides the checkpoint. Built before
    the lock is taken, so a bad device, subset or loader is refused with nothing written."""
    from fastzhang.data.batches import ResidentData
    from fastzhang.train.fastpath import activate_device, resolve_device, resolve_speed
    from fastzhang.train.loaders import make_loader

    device = resolve_device(cfg.device)
    activate_device(device)
    data = ResidentData.build(
        arrays, randomization=cfg.randomization, corrupt_prob=cfg.corrupt_prob, seed=cfg.effective_data_seed,
        train_subset=cfg.train_subset, device=device,
    )
    speed = resolve_speed(cfg, device, train_images=data.train_x.shape[0])
    loader = make_loader(cfg.loader, data, cfg.batch_size, dtype=speed.input_dtype,
                         channels_last=speed.channels_last)
    return data, speed, loader


def _train(cfg: ExperimentConfig, opts: RunOptions, arrays, prepared: tuple, start: dict | None, wandb,
           latest: Path, notes: list[str]) -> Outcome:
    from fastzhang import checkpoint
    from fastzhang.train import engine, state

    data, speed, loader = prepared
    log = RunLog(checkpoint.log_path(opts.checkpoint_dir, cfg.experiment_id), quiet=opts.quiet)
    for note in notes:
        log.warning(note)
    run = _start_run(cfg, data.device, speed, start, log)
    best = checkpoint.best_path(opts.checkpoint_dir, cfg.experiment_id)
    tracker = tracking.start(wandb, cfg, run.wandb_run_id, say=log.say, warn=log.warning) if wandb else None
    if tracker:
        run.wandb_run_id = tracker.run_id  # kept in the checkpoint so a resume continues the same W&B run
    news = _News(cfg, log, tracker, first_epoch=run.epoch)
    if loader.fallback:
        news.fallback("loader", loader.fallback)

    def save(mid_epoch: bool) -> None:  # called only inside `with stop_signals(...) as stop` below
        payload = state.to_payload(run, cfg, arrays.fingerprint)
        with stop.holding():
            # best is written before latest: a crash between them re-runs the epoch
            copies = [best] if state.is_best(run, mid_epoch) else []
            if not mid_epoch and _snapshot_due(cfg, run):
                copies.append(checkpoint.snapshot_path(opts.checkpoint_dir, cfg.experiment_id, run.epoch))
            checkpoint.save(payload, latest, copy_to=copies)

    # SIGTERM / SIGINT: finish the step, checkpoint and exit 143 / 130; a second signal insists
    with stop_signals(interrupt_on_second=True) as stop:
        def stop_requested() -> bool:  # checked after every step and every evaluation batch
            if stop.signum is not None and not news.stopping:
                news.stopping = f"{cfg.experiment_id}: {signal.Signals(stop.signum).name}: stopping: checkpoint " \
                                "after this step"
                info(news.stopping)  # at once, even under --quiet: it answers the user
                if not log.stderr_is_log:
                    log.write(news.stopping)
            return stop.signum is not None

        hooks = engine.Hooks(save=save, stop_requested=stop_requested, on_epoch=news.epoch,
                             # a progress bar only on a terminal: in a job's log file it is one line per step
                             on_fallback=news.fallback, quiet=opts.quiet or not sys.stderr.isatty())
        if start is None:
            save(False)  # epoch 0: `status` sees the run, and a --force restart supersedes the old checkpoint
        if not engine.train(cfg, run, data, loader, speed, hooks):
            news.stopped(run, stop.signum)
            raise Interrupted(stop.signum, latest)
    used = provenance(data.device, arrays.source)
    payload = _results_payload(cfg, run, arrays, used["device_name"])
    payload["execution"] = {**_execution(data.device, speed, loader, news.fallbacks), **used}
    path = results.write(opts.results_dir, payload)
    news.completed(run, payload, path)
    return Outcome("trained", cfg.experiment_id, path, payload)


class _News:
    """Where a run's news goes: stderr and its log, W&B, and the fallbacks for the results file."""

    def __init__(self, cfg: ExperimentConfig, log: RunLog, tracker, first_epoch: int):
        self.cfg, self.log, self.tracker = cfg, log, tracker
        self.fallbacks: list[dict] = []
        self.stopping = ""  # the acknowledgement of a stop request, once said
        self.began = (first_epoch, time.monotonic())  # wall time per epoch, evaluation and checkpoints included

    def fallback(self, switch: str, reason: str) -> None:
        self.fallbacks.append({"switch": switch, "reason": reason})
        self.log.warning(f"{self.cfg.experiment_id}: {switch} failed ({reason}); {_FALLBACK_TO[switch]}")

    def epoch(self, row: dict) -> None:
        if self.tracker:
            self.tracker.log(row)
        first, since = self.began
        per_epoch = (time.monotonic() - since) / max(row["epochs"] - first, 1)
        self.log.say(runlog.epoch_line(self.cfg.experiment_id, row, self.cfg.epochs, per_epoch))

    def stopped(self, run, signum: int) -> None:
        if self.tracker:
            self.tracker.finish(exit_code=1)
        self.log.write(f"{self.cfg.experiment_id}: stopped by {signal.Signals(signum).name} after epoch {run.epoch}"
                       + (f", step {run.step_in_epoch}" if run.step_in_epoch else "") + "; checkpoint saved")

    def completed(self, run, payload: dict, path: Path) -> None:
        self.log.write(runlog.completed_line(payload, path))
        if self.tracker:
            self.tracker.finish(exit_code=0, summary=payload["metrics"])


def _snapshot_due(cfg: ExperimentConfig, run) -> bool:
    """--snapshot-every N: after every Nth epoch, and after the last one however the run ends."""
    from fastzhang.train import engine

    every = cfg.snapshot_every
    return bool(every) and run.epoch > 0 and (run.epoch % every == 0 or engine.finished(cfg, run))


def _start_run(cfg: ExperimentConfig, device, speed, start: dict | None, log: RunLog):
    """A fresh Run, or one restored from `start`, announced on stderr and in the log."""
    from fastzhang.train import engine, state

    run = engine.build_run(cfg, device, speed)
    on = ", ".join(name for name in SPEED_SWITCHES if getattr(speed, name))
    why = f"; {speed.why_compile}" if speed.why_compile else ""
    what = f"{runlog.describe(cfg)}; on {device} ({'fast path: ' + on if on else 'fp32 eager'}){why}; log {log.path}"
    if start is None:
        log.say(f"{cfg.experiment_id}: starting: {what}")
        return run
    state.restore(run, start)
    source = start.get("experiment_id")
    if engine.finished(cfg, run):  # the results file was deleted: recovery, not a re-run
        log.say(f"{cfg.experiment_id}: results missing: rewritten from the final checkpoint, nothing retrained")
    elif source != cfg.experiment_id:  # --resume-from with another --epochs: the schedule makes it exact
        run.wandb_run_id = None  # another experiment: its own W&B run
        log.say(f"{cfg.experiment_id}: continuing {source} after epoch {run.epoch}: {what}")
    else:
        log.say(f"{cfg.experiment_id}: resuming after epoch {run.epoch}"
                + (f", step {run.step_in_epoch}" if run.step_in_epoch else "") + f": {what}")
    return run


# What a run does instead when a faster path fails (TrainStep, loaders.make_loader).
_FALLBACK_TO = {
    "cuda_graphs": "continuing without CUDA graphs (eager steps)",
    "compile": "continuing without torch.compile",
    "loader": "continuing with the torch loader",
}


def _execution(device, speed, loader, fallbacks: list[dict]) -> dict:
    """How this session trained: the switches still on after any fallback, and the loader used."""
    off = {f["switch"] for f in fallbacks}
    switches = {name: getattr(speed, name) and name not in off for name in SPEED_SWITCHES}
    switches["compile_kernels"] = speed.compile_kernels and "compile" not in off  # compile's CPU form
    return {"device": str(device), "switches": switches, "loader": loader.name, "fallbacks": list(fallbacks)}


def _results_payload(cfg: ExperimentConfig, run, arrays, device_name: str) -> dict:
    import torch

    from fastzhang.train.engine import end_cause

    m = run.metrics
    cause = end_cause(cfg, run)
    seconds = sum(m["epoch_seconds"])
    images = sum(r * s for r, s in zip(m["images_per_second"], m["epoch_seconds"]) if r == r)
    return {
        "schema_version": results.SCHEMA_VERSION,
        "experiment_id": cfg.experiment_id,
        "config": {**cfg.to_dict(), "lr": cfg.effective_lr, "data_seed": cfg.effective_data_seed},
        "metrics": {
            **{k: list(v) for k, v in m.items()},
            "best_test_acc": run.best_test_acc,
            "best_epoch": results.best_epoch(m["epochs"], m["test_acc"]),
            "final_train_acc": m["train_acc"][-1] if m["train_acc"] else None,
            "final_test_acc": m["test_acc"][-1] if m["test_acc"] else None,
            "fit_epoch": run.fit_epoch,
            "fit_step": run.fit_step,
            "early_stop_epoch": run.epoch if cause == "early_stopping" else None,
        },
        "timestamp": time.strftime("%Y%m%d_%H%M%S"),
        "completed": True,
        "total_epochs": run.epoch,
        "target_epochs": cfg.epochs,
        "stopped_early": cause in ("fit", "early_stopping"),
        "data_fingerprint": arrays.fingerprint,
        "data_fingerprint_name": arrays.fingerprint_name,
        "environment": {
            "fastzhang": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "device": device_name,
            "platform": platform.platform(),
            "hostname": platform.node(),
            "pid": os.getpid(),
        },
        "throughput": {
            "mean_images_per_second": images / seconds if seconds > 0 else None,
            "train_seconds": seconds,
        },
    }

