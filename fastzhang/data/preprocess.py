"""The one preprocessing function: uint8 CIFAR images -> whitened 28x28 float tensors.

Every data path (the resident torch loader, evaluation, DALI, the Triton kernel)
is tested against `preprocess`. It follows the paper's pipeline: scale to
[0, 1], crop 32x32 -> 28x28 at per-image offsets, then TensorFlow's per-image
standardization: (x - mean) / max(std, 1/sqrt(N)), N = 28*28*3, with the
population std over all of an image's pixels and channels.
"""

from __future__ import annotations

import math

import torch

IMAGE_SIZE = 32
CROP = 28
NUM_PIXELS = CROP * CROP * 3
MIN_STD = 1.0 / math.sqrt(NUM_PIXELS)
CENTER = (IMAGE_SIZE - CROP) // 2  # 2: the center crop's offset on both axes
MAX_OFFSET = IMAGE_SIZE - CROP  # offsets are drawn from 0..4 inclusive


def center_offsets(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Offsets [batch, 2] (dy, dx) of the center crop."""
    return torch.full((batch, 2), CENTER, dtype=torch.int64, device=device)


def crop(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Crop uint8 [B, 3, 32, 32] to [B, 3, 28, 28] at per-image (dy, dx) offsets, in one gather."""
    b = images.shape[0]
    ar = torch.arange(CROP, device=images.device)
    rows = (offsets[:, 0:1] + ar).view(b, 1, CROP, 1)
    cols = (offsets[:, 1:2] + ar).view(b, 1, 1, CROP)
    batch_idx = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chan_idx = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return images[batch_idx, chan_idx, rows, cols]


def whiten(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardization of float [B, C, H, W] (TensorFlow's definition)."""
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, correction=0, keepdim=True).clamp_min(MIN_STD)
    return ((flat - mean) / std).view_as(x)


def preprocess(
    images: torch.Tensor,
    offsets: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] + offsets [B, 2] -> whitened [B, 3, 28, 28] in `dtype`.

    Whitening is computed in float32 whatever the output dtype, so a bf16 batch is
    the float32 batch rounded once.
    """
    x = whiten(crop(images, offsets).float().div_(255.0))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype)
