"""The Ray backend: each experiment is a Ray task on an existing cluster or a local instance.

Ray places the tasks (1/K of a GPU each, or one CPU) and retries a task whose worker died
(SIGKILL, OOM kill, lost node): every task calls `run_experiment`, which skips a completed
experiment, resumes from the last checkpoint and holds the experiment's lock, so a retry
continues where the dead worker stopped. Our own failures (FastZhangError) are answers the
task returns, never retried. A retry can find the lock still held by the attempt it
replaces (on NFS until the dead client's lease expires): it waits up to LOCK_GRACE_SECONDS.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections import deque
from pathlib import Path

from fastzhang.batch.plan import (
    BUSY, EXIT_LOCK_HELD, FAILED, RAN, SKIPPED, STOPPED, BatchOptions, BatchReport, Progress, RunResult, Task,
    check_limits, pinned_device, split_completed,
)
from fastzhang.batch.local import chosen_threads
from fastzhang.errors import UsageError, one_line
from fastzhang.stop import stop_signals

MAX_RETRIES = 3  # attempts after a worker died
LOCK_GRACE_SECONDS = 30.0
_WAIT_SECONDS = 0.5
_STOP_WAIT_SECONDS = 120.0  # how long stopped runs get to checkpoint before the driver leaves


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--backend ray needs the ray package: pip install 'fastzhang[ray]'") from None
    return ray


def run_task(config: dict, checkpoint_dir: str, results_dir: str, force_mark: str | None,
             lock_grace_s: float = LOCK_GRACE_SECONDS, threads: str | None = None) -> dict:
    """Run one experiment; returns {status, exit_code, detail, results_path, pid, host}. `threads`: the count
    the user set on the driver (a worker's environment is Ray's, 1 thread per CPU)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from fastzhang.config import ExperimentConfig
    from fastzhang.errors import FastZhangError, LockHeld
    from fastzhang.experiment import Interrupted, RunOptions, run_experiment
    from fastzhang.lock import ExperimentLock

    answer = {"pid": os.getpid(), "host": platform.node(), "results_path": None, "detail": ""}
    try:
        cfg = ExperimentConfig.from_mapping(config, source="batch task")
        eid = cfg.experiment_id
        force = force_mark is not None and not _started_since(Path(force_mark), Path(checkpoint_dir),
                                                               Path(results_dir), eid)
        opts = RunOptions(checkpoint_dir=Path(checkpoint_dir), results_dir=Path(results_dir), force=force, quiet=True)
        deadline = time.monotonic() + lock_grace_s
        while True:
            try:
                # Probe by taking the lock for a moment (on NFS an exclusive flock needs a file open for
                # writing) before run_experiment loads anything; it may still be taken in between.
                with ExperimentLock(Path(checkpoint_dir), eid):
                    pass
                outcome = run_experiment(cfg, opts)
                break
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_WAIT_SECONDS)
    except Interrupted as e:
        return {**answer, "status": STOPPED, "exit_code": e.exit_code, "detail": str(e)}
    except FastZhangError as e:
        status = BUSY if e.exit_code == EXIT_LOCK_HELD else FAILED
        return {**answer, "status": status, "exit_code": e.exit_code, "detail": str(e)}
    status = RAN if outcome.status == "trained" else SKIPPED
    return {**answer, "status": status, "exit_code": 0, "results_path": str(outcome.results_path)}


def _started_since(mark: Path, checkpoint_dir: Path, results_dir: Path, eid: str) -> bool:
    """Whether this batch already (re)started the experiment, so a retry must not --force again.
    Comparing mtimes with `mark`'s on the same file system keeps the machines' clocks out of it."""
    from fastzhang import checkpoint, results

    try:
        since = mark.stat().st_mtime
    except FileNotFoundError:
        return False
    ours = [checkpoint.latest_path(checkpoint_dir, eid), *results.files_for(results_dir, eid)]
    return any(p.exists() and p.stat().st_mtime >= since for p in ours)


def task_config(task: Task) -> dict:
    """The task's config with paths the workers can use: absolute, relative to this directory."""
    values = task.config.to_dict()
    if task.config.dataset != "synthetic":  # CIFAR-10 and CIFAR-100 alike
        from fastzhang.data.download import resolve_data_dir

        values["data_dir"] = str(resolve_data_dir(task.config.data_dir).resolve())
    device = pinned_device(task.config)
    if device:
        values["device"] = device
    return values


