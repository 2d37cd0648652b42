"""What each task of a batch would do, and how long the batch has left.

`intents` reads, without writing anything, where every task stands: completed (a results
file says so), busy elsewhere (its lock is held), resumable at some epoch (a verified
checkpoint), or new. An estimate is the epochs left times the epoch times measured for the
same model, data set, training subset and device kind, divided among the runs at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median

from fastzhang.batch.plan import BatchOptions, Task
from fastzhang.runlog import duration

RUN, RESUME, SKIP, BUSY, FAIL = "run", "resume", "skip", "busy", "fail"


@dataclass(frozen=True)
class Intent:
    task: Task
    action: str  # RUN | RESUME | SKIP | BUSY | FAIL
    epoch: int = 0  # epochs already done (RESUME)
    steps: int = 0  # steps into the next epoch (RESUME)
    epoch_times: tuple = ()  # the seconds of each epoch its checkpoint records (epoch_times)
    why: str = ""  # FAIL: what would refuse the run

    @property
    def epochs_left(self) -> int:
        return 0 if self.action in (SKIP, BUSY, FAIL) else self.task.config.epochs - self.epoch

    def describe(self) -> str:
        epochs = self.task.config.epochs
        if self.action == SKIP:
            return "skip: already completed"
        if self.action == BUSY:
            return "busy elsewhere: another process holds its lock"
        if self.action == FAIL:
            return f"would fail: {self.why}"
        if self.action == RESUME:
            return f"resume after epoch {self.epoch} of {epochs}" + (f" (+{self.steps} steps)" if self.steps else "")
        return f"run from scratch: {epochs} epoch(s)"


def intents(tasks: list[Task], opts: BatchOptions, *, ours: bool = False) -> list[Intent]:
    """Where each task stands now; reads results, locks and checkpoints (each once), writes nothing.
    `ours`: the batch runs these itself right now, so a held lock is its own run's."""
    from fastzhang import checkpoint, lock, results
    from fastzhang.train.state import progress

    out = []
    for task in tasks:
        eid = task.experiment_id
        if not opts.force and results.find_completed(opts.results_dir, eid, report=False):
            out.append(Intent(task, SKIP))  # its epoch times are in its results file
            continue
        payload = checkpoint.inspect_latest(checkpoint.latest_path(opts.checkpoint_dir, eid))[0]
        seen = progress(payload) if payload is not None else None
        times = tuple(epoch_times(seen.metrics)) if seen else ()
        if not ours and lock.is_held(opts.checkpoint_dir, eid):
            out.append(Intent(task, BUSY, epoch_times=times))
        elif not opts.force and seen is not None and seen.epoch is not None and (seen.epoch or seen.step_in_epoch):
            out.append(Intent(task, RESUME, seen.epoch, seen.step_in_epoch, times))
        else:
            out.append(Intent(task, RUN, epoch_times=times))
    return out


def refusal(task: Task, gpus_visible: bool | None) -> tuple[str | None, str | None]:
    """(why the run would be refused, a note on its data), known without loading anything: a CUDA device
    where none is visible (`gpus_visible` None: a Ray cluster's, unknown), a data folder named but missing
    or holding the other data set; absent data is a note (the run downloads it)."""
    from fastzhang.data import download
    from fastzhang.data.cifar import SPECS
    from fastzhang.errors import DataError

    cfg = task.config
    if cfg.device.startswith("cuda") and gpus_visible is False:
        return f"device {cfg.device!r} requested but CUDA is not available on this machine", None
    if cfg.dataset not in SPECS:  # synthetic: made in memory
        return None, None
    spec, root = SPECS[cfg.dataset], download.resolve_data_dir(cfg.data_dir)
    if download.locate(root, spec) is not None:
        return None, None
    try:
        download.refuse_other_data_set(root, spec)
        download.refuse_missing_named_folder(root, cfg.data_dir, spec)
    except DataError as e:
        return str(e), None
    return None, f"no {spec.title} in {root}: each run of it would download it first ({download.official(spec)[0]})"


def _kind_key(config: dict, kind: str) -> tuple:
    return config.get("model"), config.get("dataset"), config.get("train_subset"), kind


