"""`fastzhang status [ID]`: one row per experiment found in the checkpoint and results folders.

States: completed (a valid results file says so), in progress (its lock is held; flagged
when its files have not changed for much longer than an epoch takes), stopped (a verified
checkpoint, no results, lock free), damaged (only unreadable files, listed below the
table). Checkpoints are verified read-only: status never renames, creates or deletes anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastzhang.cli.clean import all_ids
from fastzhang.cli.run import add_output_flags
from fastzhang.errors import UsageError, did_you_mean

# A run in progress is flagged when nothing was written for this long (or 3 epochs, if longer).
QUIET_SECONDS = 15 * 60


def add_parser(sub) -> None:
    p = sub.add_parser(
        "status", help="one row per experiment: completed, in progress, stopped or damaged",
        description="One row per experiment in the checkpoint and results folders: its state, the last "
                    "epoch's train and test accuracy, the best test accuracy, images/s and the time of its "
                    "last update. With an ID: that experiment's per-epoch table and the path of its log.",
    )
    p.add_argument("id", nargs="?", metavar="ID", help="show this experiment's epochs (see the table's IDs)")
    add_output_flags(p)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Row:
    experiment_id: str
    state: str
    best_test_acc: float | None
    final_test_acc: float | None  # of the last finished epoch
    results_file: str
    problems: tuple[str, ...] = ()  # "path: reason" for damaged checkpoints, shown below the table
    final_train_acc: float | None = None
    images_per_second: float | None = None
    updated: float | None = None  # time.time() of the newest file of the experiment
    metrics: dict | None = None  # the per-epoch series, for `status ID`
    snapshots: int = 0  # {id}_epochEEE.pth files kept by --snapshot-every


def run(args) -> int:
    rows, damaged = collect(args.checkpoint_dir, args.results_dir)
    if args.id is not None:
        return _one(args, rows)
    if not rows and not damaged:
        print(f"no experiments in {args.checkpoint_dir} or {args.results_dir}")
        return 0
    print(format_table(rows))
    problems = [p for row in rows for p in row.problems] + [f"{e.path}: {e.problem}" for e in damaged]
    if problems:
        print("\ndamaged files:")
        for line in problems:
            print(f"  {line}")
    return 0


def _one(args, rows: list[Row]) -> int:
    from fastzhang import checkpoint

    found = {r.experiment_id: r for r in rows}
    row = found.get(args.id)
    if row is None:
        raise UsageError(f"status: no experiment {args.id!r} in {args.checkpoint_dir} or {args.results_dir}"
                         + did_you_mean(args.id, found))
    print(f"{row.experiment_id}: {row.state}")
    print(epoch_table(row.metrics or {}))
    if row.results_file != "-":
        print(f"results: {row.results_file}")
    log = checkpoint.log_path(args.checkpoint_dir, row.experiment_id)
    print(f"log: {log}" + ("" if log.is_file() else " (none yet)"))
    return 0


def collect(checkpoint_dir: Path, results_dir: Path) -> tuple[list[Row], list[Any]]:
    """The rows for every experiment, and the damaged results files."""
    from fastzhang import results

    entries = results.scan(results_dir)
    by_id: dict[str, list] = {}
    for entry in entries:
        if entry.experiment_id:
            by_id.setdefault(entry.experiment_id, []).append(entry)
    rows = [experiment_row(checkpoint_dir, ident, by_id.get(ident, [])) for ident in all_ids(checkpoint_dir, entries)]
    return rows, [e for e in entries if e.problem]


def experiment_row(checkpoint_dir: Path, ident: str, entries: list) -> Row:
    """One experiment's row; `entries` are its results files, oldest first."""
    from fastzhang import checkpoint, lock

    done = [e for e in entries if e.payload is not None and e.payload["completed"]]
    held = lock.is_held(checkpoint_dir, ident)
    log = checkpoint.log_path(checkpoint_dir, ident)
    snapshots = len(checkpoint.snapshots(checkpoint_dir, ident))
    if done and not held:
        payload, metrics = done[-1].payload, done[-1].payload["metrics"]
        state = "completed" + (f" (stopped at epoch {payload['total_epochs']} of {payload['target_epochs']})"
                               if payload["stopped_early"] else "")
        return Row(ident, state, metrics["best_test_acc"], metrics["final_test_acc"], done[-1].path.name,
                   final_train_acc=metrics["final_train_acc"],
                   images_per_second=payload["throughput"]["mean_images_per_second"],
                   updated=_newest(done[-1].path, log), metrics=metrics, snapshots=snapshots)

    from fastzhang.train.state import progress as payload_progress  # imports torch: not for completed rows

    ckpt, used, damage = checkpoint.inspect_latest(checkpoint.latest_path(checkpoint_dir, ident))
    bad_results = [e for e in entries if e.problem]
    results_name = bad_results[-1].path.name if bad_results else "-"
    problems = tuple(f"{e.path}: {e.reason}" for e in damage)
    seen = payload_progress(ckpt) if ckpt is not None else None
    updated = _newest(used, log)
    if held:
        state = f"in progress: {_progress(seen, running=True)}" if seen else "in progress (no checkpoint yet)"
        state += _running(seen, updated)
    elif seen:
        state = f"stopped {_progress(seen, running=False)}"
        if damage:
            state += " (from the previous checkpoint: the latest is damaged)"
    elif damage:
        state = "damaged checkpoint"
    elif bad_results:
        state = "damaged results file"
    elif entries:
        state = "not completed (its results file says completed: false)"
        results_name = entries[-1].path.name
    else:
        state = "no checkpoint"
    if seen is None:
        return Row(ident, state, None, None, results_name, problems, updated=updated, snapshots=snapshots)
    best = seen.best_test_acc if seen.last_test_acc is not None else None  # 0.0 before the first epoch
    return Row(ident, state, best, seen.last_test_acc, results_name, problems, seen.last_train_acc,
               seen.images_per_second, updated, seen.metrics, snapshots)


