"""The DALI loader (`--loader dali`): the batches of data.batches, preprocessed by DALI.

The epoch plan still decides everything random: the step's images, gathered on the data's
device, and the plan's crop offsets feed a DALI pipeline (on the GPU of `device`, or CPU-only)
that crops, scales and whitens with `preprocess`'s formula (equal within float32 rounding).
Feeding ahead: step k is handed out and step k + 1 at once gathered, fed and scheduled on
torch's stream, so DALI preprocesses it while step k trains (prefetch_queue_depth=1); any
other request (a resume) first drops the batch fed ahead. Never call `train_batch` inside a
captured CUDA graph: DALI launches its own kernels.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from fastzhang.data.batches import step_span, steps_per_epoch
from fastzhang.data.preprocess import CROP, MIN_STD
from fastzhang.errors import UsageError

INSTALL_HINT = "loader 'dali' needs nvidia-dali: pip install 'fastzhang[dali]'"


def available() -> bool:
    """nvidia-dali is installed (its import is deferred until a loader is built)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False


def _build_pipeline(dali_device: str, batch_size: int, device_id: int | None):
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

    # One batch in flight (the one fed ahead); exec_dynamic: outputs bound to torch's stream.
    threads = max(1, min(4, os.cpu_count() or 1))
    pipe = whiten_crops(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1,
                        exec_dynamic=True)
    pipe.build()
    return pipe


class DaliLoader:
    """`train_batch(plan, step, dtype=..., channels_last=...)`: what `data.batches.train_batch` returns."""

    def __init__(self, data, batch_size: int, *, device: torch.device | str):
        if not available():
            raise UsageError(INSTALL_HINT)
        self.data, self.batch_size, self.device = data, batch_size, torch.device(device)
        if data.train_x.device.type != self.device.type:
            raise UsageError(f"device: the data lives on {data.train_x.device}, the loader was asked for {self.device}")
        self._device_id = None  # None: a CPU-only pipeline
        if self.device.type == "cuda":
            self._device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._pipe = None
        self._pipeline()  # built now: DALI's own errors surface before a run starts
        self._ahead = None  # (plan, step) fed and scheduled, not yet handed out
        self._plan = None
        self._anchors = None

    def _pipeline(self):
        if self._pipe is None:  # first use, or after a failed call left it half fed
            dali_device = "gpu" if self.device.type == "cuda" else "cpu"
            self._pipe = _build_pipeline(dali_device, self.batch_size, self._device_id)
        return self._pipe

    def train_batch(self, plan, step: int, *, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        """(x, y) of batch `step` (from 0) of the epoch `plan`: x whitened [B, 3, 28, 28], y int64 [B]."""
        n = self.data.train_x.shape[0]
        span = step_span(plan, step, self.batch_size, n)
        idx = plan.order[span]
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            x = self._take(plan, step, span, stream)
            if step + 1 < steps_per_epoch(n, self.batch_size):
                self._feed(plan, step_span(plan, step + 1, self.batch_size, n), stream)
                self._ahead = (plan, step + 1)
        except BaseException:
            self._pipe, self._ahead = None, None  # maybe half fed: a fresh pipeline on the next call
            raise
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(dtype), self.data.train_y.index_select(0, idx)

    def _take(self, plan, step: int, span: slice, stream) -> torch.Tensor:
        """The float32 crops of (plan, step), fed now unless they were fed ahead."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] is not plan or ahead[1] != step:
            if ahead is not None:
                self._pipe.outputs()  # the batch fed ahead for another request: dropped unused
            self._feed(plan, span, stream)
        (crops,) = self._pipe.outputs(cuda_stream=stream)
        x = torch.empty((span.stop - span.start, 3, CROP, CROP), dtype=torch.float32, device=self.device)
        feed_ndarray(crops.as_tensor(), x, cuda_stream=stream)
        return x

    def _feed(self, plan, span: slice, stream) -> None:
        """Gather the batch at `span` on torch's stream, feed it and schedule its run."""
        pipe = self._pipeline()
        images = self.data.train_x.index_select(0, plan.order[span])
        if stream is not None:
            pipe.feed_input("images", images, cuda_stream=stream)
        else:
            pipe.feed_input("images", images.numpy())
        if plan is not self._plan:  # DALI reads slice anchors on the host: copy a plan's offsets once
            self._anchors, self._plan = plan.offsets.to("cpu", torch.int32).numpy(), plan
        pipe.feed_input("anchors", self._anchors[span])
        pipe.schedule_run()
