"""One typed experiment configuration, validated once at the edge.

A config comes from a YAML recipe, from command-line flags, or both (flags win).
`ExperimentConfig.from_mapping` is the single place that checks types and ranges;
everything downstream trusts the object. Fields split in two groups:

* identity fields decide what is trained. They make up the experiment ID, are
  stored in every checkpoint, and a checkpoint whose identity differs from the
  requested one is never reused.
* execution fields decide how and where it runs (device, speed switches, data
  folder, logging). Changing them does not change the experiment, so a run may
  resume on another device or with another data path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from fastzhang.data.choices import DATASETS, RANDOMIZATIONS
from fastzhang.errors import UsageError, did_you_mean
from fastzhang.models.registry import MODELS, default_lr

SPEED_SWITCHES = ("amp", "compile", "cuda_graphs", "channels_last")  # train/fastpath.Speed's fields
LOADERS = ("auto", "torch", "triton", "dali")  # train/loaders.py: only auto chooses


def choices() -> dict[str, tuple[str, ...]]:
    """The one table of fields whose values are names, with the values allowed: config checks them
    (suggesting the closest), `fastzhang run`'s usage shows them. A function: models may be registered late."""
    return {"model": tuple(MODELS), "dataset": DATASETS, "randomization": RANDOMIZATIONS,
            **dict.fromkeys(SPEED_SWITCHES, ("auto", "on", "off")), "loader": LOADERS}

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigError(UsageError, ValueError):
    """A bad configuration value; the message is one line naming the field."""


