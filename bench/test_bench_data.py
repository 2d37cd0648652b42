"""Data paths: one epoch of 10,000 CIFAR-shaped images in whitened float32 batches of 128, random crops.

naive (the baseline, bench/workloads.py) with 0 and 2 workers, against the training loaders
(train/loaders.py) on one epoch plan: torch (whole batches at once on the resident tensors), dali
and triton (CUDA only), each skipped, saying why, where it cannot run. On CUDA every batch ends there.
"""

import pytest
import torch

from fastzhang.data.batches import ResidentData, epoch_plan, steps_per_epoch
from fastzhang.data.synthetic import make_synthetic
from fastzhang.errors import UsageError
from fastzhang.train.loaders import make_loader
from workloads import naive_loader

SEED = 0
BATCH = 128
N_IMAGES = 10_000  # one round = one epoch over the synthetic set's training images


@pytest.fixture(scope="module")
def cifar_like():
    """CifarArrays: the synthetic CIFAR-shaped set (uint8 numpy)."""
    return make_synthetic(N_IMAGES, 256)


def naive_epoch_fn(cifar_like, device, workers):
    data = naive_loader(cifar_like.train_images, cifar_like.train_labels, device, batch=BATCH, workers=workers,
                        seed=SEED)

    def epoch():
        for x, y in data:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_naive_per_sample_dataloader(benchmark, measure, cifar_like, device, workers):
    measure(benchmark, naive_epoch_fn(cifar_like, device, workers), name=f"naive-w{workers}", images=N_IMAGES,
            baseline="naive-w0" if workers else None, alone=lambda: naive_epoch_fn(cifar_like, device, 0))


@pytest.mark.parametrize("path", ["torch", "dali", "triton"])
def test_loader(benchmark, measure, cifar_like, device, path):
    resident = ResidentData.build(cifar_like, randomization="none", corrupt_prob=0.0, seed=SEED,
                                  train_subset=None, device=device)
    try:
        loader = make_loader(path, resident, BATCH, dtype=torch.float32, channels_last=False)
    except UsageError as e:
        pytest.skip(str(e))
    epochs = iter(range(1, 1_000_000))

    def epoch():
        plan = epoch_plan(SEED, next(epochs), N_IMAGES, True, device)
        for step in range(steps_per_epoch(N_IMAGES, BATCH)):
            loader(plan, step)

    measure(benchmark, epoch, name=path, images=N_IMAGES, baseline="naive-w0",
            alone=lambda: naive_epoch_fn(cifar_like, device, 0))
