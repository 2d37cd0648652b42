"""Find CIFAR-10 on disk, download it when absent, extract the tarball once into a cache.

This module finds (or fetches) the files; data/cifar.py reads them. `find_or_fetch`
gives what an experiment reads, `batches_folder` the folder of batch files in it.

Where: `--data-dir`, else $FASTZHANG_DATA, else `./data`. That folder may hold
`cifar-10-batches-py/`, `cifar-10-batches-bin/` or `cifar-10-python.tar.gz`, or
be a batches folder (or the tarball) itself.

When to download: into the default `./data` (created if needed) or into an
existing folder that lacks the data. A folder named by `--data-dir` or
$FASTZHANG_DATA that does not exist is refused at once: it is most likely a
typo, and a download would hide it behind minutes of network and 170 MB.

The tarball is extracted into `$FASTZHANG_CACHE` (else `$XDG_CACHE_HOME/fastzhang`,
else `~/.cache/fastzhang`) under a folder named by the tarball's sha256, so the
data folder may be read-only and a different tarball never reuses a stale
extraction. Extraction writes a temporary folder and renames it into place, so
a crash or a concurrent process never leaves a half-extracted folder behind.

A tarball found on disk is not checked against the official md5: copies in
another order (like the offline copy) are legitimate, and the fingerprint
(data/cifar.py) says what was loaded. Only a download is checked, because a
download from the official address must be the official file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from tqdm import tqdm

from fastzhang.data.cifar import BATCH_FILES
from fastzhang.errors import DataError
from fastzhang.log import info

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL = "cifar-10-python.tar.gz"
FOLDERS = {"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin"}
CHUNK = 1 << 20


@dataclass(frozen=True)
class Located:
    layout: str  # "python" | "binary" | "tarball"
    path: Path  # the batches folder, or the tarball


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """--data-dir, else $FASTZHANG_DATA, else ./data."""
    chosen = data_dir or os.environ.get("FASTZHANG_DATA") or "data"
    return Path(chosen).expanduser()


def refuse_missing_named_folder(root: Path, data_dir: str | Path | None) -> None:
    """DataError if the user named `root` (flag or $FASTZHANG_DATA) and it does not exist."""
    named = data_dir or os.environ.get("FASTZHANG_DATA")
    if named and not os.path.lexists(root):
        source = "--data-dir / data_dir" if data_dir else "FASTZHANG_DATA"
        raise DataError(
            f"{root}: no such folder (named by {source}); fix the path, or create the folder "
            "to download CIFAR-10 into it"
        )


def cache_dir() -> Path:
    """$FASTZHANG_CACHE, else $XDG_CACHE_HOME/fastzhang, else ~/.cache/fastzhang."""
    if os.environ.get("FASTZHANG_CACHE"):
        return Path(os.environ["FASTZHANG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fastzhang"


def find_or_fetch(data_dir: str | Path | None, *, download: bool = True) -> Located:
    """CIFAR-10 in the data folder (flag, $FASTZHANG_DATA or ./data), downloaded there when absent.

    DataError when it is absent and `download` is off, or the folder was named but does not exist.
    """
    root = resolve_data_dir(data_dir)
    found = locate(root)
    if found is not None:
        return found
    if not download:
        raise DataError(nothing_found(root))
    refuse_missing_named_folder(root, data_dir)
    return Located("tarball", _absolute(download_cifar10(root)))


def find(root: str | Path) -> Located:
    """CIFAR-10 in `root` (a data folder, a batches folder or the tarball); DataError if none."""
    found = locate(root)
    if found is None:
        raise DataError(nothing_found(Path(root)))
    return found


def batches_folder(found: Located) -> Path:
    """The folder of batch files: the one found, or the tarball's extraction in the cache."""
    return extract_tarball(found.path) if found.layout == "tarball" else found.path


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))  # ".." folded, symlinks kept