def _newest(*paths: Path | None) -> float | None:
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except (AttributeError, OSError):  # None, or not there
            pass
    return max(times, default=None)


def _running(seen, updated: float | None) -> str:
    """'; last epoch 25s, about 41m 40s left' once an epoch has been timed (training and test), and
    ' (no update for 2h 05m: hung?)' when nothing was written for much longer than an epoch takes."""
    from fastzhang.batch.estimate import epoch_times
    from fastzhang.runlog import duration

    times, note = epoch_times(seen.metrics) if seen else [], ""
    if times and seen.epoch is not None and seen.target_epochs is not None:
        left = max(0, seen.target_epochs - seen.epoch) * times[-1]
        note = f"; last epoch {duration(times[-1])}, about {duration(left)} left"
    age = 0.0 if updated is None else time.time() - updated
    return note + (f" (no update for {duration(age)}: hung?)" if age > max(QUIET_SECONDS, 3 * max(times, default=0))
                   else "")


def _progress(seen, running: bool) -> str:
    """Where a checkpointed run is: the epoch it trains (running, or stopped mid-epoch), else the last done."""
    done, target, steps = seen.epoch, _known(seen.target_epochs), seen.step_in_epoch
    if done is None or done == seen.target_epochs:
        return f"after epoch {_known(done)} of {target}"
    if running or steps:
        return ("" if running else "in ") + f"epoch {done + 1} of {target}" + (f" (step {steps})" if steps else "")
    return f"after epoch {done} of {target}" if done else f"before epoch 1 of {target}"


def _known(value) -> str:
    return "?" if value is None else str(value)


def _num(value: Any, spec: str = ".2f") -> str:
    if value is None or value != value:
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def format_table(rows: list[Row]) -> str:
    """Two lines per experiment, to fit ~100 columns: the numbers and its ID (last, so a long ID widens
    only its own line), then its state. TRAIN% and TEST%: accuracy of the last finished epoch; IMG/S:
    of that epoch (completed: the mean); UPDATED: its newest file's time."""
    table = [("TRAIN%", "TEST%", "BEST%", "IMG/S", "UPDATED", "ID")] + [
        (_num(r.final_train_acc), _num(r.final_test_acc), _num(r.best_test_acc), _num(r.images_per_second, ".0f"),
         "-" if r.updated is None else time.strftime("%m-%d %H:%M", time.localtime(r.updated)), r.experiment_id)
        for r in rows
    ]
    lines = _aligned(table).splitlines()
    for i, r in enumerate(rows, start=1):
        kept = f"; {r.snapshots} snapshot{'s' if r.snapshots != 1 else ''}" if r.snapshots else ""
        lines[i] += f"\n    {r.state}{kept}"
    return "\n".join(lines)


def _aligned(table: list[tuple[str, ...]]) -> str:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1] for line in table
    ).rstrip()


def epoch_table(metrics: dict) -> str:
    """One line per finished epoch from a metrics mapping (results file or checkpoint)."""
    columns = (("EPOCH", "epochs", ".0f"), ("TRAIN_LOSS", "train_loss", ".4f"), ("TRAIN%", "train_acc", ".2f"),
               ("TEST_LOSS", "test_loss", ".4f"), ("TEST%", "test_acc", ".2f"), ("LR", "lr", ".4g"),
               ("TRAIN_S", "epoch_seconds", ".1f"), ("TEST_S", "eval_seconds", ".1f"),
               ("IMG/S", "images_per_second", ".0f"))
    count = len(metrics.get("epochs") or [])
    if not count:
        return "no finished epoch yet"
    table = [tuple(name for name, _, _ in columns)]
    series = {key: list(metrics.get(key) or []) for _, key, _ in columns}
    table += [tuple(_num(series[key][i] if i < len(series[key]) else None, spec) for _, key, spec in columns)
              for i in range(count)]
    return _aligned(table)
