"""Write a file so that its final name only ever holds a complete file.

The data goes to a hidden temporary file in the same folder (`.{name}.XXXXXXXX.tmp`), is
fsynced, then `os.replace`d onto the final name, and the folder is fsynced so the rename
survives a power cut: a crash leaves the old file or the new one, at worst beside a stale
`.tmp`. A failed write removes the temporary file, leaves the old one and raises `WriteError`.
Test-only hook: FASTZHANG_TEST_SLOW_WRITE=seconds sleeps before the fsync (to kill a process mid-write).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Callable

from fastzhang.errors import WriteError

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
    slow = float(os.environ.get(SLOW_WRITE_ENV) or 0)  # a test-only hook: no user sets it
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        name = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
        # 0666 less the umask, as for any new file; a replaced file's own mode is kept.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        tmp = name
        with os.fdopen(fd, "wb") as f:
            if path.exists():
                os.fchmod(f.fileno(), path.stat().st_mode & 0o7777)
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
            with contextlib.suppress(OSError):
                os.unlink(tmp)


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
