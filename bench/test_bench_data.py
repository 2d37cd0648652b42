"""Data path throughput: one epoch of 10,000 CIFAR-shaped images in batches of 128.

Paths, all producing whitened [128, 3, 28, 28] float32 batches at random crops:
- naive: a torch DataLoader over a Dataset that crops, scales and whitens one
  sample at a time, as a typical reproduction does (the baseline; workers 0 and 2);
- resident: data.train_batch over an epoch plan, whole batches at once
  on the resident tensors;
- dali: data.dali.DaliLoader on the same plan;
- triton: fastzhang.kernels.preprocess_triton.fused_preprocess on the same plan (CUDA only).
On CUDA, every path ends with its batch on the GPU. Ratios are against the
naive loader with 0 workers measured in the same session (bench/conftest.py).
"""

from __future__ import annotations

import time

import pytest
import torch

import naive
from fastzhang.data import dali
from fastzhang.data.batches import ResidentData, epoch_plan, steps_per_epoch, train_batch

SEED = 0
BATCH = 128


def naive_epoch_fn(cifar_like, device, workers):
    data = naive.loader(cifar_like.train_images, cifar_like.train_labels, device, batch=BATCH, workers=workers,
                        seed=SEED)

    def epoch():
        for x, y in data:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return epoch


@pytest.fixture(scope="session")
def naive_rate(cifar_like, rates):
    """The baseline's images/s: from its benchmark if it ran first, else timed once here."""
    if "naive-w0" not in rates:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        epoch = naive_epoch_fn(cifar_like, device, 0)
        start = time.perf_counter()
        epoch()  # batches end with a blocking copy or on the CPU: no sync needed
        rates["naive-w0"] = len(cifar_like.train_images) / (time.perf_counter() - start)
    return rates["naive-w0"]


@pytest.fixture(scope="module")
def resident(cifar_like, bench_device):
    """The data set as the training paths hold it: uint8 / int64 tensors on the device."""
    return ResidentData.build(cifar_like, randomization="none", corrupt_prob=0.0, seed=SEED,
                              train_subset=None, device=bench_device)


@pytest.mark.parametrize("workers", [0, 2])
def test_naive_per_sample_dataloader(benchmark, request, measure, cifar_like, bench_device, workers):
    baseline = None if workers == 0 else request.getfixturevalue("naive_rate")
    epoch = naive_epoch_fn(cifar_like, bench_device, workers)
    measure(benchmark, epoch, name=f"naive-w{workers}", images=len(cifar_like.train_images), baseline=baseline)


def test_resident_torch_loader(benchmark, measure, resident, bench_device, naive_rate):
    n = resident.num_train
    steps = steps_per_epoch(n, BATCH)
    epochs = iter(range(1, 1_000_000))

    def epoch():
        plan = epoch_plan(SEED, next(epochs), n, True, bench_device)
        for step in range(steps):
            x, y = train_batch(resident, plan, step, BATCH, dtype=torch.float32, channels_last=False)

    measure(benchmark, epoch, name="resident", images=n, baseline=naive_rate)


@pytest.mark.skipif(not dali.available(), reason="nvidia-dali is not installed (pip install 'fastzhang[dali]')")
def test_dali_loader(benchmark, measure, resident, bench_device, naive_rate):
    n = resident.num_train
    loader = dali.DaliLoader(resident, BATCH, device=bench_device)
    epochs = iter(range(1, 1_000_000))

    def epoch():
        plan = epoch_plan(SEED, next(epochs), n, True, bench_device)
        for step in range(steps_per_epoch(n, BATCH)):
            x, y = loader.train_batch(plan, step, dtype=torch.float32, channels_last=False)

    measure(benchmark, epoch, name="dali", images=n, baseline=naive_rate)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="the Triton kernel runs on CUDA only (its CPU interpreter is a test tool)")
def test_triton_fused_preprocess(benchmark, measure, resident, bench_device, naive_rate):
    pytest.importorskip("triton", reason="triton is not installed (pip install 'fastzhang[triton]')")
    from fastzhang.kernels.preprocess_triton import fused_preprocess

    n = resident.num_train
    epochs = iter(range(1, 1_000_000))

    def epoch():
        plan = epoch_plan(SEED, next(epochs), n, True, bench_device)
        for lo in range(0, n, BATCH):
            idx = plan.order[lo : lo + BATCH]
            x = fused_preprocess(resident.train_x, idx, plan.offsets[lo : lo + BATCH], dtype=torch.float32)
            y = resident.train_y[idx]

    measure(benchmark, epoch, name="triton", images=n, baseline=naive_rate)