@dataclass(frozen=True)
class ExperimentConfig:
    # --- identity: what is trained -------------------------------------------------
    model: str = "inception"
    dataset: str = "cifar10"
    randomization: str = "none"
    corrupt_prob: float = 0.0
    random_crop: bool = False
    weight_decay: float = 0.0
    epochs: int = 100
    batch_size: int = 128
    lr: float | None = None  # None: the paper's default for the model
    lr_decay: float = 0.95
    momentum: float = 0.9
    seed: int = 0  # initialization, batch order, crops; and the data's randomization unless data_seed is set
    data_seed: int | None = None  # the data set's randomization (labels, pixels, noise, subset); None: seed
    train_subset: int | None = None  # train on the first k images of a fixed shuffle
    stop_at_train_acc: float | None = None  # e.g. 100.0: stop once the epoch's train acc reaches it
    early_stop_patience: int | None = None  # N: stop once the best test accuracy is N epochs old
    early_stop_min_epochs: int = 0  # M: early stopping never ends a run before epoch M
    # --- execution: how and where it runs ----------------------------------------------
    device: str = "auto"
    data_dir: str | None = None
    amp: str = "auto"
    compile: str = "auto"
    cuda_graphs: str = "auto"
    channels_last: str = "auto"
    loader: str = "auto"
    checkpoint_every_steps: int | None = None
    snapshot_every: int | None = None  # keep {id}_epoch{E:03d}.pth every N epochs and at the last
    use_wandb: bool = False

    IDENTITY = (
        "model", "dataset", "randomization", "corrupt_prob", "random_crop", "weight_decay",
        "epochs", "batch_size", "lr", "lr_decay", "momentum", "seed", "data_seed",
        "train_subset",
        "stop_at_train_acc", "early_stop_patience", "early_stop_min_epochs",
    )

    # ---------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "ExperimentConfig":
        """Build and validate a config from plain values; unknown keys are errors."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: expected a mapping of settings, got {_type_name(values)}")
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                hint = did_you_mean(key, known) or f" (known: {', '.join(sorted(known))})"
                raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
        if values.get("randomization") == "partial" and "corrupt_prob" not in values:
            # corrupt_prob's default 0 would silently train the true labels
            raise ConfigError(f"{source}: randomization 'partial' needs corrupt_prob (the fraction of labels "
                              "replaced, e.g. 0.2)")
        checked = {key: _check_type(key, value, source) for key, value in values.items()}
        return _canonical(cls(**checked), source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "ExperimentConfig":
        """Read a YAML recipe; `overrides` (from flags) replace its values."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read recipe ({e.strerror or e})") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: broken YAML{where}: {getattr(e, 'problem', None) or e}") from None
        if values is None:
            raise ConfigError(f"{path}: recipe is empty; expected a mapping of settings")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got a {_type_name(values)}")
        return cls.from_mapping({**values, **(overrides or {})}, source=str(path))

    # ---------------------------------------------------------------------------------
    @property
    def effective_lr(self) -> float:
        return default_lr(self.model) if self.lr is None else self.lr

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment, with the learning rate and the data seed resolved."""
        return {**{name: getattr(self, name) for name in self.IDENTITY}, "lr": self.effective_lr,
                "data_seed": self.effective_data_seed}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return ExperimentConfig.from_mapping({**self.to_dict(), **changes})

    @property
    def experiment_id(self) -> str:
        return experiment_id(self.identity())


# ------------------------------------------------------------------------------------------
# Types and ranges

_FIELD_TYPES = {f.name: f.type for f in fields(ExperimentConfig)}


def _type_name(value: Any) -> str:
    names = {list: "list", dict: "mapping", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


# base type -> (accepts a value, what the error says it must be); booleans are not numbers
_TYPES = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _check_type(key: str, value: Any, source: str) -> Any:
    kind = _FIELD_TYPES[key]
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{source}: {key} must not be empty")
    base = kind.replace(" | None", "")
    accepts, expected = _TYPES[base]
    if not accepts(value):
        raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}")
    if base == "float" and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
    return float(value) if base == "float" else value


def _choice(source: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{source}: {key} must be one of {', '.join(allowed)}; got {value!r}"
                          + did_you_mean(value, allowed))


def _canonical(cfg: ExperimentConfig, source: str) -> ExperimentConfig:
    """Check ranges, then give equivalent experiments one spelling (and so one ID)."""
    for key, allowed in choices().items():
        _choice(source, key, getattr(cfg, key), allowed)
    if not _DEVICE_RE.match(cfg.device):
        raise ConfigError(f"{source}: device must be auto, cpu, cuda or cuda:N; got {cfg.device!r}")
    if not 0.0 <= cfg.corrupt_prob <= 1.0:
        raise ConfigError(f"{source}: corrupt_prob must be in [0, 1]; got {cfg.corrupt_prob}")
    if cfg.corrupt_prob and cfg.randomization not in ("partial", "random_labels"):
        raise ConfigError(
            f"{source}: corrupt_prob applies only to randomization 'partial'; got randomization {cfg.randomization!r}"
        )
    if cfg.randomization == "random_labels" and cfg.corrupt_prob not in (0.0, 1.0):
        raise ConfigError(f"{source}: random_labels means corrupt_prob 1.0; got {cfg.corrupt_prob}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"{source}: weight_decay must be >= 0; got {cfg.weight_decay}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"{source}: lr must be > 0; got {cfg.lr}")
    if not 0 < cfg.lr_decay <= 1:
        raise ConfigError(f"{source}: lr_decay must be in (0, 1]; got {cfg.lr_decay}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"{source}: momentum must be in [0, 1); got {cfg.momentum}")
    for key, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("data_seed", 0), ("train_subset", 1),
                     ("checkpoint_every_steps", 1), ("snapshot_every", 1), ("early_stop_patience", 1),
                     ("early_stop_min_epochs", 0)):
        if getattr(cfg, key) is not None and getattr(cfg, key) < low:
            raise ConfigError(f"{source}: {key} must be >= {low}; got {getattr(cfg, key)}")
    if cfg.stop_at_train_acc is not None and not 0 < cfg.stop_at_train_acc <= 100:
        raise ConfigError(f"{source}: stop_at_train_acc must be in (0, 100]; got {cfg.stop_at_train_acc}")
    if cfg.early_stop_min_epochs and cfg.early_stop_patience is None:
        raise ConfigError(f"{source}: early_stop_min_epochs applies only with early_stop_patience; "
                          f"got early_stop_min_epochs {cfg.early_stop_min_epochs} without it")
    if cfg.early_stop_min_epochs > cfg.epochs:
        raise ConfigError(f"{source}: early_stop_min_epochs must be at most epochs ({cfg.epochs}); "
                          f"got {cfg.early_stop_min_epochs}")
    if cfg.cuda_graphs == "on" and cfg.device == "cpu":
        raise ConfigError(f"{source}: cuda_graphs 'on' needs a CUDA device; got device 'cpu'")

    # Label corruption with p = 0 is the true data set and p = 1 is random labels
    # (same draws, see data/randomize.py), so they share the canonical spelling.
    changes: dict[str, Any] = {}
    if cfg.randomization == "partial" and cfg.corrupt_prob == 0.0:
        changes = {"randomization": "none"}
    elif cfg.randomization in ("partial", "random_labels") and cfg.corrupt_prob in (0.0, 1.0):
        changes = {"randomization": "random_labels", "corrupt_prob": 1.0}
    if cfg.lr is not None and cfg.lr == default_lr(cfg.model):
        changes["lr"] = None
    if cfg.data_seed == cfg.seed:  # the default: the data seed follows the seed
        changes["data_seed"] = None
    return dataclasses.replace(cfg, **changes) if changes else cfg


# ------------------------------------------------------------------------------------------
# Experiment IDs

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_DEFAULTS = ExperimentConfig()

# Settings beyond the base pattern, each with its short tag, in the fixed order they are appended.
_EXTRA_TAGS = (
    ("lr", "lr"), ("lr_decay", "decay"), ("momentum", "mom"), ("batch_size", "bs"),
    ("epochs", "ep"), ("train_subset", "sub"), ("stop_at_train_acc", "stop"),
    ("early_stop_patience", "es"), ("early_stop_min_epochs", "esmin"), ("seed", "seed"),
    ("data_seed", "dseed"),  # only when it differs from the seed: today's IDs stay
)


def _num(value: float | int) -> str:
    """Shortest stable spelling of a number: 0.0005 -> '0.0005', 100.0 -> '100'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _safe(token: Any) -> str:
    return _UNSAFE.sub("-", str(token)).strip("-.") or "x"


def experiment_id(identity: Mapping[str, Any]) -> str:
    """`{model}_{dataset}_{randomization}_{regularizers}_{corruption}` plus non-default extras.

    Every value passes through `_safe`, so the ID is a file name whatever the input.
    """
    model = identity["model"]
    rand = identity["randomization"]
    parts = [_safe(model), _safe(identity["dataset"])]
    parts.append({"none": "baseline", "partial": "partial_corrupt"}.get(rand, _safe(rand)))
    if identity["weight_decay"]:
        parts.append("wd" + _safe(_num(identity["weight_decay"])))
    if identity["random_crop"]:
        parts.append("crop")
    if rand == "partial":
        parts.append("corrupt" + _safe(_num(round(identity["corrupt_prob"] * 100, 6))))
    for key, tag in _EXTRA_TAGS:
        value = identity.get(key)  # an identity from before a field existed (data_seed) has its default
        default = {"lr": default_lr(model), "data_seed": identity.get("seed")}.get(key, getattr(_DEFAULTS, key))
        if value is not None and value != default:
            parts.append(tag + _safe(_num(value)))
    out = "_".join(parts)
    if len(out) > 180:  # keep file names short; the hash keeps long IDs distinct
        out = out[:160] + "_" + hashlib.sha256(out.encode()).hexdigest()[:12]
    return out
