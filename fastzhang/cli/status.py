"""`fastzhang status`: one row per experiment found in the checkpoint and results folders.

States: completed (a valid results file says so), in progress (its lock is held),
interrupted (a verified checkpoint, no results, lock free), damaged (only
unreadable files). Checkpoints are verified, read-only: status never renames,
creates or deletes anything. Damaged checkpoints and results files are listed
below the table with their problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastzhang.cli.run import add_output_flags


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="one row per experiment: completed, in progress, interrupted or damaged")
    add_output_flags(p)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Row:
    experiment_id: str
    state: str
    best_test_acc: float | None
    final_test_acc: float | None
    results_file: str
    problems: tuple[str, ...] = ()  # "path: reason" for damaged checkpoints, shown below the table


def run(args) -> int:
    rows, damaged = collect(args.checkpoint_dir, args.results_dir)
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


def collect(checkpoint_dir: Path, results_dir: Path) -> tuple[list[Row], list[Any]]:
    """The rows for every experiment, and the damaged results files."""
    from fastzhang import checkpoint, lock, results

    entries = results.scan(results_dir)
    by_id: dict[str, list] = {}
    for entry in entries:
        if entry.experiment_id:
            by_id.setdefault(entry.experiment_id, []).append(entry)
    ids = checkpoint.discover_ids(checkpoint_dir) | lock.ids_with_lock_files(checkpoint_dir) | set(by_id)
    rows = [experiment_row(checkpoint_dir, ident, by_id.get(ident, [])) for ident in sorted(ids)]
    return rows, [e for e in entries if e.problem]


def experiment_row(checkpoint_dir: Path, ident: str, entries: list) -> Row:
    """One experiment's row; `entries` are its results files, oldest first."""
    from fastzhang import checkpoint, lock
    from fastzhang.train.state import progress as payload_progress

    done = [e for e in entries if e.payload is not None and e.payload["completed"]]
    held = lock.is_held(checkpoint_dir, ident)
    if done and not held:
        payload = done[-1].payload
        metrics = payload["metrics"]
        state = "completed"
        if payload["stopped_early"]:
            state += f" (stopped at epoch {payload['total_epochs']} of {payload['target_epochs']})"
        return Row(ident, state, metrics["best_test_acc"], metrics["final_test_acc"], done[-1].path.name)

    ckpt, used, damage = checkpoint.inspect_latest(checkpoint.latest_path(checkpoint_dir, ident))
    bad_results = [e for e in entries if e.problem]
    results_name = bad_results[-1].path.name if bad_results else "-"
    problems = tuple(f"{e.path}: {e.reason}" for e in damage)
    seen = payload_progress(ckpt) if ckpt is not None else None
    best, final = (seen.best_test_acc, seen.last_test_acc) if seen else (None, None)
    if held:
        state = f"in progress at {_progress(seen)}" if seen else "in progress (no checkpoint yet)"
    elif seen:
        state = f"interrupted at {_progress(seen)}"
        if damage:
            state += f" (from {used.name}; newer checkpoint damaged)"
    elif damage:
        state = "damaged checkpoint"
    elif bad_results:
        state = "damaged results file"
    elif entries:
        state = "not completed (its results file says completed: false)"
        results_name = entries[-1].path.name
    else:
        state = "no checkpoint"
    return Row(ident, state, best, final, results_name, problems)


def _progress(seen) -> str:
    """`seen`: a train.state.Progress."""
    text = f"epoch {_known(seen.epoch)} of {_known(seen.target_epochs)}"
    return f"{text} (+{seen.step_in_epoch} steps)" if seen.step_in_epoch else text


def _known(value) -> str:
    return "?" if value is None else str(value)


def _acc(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def format_table(rows: list[Row]) -> str:
    table = [("ID", "STATE", "BEST", "FINAL", "RESULTS")]
    table += [
        (r.experiment_id, r.state, _acc(r.best_test_acc), _acc(r.final_test_acc), r.results_file) for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:4], widths)) + "  " + line[4] for line in table
    ).rstrip()
