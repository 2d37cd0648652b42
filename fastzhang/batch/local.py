"""The local backend: a pool of `fastzhang run` processes on this machine.

Each run is its own process, so a crash, an out-of-memory kill or a bad recipe ends one
run and nothing else, and every guarantee of `run` holds unchanged. With GPUs, each run
sees one GPU through CUDA_VISIBLE_DEVICES and up to K runs share a GPU; without, N runs
share the cores with cores // N threads each. Runs start in their own session: a Ctrl-C
reaches the batch only, which passes each signal on to every run once (in the terminal's
process group a run would get it twice, and a second signal makes `run` give up without
finishing its checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fastzhang import checkpoint, results, runlog
from fastzhang.batch.plan import (
    BUSY, EXIT_LOCK_HELD, FAILED, RAN, SKIPPED, STOPPED, BatchOptions, BatchReport, Progress, RunResult, Task,
    check_limits, pinned_device, split_completed,
)
from fastzhang.batch.estimate import EpochClock
from fastzhang.stop import stop_signals

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_POLL_SECONDS = 0.1


@dataclass
class _Running:
    task: Task
    proc: subprocess.Popen
    log: IO[bytes]  # the experiment's own log (checkpoint.log_path), opened for appending
    log_start: int  # where this run's output begins in it
    gpu: str | None
    started: float
    output: str = ""


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (index or UUID)."""
    import torch

    count = torch.cuda.device_count()  # NVML when available: no CUDA context in the parent
    if count == 0:
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    tokens = [t.strip() for t in given.split(",") if t.strip()] if given else []
    return tokens[:count] if tokens else [str(i) for i in range(count)]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def capacity(gpus: list[str], runs_per_gpu: int, max_parallel: int | None) -> int:
    """How many runs at once: K per GPU (capped by --max-parallel), else --max-parallel (default 1)."""
    check_limits(runs_per_gpu, max_parallel)
    return min(len(gpus) * runs_per_gpu, max_parallel or len(gpus) * runs_per_gpu) if gpus else max_parallel or 1


def chosen_threads(env: dict[str, str]) -> str | None:
    """The thread count the user set, as torch reads it: MKL_NUM_THREADS wins over OMP_NUM_THREADS."""
    return env.get("MKL_NUM_THREADS") or env.get("OMP_NUM_THREADS") or None


def worker_env(base: dict[str, str], *, gpu: str | None, threads: int) -> dict[str, str]:
    """The child's environment: its one GPU, and the user's thread count (else `threads`) in both
    variables, so torch, which follows MKL's when set, uses the count the batch announced."""
    env = {**base, **dict.fromkeys(THREAD_VARS, chosen_threads(base) or str(threads))}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def run_command(task: Task, opts: BatchOptions, *, pinned: bool) -> list[str]:
    cmd = [sys.executable, "-m", "fastzhang", "run", "--config", str(task.recipe), "--seed", str(task.config.seed),
           "--quiet", "--checkpoint-dir", str(opts.checkpoint_dir), "--results-dir", str(opts.results_dir)]
    if task.config.data_dir is not None:
        cmd += ["--data-dir", task.config.data_dir]
    if pinned and (device := pinned_device(task.config)):
        cmd += ["--device", device]
    if task.config.use_wandb:
        cmd.append("--use_wandb")
    if opts.force:
        cmd.append("--force")
    return cmd


