"""`fastzhang clean`: delete experiments' checkpoints (and results) after confirmation.

Deletes, per experiment: the latest, previous and best checkpoints, damaged
files kept as `.corrupt-*`, temporary files a killed writer left, its log, the
lock file, and (unless --checkpoints-only) the results files. An ID with no files
is refused (exit 2, the closest known ID named) before anything is deleted. It
lists the files first and asks; without a terminal it refuses unless --yes. An experiment whose lock is held
by a running process is never touched: its lock stays taken by `clean` until the
files are gone, so no run can start halfway through.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from fastzhang.cli.run import add_output_flags
from fastzhang.errors import UsageError, WriteError, did_you_mean

_ID_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "clean", help="delete experiments' checkpoints and results (asks first)",
        description="Delete the files of the experiments named (or --all): checkpoints, snapshots, log, lock "
                    "file and, unless --checkpoints-only, results files. Lists them and asks first; an experiment "
                    "a running process holds is refused. --completed frees only the checkpoints of completed "
                    "experiments, keeping results and logs.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="experiment IDs (see `fastzhang status`)")
    p.add_argument("--all", action="store_true", help="every experiment found in both folders")
    p.add_argument("--checkpoints-only", action="store_true", help="keep the results files")
    p.add_argument("--completed", action="store_true",
                   help="free the checkpoints (latest, previous, snapshots, best) of every completed experiment; "
                        "results files and logs stay; running experiments are never touched")
    p.add_argument("--keep-best", action="store_true", help="with --completed: keep each ID_best.pth")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.keep_best and not args.completed:
        raise UsageError("clean: --keep-best goes with --completed")
    if bool(args.ids) + bool(args.all) + bool(args.completed) != 1:
        raise UsageError("clean: give experiment IDs, --all or --completed (one of the three)")
    if args.completed:
        return _free_completed(args)
    for ident in args.ids:
        if not _ID_RE.match(ident):
            raise UsageError(f"clean: {ident!r} is not an experiment ID (letters, digits, . _ + - only)")
    ids = sorted(set(args.ids)) if args.ids else all_ids(args.checkpoint_dir, args.results_dir)

    with contextlib.ExitStack() as stack:
        _lock_running(stack, args.checkpoint_dir, ids)
        plan = {i: files_of(i, args.checkpoint_dir, args.results_dir, args.checkpoints_only) for i in ids}
        unknown = [ident for ident in args.ids if not plan[ident]]
        if unknown:  # a typo must not read as success; nothing is deleted
            known = all_ids(args.checkpoint_dir, args.results_dir)
            raise UsageError(f"clean: no files for experiment {unknown[0]} in {args.checkpoint_dir} or "
                             f"{args.results_dir}" + did_you_mean(unknown[0], known) + "; nothing was deleted")
        doomed = [path for ident in ids for path in plan[ident]]
        if not doomed:
            print("nothing to delete")
            return 0
        count = sum(1 for ident in ids if plan[ident])
        verb = "would delete" if args.dry_run else "will delete"
        heading = f"{verb} {len(doomed)} files of {count} experiment{'s' if count != 1 else ''}:"
        if args.dry_run:
            print("\n".join([heading, *(f"  {path}" for path in doomed)]))
            return 0
        if not _carry_out(doomed, heading, [str(path) for path in doomed], yes=args.yes):
            return 1
    print(f"deleted {len(doomed)} files")
    return 0


def _free_completed(args) -> int:
    """--completed: delete the checkpoints of experiments whose results file says completed."""
    from fastzhang import lock

    ids = completed_ids(args.results_dir)
    with contextlib.ExitStack() as stack:
        running = [i for i in ids if not _try_lock(stack, args.checkpoint_dir, i)]
        plan = {i: completed_checkpoints(args.checkpoint_dir, i, keep_best=args.keep_best)
                for i in ids if i not in running}
        doomed = [path for paths in plan.values() for path in paths]
        for ident in running:
            print(f"skipped {ident}: its lock {lock.lock_path(args.checkpoint_dir, ident)} is held by a running process")
        if not doomed:
            print("nothing to free")
            return 0
        sizes = {path: path.stat().st_size for path in doomed}
        size = sum(sizes.values())
        count = sum(1 for paths in plan.values() if paths)
        verb = "would free" if args.dry_run else "will free"
        heading = f"{verb} {len(doomed)} files, {_bytes(size)}, of {count} completed experiment{'s' if count != 1 else ''}:"
        shown = [f"{path}  ({_bytes(sizes[path])})" for path in doomed]
        if args.dry_run:
            print("\n".join([heading, *(f"  {line}" for line in shown)]))
            return 0
        if not _carry_out(doomed, heading, shown, yes=args.yes):
            return 1
    print(f"freed {len(doomed)} files, {_bytes(size)}")
    return 0


def completed_ids(results_dir: Path) -> list[str]:
    from fastzhang import results

    return sorted({e.experiment_id for e in results.scan(results_dir) if e.payload and e.payload["completed"]})


def completed_checkpoints(checkpoint_dir: Path, ident: str, *, keep_best: bool) -> list[Path]:
    """A completed experiment's checkpoint files; its results and log are its history and stay."""
    from fastzhang import checkpoint

    best = checkpoint.best_path(checkpoint_dir, ident)
    kept = {best, checkpoint.prev_path(best)} if keep_best else set()
    return [p for p in checkpoint.experiment_files(checkpoint_dir, ident) if ".pth" in p.name and p not in kept]