class EpochClock:
    """Median seconds per epoch for each (model, data set, subset, device kind) seen so far: the training
    and test seconds of each epoch (results files, checkpoints) or, better, a running batch's wall time per
    epoch of its own finished runs (`finished`: it counts checkpoints and start-up too). `time_left` reads
    where every task stands once, at its first call (a queued checkpoint does not change)."""

    def __init__(self, gpus_visible: bool, opts: BatchOptions | None = None, at_once: int = 1):
        self.gpus_visible, self.opts, self.at_once = gpus_visible, opts, at_once
        self.seconds: dict[tuple, list[float]] = {}
        self.wall: dict[tuple, list[float]] = {}
        self.plan: dict[str, Intent] | None = None  # time_left's first reading
        self.began: dict[str, float] = {}  # time.monotonic() when the batch first saw a task running

    def add(self, config: dict, kind: str, times: list) -> None:
        if times:
            self.seconds.setdefault(_kind_key(config, kind), []).extend(times)

    def add_results(self, results_dir: Path) -> None:
        from fastzhang import results

        for entry in results.scan(results_dir):
            if entry.payload is not None:
                self.add(entry.payload["config"], _recorded_kind(entry.payload),
                         epoch_times(entry.payload["metrics"]))

    def add_intents(self, plan: list[Intent]) -> None:
        """The epoch times of the checkpoints `intents` read (none read twice)."""
        for intent in plan:
            self.add(intent.task.config.to_dict(), self.kind(intent.task), list(intent.epoch_times))

    def kind(self, task: Task) -> str:
        """"cuda" or "cpu" for a task's `device` ("auto" follows the GPUs the batch sees)."""
        device = task.config.device
        return "cuda" if device.startswith("cuda") or (device == "auto" and self.gpus_visible) else "cpu"

    def epoch_seconds(self, task: Task) -> float | None:
        key = _kind_key(task.config.to_dict(), self.kind(task))
        times = self.wall.get(key) or self.seconds.get(key)
        return median(times) if times else None

    def seconds_left(self, todo: list[Intent], at_once: int) -> tuple[float, int]:
        """(estimated seconds for `todo` with `at_once` runs in parallel, tasks without an estimate)."""
        total, unknown = 0.0, 0
        for intent in todo:
            per_epoch = self.epoch_seconds(intent.task)
            if per_epoch is None:
                unknown += intent.epochs_left > 0
            else:
                total += intent.epochs_left * per_epoch
        return total / max(1, at_once), unknown

    def finished(self, task: Task, seconds: float) -> None:
        """The batch's run of `task` ended after `seconds`: its results file's epochs and its wall time."""
        from fastzhang import results

        found = results.find_completed(self.opts.results_dir, task.experiment_id, report=False)
        if found is None:
            return
        config, kind = task.config.to_dict(), self.kind(task)
        self.add(config, kind, epoch_times(found[1]["metrics"]))
        intent = (self.plan or {}).get(task.experiment_id)
        epochs = found[1]["total_epochs"] - (intent.epoch if intent else 0)
        if epochs > 0:
            self.wall.setdefault(_kind_key(config, kind), []).append(seconds / epochs)

    def time_left(self, queued: list[Task], running: list[Task]) -> str:
        """The running batch's time left; a running run's estimate shrinks by the time it has run."""
        import time

        if self.plan is None:
            first = intents(queued, self.opts) + intents(running, self.opts, ours=True)
            self.plan = {intent.task.experiment_id: intent for intent in first}
            self.add_results(self.opts.results_dir)
            self.add_intents(first)
        now = time.monotonic()
        for task in running:
            self.began.setdefault(task.experiment_id, now)
        todo = [self.plan.get(t.experiment_id) or Intent(t, RUN) for t in queued + running]
        seconds, unknown = self.seconds_left(todo, 1)
        seconds -= sum(now - self.began[t.experiment_id] for t in running if self.epoch_seconds(t))
        return time_left_text(max(0.0, seconds) / max(1, self.at_once), unknown)


def epoch_times(metrics: dict) -> list[float]:
    """Seconds each finished epoch took: its training plus its test evaluation where recorded
    (eval_seconds; files written before it count training alone)."""
    tested = metrics.get("eval_seconds") or []
    return [t + (tested[i] if i < len(tested) and _seconds(tested[i]) else 0.0)
            for i, t in enumerate(metrics.get("epoch_seconds") or []) if _seconds(t)]


def _seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _recorded_kind(payload: dict) -> str:
    """The device kind a results file was trained on (files before `execution` name the GPU model)."""
    execution = payload.get("execution")
    if isinstance(execution, dict) and isinstance(execution.get("device"), str):
        return "cuda" if execution["device"].startswith("cuda") else "cpu"
    named = str(payload.get("environment", {}).get("device", ""))
    return "cuda" if "nvidia" in named.lower() or payload["config"].get("device", "").startswith("cuda") else "cpu"


def time_left_text(seconds: float, unknown: int) -> str:
    if unknown and not seconds:
        return f"no time estimate yet ({unknown} run(s) of kinds with no epoch measured)"
    text = f"about {duration(seconds)} left"
    return text + (f" (+{unknown} run(s) with no epoch time yet)" if unknown else "")
