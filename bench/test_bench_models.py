"""AlexNet training steps: the fast TensorFlow LRN (models/lrn.py) against nn.LocalResponseNorm.

One round = STEPS_PER_ROUND SGD steps (momentum 0.9, lr 0.01, the paper's AlexNet
setting) on a fixed batch of 128 random 3x28x28 images, forward + backward +
update. Both networks have the same initial weights; only the two LRN layers
differ (nn.LocalResponseNorm with the converted parameters computes the same
function, see tests/test_models.py). Each layout's `fast` case reports its
images/s over the nn.LocalResponseNorm case of the same layout, measured in the
same session, as `ratio_vs_naive` (bench/conftest.py's key; "naive" is the
nn.LocalResponseNorm network here), and as `ratio_interleaved` from rounds of
the two networks taken in turn (robust to the load drifting between cases).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from fastzhang.models.build import build_model
from fastzhang.models.lrn import torch_equivalent

BATCH = 128
STEPS_PER_ROUND = 2
CASES = [("torch_lrn", "nchw"), ("fast_lrn", "nchw"), ("torch_lrn", "channels_last"), ("fast_lrn", "channels_last")]


def alexnet_steps(lrn: str, layout: str, device: torch.device):
    """A function running STEPS_PER_ROUND training steps of AlexNet with the given LRN and layout."""
    model = build_model("alexnet", seed=0)
    if lrn == "torch_lrn":
        model.norm1, model.norm2 = torch_equivalent(), torch_equivalent()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 28, 28, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def steps():
        for _ in range(STEPS_PER_ROUND):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return steps


def interleaved_ratio(fast, slow, pairs: int = 3) -> tuple[float, float, float]:
    """(fast images/s, slow images/s, ratio) from alternating rounds, best round of each.

    On a shared machine the load drifts between two benchmark cases; rounds taken
    in turn see the same load, and the best round is the least disturbed one.
    """
    best = {"fast": float("inf"), "slow": float("inf")}
    for _ in range(pairs):
        for key, fn in (("slow", slow), ("fast", fast)):
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    images = BATCH * STEPS_PER_ROUND
    return images / best["fast"], images / best["slow"], best["slow"] / best["fast"]


@pytest.mark.parametrize("lrn,layout", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_alexnet_train_step(benchmark, measure, rates, bench_device, lrn, layout):
    fn = alexnet_steps(lrn, layout, bench_device)
    baseline_fn = alexnet_steps("torch_lrn", layout, bench_device) if lrn == "fast_lrn" else None
    baseline = rates.get(f"alexnet-torch_lrn-{layout}") if baseline_fn else None
    if baseline_fn and baseline is None:  # run alone (-k): measure the baseline here
        baseline_fn()
        baseline = interleaved_ratio(baseline_fn, baseline_fn, pairs=2)[0]
    rate = measure(benchmark, fn, name=f"alexnet-{lrn}-{layout}", images=BATCH * STEPS_PER_ROUND, baseline=baseline)
    benchmark.extra_info.update(model="alexnet", lrn=lrn, layout=layout, batch=BATCH, steps_per_round=STEPS_PER_ROUND)
    if baseline_fn is not None:
        fast_best, slow_best, ratio = interleaved_ratio(fn, baseline_fn)
        benchmark.extra_info.update(
            baseline_images_per_s=round(baseline, 1),
            interleaved_images_per_s=round(fast_best, 1),
            interleaved_baseline_images_per_s=round(slow_best, 1),
            ratio_interleaved=round(ratio, 2),
        )
        print(
            f"\nalexnet {layout}: fast LRN {rate:,.0f} images/s vs nn.LocalResponseNorm {baseline:,.0f} "
            f"({rate / baseline:.2f}x); interleaved best rounds {fast_best:,.0f} vs {slow_best:,.0f} ({ratio:.2f}x)"
        )
