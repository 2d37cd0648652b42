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
    """Crop uint8 [B, 3, 32, 32] to [B, 3, 28, 28] at per-image (dy, dx) offsets, in one gather.

    A strided view lists every 28x28 window of every image ([B, 5, 5, 3, 28, 28],
    no copy); indexing it by (image, dy, dx) copies just the chosen windows. This
    is ~5x faster on CPU than a 4-index gather (bench/NOTES.md).
    """
    images = images.contiguous()
    b, c = images.shape[0], images.shape[1]
    span = MAX_OFFSET + 1
    windows = images.as_strided(
        (b, span, span, c, CROP, CROP),
        (c * IMAGE_SIZE * IMAGE_SIZE, IMAGE_SIZE, 1, IMAGE_SIZE * IMAGE_SIZE, IMAGE_SIZE, 1),
    )
    return windows[torch.arange(b, device=images.device), offsets[:, 0], offsets[:, 1]]


def whiten(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Per-image standardization of float [B, C, H, W] (TensorFlow's definition).

    `scale` is the unit of x (255 for raw pixel values): standardizing x/scale is
    (x - mean) / max(std, scale * MIN_STD), so the division by 255 costs no pass.
    Two passes: the deviations, then their norm; both in place on a new tensor.
    """
    flat = x.reshape(x.shape[0], -1)
    dev = flat - flat.mean(dim=1, keepdim=True)
    std = torch.linalg.vector_norm(dev, dim=1, keepdim=True).div_(math.sqrt(flat.shape[1]))
    return dev.div_(std.clamp_min_(scale * MIN_STD)).view_as(x)


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
    x = whiten(crop(images, offsets).float(), scale=255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype)
