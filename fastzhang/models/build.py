"""Build a model by its registry name, with initial weights a function of the seed alone."""

from __future__ import annotations

import torch
from torch import nn

from fastzhang.models.registry import spec


def build_model(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A fresh model on the CPU, its initial weights a function of (name, num_classes, seed) alone."""
    make = spec(name).constructor()
    # A private CPU random stream: the caller's global RNG state is restored on exit.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        return make(num_classes=num_classes)
