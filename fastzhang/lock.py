"""One process per experiment: an flock on `{checkpoint_dir}/{id}.lock`.

The kernel drops an flock when its holder dies, even by SIGKILL, so a crashed
run never leaves a stale lock behind; the file itself stays (removing it would
let two processes lock two different inodes) and holds the holder's pid for the
error message. Note that a child forked while the lock is held shares it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from fastzhang.errors import LockHeld, WriteError

LOCK_SUFFIX = ".lock"
# `status` and `clean` take the lock for a moment to test it; retrying briefly keeps
# such a probe from making a starting run fail.
_RETRY_SECONDS = 0.3


def lock_path(checkpoint_dir: str | Path, experiment_id: str) -> Path:
    return Path(checkpoint_dir) / f"{experiment_id}{LOCK_SUFFIX}"


class ExperimentLock:
    """`with ExperimentLock(ckpt_dir, id):` raises LockHeld if another process runs `id`."""

    def __init__(self, checkpoint_dir: str | Path, experiment_id: str):
        self.experiment_id = experiment_id
        self.path = lock_path(checkpoint_dir, experiment_id)
        self._fd: int | None = None

    def __enter__(self) -> "ExperimentLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + _RETRY_SECONDS
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise WriteError(f"cannot create lock file {self.path}: {e.strerror or e}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                who = f"pid {pid}, " if (pid := holder_pid(self.path)) else ""
                raise LockHeld(f"experiment {self.experiment_id} is already running in another process "
                               f"({who}lock file {self.path}); wait for it or stop it") from None
            # The file may have been removed (by `clean`) between open and flock; a
            # lock on an unlinked inode excludes nobody, so start over on the new file.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), self.path.stat()):
                    break
            os.close(fd)
        with contextlib.suppress(OSError):  # the pid is only for messages; holding the lock is what matters
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


def holder_pid(path: str | Path) -> int | None:
    """The pid the holder wrote into the lock file, if readable."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_held(checkpoint_dir: str | Path, experiment_id: str) -> bool:
    """Whether a live process holds the experiment's lock (creates nothing)."""
    path = lock_path(checkpoint_dir, experiment_id)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # A shared probe: an exclusive flock on a read-only descriptor fails with
        # EBADF over NFS, while a shared one conflicts with the holder's exclusive lock.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def ids_with_lock_files(checkpoint_dir: str | Path) -> set[str]:
    return {p.name[: -len(LOCK_SUFFIX)] for p in Path(checkpoint_dir).glob(f"*{LOCK_SUFFIX}") if p.is_file()}
