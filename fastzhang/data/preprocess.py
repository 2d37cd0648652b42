"""The one preprocessing function, which every data path is tested against: uint8 CIFAR images -> whitened
28x28 floats. The paper's pipeline: scale to [0, 1], crop 32x32 -> 28x28 at per-image offsets, then
TensorFlow's per-image standardization (x - mean) / max(std, 1/sqrt(28*28*3)), population std.
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


def crop(images: torch.Tensor, offsets: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Crop uint8 `images[index]` (all when index is None) [B, 3, 32, 32] to [B, 3, 28, 28] at (dy, dx) offsets.

    A strided view of the flat pixel buffer holds a [3, 28, 28] window starting at every
    byte; the crop of image i at (dy, dx) is window i*3072 + dy*32 + dx, so one index_select
    gathers the batch: ~4x faster on the CPU than a window view indexed by (image, dy, dx)
    (bench/NOTES.md §2c).
    """
    images = images.contiguous()
    n, c = images.shape[0], images.shape[1]
    image = c * IMAGE_SIZE * IMAGE_SIZE
    if index is None:
        index = torch.arange(n, device=images.device)
    if n == 0 or index.numel() == 0:
        return images.new_empty((index.numel(), c, CROP, CROP))
    # The last valid start leaves room for one window: (c-1) planes, CROP-1 rows, CROP columns.
    span = (c - 1) * IMAGE_SIZE * IMAGE_SIZE + (CROP - 1) * IMAGE_SIZE + CROP
    windows = images.view(-1).as_strided((n * image - span + 1, c, CROP, CROP),
                                         (1, IMAGE_SIZE * IMAGE_SIZE, IMAGE_SIZE, 1))
    starts = index * image + offsets[:, 0] * IMAGE_SIZE + offsets[:, 1]
    return windows.index_select(0, starts)


def whiten(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Per-image standardization of [B, C, H, W] (TensorFlow's definition), as a new float32 tensor.

    `scale` is the unit of x (255 for pixels): x/scale standardized is (x - mean) / max(std, scale *
    MIN_STD), so the division costs no pass. Two passes, in place on the one copy (also the cast):
    a fresh CPU buffer per step costs page faults worth a whole pass (bench/NOTES.md §2c).
    """
    flat = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True).view(x.shape[0], -1)
    flat.sub_(flat.mean(dim=1, keepdim=True))
    std = torch.linalg.vector_norm(flat, dim=1, keepdim=True).div_(math.sqrt(flat.shape[1]))
    return flat.div_(std.clamp_min_(scale * MIN_STD)).view(x.shape)


def preprocess(
    images: torch.Tensor,
    offsets: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] (or `images[index]`, without the copy) + offsets [B, 2] -> whitened [B, 3, 28, 28]
    in `dtype`, computed in float32 whatever the dtype: a bf16 batch is the float32 batch rounded once."""
    x = whiten(crop(images, offsets, index), scale=255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype)
