"""Results files: one JSON per finished experiment, `results/{id}_{YYYYmmdd_HHMMSS}.json`.

Written atomically with orjson (NumPy values allowed); the schema is in
docs/architecture.md and `validate` checks it. Reading is forgiving in one way
only: a damaged, partial or foreign file is reported and skipped, never fatal,
and never counts as a completed experiment.
"""

from __future__ import annotations

import datetime as dt
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import orjson

from fastzhang.atomicio import atomic_write
from fastzhang.log import warn

SCHEMA_VERSION = 1

_STAMP = r"\d{8}_\d{6}"
_NAME_RE = re.compile(rf"^(?P<id>.+)_(?P<stamp>{_STAMP})(?:_(?P<n>\d+))?\.json$")
_NAME_FORMAT = "%Y%m%d_%H%M%S"

METRIC_SERIES = (
    "epochs", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
    "epoch_seconds", "images_per_second", "steps",
)
# Series added after schema 1 was released, checked when present so older files stay valid.
# eval_seconds: the test evaluation of each epoch (epoch_seconds is its training alone).
LATER_SERIES = ("eval_seconds",)
# early_stop_epoch: the epoch at which early stopping ended the run, else null (fit_epoch's twin).
METRIC_SCALARS = ("best_test_acc", "final_train_acc", "final_test_acc", "fit_epoch", "fit_step", "best_epoch",
                  "early_stop_epoch")
# Scalars added after schema 1 was released: checked when present, so older files stay valid.
LATER_SCALARS = ("best_epoch", "early_stop_epoch")
ENVIRONMENT_KEYS = ("fastzhang", "torch", "python", "device", "platform")
THROUGHPUT_KEYS = ("mean_images_per_second", "train_seconds")
# How the finishing session trained: device, the speed switches in use after any fallback, the
# loader, and the fallbacks taken. Optional: files written before it existed stay valid.
EXECUTION_KEYS = ("device", "switches", "loader", "fallbacks")
# Newer files add fastzhang/provenance.py's fields there (device_name, threads, data_source, git_commit).
# (field, accepted JSON types, may be null)
TOP_LEVEL = (
    ("schema_version", int, False), ("experiment_id", str, False), ("config", dict, False),
    ("metrics", dict, False), ("timestamp", str, False), ("completed", bool, False),
    ("total_epochs", int, False), ("target_epochs", int, False), ("stopped_early", bool, False),
    ("data_fingerprint", str, True), ("data_fingerprint_name", str, True),
    ("environment", dict, False), ("throughput", dict, False),
)


@dataclass(frozen=True)
class ResultsEntry:
    """One `*.json` in the results folder: its payload when valid, else the problem."""

    path: Path
    payload: dict[str, Any] | None
    problem: str | None

    @property
    def experiment_id(self) -> str | None:
        if self.payload is not None:
            return self.payload["experiment_id"]
        m = _NAME_RE.match(self.path.name)
        return m["id"] if m else None


def _parse_timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    for parse in (lambda s: dt.datetime.strptime(s, _NAME_FORMAT), dt.datetime.fromisoformat):
        try:
            return parse(value)
        except ValueError:
            pass
    return None


# ------------------------------------------------------------------------------------------
# Schema

def validate(payload: Any) -> str | None:
    """The first thing wrong with a results payload (as read back from JSON), or None."""
    if not isinstance(payload, dict):
        return f"expected a JSON object, found a {type(payload).__name__}"
    for key, kind, nullable in TOP_LEVEL:
        if key not in payload:
            return f"missing field {key!r}"
        problem = _type_problem(key, payload[key], kind, nullable)
        if problem:
            return problem
    if payload["schema_version"] != SCHEMA_VERSION:
        return f"schema_version is {payload['schema_version']}, this fastzhang reads {SCHEMA_VERSION}"
    if not payload["experiment_id"]:
        return "experiment_id is empty"
    if _parse_timestamp(payload["timestamp"]) is None:
        return f"timestamp {payload['timestamp']!r} is not YYYYmmdd_HHMMSS or ISO 8601"
    groups = (("environment", ENVIRONMENT_KEYS), ("throughput", THROUGHPUT_KEYS))
    if "execution" in payload:
        if not isinstance(payload["execution"], dict):
            return f"field 'execution' should be an object, found {payload['execution']!r:.40}"
        groups += (("execution", EXECUTION_KEYS),)
    return _metrics_problem(payload["metrics"]) or _keys_problem(payload, groups)


