"""AlexNet training steps: the fast TensorFlow LRN (models/lrn.py) against nn.LocalResponseNorm.

One round = STEPS_PER_ROUND SGD steps (momentum 0.9, lr 0.01, the paper's AlexNet
setting) on a fixed batch of 128 random 3x28x28 images, forward + backward +
update. Both networks have the same initial weights; only the two LRN layers
differ (nn.LocalResponseNorm with the converted parameters computes the same
function, see tests/test_models.py). Each layout's `fast` case reports its
images/s over the nn.LocalResponseNorm case of the same layout, measured in the
same session, as `ratio_vs_naive` (bench/conftest.py's key; "naive" is the
nn.LocalResponseNorm network here).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from fastzhang.models import build_model
from fastzhang.models.lrn import torch_equivalent

BATCH = 128
STEPS_PER_ROUND = 4
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


def _rate_now(fn, rounds: int = 3) -> float:
    """images/s of fn by a plain timer, for a `fast` case run without its baseline (-k)."""
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return BATCH * STEPS_PER_ROUND / sorted(times)[rounds // 2]


@pytest.mark.parametrize("lrn,layout", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_alexnet_train_step(benchmark, measure, rates, bench_device, lrn, layout):
    torch.manual_seed(0)  # the optimizer and model draw nothing, but keep any hidden draw fixed
    fn = alexnet_steps(lrn, layout, bench_device)
    baseline = None
    if lrn == "fast_lrn":
        name = f"alexnet-torch_lrn-{layout}"
        baseline = rates.get(name) or _rate_now(alexnet_steps("torch_lrn", layout, bench_device))
    rate = measure(benchmark, fn, name=f"alexnet-{lrn}-{layout}", images=BATCH * STEPS_PER_ROUND, baseline=baseline)
    benchmark.extra_info.update(model="alexnet", lrn=lrn, layout=layout, batch=BATCH, steps_per_round=STEPS_PER_ROUND)
    if baseline is not None:
        benchmark.extra_info["baseline_images_per_s"] = round(baseline, 1)
        print(f"\nalexnet {layout}: fast LRN {rate:,.0f} images/s, nn.LocalResponseNorm {baseline:,.0f}, "
              f"ratio {rate / baseline:.2f}x")
