"""The DALI loader (`--loader dali`): the batches of data.batches, preprocessed by DALI.

The epoch plan still decides everything random: the loader gathers
`train_x[plan.order[step]]` on the data's device, feeds the uint8 images and the
plan's crop offsets to a DALI pipeline through two `fn.external_source` nodes,
and DALI crops (`fn.slice` with per-sample anchors), scales by 1/255 and whitens
each image with `preprocess`'s formula: (x - mean) / max(std, 1/sqrt(N)), the
population std over all of the crop's values. A batch is therefore a function
of (seed, epoch, step) alone, so resuming mid-epoch stays exact, and the values
equal `preprocess`'s within float32 rounding (1e-5).

On CUDA the pipeline runs on the GPU of `device` and is fed device tensors; on
the CPU it is a CPU-only pipeline (`device_id=None`). Each `train_batch` call
feeds one batch and runs the pipeline synchronously (no prefetching), because a
caller may ask for any step. DALI launches its own kernels on its own stream:
call `train_batch` outside any captured CUDA graph and capture only the model
step that consumes its output.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from fastzhang.data.batches import step_span
from fastzhang.data.preprocess import CROP, MIN_STD
from fastzhang.errors import UsageError

INSTALL_HINT = "the DALI loader needs nvidia-dali: pip install 'fastzhang[dali]'"


def available() -> bool:
    """nvidia-dali is installed (its import is deferred until a loader is built)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False


def _build_pipeline(dali_device: str, batch_size: int, num_threads: int, device_id: int | None):
    """A pipeline: images (uint8 CHW) + anchors (int32 [dy, dx]) -> whitened float32 CHW crops."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def
    def whiten_crops():
        images = fn.external_source(name="images", device=dali_device, layout="CHW", dtype=types.UINT8, ndim=3)
        anchors = fn.external_source(name="anchors", device="cpu", dtype=types.INT32, ndim=1)
        x = fn.slice(images, start=anchors, shape=[CROP, CROP], axis_names="HW")
        x = fn.cast(x, dtype=types.FLOAT) / 255.0
        mean = fn.reductions.mean(x, keep_dims=True)
        std = fn.reductions.std_dev(x, mean, keep_dims=True)  # ddof=0: the population std
        return (x - mean) / dmath.max(std, MIN_STD)

    # prefetch_queue_depth=1: one batch in flight, so each run returns the batch fed just before it.
    pipe = whiten_crops(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
    pipe.build()
    return pipe


class DaliLoader:
    """Training batches of a ResidentData, preprocessed by a DALI pipeline on `device`.

    `train_batch(plan, step, dtype=..., channels_last=...)` returns what
    `data.batches.train_batch(data, plan, step, batch_size, ...)` returns.
    """

    def __init__(self, data, batch_size: int, *, device: torch.device | str, num_threads: int | None = None):
        if not available():
            raise UsageError(INSTALL_HINT)
        if batch_size < 1:
            raise UsageError(f"batch_size: expected a positive integer, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise UsageError(f"device: the DALI loader runs on cpu or cuda, got {self.device}")
        if data.train_x.device.type != self.device.type:
            raise UsageError(f"device: the data lives on {data.train_x.device}, the loader was asked for {self.device}")
        on_gpu = self.device.type == "cuda"
        device_id = None  # None: a CPU-only pipeline
        if on_gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        self._pipe = _build_pipeline("gpu" if on_gpu else "cpu", batch_size, threads, device_id)
        self._plan = None
        self._anchors = None

    def _host_anchors(self, plan):
        # DALI reads slice anchors on the host: copy a plan's offsets once, not once per step.
        if plan is not self._plan:
            self._anchors = plan.offsets.to("cpu", torch.int32).numpy()
            self._plan = plan
        return self._anchors

    def train_batch(self, plan, step: int, *, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        """(x, y) of batch `step` (from 0) of the epoch `plan`: x whitened [B, 3, 28, 28], y int64 [B]."""
        span = step_span(plan, step, self.batch_size, self.data.train_x.shape[0])
        idx = plan.order[span]
        images = self.data.train_x.index_select(0, idx)
        anchors = self._host_anchors(plan)[span]
        x = torch.empty((idx.shape[0], 3, CROP, CROP), dtype=torch.float32, device=self.device)
        self._run(images, anchors, x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(dtype), self.data.train_y.index_select(0, idx)

    def _run(self, images: torch.Tensor, anchors, out: torch.Tensor) -> None:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if out.is_cuda:
            stream = torch.cuda.current_stream(out.device)
            self._pipe.feed_input("images", images, cuda_stream=stream)
        else:
            stream = None
            self._pipe.feed_input("images", images.numpy())
        self._pipe.feed_input("anchors", anchors)
        (crops,) = self._pipe.run()
        feed_ndarray(crops.as_tensor(), out, cuda_stream=stream)
