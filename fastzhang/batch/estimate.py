"""What each task of a batch would do, and how long the batch has left.

`intents` reads, without writing anything, where every task stands: completed
(a results file says so), busy elsewhere (its lock is held), resumable at some
epoch (a verified checkpoint), or new. `EpochClock` knows how long an epoch of a
kind of experiment takes, from the epoch times recorded in earlier results
files and in the checkpoints of the batch's own runs: the same model, data set,
training subset and kind of device (cpu / cuda). An estimate is a sum of epochs
left times those epoch times, divided among the runs that go at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median

from fastzhang.batch.plan import BatchOptions, Task
from fastzhang.runlog import duration

RUN, RESUME, SKIP, BUSY = "run", "resume", "skip", "busy"


@dataclass(frozen=True)
class Intent:
    task: Task
    action: str  # RUN | RESUME | SKIP | BUSY
    epoch: int = 0  # epochs already done (RESUME)
    steps: int = 0  # steps into the next epoch (RESUME)
    epoch_times: tuple = ()  # the training seconds of each epoch its checkpoint records

    @property
    def epochs_left(self) -> int:
        return 0 if self.action in (SKIP, BUSY) else self.task.config.epochs - self.epoch

    def describe(self) -> str:
        epochs = self.task.config.epochs
        if self.action == SKIP:
            return "skip: already completed"
        if self.action == BUSY:
            return "busy elsewhere: another process holds its lock"
        if self.action == RESUME:
            return f"resume after epoch {self.epoch} of {epochs}" + (f" (+{self.steps} steps)" if self.steps else "")
        return f"run from scratch: {epochs} epoch(s)"


def intents(tasks: list[Task], opts: BatchOptions, *, ours: bool = False) -> list[Intent]:
    """Where each task stands now; reads results, locks and checkpoints (each once), writes nothing.

    `ours`: the batch runs these itself right now, so a held lock is its own run's.
    """
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
        times = tuple(seen.metrics.get("epoch_seconds") or ()) if seen else ()
        if not ours and lock.is_held(opts.checkpoint_dir, eid):
            out.append(Intent(task, BUSY, epoch_times=times))
        elif not opts.force and seen is not None and seen.epoch is not None and (seen.epoch or seen.step_in_epoch):
            out.append(Intent(task, RESUME, seen.epoch, seen.step_in_epoch, times))
        else:
            out.append(Intent(task, RUN, epoch_times=times))
    return out


def device_kind(device: str, gpus_visible: bool) -> str:
    """"cuda" or "cpu" for a config's `device` ("auto" follows the GPUs the batch sees)."""
    if device == "auto":
        return "cuda" if gpus_visible else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def _kind_key(config: dict, kind: str) -> tuple:
    return config.get("model"), config.get("dataset"), config.get("train_subset"), kind


class EpochClock:
    """Median seconds per epoch for each (model, data set, subset, device kind) seen so far.

    Two sources: the training time of each epoch (`epoch_seconds` in results files and
    checkpoints), and, better where the batch has it, the wall time per epoch of its own
    finished runs (`wall`), which also counts evaluation, checkpoints and start-up.
    """

    def __init__(self, gpus_visible: bool, wall: dict[tuple, list[float]] | None = None):
        self.gpus_visible = gpus_visible
        self.seconds: dict[tuple, list[float]] = {}
        self.wall = wall or {}

    def add(self, config: dict, kind: str, epoch_seconds: list) -> None:
        times = [float(s) for s in epoch_seconds if isinstance(s, (int, float)) and s > 0]
        if times:
            self.seconds.setdefault(_kind_key(config, kind), []).extend(times)

    def add_results(self, results_dir: Path) -> None:
        from fastzhang import results

        for entry in results.scan(results_dir):
            if entry.payload is not None:
                self.add(entry.payload["config"], _recorded_kind(entry.payload),
                         entry.payload["metrics"].get("epoch_seconds", []))

    def add_intents(self, plan: list[Intent]) -> None:
        """The epoch times of the checkpoints `intents` read (none read twice)."""
        for intent in plan:
            self.add(intent.task.config.to_dict(), self.kind(intent.task), list(intent.epoch_times))

    def kind(self, task: Task) -> str:
        return device_kind(task.config.device, self.gpus_visible)

    def key(self, task: Task) -> tuple:
        return _kind_key(task.config.to_dict(), self.kind(task))

    def epoch_seconds(self, task: Task) -> float | None:
        times = self.wall.get(self.key(task)) or self.seconds.get(self.key(task))
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


class BatchClock:
    """The batch's own measurements, and its time left after each run.

    `time_left` reads results and checkpoints afresh each time (runs finish meanwhile),
    each checkpoint once, and notes the epoch each queued run will start from;
    `finished(task, seconds)` turns a run's wall time into seconds per epoch for its kind
    of experiment.
    """

    def __init__(self, opts: BatchOptions, gpus_visible: bool, at_once: int):
        self.opts, self.gpus_visible, self.at_once = opts, gpus_visible, at_once
        self.wall: dict[tuple, list[float]] = {}
        self.started_at: dict[str, int] = {}  # a queued checkpoint does not change: its epoch is where it starts

    def finished(self, task: Task, seconds: float) -> None:
        from fastzhang import results

        found = results.find_completed(self.opts.results_dir, task.experiment_id, report=False)
        epochs = found[1]["total_epochs"] - self.started_at.get(task.experiment_id, 0) if found else 0
        if epochs > 0:
            kind = device_kind(task.config.device, self.gpus_visible)
            self.wall.setdefault(_kind_key(task.config.to_dict(), kind), []).append(seconds / epochs)

    def time_left(self, queued: list[Task], running: list[Task]) -> str:
        waiting = intents(queued, self.opts)
        self.started_at.update((intent.task.experiment_id, intent.epoch) for intent in waiting)
        todo = waiting + intents(running, self.opts, ours=True)
        clock = EpochClock(self.gpus_visible, self.wall)
        clock.add_results(self.opts.results_dir)
        clock.add_intents(todo)
        return time_left_text(*clock.seconds_left(todo, self.at_once))


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
