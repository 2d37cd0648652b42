"""Stage B: the Triton kernel against the torch reference, case by case and through the loaders.

Cases: tests/test_kernels.make_cases() (float32 and bfloat16, NCHW and channels_last,
edge offsets 0 and 4, repeated indices, flat images at the std floor, an empty batch),
the kernel run on the device, the reference `preprocess` on the CPU. Then one epoch
through the real loaders (train/loaders.make_loader "triton" against "torch"), random
crops, the last batch partial, in both dtypes and layouts. The tolerances are the
tests': float32 within 1e-5; bfloat16 the float32 value rounded once (within 2^-8
relative), differing from torch's own bfloat16 rounding in < 0.1% of the values. The
dry run uses Triton's CPU interpreter (TRITON_INTERPRET=1, set for this stage).
"""

from __future__ import annotations

import pytest
import torch

from gpu_check.context import SKIP, verdict
from gpu_check.reuse import test_module

FP32_ATOL = 1e-5
BF16_MISMATCH = 1e-3
EPOCH = {"gpu": (1000, 128), "dry": (40, 16)}  # (images, batch): the last batch holds 104 / 8


def run(ctx, report) -> None:
    try:
        tk = test_module("test_kernels")
    except pytest.skip.Exception as e:  # its importorskip: no triton here
        report.add("kernel", SKIP, "triton not installed", str(e))
        return
    device = torch.device(ctx.device)
    for name, case in tk.make_cases().items():
        report.attempt(f"case {name}", _case, tk, case, device)
    n, batch = EPOCH["dry" if ctx.dry else "gpu"]
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            layout = "channels_last" if channels_last else "NCHW"
            report.attempt(f"epoch {str(dtype)[6:]} {layout}", _epoch, n, batch, dtype, channels_last, device,
                           tk.BF16_UNIT_ROUNDOFF)


def compare(got: torch.Tensor, want: torch.Tensor, want32: torch.Tensor, roundoff: float) -> tuple[bool, dict]:
    """got (the kernel's) against the reference in its dtype (`want`) and in float32 (`want32`)."""
    got, want, want32 = got.cpu(), want.cpu(), want32.cpu()
    facts = {"strides_equal": got.stride() == want.stride(), "bitwise": torch.equal(got, want),
             "max_abs_err": float((got.float() - want32).abs().max()) if got.numel() else 0.0}
    if got.dtype == torch.float32:
        ok = facts["max_abs_err"] <= FP32_ATOL
    else:
        err = (got.float() - want32).abs()
        mismatch = float((got != want).float().mean()) if got.numel() else 0.0
        facts["bf16_mismatch"] = mismatch
        ok = bool((err <= roundoff * want32.abs() + FP32_ATOL).all()) and mismatch < BF16_MISMATCH
    return ok and facts["strides_equal"], facts


def _case(tk, case, device):
    dtype = tk.DTYPES[case["dtype"]]
    got = tk.fused_preprocess(case["images"].to(device), case["idx"].to(device), case["offsets"].to(device),
                              dtype=dtype, channels_last=case["channels_last"])
    if case["idx"].shape[0] == 0:  # the reference cannot whiten no image
        return verdict(tuple(got.shape) == (0, 3, 28, 28)), f"shape {tuple(got.shape)}", "an empty batch", {}
    ok, facts = compare(got, tk.reference(case), tk.reference(case, dtype=torch.float32), tk.BF16_UNIT_ROUNDOFF)
    ok = ok and tuple(got.shape) == (case["idx"].shape[0], 3, 28, 28)
    return verdict(ok), _text(facts), f"{case['idx'].shape[0]} images", facts


def _epoch(n, batch, dtype, channels_last, device, roundoff):
    from fastzhang.data.batches import ResidentData, epoch_plan, steps_per_epoch
    from fastzhang.data.synthetic import make_synthetic
    from fastzhang.train.loaders import make_loader

    data = ResidentData.build(make_synthetic(n, 16), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device=device)
    loaders = [make_loader(name, data, batch, dtype=kind, channels_last=channels_last)
               for name, kind in (("triton", dtype), ("torch", dtype), ("torch", torch.float32))]
    plan = epoch_plan(0, 1, n, True, device)
    worst, ok, steps = {}, True, steps_per_epoch(n, batch)
    for step in range(steps):
        (x, y), (want, want_y), (want32, _) = (loader(plan, step) for loader in loaders)
        step_ok, facts = compare(x, want, want32, roundoff)
        ok = ok and step_ok and torch.equal(y.cpu(), want_y.cpu())
        worst = max(worst, facts, key=lambda f: f.get("max_abs_err", -1.0))
    edges = int(plan.offsets.min()) == 0 and int(plan.offsets.max()) == 4
    last = n - (steps - 1) * batch
    return verdict(ok and edges), _text(worst), f"{steps} batches, the last of {last}, crop offsets 0-4: {edges}", \
        {**worst, "steps": steps, "last_batch": last}


def _text(facts: dict) -> str:
    text = "bitwise equal" if facts["bitwise"] else f"max |err| {facts['max_abs_err']:.1e}"
    if "bf16_mismatch" in facts:
        text += f", {100 * facts['bf16_mismatch']:.3f}% differ from torch's bf16"
    return text if facts["strides_equal"] else text + ", STRIDES DIFFER"
