"""The paper's five networks as plain nn.Modules, built by name.

Each takes a float [B, 3, 28, 28] batch (NCHW or channels_last) and returns
[B, num_classes] logits. `build_model(name, num_classes, seed)` gives the same
initial weights for the same seed on every machine and leaves the caller's
random state untouched. This package imports nothing else of fastzhang.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from fastzhang.models.alexnet import SmallAlexNet
from fastzhang.models.inception import SmallInception
from fastzhang.models.lrn import LocalResponseNorm, local_response_norm
from fastzhang.models.mlp import MLP

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "inception": partial(SmallInception, batchnorm=True),
    "inception_no_bn": partial(SmallInception, batchnorm=False),
    "alexnet": SmallAlexNet,
    "mlp1": partial(MLP, depth=1, width=512),
    "mlp3": partial(MLP, depth=3, width=512),
}

# Table 1 of Zhang et al. 2017: trainable parameters for 10 classes.
PAPER_PARAMS: dict[str, int] = {
    "inception": 1_649_402,
    "inception_no_bn": 1_649_402,
    "alexnet": 1_387_786,
    "mlp1": 1_209_866,
    "mlp3": 1_735_178,
}


def build_model(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A fresh model on the CPU, its initial weights a function of (name, num_classes, seed) alone."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(REGISTRY)}")
    # A private CPU random stream: the caller's global RNG state is restored on exit.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        return REGISTRY[name](num_classes=num_classes)


def count_trainable(model: nn.Module) -> int:
    """Number of scalars in the parameters the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, image_shape: tuple[int, int, int] = (3, 28, 28)) -> int:
    """Forward FLOPs for one image of convolutions and matrix products, as FlopCounterMode counts them.

    Pooling, BatchNorm, ReLU and other elementwise work is not counted, and
    neither is LRN: its channel-window sum is a matmul with a 0/1 band matrix
    here, an implementation detail rather than the network's arithmetic.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model.eval()(torch.zeros(1, *image_shape, device=device))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    lrn = {f"{root}.{n}" for n, m in model.named_modules() if isinstance(m, LocalResponseNorm)}
    return counter.get_total_flops() - sum(sum(counts.get(k, {}).values()) for k in lrn)


__all__ = [
    "MLP",
    "PAPER_PARAMS",
    "REGISTRY",
    "LocalResponseNorm",
    "SmallAlexNet",
    "SmallInception",
    "build_model",
    "count_trainable",
    "forward_flops",
    "local_response_norm",
]