def _try_lock(stack: contextlib.ExitStack, checkpoint_dir: Path, ident: str) -> bool:
    """_hold_lock, or False when a run holds the lock (--completed skips that experiment)."""
    from fastzhang.errors import LockHeld

    try:
        _hold_lock(stack, checkpoint_dir, ident)
    except LockHeld:
        return False
    return True


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n:,} bytes)" if n >= 1e5 else f"{n:,} bytes"


def all_ids(checkpoint_dir: Path, results_dir: Path) -> list[str]:
    from fastzhang import checkpoint, lock, results

    found = checkpoint.discover_ids(checkpoint_dir) | lock.ids_with_lock_files(checkpoint_dir)
    found |= {e.experiment_id for e in results.scan(results_dir) if e.experiment_id}
    return sorted(found)


def files_of(ident: str, checkpoint_dir: Path, results_dir: Path, checkpoints_only: bool) -> list[Path]:
    """What clean deletes for one experiment; the lock file comes last."""
    from fastzhang import checkpoint, lock, results

    files = checkpoint.experiment_files(checkpoint_dir, ident)
    if not checkpoints_only:
        files += results.experiment_files(results_dir, ident)
    lock_file = lock.lock_path(checkpoint_dir, ident)
    return files + [lock_file] if lock_file.is_file() else files


def _lock_running(stack: contextlib.ExitStack, checkpoint_dir: Path, ids: list[str]) -> None:
    """Take every existing lock (LockHeld if a run holds one) and keep them until the end.

    A run always creates its lock file first, so an experiment without one has no
    run to protect and gets no new lock file from us.
    """
    for ident in ids:
        _hold_lock(stack, checkpoint_dir, ident)


def _hold_lock(stack: contextlib.ExitStack, checkpoint_dir: Path, ident: str) -> None:
    """Take the experiment's lock until the end if it has a lock file (LockHeld if a run holds it)."""
    from fastzhang import lock

    if lock.lock_path(checkpoint_dir, ident).is_file():
        stack.enter_context(lock.ExperimentLock(checkpoint_dir, ident))


def _carry_out(doomed: list[Path], heading: str, shown: list[str], *, yes: bool) -> bool:
    """List what will go, ask (unless --yes), delete; False when the answer was no."""
    print(heading)
    for line in shown:
        print(f"  {line}")
    if not yes and not _confirm(len(doomed)):
        print("nothing deleted")
        return False
    _delete(doomed)
    return True


def _confirm(count: int) -> bool:
    if sys.stdin is None or not sys.stdin.isatty():
        raise UsageError("clean: refusing to delete without confirmation (stdin is not a terminal); pass --yes")
    try:
        answer = input(f"delete these {count} files? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _delete(paths: list[Path]) -> None:
    for done, path in enumerate(paths):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise WriteError(
                f"cannot delete {path}: {e.strerror or e} (deleted {done} of {len(paths)} files)"
            ) from e
