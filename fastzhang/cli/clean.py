"""`fastzhang clean`: delete experiments' checkpoints (and results) after confirmation.

Deletes, per experiment, its checkpoint files (checkpoint.experiment_files: damaged and stale
ones too), its log, the lock file and (unless --checkpoints-only) the results files; --completed
frees only completed experiments' checkpoints. An unknown ID is refused (exit 2, the closest
named) before anything is deleted; it lists the files and asks (no terminal: only with --yes).
An experiment a running process holds is never touched: `clean` holds each lock until the end.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

from fastzhang.cli.run import add_output_flags
from fastzhang.errors import LockHeld, UsageError, WriteError, did_you_mean

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
    for ident in args.ids:
        if not _ID_RE.match(ident):
            raise UsageError(f"clean: {ident!r} is not an experiment ID (letters, digits, . _ + - only)")
    from fastzhang import checkpoint, lock, results

    ckpt, res = args.checkpoint_dir, args.results_dir
    with contextlib.ExitStack() as stack:
        plan: dict[str, list[Path]] = {}
        if args.completed:  # their checkpoints only: results and logs are their history and stay
            for ident in sorted({e.experiment_id for e in results.scan(res) if e.payload and e.payload["completed"]}):
                try:
                    _hold_lock(stack, ckpt, ident)
                except LockHeld:
                    print(f"skipped {ident}: its lock {lock.lock_path(ckpt, ident)} is held by a running process")
                    continue
                best = checkpoint.best_path(ckpt, ident)
                kept = {best, checkpoint.prev_path(best)} if args.keep_best else set()
                files = checkpoint.experiment_files(ckpt, ident)
                plan[ident] = [p for p in files if ".pth" in p.name and p not in kept]
        else:
            for ident in sorted(set(args.ids)) if args.ids else all_ids(ckpt, results.scan(res)):
                _hold_lock(stack, ckpt, ident)  # LockHeld if a run holds it: nothing is deleted
                plan[ident] = checkpoint.experiment_files(ckpt, ident)
                plan[ident] += [] if args.checkpoints_only else results.experiment_files(res, ident)
                plan[ident] += [p for p in [lock.lock_path(ckpt, ident)] if p.is_file()]  # the lock file last
            unknown = [ident for ident in args.ids if not plan[ident]]
            if unknown:  # a typo must not read as success
                raise UsageError(f"clean: no files for experiment {unknown[0]} in {ckpt} or {res}"
                                 + did_you_mean(unknown[0], all_ids(ckpt, results.scan(res))) + "; nothing was deleted")
        return _carry_out(args, plan)


def all_ids(checkpoint_dir: Path, entries: list) -> list[str]:
    """Every experiment with a file in the checkpoint folder or a results file among `entries` (results.scan)."""
    from fastzhang import checkpoint, lock

    found = checkpoint.discover_ids(checkpoint_dir) | lock.ids_with_lock_files(checkpoint_dir)
    return sorted(found | {e.experiment_id for e in entries if e.experiment_id})


def _hold_lock(stack: contextlib.ExitStack, checkpoint_dir: Path, ident: str) -> None:
    """Take the experiment's lock until the end if it has a lock file (LockHeld if a run holds it): a run
    creates its lock file first, so one without has no run to protect and gets no new lock file from us."""
    from fastzhang import lock

    if lock.lock_path(checkpoint_dir, ident).is_file():
        stack.enter_context(lock.ExperimentLock(checkpoint_dir, ident))


def _carry_out(args, plan: dict[str, list[Path]]) -> int:
    """List what goes, ask (unless --yes or --dry-run), delete; 1 when the answer was no."""
    doomed = [path for paths in plan.values() for path in paths]
    if not doomed:
        print("nothing to free" if args.completed else "nothing to delete")
        return 0
    count = sum(1 for paths in plan.values() if paths)
    shown, size = [str(path) for path in doomed], ""
    if args.completed:
        sizes = [path.stat().st_size for path in doomed]
        shown, size = [f"{path}  ({_bytes(n)})" for path, n in zip(doomed, sizes)], f", {_bytes(sum(sizes))}"
    verb = ("would " if args.dry_run else "will ") + ("free" if args.completed else "delete")
    print(f"{verb} {len(doomed)} files{size}{',' if size else ''} of {count} "
          f"{'completed ' if args.completed else ''}experiment{'s' if count != 1 else ''}:")
    for line in shown:
        print(f"  {line}")
    if args.dry_run:
        return 0
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise UsageError("clean: refusing to delete without confirmation (stdin is not a terminal); pass --yes")
        try:
            answer = input(f"delete these {len(doomed)} files? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    for done, path in enumerate(doomed):
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise WriteError(f"cannot delete {path}: {e.strerror or e} (deleted {done} of {len(doomed)} files)") from e
    print(f"{'freed' if args.completed else 'deleted'} {len(doomed)} files{size}")
    return 0


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n:,} bytes)" if n >= 1e5 else f"{n:,} bytes"