def gpu_fraction(runs_per_gpu: int) -> float:
    """1/K, rounded down to Ray's resource precision (1e-4) so that K tasks fit on one GPU."""
    return int(10_000 / runs_per_gpu) / 10_000


def run_ray(tasks: list[Task], opts: BatchOptions, *, address: str | None = None, runs_per_gpu: int = 1,
            max_parallel: int | None = None) -> BatchReport:
    """Run `tasks` as Ray tasks; joins a running Ray (this process's, `address`) or starts a local one."""
    check_limits(runs_per_gpu, max_parallel)
    ray = import_ray()
    ckpt_dir, res_dir = opts.checkpoint_dir.resolve(), opts.results_dir.resolve()
    opts = BatchOptions(ckpt_dir, res_dir, opts.force, opts.quiet)
    todo, skipped = split_completed(tasks, res_dir, opts.force)
    report = BatchReport(len(tasks), list(skipped))
    if not todo:
        return report
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    mark = None
    if opts.force:  # touched when the batch began: a retry that finds newer files must not --force again
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        mark = ckpt_dir / f".fastzhang-batch-{uuid.uuid4().hex}.started"
        mark.touch()
    try:
        report.results += _drive(ray, todo, opts, mark, runs_per_gpu, max_parallel, report)
    finally:
        if mark is not None:
            mark.unlink(missing_ok=True)
        if started_here:
            ray.shutdown()
    return report


def _drive(ray, todo: list[Task], opts: BatchOptions, mark: Path | None, runs_per_gpu: int,
           max_parallel: int | None, report: BatchReport) -> list[RunResult]:
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    threads = chosen_threads(dict(os.environ))
    remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(run_task)
    progress = Progress(len(todo), opts.quiet, running="in flight (running or queued)")
    progress.note(f"batch on Ray: {report.total} experiment(s), {report.total - len(todo)} already completed, "
                  f"{len(todo)} to run ({'1/' + str(runs_per_gpu) + ' GPU' if has_gpus else '1 CPU'}"
                  f"{', ' + threads + ' thread(s)' if threads else ''} each"
                  f"{', up to ' + str(max_parallel) + ' at once' if max_parallel else ''})")
    queue: deque[Task] = deque(todo)
    in_flight: dict = {}  # ObjectRef -> (task, monotonic start)
    cancelled = False
    with stop_signals() as stop:
        while in_flight or (queue and stop.signum is None):
            while queue and stop.signum is None and len(in_flight) < (max_parallel or len(todo)):
                task = queue.popleft()
                gpus = gpu_fraction(runs_per_gpu) if has_gpus and task.config.device != "cpu" else 0
                ref = remote.options(num_cpus=1, num_gpus=gpus, name=f"fastzhang:{task.experiment_id}").remote(
                    task_config(task), str(opts.checkpoint_dir), str(opts.results_dir),
                    str(mark) if mark else None, threads=threads)
                in_flight[ref] = (task, time.monotonic())
                progress.start(task)
            if stop.signum is not None and not cancelled:
                for ref in in_flight:
                    ray.cancel(ref)  # not forced: the run gets SIGINT, checkpoints and returns
                cancelled = True
            if stop.signum is not None and (stop.count > 1 or time.monotonic() - stop.since > _STOP_WAIT_SECONDS):
                break
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=_WAIT_SECONDS)
            for ref in done:
                task, start = in_flight.pop(ref)
                progress.finish(_collect(ray, ref, task, time.monotonic() - start, cancelled), len(in_flight))
        report.stop_signal = stop.signum
    return progress.results + [RunResult(t, STOPPED, None) for t, _ in in_flight.values()]


def _collect(ray, ref, task: Task, seconds: float, cancelled: bool) -> RunResult:
    try:
        answer = ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return RunResult(task, STOPPED, None, seconds=seconds)
    except ray.exceptions.RayError as e:  # retries used up, or a bug raised in the task
        cause = getattr(e, "cause", None) or e
        return RunResult(task, FAILED, 1, detail=one_line(cause, limit=None), seconds=seconds)
    status = answer["status"]
    if status == STOPPED and not cancelled:
        status = FAILED  # stopped by someone else's signal: not part of this batch's stop
    return RunResult(task, status, answer["exit_code"], detail=answer["detail"] if status == FAILED else "",
                     seconds=seconds, where=f"{answer['host']} pid {answer['pid']}")
