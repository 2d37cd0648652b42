"""Fused gather -> crop -> per-image whitening -> cast, one Triton program per image.

Torch reference: `fastzhang.data.preprocess.preprocess(images[idx], offsets, ...)`.
The torch path launches a gather, a crop gather, a cast, a division, two
reductions and a normalization, each a pass over the batch in global memory; a
28x28x3 image (2352 values) fits in one program's registers, so the kernel reads
each uint8 pixel once and writes each output value once.

Numerics follow the reference: the image is scaled by /255 and whitened in
float32 (mean, then the population variance around it, std clamped below at
1/sqrt(N) as in TensorFlow's per_image_standardization), with IEEE-rounded
sqrt and division, and rounded once to the output dtype on the store.
dtype is float32 or bfloat16 (what the training paths use).
"""

from __future__ import annotations

import os

import torch

from fastzhang.data.preprocess import CROP, IMAGE_SIZE, MAX_OFFSET, MIN_STD, NUM_PIXELS
from fastzhang.errors import UsageError

try:
    import triton
    import triton.language as tl
except ImportError:  # the optional extra: fastzhang[triton]
    triton = None

BLOCK = 4096  # next power of two above NUM_PIXELS; the tail is masked
assert NUM_PIXELS <= BLOCK
OUT_DTYPES = (torch.float32, torch.bfloat16)


def unavailable(device: torch.device | str | None = None) -> str | None:
    """Why the kernel cannot run on `device` (None: on any device of this machine), or None if it can.

    It runs on CUDA, or anywhere under Triton's CPU interpreter (TRITON_INTERPRET=1,
    read by triton when it is first imported: the tests set it for a child process).
    """
    if triton is None:
        return "needs triton: pip install 'fastzhang[triton]'"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return None
    on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    return None if on_cuda else "needs a CUDA device (or TRITON_INTERPRET=1, Triton's CPU interpreter)"


def available(device: torch.device | str | None = None) -> bool:
    """Triton is importable and can run on `device`: a CUDA device, or any under its CPU interpreter."""
    return unavailable(device) is None


if triton is not None:

    @triton.jit
    def _preprocess_kernel(
        images_ptr,
        idx_ptr,
        offsets_ptr,
        out_ptr,
        min_std,
        SIZE: tl.constexpr,
        CROP: tl.constexpr,
        OUT_BF16: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        b = tl.program_id(0)
        src = tl.load(idx_ptr + b)
        dy = tl.load(offsets_ptr + 2 * b)
        dx = tl.load(offsets_ptr + 2 * b + 1)

        # e enumerates the crop in CHW order: e = (c * CROP + row) * CROP + col.
        e = tl.arange(0, BLOCK_SIZE)
        mask = e < 3 * CROP * CROP
        c = e // (CROP * CROP)
        row = (e // CROP) % CROP
        col = e % CROP
        src_off = src * (3 * SIZE * SIZE) + c * (SIZE * SIZE) + (row + dy) * SIZE + (col + dx)
        x = tl.load(images_ptr + src_off, mask=mask, other=0).to(tl.float32)
        x = tl.math.div_rn(x, 255.0)

        mean = tl.sum(x, axis=0) / (3 * CROP * CROP)
        d = tl.where(mask, x - mean, 0.0)
        var = tl.sum(d * d, axis=0) / (3 * CROP * CROP)
        std = tl.maximum(tl.sqrt_rn(var), min_std)
        y = tl.math.div_rn(d, std)

        if CHANNELS_LAST:
            dst = b * (3 * CROP * CROP) + (row * CROP + col) * 3 + c
        else:
            dst = b * (3 * CROP * CROP) + e
        if OUT_BF16:
            # Round to nearest even by hand: the GPU's cast does, the CPU interpreter's
            # truncates; this way both give torch's .to(torch.bfloat16) bit for bit.
            bits = y.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            tl.store(out_ptr + dst, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(out_ptr + dst, y, mask=mask)


def _check_inputs(images_u8: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, dtype) -> None:
    if images_u8.dtype != torch.uint8 or tuple(images_u8.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images_u8: expected uint8 [N, 3, 32, 32], got {images_u8.dtype} {list(images_u8.shape)}")
    if not images_u8.is_contiguous():
        raise ValueError("images_u8: expected a contiguous NCHW tensor")
    if idx.dtype != torch.int64 or idx.dim() != 1:
        raise ValueError(f"idx: expected int64 [B], got {idx.dtype} {list(idx.shape)}")
    if offsets.dtype != torch.int64 or tuple(offsets.shape) != (idx.shape[0], 2):
        raise ValueError(f"offsets: expected int64 [{idx.shape[0]}, 2], got {offsets.dtype} {list(offsets.shape)}")
    if not (images_u8.device == idx.device == offsets.device):
        devices = f"{images_u8.device}, {idx.device}, {offsets.device}"
        raise ValueError(f"images_u8, idx, offsets: expected one device, got {devices}")
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype: expected one of {OUT_DTYPES}, got {dtype}")
    # Out-of-range values would read another image's pixels. Checking them on a GPU costs a
    # host sync per batch, so only host tensors are checked; epoch plans are in range by design.
    if images_u8.device.type == "cpu" and idx.numel():
        if int(idx.min()) < 0 or int(idx.max()) >= images_u8.shape[0]:
            raise ValueError(f"idx: expected values in [0, {images_u8.shape[0]})")
        if int(offsets.min()) < 0 or int(offsets.max()) > MAX_OFFSET:
            raise ValueError(f"offsets: expected values in [0, {MAX_OFFSET}]")


def fused_preprocess(
    images_u8: torch.Tensor,
    idx: torch.Tensor,
    offsets: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Whitened [B, 3, 28, 28] crops of images_u8[idx] at offsets (dy, dx), in `dtype`.

    Equal to `preprocess(images_u8[idx], offsets, dtype=dtype, channels_last=channels_last)`
    (float32 within 1e-5; bfloat16 is that float32 result rounded to nearest even).
    `images_u8` is the whole resident set [N, 3, 32, 32]; idx [B] and offsets [B, 2]
    are int64 on its device.
    """
    if triton is None:
        raise UsageError(f"the Triton kernel {unavailable()}")
    _check_inputs(images_u8, idx, offsets, dtype)
    why = unavailable(images_u8.device)
    if why:
        raise UsageError(f"the Triton kernel {why}; the images are on {images_u8.device}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((idx.shape[0], 3, CROP, CROP), dtype=dtype, device=images_u8.device, memory_format=fmt)
    if idx.shape[0] == 0:
        return out
    _preprocess_kernel[(idx.shape[0],)](
        images_u8, idx.contiguous(), offsets.contiguous(), out, MIN_STD,
        SIZE=IMAGE_SIZE, CROP=CROP, OUT_BF16=dtype == torch.bfloat16, CHANNELS_LAST=channels_last,
        BLOCK_SIZE=BLOCK, num_warps=8,
    )
    return out
