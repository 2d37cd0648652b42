"""Which data path builds the training batches: `loader(plan, step) -> (x, y)`.

All three give the same batches as `data.batches.train_batch` (tests prove it):
the resident torch path (default), the fused Triton kernel (used automatically
on CUDA when Triton is installed), and DALI (`--loader dali`, outside any
captured CUDA graph: the engine calls the loader before the captured step).
"""

from __future__ import annotations

from typing import Callable

import torch

from fastzhang.data import batches

Loader = Callable[[batches.EpochPlan, int], tuple[torch.Tensor, torch.Tensor]]


def make_loader(name: str, data: batches.ResidentData, batch_size: int, *, dtype: torch.dtype,
                channels_last: bool) -> Loader:
    if name == "dali":
        from fastzhang.data.dali import DaliLoader

        dali = DaliLoader(data, batch_size, device=data.device)
        return lambda plan, step: dali.train_batch(plan, step, dtype=dtype, channels_last=channels_last)
    if data.device.type == "cuda" and _triton_ready():
        from kernels.preprocess_triton import fused_preprocess

        def fused(plan: batches.EpochPlan, step: int):
            span = batches.step_span(plan, step, batch_size, data.num_train)
            index = plan.order[span]
            x = fused_preprocess(data.train_x, index, plan.offsets[span], dtype=dtype, channels_last=channels_last)
            return x, data.train_y.index_select(0, index)

        return fused
    return lambda plan, step: batches.train_batch(data, plan, step, batch_size, dtype=dtype,
                                                  channels_last=channels_last)


def _triton_ready() -> bool:
    try:
        from kernels.preprocess_triton import available
    except ImportError:
        return False
    return available()