def _type_problem(key: str, value: Any, kind: type, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    expected = {int: "an integer", str: "a string", dict: "an object", bool: "true or false"}[kind]
    return None if ok else f"field {key!r} should be {expected}, found {value!r:.40}"


def _metrics_problem(metrics: dict[str, Any]) -> str | None:
    lengths = set()
    for key in METRIC_SERIES + tuple(k for k in LATER_SERIES if k in metrics):
        series = metrics.get(key)
        if not isinstance(series, list):
            return f"metrics.{key} should be a list, found {series!r:.40}"
        # orjson writes NaN and infinity (a diverged loss) as null.
        if not all(v is None or _is_number(v) for v in series):
            return f"metrics.{key} holds a value that is not a number"
        lengths.add(len(series))
    if len(lengths) > 1:
        return f"metrics series have different lengths ({sorted(lengths)})"
    for key in METRIC_SCALARS:
        if key not in metrics:
            if key in LATER_SCALARS:
                continue
            return f"missing field 'metrics.{key}'"
        if not (metrics[key] is None or _is_number(metrics[key])):
            return f"metrics.{key} should be a number or null, found {metrics[key]!r:.40}"
    return None


def best_epoch(epochs: list, test_acc: list) -> int | None:
    """The epoch (1-based) that first reached the best test accuracy: an equal accuracy later is no
    improvement. The one rule for `metrics.best_epoch`, the best checkpoint (state.is_best) and the
    age early stopping counts (engine.early_stop_due)."""
    scored = [(acc, -epoch) for epoch, acc in zip(epochs, test_acc) if acc is not None and acc == acc]
    return -max(scored)[1] if scored else None


def how_it_ended(payload: dict[str, Any]) -> str:
    """Why a completed run's training ended, in words (the completion block)."""
    m, cfg = payload["metrics"], payload["config"]
    if m.get("early_stop_epoch") is not None:
        return (f"early stopping after epoch {m['early_stop_epoch']}: test accuracy last improved at epoch "
                f"{best_epoch(m['epochs'], m['test_acc'])} (patience {cfg.get('early_stop_patience')})")
    if payload["stopped_early"] and m.get("fit_epoch") is not None:
        return f"train accuracy reached {cfg.get('stop_at_train_acc')}% at epoch {m['fit_epoch']}"
    return f"{payload['total_epochs']} of {payload['target_epochs']} epochs trained"


def _keys_problem(payload: dict[str, Any], groups: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for group, keys in groups:
        for key in keys:
            if key not in payload[group]:
                return f"missing field '{group}.{key}'"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------
# Write

def _default(obj: Any) -> Any:
    # Torch tensors and anything else with tolist() (orjson handles numpy itself).
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"results payload: a {type(obj).__name__} cannot be written as JSON")


def write(results_dir: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write the results file for `payload`; returns its path. Never overwrites a file.

    Raises ValueError when the payload does not match the schema (a bug in the
    caller: the file would be unreadable as a completed experiment), WriteError
    when the disk refuses.
    """
    data = orjson.dumps(
        payload, default=_default,
        option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
    )
    problem = validate(orjson.loads(data))
    if problem:
        raise ValueError(f"results payload for {payload.get('experiment_id')!r} is invalid: {problem}")
    stamp = _parse_timestamp(payload["timestamp"]).strftime(_NAME_FORMAT)
    folder = Path(results_dir)
    path = folder / f"{payload['experiment_id']}_{stamp}.json"
    n = 2
    while path.exists():  # the experiment's lock keeps another writer away meanwhile
        path = folder / f"{payload['experiment_id']}_{stamp}_{n}.json"
        n += 1
    atomic_write(path, lambda f: f.write(data), what="results file")
    return path


# ------------------------------------------------------------------------------------------
# Read

def read(path: str | Path) -> ResultsEntry:
    """Parse and validate one file; problems are returned, not raised."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        return ResultsEntry(path, None, f"cannot read it: {e.strerror or e}")
    if not raw.strip():
        return ResultsEntry(path, None, "the file is empty")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return ResultsEntry(path, None, f"not valid JSON ({e})")
    problem = validate(payload)
    if problem is None and not _named_for(path, payload["experiment_id"]):
        problem = (
            f"it holds experiment {payload['experiment_id']!r}, which does not match its name"
            if _NAME_RE.match(path.name) else "its name is not {experiment_id}_{YYYYmmdd_HHMMSS}.json"
        )
    return ResultsEntry(path, None if problem else payload, problem)


def _named_for(path: Path, experiment_id: str) -> bool:
    return re.fullmatch(rf"{re.escape(experiment_id)}_{_STAMP}(?:_\d+)?\.json", path.name) is not None


def _order(path: Path) -> tuple[str, int]:
    m = _NAME_RE.match(path.name)
    return (m["stamp"], int(m["n"] or 1)) if m else ("", 0)


def scan(results_dir: str | Path) -> list[ResultsEntry]:
    """Every `*.json` directly in `results_dir`, oldest first, each valid or with its problem."""
    folder = Path(results_dir)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.json") if p.is_file() and not p.name.startswith(".")]
    return [read(p) for p in sorted(files, key=lambda p: (_order(p), p.name))]


def files_for(results_dir: str | Path, experiment_id: str) -> list[Path]:
    """Files named exactly `{experiment_id}_{YYYYmmdd_HHMMSS}(_N).json`, oldest first.

    An ID can be a prefix of another (`..._baseline` of `..._baseline_wd0.0005`),
    so only a timestamp may follow it.
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _named_for(p, experiment_id) and p.is_file()), key=_order)


def experiment_files(results_dir: str | Path, experiment_id: str) -> list[Path]:
    """`files_for` plus temporary files a killed writer left behind (for `clean`)."""
    folder = Path(results_dir)
    if not folder.is_dir():
        return []
    tmp = re.compile(rf"^\.{re.escape(experiment_id)}_{_STAMP}(?:_\d+)?\.json\.[A-Za-z0-9_]+\.tmp$")
    stale = [p for p in folder.iterdir() if tmp.match(p.name) and p.is_file()]
    return files_for(folder, experiment_id) + sorted(stale)


def find_completed(results_dir: str | Path, experiment_id: str, *,
                   report: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The newest valid results file that says `experiment_id` completed, else None.

    Damaged files on the way are skipped, and reported with warn() if `report`
    (a caller that looks twice reports once).
    """
    damaged = []
    for path in reversed(files_for(results_dir, experiment_id)):
        entry = read(path)
        if entry.problem:
            damaged.append(entry)
        elif entry.payload["completed"]:
            for bad in damaged if report else ():
                warn(f"results file {bad.path} is damaged ({bad.problem}); using the older {path}")
            return path, entry.payload
    for bad in damaged if report else ():
        warn(f"results file {bad.path} is damaged ({bad.problem}); treating the experiment as not completed")
    return None
