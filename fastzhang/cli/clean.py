"""`fastzhang clean`: delete experiments' checkpoints (and results) after confirmation.

Deletes, per experiment: the latest, previous and best checkpoints, damaged
files kept as `.corrupt-*`, temporary files a killed writer left, the lock file,
and (unless --checkpoints-only) the results files. It lists the files first and
asks; without a terminal it refuses unless --yes. An experiment whose lock is held
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
from fastzhang.errors import UsageError, WriteError

_ID_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")


def add_parser(sub) -> None:
    p = sub.add_parser("clean", help="delete experiments' checkpoints and results (asks first)")
    p.add_argument("ids", nargs="*", metavar="ID", help="experiment IDs (see `fastzhang status`)")
    p.add_argument("--all", action="store_true", help="every experiment found in both folders")
    p.add_argument("--checkpoints-only", action="store_true", help="keep the results files")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from fastzhang.log import warn

    if bool(args.ids) == bool(args.all):
        raise UsageError("clean: give experiment IDs or --all (one of the two)")
    for ident in args.ids:
        if not _ID_RE.match(ident):
            raise UsageError(f"clean: {ident!r} is not an experiment ID (letters, digits, . _ + - only)")
    ids = sorted(set(args.ids)) if args.ids else all_ids(args.checkpoint_dir, args.results_dir)

    with contextlib.ExitStack() as stack:
        _lock_running(stack, args.checkpoint_dir, ids)
        plan = {i: files_of(i, args.checkpoint_dir, args.results_dir, args.checkpoints_only) for i in ids}
        for ident in args.ids:
            if not plan[ident]:
                warn(f"no files for experiment {ident} in {args.checkpoint_dir} or {args.results_dir}")
        doomed = [path for ident in ids for path in plan[ident]]
        if not doomed:
            print("nothing to delete")
            return 0
        count = sum(1 for ident in ids if plan[ident])
        print(f"will delete {len(doomed)} files of {count} experiment{'s' if count != 1 else ''}:")
        for path in doomed:
            print(f"  {path}")
        if not args.yes and not _confirm(len(doomed)):
            print("nothing deleted")
            return 1
        _delete(doomed)
    print(f"deleted {len(doomed)} files")
    return 0


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
    from fastzhang import lock

    for ident in ids:
        if lock.lock_path(checkpoint_dir, ident).is_file():
            stack.enter_context(lock.ExperimentLock(checkpoint_dir, ident))


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
