"""Which data path builds the training batches: `loader(plan, step) -> (x, y)`, the same batches on every path.

The config's `loader`: torch (data/batches.py), triton (the fused kernel of fastzhang.kernels),
dali (NVIDIA DALI), or auto, the only one that decides: triton on CUDA when the kernel can run
there and its first batch equals the torch path's (else torch, and `.fallback` says why). An
explicit choice that cannot run here is refused (UsageError) before the lock is taken, never
swapped for another path. The engine calls the loader outside any captured CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from fastzhang.config import LOADERS
from fastzhang.data import batches
from fastzhang.errors import UsageError, one_line

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Loader:
    name: str  # the path used: "torch", "triton" or "dali"
    batch: Callable[[batches.EpochPlan, int], Batch]
    fallback: str | None = None  # why `auto` fell back from triton to torch, if it did

    def __call__(self, plan: batches.EpochPlan, step: int) -> Batch:
        return self.batch(plan, step)


def resolve_loader(name: str, device: torch.device) -> str:
    """The path `name` (a config `loader` value) runs on `device`; UsageError if it cannot run there."""
    if name == "auto":
        return "triton" if device.type == "cuda" and _triton_unavailable(device) is None else "torch"
    if name == "triton":
        why = _triton_unavailable(device)
        if why:
            raise UsageError(f"loader 'triton' {why}; the device is {device}")
    elif name == "dali":
        from fastzhang.data import dali

        if not dali.available():
            raise UsageError(dali.INSTALL_HINT)
    elif name != "torch":
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}; got {name!r}")
    return name


def _triton_unavailable(device: torch.device) -> str | None:
    try:
        from fastzhang.kernels import preprocess_triton  # imports triton: only when it may be used
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("fastzhang.kernels"):
            raise
        # pyproject.toml maps kernels/ to fastzhang.kernels: a checkout on PYTHONPATH alone lacks it.
        raise UsageError("loader: fastzhang.kernels is missing; install this checkout (pip install -e .) "
                         "rather than running it from PYTHONPATH") from None
    return preprocess_triton.unavailable(device)


def make_loader(name: str, data: batches.ResidentData, batch_size: int, *, dtype: torch.dtype,
                channels_last: bool) -> Loader:
    """The loader `name` asks for, on the data's device (see resolve_loader)."""
    used = resolve_loader(name, data.device)
    if used == "dali":
        from fastzhang.data.dali import DaliLoader

        dali = DaliLoader(data, batch_size, device=data.device)
        return Loader(used, partial(dali.train_batch, dtype=dtype, channels_last=channels_last))
    plain = partial(batches.train_batch, data, batch_size=batch_size, dtype=dtype, channels_last=channels_last)
    if used == "triton":
        from fastzhang.kernels.preprocess_triton import fused_preprocess

        def fused(plan: batches.EpochPlan, step: int) -> Batch:
            span = batches.step_span(plan, step, batch_size, data.num_train)
            index = plan.order[span]
            x = fused_preprocess(data.train_x, index, plan.offsets[span], dtype=dtype, channels_last=channels_last)
            return x, data.train_y.index_select(0, index)

        if name == "auto":
            # Picked unasked, the kernel is proven on one batch first: a new GPU or Triton version
            # must neither end a run nor train on wrong inputs.
            plan = batches.epoch_plan(0, 1, data.num_train, True, data.device)
            try:
                got, want = fused(plan, 0), plain(plan, 0)
                torch.testing.assert_close(got[0], want[0], atol=1e-5,
                                           rtol=1.6e-2 if got[0].dtype == torch.bfloat16 else 0)
            except Exception as e:  # a compile error, or an AssertionError naming the mismatch
                return Loader("torch", plain, fallback=f"triton: {one_line(e)}")
        return Loader(used, fused)
    return Loader(used, plain)
