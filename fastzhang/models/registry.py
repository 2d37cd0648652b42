"""Every model fastzhang can train, one entry each, with the facts the rest of the package reads.

Adding a model: its nn.Module (built as `Class(num_classes=..., **options)`) in a module of
this package and one `ModelSpec` in `MODELS`; the config, `run --help`, the speed defaults,
`fastzhang models` and the report read this table. Nothing here imports torch (a builder is
imported on the first build), so validating a config, and skipping a completed run, stays free of it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable


@dataclass(frozen=True)
class ModelSpec:
    builder: str  # "module:attribute", called with num_classes= and `options`
    default_lr: float  # the paper's initial learning rate (Appendix A)
    convolutional: bool  # channels_last pays off; an MLP would only pay a copy
    paper_params: int | None = None  # Table 1: trainable parameters for 10 classes
    display_name: str | None = None  # the paper's name for it
    options: dict[str, Any] = field(default_factory=dict)
    kernels: bool = False  # parts that `compile: auto` compiles on a CPU (models/lrn.Kernels), where the whole model loses

    def constructor(self) -> Callable[..., Any]:
        """The builder with its options bound; imports the builder's module (and so torch)."""
        module, _, attribute = self.builder.partition(":")
        return partial(getattr(importlib.import_module(module), attribute), **self.options)


# Appendix A: lr 0.1 for Inception with and without BatchNorm, 0.01 for AlexNet and the MLPs.
MODELS: dict[str, ModelSpec] = {
    "inception": ModelSpec("fastzhang.models.inception:SmallInception", 0.1, True, 1_649_402,
                           "Inception", {"batchnorm": True}),
    "inception_no_bn": ModelSpec("fastzhang.models.inception:SmallInception", 0.1, True, 1_649_402,
                                 "Inception w/o BatchNorm", {"batchnorm": False}),
    "alexnet": ModelSpec("fastzhang.models.alexnet:SmallAlexNet", 0.01, True, 1_387_786, "AlexNet", kernels=True),
    "mlp1": ModelSpec("fastzhang.models.mlp:MLP", 0.01, False, 1_209_866, "MLP 1x512", {"depth": 1, "width": 512}),
    "mlp3": ModelSpec("fastzhang.models.mlp:MLP", 0.01, False, 1_735_178, "MLP 3x512", {"depth": 3, "width": 512}),
}


def spec(name: str) -> ModelSpec:
    """The entry for `name`; ValueError naming the known models otherwise."""
    if name not in MODELS:
        from fastzhang.errors import did_you_mean

        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}" + did_you_mean(name, MODELS))
    return MODELS[name]


def default_lr(name: str) -> float | None:
    """The paper's learning rate for `name`; None for a model not in the table."""
    entry = MODELS.get(name)
    return entry.default_lr if entry else None


def display_name(name: str) -> str:
    """The paper's name for the model where it has one, else its registry name."""
    entry = MODELS.get(name)
    return entry.display_name if entry and entry.display_name else name
