"""What a batch runs and how its runs are counted, shared by the local pool and Ray.

    recipe files / folders -> one Task per experiment ID -> a RunResult per task -> summary

Recipes are all loaded before anything runs, so a broken recipe refuses the
whole batch (exit 2) instead of failing halfway through it. Recipes that define
the same experiment (same ID) run once. The summary's wording lives here only
(recipes/run_all_recipes.sh is a wrapper over `fastzhang batch`).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from fastzhang import results
from fastzhang.config import ExperimentConfig
from fastzhang.errors import UsageError

RECIPE_SUFFIXES = (".yaml", ".yml")

# RunResult.status values, in the summary's order.
RAN, SKIPPED, BUSY, FAILED, STOPPED = "ran", "skipped", "busy", "failed", "stopped"
EXIT_LOCK_HELD = 3


@dataclass(frozen=True)
class Task:
    recipe: Path
    config: ExperimentConfig

    @property
    def experiment_id(self) -> str:
        return self.config.experiment_id

    @property
    def label(self) -> str:
        return f"{self.recipe} ({self.experiment_id})"


@dataclass(frozen=True)
class BatchOptions:
    checkpoint_dir: Path = Path("checkpoints")
    results_dir: Path = Path("results")
    force: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class RunResult:
    task: Task
    status: str  # RAN | SKIPPED | BUSY | FAILED | STOPPED
    exit_code: int | None = None
    detail: str = ""  # why it failed, one line
    seconds: float = 0.0
    where: str = ""  # the GPU, node or worker it ran on


@dataclass
class BatchReport:
    total: int  # experiments in the batch, skipped ones included
    results: list[RunResult] = field(default_factory=list)
    stop_signal: int | None = None

    def summary(self, title: str = "batch") -> str:
        return format_summary(self.results, self.total, self.stop_signal, title)

    def exit_code(self) -> int:
        """0 nothing failed, 1 something failed, 128 + signal when stopped."""
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        return 1 if any(r.status == FAILED for r in self.results) else 0


# ------------------------------------------------------------------------------------------
# Recipes -> tasks


def recipe_files(paths: Iterable[str | Path]) -> list[Path]:
    """Each path as given: a recipe file, or every recipe under a folder (recursively, sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix in RECIPE_SUFFIXES and p.is_file())
            if not inside:
                raise UsageError(f"{path}: folder holds no recipes (*.yaml, *.yml)")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such recipe file or folder")
    return found


def collect(paths: Iterable[str | Path], overrides: Mapping[str, object] | None = None,
            seeds: Iterable[int] | None = None) -> tuple[list[Task], list[str]]:
    """One Task per experiment ID, in the order given, and a note for each duplicate recipe. With `seeds`,
    every recipe once per seed, seed after seed: a stopped batch has whole tables at its first seeds."""
    tasks: list[Task] = []
    notes: list[str] = []
    first: dict[str, Task] = {}
    files: dict[Path, Path] = {}
    for path in recipe_files(paths):
        files.setdefault(path.resolve(), path)  # the same file named twice (e.g. itself and its folder): once
    for seed in seeds if seeds is not None else [None]:
        given = {**(overrides or {}), **({} if seed is None else {"seed": seed})}
        for path in files.values():
            task = Task(path, ExperimentConfig.from_yaml(path, overrides=given))
            if task.experiment_id in first:
                notes.append(f"same experiment as {first[task.experiment_id].recipe}: {path} "
                             f"({task.experiment_id}), runs once")
                continue
            first[task.experiment_id] = task
            tasks.append(task)
    return tasks, notes


def split_completed(tasks: list[Task], results_dir: Path, force: bool) -> tuple[list[Task], list[RunResult]]:
    """Tasks still to run, and results for those already completed (never launched)."""
    if force:
        return list(tasks), []
    todo, done = [], []
    for task in tasks:
        if results.find_completed(results_dir, task.experiment_id):
            done.append(RunResult(task, SKIPPED, 0))
        else:
            todo.append(task)
    return todo, done


def check_limits(runs_per_gpu: int, max_parallel: int | None) -> None:
    if runs_per_gpu < 1:
        raise UsageError(f"--runs-per-gpu must be >= 1; got {runs_per_gpu}")
    if max_parallel is not None and max_parallel < 1:
        raise UsageError(f"--max-parallel must be >= 1; got {max_parallel}")


def pinned_device(cfg: ExperimentConfig) -> str | None:
    """The device override for a run confined to one GPU: `cuda:N` names a GPU it cannot see."""
    return "cuda" if cfg.device.startswith("cuda:") else None


# ------------------------------------------------------------------------------------------
# Progress and summary


class Progress:
    """One line when a run starts and one when it ends, with the batch's counts."""

    def __init__(self, total: int, quiet: bool, out: Callable[[str], None] = print, running: str = "running",
                 time_left: Callable[[], str] | None = None):
        self.total, self.quiet, self.out, self.running_word = total, quiet, out, running
        self.time_left = time_left  # the batch's estimated time left, said after each run ends
        self.started = 0
        self.results: list[RunResult] = []

    def note(self, line: str) -> None:
        if not self.quiet:
            self.out(line)

    def start(self, task: Task, where: str = "") -> None:
        self.started += 1
        self.note(f"== [{self.started}/{self.total}] {task.label}{' on ' + where if where else ''}")

    def finish(self, result: RunResult, running: int) -> None:
        self.results.append(result)
        what = result.status if result.exit_code in (0, None) else f"{result.status} (exit {result.exit_code})"
        failed = sum(r.status == FAILED for r in self.results)
        # a failure's detail is in the run's own lines (shown above it) and in the summary: not a third time
        self.note(f"== {what}: {result.task.label} after {result.seconds:.1f}s | "
                  f"{len(self.results)}/{self.total} done, "
                  f"{running} {self.running_word}, {failed} failed" + self._left())

    def _left(self) -> str:
        if self.quiet or self.time_left is None or len(self.results) >= self.total:
            return ""
        return f", {self.time_left()}"


def format_summary(runs: list[RunResult], total: int, stop_signal: int | None, title: str = "batch") -> str:
    """The batch's closing block: counts, then the runs that need attention."""
    by = {s: [r for r in runs if r.status == s] for s in (RAN, SKIPPED, BUSY, FAILED, STOPPED)}
    head = (f"== summary for {title}: {len(by[RAN])} ran, {len(by[SKIPPED])} skipped (already completed), "
            f"{len(by[BUSY])} busy elsewhere, {len(by[FAILED])} failed")
    if stop_signal is not None:
        head += f", {len(by[STOPPED])} stopped, {total - len(runs)} not started"
    lines = ["", head]
    sections = (
        (BUSY, "busy elsewhere (another process holds the lock; rerun later to pick them up)"),
        (STOPPED, f"stopped by {signal.Signals(stop_signal).name if stop_signal else 'a signal'} "
                  "(resume by rerunning)"),
        (FAILED, "FAILED"),
    )
    for status, heading in sections:
        if by[status]:
            lines.append(f"{heading}:")
            lines += [f"  {r.task.label}" + (f": exit {r.exit_code}" + f" ({r.detail})" * bool(r.detail)
                                             if status == FAILED else "") for r in by[status]]
    return "\n".join(lines)
