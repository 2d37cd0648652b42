"""One end-to-end training epoch at CIFAR-10's size, and what a checkpoint costs against it.

Data: the real CIFAR-10 when FASTZHANG_DATA points to it, else the synthetic
set at the same size (50,000 training and 10,000 test images); batches of 128,
random crops, lr 0.01, momentum 0.9 (mlp1's paper setting).

- fastzhang: what `fastzhang run` does for one epoch (bench/workloads.py): the
  loader `auto` picks (train/loaders.py), TrainStep with the speed switches `auto`
  resolves to on this device, device-side loss/accuracy sums read once, then
  evaluation of the test set under inference_mode (engine._train_epoch +
  engine._finish_epoch);
- naive: the same model, fp32 eager, fed by a per-sample DataLoader, with a
  `.item()` every step and a test pass (bench/naive.py); the baseline.

On the CPU only mlp1 runs (an epoch of the Inceptions takes ~5 minutes
there); on CUDA mlp1 and inception do (each model's compile, twice: the full
batch and the epoch's last batch, costs GPU-suite time; bench/test_bench_train.py
has every model's step rate). The fastzhang rows carry the epochs' training
losses, so a table shows the fast path actually trains.

Checkpoints: `checkpoint.save` / `checkpoint.load` of the engine's real payload
(state.to_payload after one step, so momentum buffers exist) per model, with
the file size and the save time as a percentage of the fastzhang mlp1 epoch
measured in this session (target: <= 2%; the engine writes latest + best at
most once per epoch each).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import naive
from clock import environment, timed
from fastzhang import checkpoint
from fastzhang.train import engine, state
from fastzhang.train.fastpath import Speed, TrainStep, resolve_speed
from workloads import EPOCH_BATCH as BATCH
from workloads import epoch_config as config
from workloads import fastzhang_epoch

CUDA = torch.cuda.is_available()
MODELS = ("mlp1", "inception") if CUDA else ("mlp1",)


@pytest.fixture(scope="module")
def full_size():
    """CifarArrays at CIFAR-10's size: the real set if FASTZHANG_DATA holds it, else synthetic."""
    root = os.environ.get("FASTZHANG_DATA")
    if root:
        from fastzhang.data.sources import load_dataset

        return load_dataset("cifar10", root, download=False)
    from fastzhang.data.synthetic import make_synthetic

    return make_synthetic(50_000, 10_000)


def naive_epoch(model: str, arrays, device: torch.device):
    from fastzhang.models.build import build_model

    net = build_model(model, seed=0).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    workers = min(4, os.cpu_count() or 1) if CUDA else 0
    train = naive.loader(arrays.train_images, arrays.train_labels, device, batch=BATCH, workers=workers)
    test = naive.loader(arrays.test_images, arrays.test_labels, device, batch=1000, workers=workers, train=False)
    return lambda: naive.train_epoch(net, opt, train, test, device)


@pytest.mark.parametrize("model", MODELS)
def test_epoch_naive(benchmark, measure, full_size, bench_device, model):
    epoch = naive_epoch(model, full_size, bench_device)
    n = len(full_size.train_images)
    rate = measure(benchmark, epoch, name=f"epoch-{model}-naive", images=n, baseline=None, rounds=2, warmup=0)
    benchmark.extra_info.update(model=model, epoch_s=round(n / rate, 2), data=full_size.source)


@pytest.mark.parametrize("model", MODELS)
def test_epoch_fastzhang(benchmark, measure, rates, full_size, bench_device, model):
    epoch, speed, run = fastzhang_epoch(model, full_size, bench_device)
    n = len(full_size.train_images)
    first = timed(epoch, bench_device)  # the first epoch pays compilation and graph capture
    baseline = rates.get(f"epoch-{model}-naive")
    rate = measure(benchmark, epoch, name=f"epoch-{model}-fastzhang", images=n, baseline=baseline, rounds=2,
                   warmup=0)
    rates[f"epoch-{model}-fastzhang-seconds"] = n / rate
    benchmark.extra_info.update(model=model, epoch_s=round(n / rate, 2), first_epoch_s=round(first, 2),
                                data=full_size.source, speed=str(speed),
                                train_loss=[round(v, 4) for v in run.metrics["train_loss"]])
    print(f"\n{model}: fastzhang epoch {n / rate:.2f} s ({speed})"
          + (f", naive {n / baseline:.2f} s, ratio {rate / baseline:.2f}x" if baseline else ""))


@pytest.fixture(scope="module")
def mlp1_epoch_s(rates, full_size, bench_device) -> float:
    """Seconds of a fastzhang mlp1 epoch: the benchmark's if it ran, else timed once here."""
    if "epoch-mlp1-fastzhang-seconds" not in rates:
        epoch, _, _ = fastzhang_epoch("mlp1", full_size, bench_device)
        epoch()
        rates["epoch-mlp1-fastzhang-seconds"] = timed(epoch, bench_device)
    return rates["epoch-mlp1-fastzhang-seconds"]


def payload_after_one_step(model: str, device: torch.device) -> dict:
    cfg = config(model, device)
    speed = resolve_speed(cfg, device)
    run = engine.build_run(cfg, device, speed)
    x = torch.randn(8, 3, 28, 28, device=device, dtype=speed.input_dtype)
    if speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    run.partial = engine._empty_partial(device)
    eager = Speed(amp=speed.amp, compile=False, cuda_graphs=False, channels_last=speed.channels_last)
    TrainStep(run.model, run.optimizer, eager)(x, torch.zeros(8, dtype=torch.int64, device=device),
                                                run.partial["loss_sum"], run.partial["correct"])
    return state.to_payload(run, cfg, "0" * 64)


CKPT_MODELS = ("mlp1", "mlp3", "alexnet", "inception")


@pytest.mark.parametrize("model", CKPT_MODELS)
def test_checkpoint_save(benchmark, tmp_path, bench_device, mlp1_epoch_s, model):
    payload = payload_after_one_step(model, bench_device)
    path = tmp_path / f"{model}_checkpoint.pth"
    benchmark.pedantic(lambda: checkpoint.save(payload, path), rounds=5, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    _checkpoint_info(benchmark, bench_device, model, path, seconds, mlp1_epoch_s)
    print(f"\n{model}: save {seconds * 1e3:.0f} ms = {100 * seconds / mlp1_epoch_s:.2f}% of an mlp1 epoch "
          f"({mlp1_epoch_s:.1f} s), {path.stat().st_size / 1e6:.1f} MB")


@pytest.mark.parametrize("model", CKPT_MODELS)
def test_checkpoint_load(benchmark, tmp_path, bench_device, mlp1_epoch_s, model):
    path = tmp_path / f"{model}_checkpoint.pth"
    checkpoint.save(payload_after_one_step(model, bench_device), path)
    benchmark.pedantic(lambda: checkpoint.load(path), rounds=5, iterations=1, warmup_rounds=1)
    _checkpoint_info(benchmark, bench_device, model, path, benchmark.stats.stats.median, mlp1_epoch_s)


def _checkpoint_info(benchmark, device, model: str, path: Path, seconds: float, epoch_s: float) -> None:
    benchmark.extra_info.update(
        model=model, size_mb=round(path.stat().st_size / 1e6, 2), seconds=round(seconds, 4),
        mlp1_epoch_s=round(epoch_s, 2), pct_of_mlp1_epoch=round(100 * seconds / epoch_s, 2), **environment(device),
    )
