"""Find CIFAR-10 or CIFAR-100 on disk, download it when absent, extract the tarball once into a cache.

Where: `--data-dir`, else $FASTZHANG_DATA, else `./data`: a folder holding a data set's
batches folders or tarball (both data sets may share it), or a batches folder or tarball
itself. A tarball found on disk is not checked against the official md5: copies in
another order (like the offline copy) are legitimate, and the fingerprint (cifar.py)
says what was loaded. Only a download, which must be the official file, is checked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from urllib.request import urlopen

from tqdm import tqdm

from fastzhang.atomicio import atomic_write
from fastzhang.data.cifar import LAYOUTS, SPECS, CifarSpec
from fastzhang.errors import DataError, WriteError
from fastzhang.log import info

# The official releases; read at call time (`official`), so tests point them at a local server.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CHUNK = 1 << 20


def official(spec: CifarSpec) -> tuple[str, str]:
    """(url, md5) of the official python tarball of `spec`'s data set."""
    return {"cifar10": (CIFAR10_URL, CIFAR10_MD5), "cifar100": (CIFAR100_URL, CIFAR100_MD5)}[spec.name]


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """--data-dir, else $FASTZHANG_DATA, else ./data."""
    chosen = data_dir or os.environ.get("FASTZHANG_DATA") or "data"
    return Path(chosen).expanduser()


def refuse_missing_named_folder(root: Path, data_dir: str | Path | None, spec: CifarSpec) -> None:
    """DataError if the user named `root` (flag or $FASTZHANG_DATA) and it does not exist: a download into it
    would hide what is most likely a typo behind minutes of network and 170 MB."""
    named = data_dir or os.environ.get("FASTZHANG_DATA")
    if named and not os.path.lexists(root):
        source = "--data-dir / data_dir" if data_dir else "FASTZHANG_DATA"
        raise DataError(f"{root}: no such folder (named by {source}); fix the path, or create the folder "
                        f"to download {spec.title} into it")


def cache_dir() -> Path:
    """$FASTZHANG_CACHE, else $XDG_CACHE_HOME/fastzhang, else ~/.cache/fastzhang."""
    if os.environ.get("FASTZHANG_CACHE"):
        return Path(os.environ["FASTZHANG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fastzhang"


def find_or_fetch(data_dir: str | Path | None, spec: CifarSpec, *, download: bool = True) -> tuple[str, Path]:
    """(layout, batches folder or tarball) of `spec`'s data set in the data folder, downloaded there when absent;
    DataError when it is absent and `download` is off, or the folder is named but missing or the other data set's."""
    root = resolve_data_dir(data_dir)
    found = locate(root, spec)
    if found is not None:
        return found
    refuse_other_data_set(root, spec)
    if not download:
        raise DataError(nothing_found(root, spec))
    refuse_missing_named_folder(root, data_dir, spec)
    return "tarball", _absolute(fetch_tarball(root, spec))


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))  # ".." folded, symlinks kept


def locate(root: str | Path, spec: CifarSpec) -> tuple[str, Path] | None:
    """What `root` holds of `spec`'s data set, preferring folders (no extraction) over the tarball."""
    root = _absolute(root)
    if root.is_file():
        other = any(s is not spec and root.name == s.tarball for s in SPECS.values())
        tarball = root.name.endswith((".tar.gz", ".tgz")) and not other
        return ("tarball", root) if tarball else None
    if not root.is_dir():
        return None
    for layout in LAYOUTS:  # root is itself a batches folder
        if root.name == spec.folders[layout] or any((root / n).is_file() for n in spec.files(layout)):
            return layout, root
    for layout in LAYOUTS:
        if (root / spec.folders[layout]).is_dir():
            return layout, root / spec.folders[layout]
    if (root / spec.tarball).is_file():
        return "tarball", root / spec.tarball
    return None


def refuse_other_data_set(root: Path, spec: CifarSpec) -> None:
    """DataError if `root` is another data set's tarball or batches folder (by name, or holding all its files),
    into which, say, CIFAR-10 asked of a CIFAR-100 folder would otherwise be downloaded."""
    root = _absolute(root)
    for other in SPECS.values():
        if other is spec:
            continue
        holds = root.is_file() and root.name == other.tarball
        for layout in LAYOUTS if root.is_dir() else ():
            holds |= root.name == other.folders[layout]
            holds |= all((root / n).is_file() for n in other.files(layout))
        if holds:
            raise DataError(f"{root}: this is {other.title}, not {spec.title}; "
                            f"use dataset {other.name}, or point --data-dir at {spec.title}")


def nothing_found(root: Path, spec: CifarSpec) -> str:
    return (f"no {spec.title} in {root}: put {spec.tarball}, {spec.folders['python']}/ or {spec.folders['binary']}/ "
            "there, or point --data-dir / FASTZHANG_DATA at a folder that has them")


def extract_tarball(tarball: str | Path, spec: CifarSpec) -> Path:
    """The python batches folder of `tarball`, extracted into the cache on first use.

    The folder is named by the tarball's sha256, so the data folder may be read-only and another
    tarball never reuses a stale extraction; it is written as a temporary folder renamed into
    place, so a crash or a concurrent process never leaves half of it behind.
    """
    tarball, cache, h = Path(tarball), cache_dir(), hashlib.sha256()
    try:
        with open(tarball, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{tarball}: cannot read ({e.strerror or e})") from None
    final = cache / f"{spec.folders['python']}-{h.hexdigest()[:32]}"
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
        _extract_members(tarball, tmp, spec)
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


def _extract_members(tarball: Path, dest: Path, spec: CifarSpec) -> None:
    """Copy the batch files out of the archive by name: no member picks its own path."""
    folder = spec.folders["python"]
    wanted = {f"{folder}/{n}": n for n in spec.files("python") + (spec.meta,)}
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
    missing = [f"{folder}/{n}" for n in spec.files("python") if n not in got]
    if missing:
        raise DataError(f"{tarball}: archive lacks {', '.join(missing)}")


def fetch_tarball(root: str | Path, spec: CifarSpec) -> Path:
    """Download `spec`'s official tarball into `root` (progress bar on stderr), written atomically (atomicio):
    it takes its name only once its md5 is checked."""
    root, (url, md5), tarball = Path(root), official(spec), spec.tarball
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: no {spec.title} here and cannot download into it ({e.strerror or e}); "
                        f"put {tarball} there or choose another --data-dir") from None
    info(f"no {spec.title} in {root}; downloading {url}")

    def download(out) -> None:
        h = hashlib.md5(usedforsecurity=False)
        with urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=tarball) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if (got := h.hexdigest()) != md5:
            raise DataError(f"{url}: downloaded file has md5 {got}, expected {md5}; discarded it. "
                            f"Retry, or put {tarball} in {root} yourself")

    try:
        atomic_write(root / tarball, download, what=f"{spec.title} tarball")
    except WriteError as e:  # the network's errors (URLError) are OSErrors too
        reason = getattr(e.__cause__, "reason", None) or e.__cause__.strerror or e.__cause__
        raise DataError(f"cannot download {spec.title} from {url} ({reason}); {nothing_found(root, spec)}") from None
    return root / tarball
