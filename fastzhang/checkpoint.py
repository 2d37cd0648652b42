"""Checkpoints that are written atomically, verified on load and never lost; their file names.

A checkpoint is a plain dict (its schema: train/state.py) saved with `torch.save`, so
`torch.load(path, weights_only=True)` reads it without running any code. `save` adds a
`checksum` (the zip container has none of its own: a flipped bit in tensor data would load
silently) and rotates the current file to `{stem}.prev.pth` just before the new one takes
its name; a crash between the two renames leaves a good `.prev`, which `load_latest` uses.
A damaged file is moved aside as `{name}.corrupt-{YYYYmmdd_HHMMSS}`, never deleted. Importing
this module does not import torch, so code that only names files stays fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import pickle
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastzhang.atomicio import atomic_write, fsync_dir
from fastzhang.errors import CheckpointError, WriteError, one_line
from fastzhang.log import warn

FORMAT = "fastzhang-checkpoint"
FORMAT_VERSION = 1

# An experiment's checkpoint files: latest, best, their .prev, snapshots; damaged ones kept as .corrupt-*,
# and a killed writer's .tmp.
_KINDS = r"(?:(?:checkpoint|best)(?:\.prev)?|epoch\d{3,})\.pth"
_FILE_RE = re.compile(rf"^(?P<id>.+)_{_KINDS}(?:\.corrupt-\d{{8}}_\d{{6}}(?:_\d+)?)?$"
                      rf"|^\.(?P<tmp>.+)_{_KINDS}\.[A-Za-z0-9_]+\.tmp$")
CHECKSUM_MISMATCH = "checksum mismatch"
CUT_OFF = "a cut-off or damaged torch archive"


class CheckpointCorrupt(CheckpointError):
    """A file exists but is not an intact fastzhang checkpoint."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {path} is damaged: {reason}")

    @property
    def was_ours(self) -> bool:
        """A fastzhang checkpoint whose bytes changed since save(), not some other file."""
        return self.reason.startswith((CHECKSUM_MISMATCH, CUT_OFF))


def latest_path(checkpoint_dir: str | Path, experiment_id: str) -> Path:
    return Path(checkpoint_dir) / f"{experiment_id}_checkpoint.pth"


def best_path(checkpoint_dir: str | Path, experiment_id: str) -> Path:
    return Path(checkpoint_dir) / f"{experiment_id}_best.pth"


def snapshot_path(checkpoint_dir: str | Path, experiment_id: str, epoch: int) -> Path:
    """The snapshot kept at the end of `epoch` (--snapshot-every): `{id}_epoch{E:03d}.pth`."""
    return Path(checkpoint_dir) / f"{experiment_id}_epoch{epoch:03d}.pth"


def snapshots(checkpoint_dir: str | Path, experiment_id: str) -> list[Path]:
    """The experiment's snapshots, oldest epoch first."""
    found = [(int(m[1]), p) for p in _files_by_id(checkpoint_dir).get(experiment_id, [])
             if (m := re.fullmatch(r".+_epoch(\d{3,})\.pth", p.name))]
    return [p for _, p in sorted(found)]


def log_path(checkpoint_dir: str | Path, experiment_id: str) -> Path:
    """The experiment's own log (fastzhang/runlog.py), kept beside its checkpoints across resumptions."""
    return Path(checkpoint_dir) / f"{experiment_id}.log"