def locate(root: str | Path) -> Located | None:
    """What `root` holds, preferring folders (no extraction) over the tarball; None if nothing."""
    root = _absolute(root)
    if root.is_file():
        return Located("tarball", root) if root.name.endswith((".tar.gz", ".tgz")) else None
    if not root.is_dir():
        return None
    for layout, folder in FOLDERS.items():  # root is itself a batches folder
        if root.name == folder or any((root / n).is_file() for n in BATCH_FILES[layout]):
            return Located(layout, root)
    for layout, folder in FOLDERS.items():
        if (root / folder).is_dir():
            return Located(layout, root / folder)
    if (root / TARBALL).is_file():
        return Located("tarball", root / TARBALL)
    return None


def nothing_found(root: Path) -> str:
    return (
        f"no CIFAR-10 in {root}: put {TARBALL}, {FOLDERS['python']}/ or {FOLDERS['binary']}/ there, "
        "or point --data-dir / FASTZHANG_DATA at a folder that has them"
    )


# ------------------------------------------------------------------------------------------
# Extraction


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def extract_tarball(tarball: str | Path) -> Path:
    """The python batches folder of `tarball`, extracted into the cache on first use."""
    tarball = Path(tarball)
    cache = cache_dir()
    try:
        digest = file_sha256(tarball)
    except OSError as e:
        raise DataError(f"{tarball}: cannot read ({e.strerror or e})") from None
    final = cache / f"{FOLDERS['python']}-{digest[:32]}"
    if final.is_dir():
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache))
    except OSError as e:
        raise DataError(f"cannot extract {tarball}: cache folder {cache} is not writable ({e.strerror or e}); "
                        "set FASTZHANG_CACHE to a writable folder") from None
    try:
        info(f"extracting {tarball} into {final}")
        _extract_members(tarball, tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # otherwise a concurrent process finished first: use its copy
                raise
    except OSError as e:
        raise DataError(f"cannot extract {tarball} into {cache} ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _extract_members(tarball: Path, dest: Path) -> None:
    """Copy the batch files out of the archive by name: no member picks its own path."""
    wanted = {f"{FOLDERS['python']}/{n}": n for n in BATCH_FILES["python"] + ("batches.meta",)}
    got = set()
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue
                with tar.extractfile(member) as src, open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                got.add(name)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{tarball}: not a readable gzip tarball ({e or type(e).__name__}); is it truncated?") from None
    missing = [f"{FOLDERS['python']}/{n}" for n in BATCH_FILES["python"] if n not in got]
    if missing:
        raise DataError(f"{tarball}: archive lacks {', '.join(missing)}")


# ------------------------------------------------------------------------------------------
# Download


def download_cifar10(root: str | Path) -> Path:
    """Download the official tarball into `root` (progress bar on stderr, md5 checked)."""
    root = Path(root)
    url, md5 = CIFAR10_URL, CIFAR10_MD5  # read at call time: tests point them at a local server
    dest = root / TARBALL
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{TARBALL}.", suffix=".part", dir=root)
    except OSError as e:
        raise DataError(f"{root}: no CIFAR-10 here and cannot download into it ({e.strerror or e}); "
                        f"put {TARBALL} there or choose another --data-dir") from None
    info(f"no CIFAR-10 in {root}; downloading {url}")
    try:
        with os.fdopen(fd, "wb") as out:
            got = _stream(url, out)
            out.flush()
            os.fsync(out.fileno())
        if got != md5:
            raise DataError(f"{url}: downloaded file has md5 {got}, expected {md5}; discarded it. "
                            f"Retry, or put {TARBALL} in {root} yourself")
        os.replace(tmp, dest)
    except (URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e.strerror or e
        raise DataError(f"cannot download CIFAR-10 from {url} ({reason}); {nothing_found(root)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _stream(url: str, out) -> str:
    """Copy `url` into `out` with a tqdm bar; returns the md5 hex of what was written."""
    h = hashlib.md5(usedforsecurity=False)
    with urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=TARBALL) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    return h.hexdigest()
