"""What a built model costs: trainable parameters (Table 1's count) and forward FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from fastzhang.models.lrn import LocalResponseNorm


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