def prev_path(path: str | Path) -> Path:
    """`x_checkpoint.pth` -> `x_checkpoint.prev.pth`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _files_by_id(checkpoint_dir: str | Path) -> dict[str, list[Path]]:
    folder, found = Path(checkpoint_dir), {}
    for p in folder.iterdir() if folder.is_dir() else ():
        if (m := _FILE_RE.match(p.name)) and not p.is_dir():
            found.setdefault(m["id"] or m["tmp"], []).append(p)
    return found


def experiment_files(checkpoint_dir: str | Path, experiment_id: str) -> list[Path]:
    """Every file of one experiment in the checkpoint folder: its checkpoint files (see _KINDS) and its log."""
    log = log_path(checkpoint_dir, experiment_id)
    return sorted(_files_by_id(checkpoint_dir).get(experiment_id, []) + ([log] if log.is_file() else []))


def discover_ids(checkpoint_dir: str | Path) -> set[str]:
    """Experiment IDs that have any checkpoint file (including damaged or stale ones)."""
    return set(_files_by_id(checkpoint_dir))


def checksum(payload: Mapping[str, Any]) -> str:
    """sha256 hex of everything in `payload` except its `checksum` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "checksum"}, "payload")
    return h.hexdigest()


def _feed(h: Any, obj: Any, where: str) -> None:
    # Each value is tagged with its type and, where variable, its length, so two
    # different payloads never produce the same byte stream.
    import torch  # already loaded by whoever built the payload; a dict lookup

    kind = type(obj)
    if obj is None:
        h.update(b"N")
    elif kind is bool:
        h.update(b"T" if obj else b"F")
    elif kind is int:
        _tagged(h, b"i", str(obj).encode())
    elif kind is float:
        h.update(b"f" + struct.pack("<d", obj))
    elif kind is str:
        _tagged(h, b"s", obj.encode("utf-8", "surrogatepass"))
    elif kind is bytes:
        _tagged(h, b"b", obj)
    elif isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized:
            raise TypeError(f"checkpoint {where}: only dense tensors can be stored, got layout {obj.layout}")
        h.update(f"t{obj.dtype}|{tuple(obj.shape)}|".encode())
        flat = obj.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"d%d:" % len(obj))
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key, f"{where} key")
            _feed(h, obj[key], f"{where}.{key}")
    elif kind in (list, tuple, torch.Size):
        h.update(b"l%d:" % len(obj))
        for i, item in enumerate(obj):
            _feed(h, item, f"{where}[{i}]")
    else:
        # torch.load(weights_only=True) would refuse it, so refuse it before writing.
        raise TypeError(
            f"checkpoint {where}: a {kind.__module__}.{kind.__qualname__} cannot be stored; "
            "use plain dicts, lists, tensors, str, int, float, bool or None"
        )


def _tagged(h: Any, tag: bytes, data: bytes) -> None:
    h.update(tag + b"%d:" % len(data))
    h.update(data)


