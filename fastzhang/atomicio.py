"""Write a file so that its final name only ever holds a complete file.

The data goes to a hidden temporary file in the same folder (`.{name}.XXXXXXXX.tmp`),
is flushed and fsynced, then `os.replace`d onto the final name and the folder is
fsynced so the rename itself survives a power cut. A crash at any moment leaves
either the old file or the new one at the final name, plus at worst a stale
`.tmp` file. A failed write (disk full, permissions, read-only folder) removes
the temporary file, leaves the previous file untouched and raises `WriteError`.

Test-only hook: when the environment variable FASTZHANG_TEST_SLOW_WRITE is set to
a number of seconds, every write sleeps that long after the data is written and
before it is fsynced and renamed, so a test can kill the process in the middle of
a checkpoint write. Never set it outside tests.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

from fastzhang.errors import UsageError, WriteError

SLOW_WRITE_ENV = "FASTZHANG_TEST_SLOW_WRITE"


def atomic_write(
    path: str | Path,
    write_fn: Callable[[BinaryIO], object],
    *,
    what: str = "file",
    before_replace: Callable[[], object] | None = None,
) -> None:
    """Write `path` atomically; `write_fn(f)` writes the content to the binary file `f`.

    `what` names the file in error messages ("checkpoint", "results file").
    `before_replace` runs once the new data is durable, just before the rename
    (checkpoint.py rotates the current file to `.prev` there).
    """
    path = Path(path)
    folder = path.parent
    slow = _slow_write_seconds()
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode(path))
            write_fn(f)
            f.flush()
            if slow:
                time.sleep(slow)
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        tmp = None
        fsync_dir(folder)
    except OSError as e:
        raise WriteError(f"cannot write {what} {path}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            _remove_quietly(tmp)


def fsync_dir(folder: str | Path) -> None:
    """Make renames and creations in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems cannot fsync a directory; the rename is still atomic there.
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """mkstemp creates 0600 files; give the new file the old file's mode, else 0666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Reading the umask through os.umask() would change process state for a moment.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _slow_write_seconds() -> float:
    value = os.environ.get(SLOW_WRITE_ENV)
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{SLOW_WRITE_ENV} must be a number of seconds, got {value!r}") from None
    return max(seconds, 0.0)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
