"""One training epoch at CIFAR-10's size, and what a checkpoint costs against it.

Data: CIFAR-10 if FASTZHANG_DATA holds it, else synthetic: 49,920 (390 full batches of 128, one
compiled shape) and 10,000 images; 1,024 and 256 in the GPU check's dry run. On the CPU the
convolutional models train on the first 4,992 and test on the first 1,000 (the same 5:1; a full
naive Inception epoch there takes ~15 minutes). fastzhang: an epoch as `fastzhang run` trains and
evaluates it, training seconds beside evaluation's (and evaluation's images/s), the first epoch
(compile, capture) apart, the losses (it trains); marked `cuda`. naive: the baseline. Checkpoints:
save / load of the engine's payload after one step, per model: size, and time as a share of the
mlp1 epoch (a save: <= 2%).
"""

import dataclasses
import os

import pytest
import torch

from fastzhang import checkpoint
from fastzhang.data.sources import load_dataset
from fastzhang.data.synthetic import make_synthetic
from fastzhang.train import engine, state
from fastzhang.train.fastpath import Speed, TrainStep, resolve_speed
from workloads import DRY, GPU, epoch_config, fastzhang_epoch, naive_epoch, timed

# The GPU check's (6 minutes); its dry run's; the CPU's.
MODELS = ("mlp1", "inception") if GPU else ("mlp1",) if DRY else ("mlp1", "alexnet", "inception")
CPU_SHARE = {"alexnet": (4_992, 1_000), "inception": (4_992, 1_000)}  # (train, test) images on the CPU


@pytest.fixture(scope="module")
def full_size():
    """CifarArrays at CIFAR-10's size: the real set if FASTZHANG_DATA holds it, else synthetic."""
    root = os.environ.get("FASTZHANG_DATA")
    if root and not DRY:
        return load_dataset("cifar10", root, download=False)
    return make_synthetic(*((1_024, 256) if DRY else (49_920, 10_000)))


def epoch_data(full_size, model: str, device: torch.device):
    """The data set a model's epoch cases use on `device` (CPU_SHARE on the CPU)."""
    if device.type == "cuda" or model not in CPU_SHARE:
        return full_size
    train, test = CPU_SHARE[model]
    return dataclasses.replace(full_size, train_images=full_size.train_images[:train],
                               train_labels=full_size.train_labels[:train], test_images=full_size.test_images[:test],
                               test_labels=full_size.test_labels[:test])


@pytest.mark.parametrize("model", MODELS)
def test_epoch_naive(benchmark, measure, full_size, device, model):
    data = epoch_data(full_size, model, device)
    epoch = naive_epoch(model, data, device, workers=min(4, os.cpu_count() or 1) if GPU else 0)
    n = len(data.train_images)
    rate = measure(benchmark, epoch, name=f"epoch-{model}-naive", images=n, rounds=2, warmup=0)
    benchmark.extra_info.update(model=model, epoch_s=round(n / rate, 2), data=data.source, train_images=n)


@pytest.mark.cuda
@pytest.mark.timeout(240)
@pytest.mark.parametrize("model", MODELS)
def test_epoch_fastzhang(benchmark, measure, full_size, device, model):
    data = epoch_data(full_size, model, device)
    epoch, speed, run = fastzhang_epoch(model, data, device)
    n = len(data.train_images)
    first = timed(epoch, device)  # the first epoch pays compilation and graph capture
    rate = measure(benchmark, epoch, name=f"epoch-{model}-fastzhang", images=n, baseline=f"epoch-{model}-naive",
                   rounds=2, warmup=0)
    train, total = run.metrics["epoch_seconds"][-1], benchmark.stats.stats.data[-1]  # the last round's
    assert 0 < train < total
    benchmark.extra_info.update(model=model, epoch_s=round(n / rate, 2), first_epoch_s=round(first, 2),
                                train_s=round(train, 4), eval_s=round(total - train, 4), data=data.source,
                                train_images=n, eval_images_per_s=round(len(data.test_images) / (total - train), 1),
                                speed=str(speed), train_loss=[round(v, 4) for v in run.metrics["train_loss"]])


@pytest.fixture(scope="module")
def mlp1_epoch_s(rates, full_size, device) -> float:
    """Seconds of a fastzhang mlp1 epoch: the benchmark's if it ran, else timed once here."""
    n = len(full_size.train_images)
    if "epoch-mlp1-fastzhang" not in rates:
        epoch, _, _ = fastzhang_epoch("mlp1", full_size, device)
        epoch()
        rates["epoch-mlp1-fastzhang"] = n / timed(epoch, device)
    return n / rates["epoch-mlp1-fastzhang"]


def payload_after_one_step(model: str, device: torch.device) -> dict:
    cfg = epoch_config(model, device)
    speed = resolve_speed(cfg, device)
    run = engine.build_run(cfg, device, speed)
    x = torch.randn(8, 3, 28, 28, device=device, dtype=speed.input_dtype).contiguous(
        memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)
    run.partial = engine._empty_partial(device)
    eager = Speed(amp=speed.amp, compile=False, cuda_graphs=False, channels_last=speed.channels_last)
    TrainStep(run.model, run.optimizer, eager)(x, torch.zeros(8, dtype=torch.int64, device=device),
                                                run.partial["loss_sum"], run.partial["correct"])
    return state.to_payload(run, cfg, "0" * 64)


@pytest.mark.parametrize("model", ("mlp1", "mlp3", "alexnet", "inception"))
@pytest.mark.parametrize("op", ("save", "load"))
def test_checkpoint(benchmark, tmp_path, device, mlp1_epoch_s, op, model):
    path = tmp_path / f"{model}_checkpoint.pth"
    payload = payload_after_one_step(model, device)
    checkpoint.save(payload, path)
    call = (lambda: checkpoint.save(payload, path)) if op == "save" else (lambda: checkpoint.load(path))
    benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(model=model, size_mb=round(path.stat().st_size / 1e6, 2), seconds=round(seconds, 4),
                                mlp1_epoch_s=round(mlp1_epoch_s, 2),
                                pct_of_mlp1_epoch=round(100 * seconds / mlp1_epoch_s, 2))