def save(payload: Mapping[str, Any], path: str | Path, *, copy_to: Sequence[str | Path] = ()) -> Path:
    """Write `payload` (plus format, format_version, checksum) atomically to `path`, the file there becoming
    `{stem}.prev.pth`; `copy_to` (the best checkpoint, a snapshot) get the same bytes first, without a .prev.
    `WriteError` on disk full / permissions (old files intact), `TypeError` for what weights_only cannot read."""
    import torch

    path = Path(path)
    full = {**payload, "format": FORMAT, "format_version": FORMAT_VERSION}
    full["checksum"] = checksum(full)

    def rotate() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, prev_path(path))

    buffer = io.BytesIO()
    torch.save(full, buffer)
    data = buffer.getbuffer()
    for copy in copy_to:
        atomic_write(Path(copy), lambda f: f.write(data), what="checkpoint")
    atomic_write(path, lambda f: f.write(data), what="checkpoint", before_replace=rotate)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read and verify one checkpoint; `CheckpointCorrupt` unless it is intact."""
    import torch

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not data:
        raise CheckpointCorrupt(path, "the file is empty (0 bytes)")
    # Parsing from memory: torch reports some damage as OSError, which must not
    # read as "cannot read the disk".
    try:
        with warnings.catch_warnings():  # a foreign pickle is reported as damage, not as torch's hint
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, ...
        if data[:4] == b"PK\x03\x04" and not isinstance(e, pickle.UnpicklingError):  # torch.save's zip, cut off
            raise CheckpointCorrupt(path, f"{CUT_OFF} ({type(e).__name__}: {str(e).split('. ')[0][:120]})") from None
        raise CheckpointCorrupt(path, _load_failure(e)) from None
    problem = _payload_problem(payload)
    if problem:
        raise CheckpointCorrupt(path, problem)
    return payload


def _load_failure(e: Exception) -> str:
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        # torch says "Unsupported global: ..." or "... unsupported GLOBAL x whose module x is blocked."
        found = re.search(r"unsupported[^\n]*", text, re.IGNORECASE)
        detail = found.group(0).strip().rstrip(".")[:120] if found else "unknown content"
        what = "it holds objects other than tensors and plain values" if "global" in detail.lower() else (
            "not a readable torch file")
        return f"{what} ({detail}; refused unread by the weights-only loader)"
    return f"not a readable torch file ({one_line(e, 160)})"


def _payload_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return f"not a fastzhang checkpoint (it holds a {type(payload).__name__}, expected a dict)"
    if payload.get("format") != FORMAT:
        return f"not a fastzhang checkpoint (format is {payload.get('format')!r}, expected {FORMAT!r})"
    version = payload.get("format_version")
    if version != FORMAT_VERSION or type(version) is not int:
        return f"format_version {version!r} is not supported (this fastzhang reads {FORMAT_VERSION})"
    stored = payload.get("checksum")
    if not isinstance(stored, str):
        return "it has no checksum"
    try:
        actual = checksum(payload)
    except TypeError as e:
        return str(e)
    if actual != stored:
        return f"{CHECKSUM_MISMATCH} (stored {stored[:12]}..., content hashes to {actual[:12]}...)"
    return None


def load_latest(path: str | Path, warn=warn) -> tuple[dict[str, Any], Path] | None:
    """The payload of `path`, else of its `.prev`, with the file it came from.

    None when neither file exists; `warn` gets what was used instead and why. A damaged file next
    to a good one is quarantined with a warning (so the next save cannot rotate it over the good
    one); when every existing file is damaged, `CheckpointError` names them all, nothing touched.
    """
    path, prev = Path(path), prev_path(path)
    found: dict[Path, dict[str, Any]] = {}
    damaged: dict[Path, CheckpointCorrupt] = {}
    for candidate in (path, prev):
        if candidate.exists():
            try:
                found[candidate] = load(candidate)
            except CheckpointCorrupt as e:
                damaged[candidate] = e
    if not found:
        listed = "; ".join(f"{p}: {e.reason}" for p, e in damaged.items())
        if damaged:
            raise CheckpointError(f"no usable checkpoint ({listed}); nothing was deleted: inspect or remove these "
                                  "files, or pass --force to start the experiment over")
        return None
    used = path if path in found else prev
    for bad, e in damaged.items():
        kept = quarantine(bad)
        warn(f"checkpoint {bad} is damaged ({e.reason}); using {used}; the damaged file is kept as {kept}")
    if used == prev and path not in damaged:
        warn(f"checkpoint {path} is missing (a save was interrupted); resuming from the previous checkpoint {prev}")
    return found[used], used


def inspect_latest(path: str | Path) -> tuple[dict[str, Any] | None, Path | None, list[CheckpointCorrupt]]:
    """Like `load_latest` but read-only (for `status`): (payload, used path, damage found)."""
    path = Path(path)
    damaged = []
    for candidate in (path, prev_path(path)):
        if candidate.exists():
            try:
                return load(candidate), candidate, damaged
            except CheckpointCorrupt as e:
                damaged.append(e)
    return None, None, damaged


def quarantine(path: str | Path) -> Path:
    """Rename a damaged file to `{name}.corrupt-{YYYYmmdd_HHMMSS}` (never overwriting one)."""
    path = Path(path)
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}_{n}")
        n += 1
    try:
        os.rename(path, target)
        fsync_dir(path.parent)
    except OSError as e:
        raise WriteError(f"cannot move damaged checkpoint {path} aside to {target.name}: {e.strerror or e}") from e
    return target