def run_local(tasks: list[Task], opts: BatchOptions, *, runs_per_gpu: int = 1, max_parallel: int | None = None,
              gpus: list[str] | None = None) -> BatchReport:
    """Run `tasks` with the pool; `gpus` (CUDA_VISIBLE_DEVICES entries) defaults to those visible."""
    todo, skipped = split_completed(tasks, opts.results_dir, opts.force)
    report = BatchReport(len(tasks), list(skipped))
    if not todo:
        return report
    gpus = visible_gpus() if gpus is None else gpus
    slots = capacity(gpus, runs_per_gpu, max_parallel)  # checks the limits
    threads = max(1, usable_cores() // slots)
    queue: deque[Task] = deque(todo)
    running: list[_Running] = []

    clock = None if opts.quiet else EpochClock(bool(gpus), opts, slots)  # only shown without --quiet

    def time_left() -> str:
        return clock.time_left(list(queue), [r.task for r in running])

    progress = Progress(len(todo), opts.quiet, time_left=time_left if clock else None)
    shown = chosen_threads(dict(os.environ)) or threads  # what worker_env gives every run
    where = f"{len(gpus)} GPU(s), up to {runs_per_gpu} per GPU" if gpus else f"CPU, {shown} thread(s) each"
    progress.note(f"batch: {len(tasks)} experiment(s), {len(skipped)} already completed, "
                  f"{len(todo)} to run, up to {slots} at once ({where})")
    if clock:
        progress.note(f"batch: {time_left()}")

    def pass_on(signum: int) -> None:
        for r in running:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(r.proc.pid, signum)

    with stop_signals(on_signal=pass_on) as stop:
        while running or (queue and stop.signum is None):
            while queue and stop.signum is None and len(running) < slots:
                load = {g: sum(r.gpu == g for r in running) for g in gpus}
                gpu = min(gpus, key=load.get) if gpus else None  # the least loaded GPU, if it has room
                if gpus and load[gpu] >= runs_per_gpu:
                    break
                task = queue.popleft()
                running.append(_launch(task, opts, gpu, threads))
                progress.start(task, f"GPU {gpu}" if gpu is not None else "")
            time.sleep(_POLL_SECONDS)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                result = _finished(r, stop.signum, opts)
                if clock and result.status == RAN:
                    clock.finished(r.task, result.seconds)
                if not progress.quiet or result.status == FAILED:  # the run's own lines, prefixed with its ID
                    for line in filter(str.strip, r.output.splitlines()):
                        progress.out(f"[{r.task.experiment_id}] {line}")
                progress.finish(result, len(running))
        report.stop_signal = stop.signum
    report.results += progress.results
    return report


def _launch(task: Task, opts: BatchOptions, gpu: str | None, threads: int) -> _Running:
    # The run's own output (warnings, errors, how it ended) joins its epoch lines in the experiment's
    # log, where `tail -f` and `fastzhang status ID` find it; both append, so neither overwrites the other.
    path = checkpoint.log_path(opts.checkpoint_dir, task.experiment_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "ab")
    proc = subprocess.Popen(
        run_command(task, opts, pinned=gpu is not None), env=worker_env(dict(os.environ), gpu=gpu, threads=threads),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return _Running(task, proc, log, log.tell(), gpu, time.monotonic())


def _finished(r: _Running, stop_signal: int | None, opts: BatchOptions) -> RunResult:
    r.log.close()
    with open(r.log.name, "rb") as f:  # what the run printed, without the epoch lines its log gained meanwhile
        f.seek(r.log_start)
        r.output = runlog.printed(f.read().decode("utf-8", "replace"))
    code = r.proc.returncode
    seconds = time.monotonic() - r.started
    where = f"GPU {r.gpu}" if r.gpu is not None else ""
    if code == 0:
        status = RAN if trained_by(opts.results_dir, r.task.experiment_id, r.proc.pid) else SKIPPED
        return RunResult(r.task, status, 0, seconds=seconds, where=where)
    if code == EXIT_LOCK_HELD:
        return RunResult(r.task, BUSY, code, seconds=seconds, where=where)
    if code < 0:  # killed by a signal: report it as the shell does (128 + signal)
        code = 128 - code
    if stop_signal is not None and code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return RunResult(r.task, STOPPED, code, seconds=seconds, where=where)
    lines = [line.strip() for line in r.output.splitlines() if line.strip()]
    errors = [line.removeprefix("fastzhang: error:").strip() for line in lines if line.startswith("fastzhang: error:")]
    return RunResult(r.task, FAILED, code, detail=(errors or lines or [""])[-1], seconds=seconds, where=where)


def trained_by(results_dir: Path, experiment_id: str, pid: int) -> bool:
    """Whether the run `pid` (on this host), which exited 0, trained the experiment: it exits 0 also when it
    found it completed, and then the newest completed results file (if any is left) names another writer."""
    found = results.find_completed(results_dir, experiment_id, report=False)
    if found is None:
        return True
    writer = found[1]["environment"]
    return writer.get("pid") == pid and writer.get("hostname") == platform.node()
