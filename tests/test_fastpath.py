"""The fast path's switches: each gives the plain path's results where it must.

- resolve_speed: the auto defaults per device, explicit on/off, cuda_graphs refused off CUDA;
- the CUDA-graph bookkeeping (warm-up, capture per batch shape, restoring weights,
  BatchNorm statistics and momentum, a device-tensor lr moved by the scheduler)
  runs on the CPU through a stand-in that replays by re-running the captured
  function; it must equal the plain step bit for bit;
- fused SGD with a tensor lr (what CUDA graphs use) equals SGD with a float lr;
- torch.compile, channels_last and bf16 autocast against fp32 eager;
- evaluation runs under inference_mode;
- on a CUDA machine (`make gpu-check`, marker cuda): the full fast path trains (real graphs against
  eager are tests/test_gpu_path_on_cpu.py's).
"""

from __future__ import annotations

import dataclasses
import types
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastzhang.config import ExperimentConfig
from fastzhang.data.batches import ResidentData, epoch_plan, steps_per_epoch
from fastzhang.data.synthetic import make_synthetic
from fastzhang.errors import UsageError
from fastzhang.models import lrn
from fastzhang.models.build import build_model
from fastzhang.train import engine, state
from fastzhang.train.fastpath import (
    COMPILE_MIN_STEPS, FAIL_ENV, Speed, TrainStep, _restore, _snapshot, cpu_has_native_bf16, evaluate, resolve_speed,
)
from fastzhang.train.loaders import make_loader

PLAIN = Speed(amp=False, compile=False, cuda_graphs=False, channels_last=False)
cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA device (make gpu-check runs it on a GPU machine)")


class RerunGraphs:
    """CPU stand-in for fastpath.CudaGraphs: capture runs fn once, replay runs it again.

    Like a replayed graph, a replay writes fresh gradients (they are None before
    fn, as at capture) and rewrites the captured output tensors in place. Unlike a
    real capture, capturing here really trains one step, which TrainStep must
    undo along with its warm-up steps.
    """

    def __init__(self, optimizer):
        self.optimizer, self.captures = optimizer, 0

    def warmup(self):
        return nullcontext()

    def capture(self, fn):
        self.captures += 1
        outputs = fn()

        def replay():
            self.optimizer.zero_grad(set_to_none=True)
            for out, new in zip(outputs, fn()):
                out.copy_(new)

        return replay, outputs


class TinyBN(nn.Module):
    """conv -> BatchNorm -> ReLU -> linear: BatchNorm running statistics in a few ms."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, 2), nn.BatchNorm2d(4), nn.Linear(4 * 13 * 13, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def sgd(model, *, tensor_lr=False, fused=None, lr=0.05):
    lr = torch.tensor(lr, dtype=torch.float32) if tensor_lr else lr
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, fused=fused)


def train(step: TrainStep, scheduler, x, y, *, batch: int, epochs: int):
    """Epochs over (x, y) in order, the last batch partial; returns the per-epoch (loss_sum, correct)."""
    sums = []
    for _ in range(epochs):
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        for lo in range(0, x.shape[0], batch):
            step(x[lo:lo + batch], y[lo:lo + batch], loss_sum, correct)
        sums.append((loss_sum.clone(), correct.clone()))
        scheduler.step()
    return sums


def assert_models_equal(a: nn.Module, b: nn.Module, **tol):
    for (name, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        if tol:
            torch.testing.assert_close(u, v, **tol, msg=lambda m, name=name: f"{name}: {m}")
        else:
            assert torch.equal(u, v), name


# ------------------------------------------------------------------------------------------
# resolve_speed


def test_auto_defaults_per_device():
    """CUDA: everything; CPU: bf16 where the CPU has it natively; channels_last for convolutional models."""
    mlp, conv = (ExperimentConfig.from_mapping({"model": m}) for m in ("mlp1", "inception"))
    native = cpu_has_native_bf16()
    assert resolve_speed(conv, torch.device("cuda")) == Speed(True, True, True, True)
    assert resolve_speed(mlp, torch.device("cuda")) == Speed(True, True, True, False)
    assert resolve_speed(conv, torch.device("cpu")) == Speed(native, False, False, True)
    assert resolve_speed(mlp, torch.device("cpu")) == Speed(native, False, False, False)


def test_auto_compile_follows_the_device_and_the_planned_steps():
    """CUDA: the whole model once the run plans 4,000 steps; a CPU: the kernels alone (AlexNet's LRN) from 2,000,
    else nothing (inductor's CPU code for whole models measured slower). The reason goes to the first line."""
    assert COMPILE_MIN_STEPS == {"cpu": 2_000, "cuda": 4_000}
    alexnet, inception = (ExperimentConfig.from_mapping({"model": m, "epochs": 100}) for m in ("alexnet", "inception"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    long = resolve_speed(alexnet, cuda)  # 100 x 391 steps of 128
    assert (long.compile, long.compile_kernels) == (True, False)
    assert long.why_compile == "compile auto: on, 39,100 planned steps repay a compile"
    kernels = resolve_speed(alexnet, cpu)
    assert (kernels.compile, kernels.compile_kernels) == (False, True)
    assert kernels.why_compile.startswith("compile auto: LRN kernels only, 39,100 planned steps repay them")
    other = resolve_speed(inception, cpu)
    assert (other.compile, other.compile_kernels) == (False, False)
    assert other.why_compile == "compile auto: off, inductor's CPU code trains slower than eager"
    # 10 epochs of 391 steps: 3,910, enough on a CPU, not on CUDA; 5 epochs (1,955) on neither.
    ten = alexnet.replace(epochs=10)
    assert resolve_speed(ten, cpu).compile_kernels and not resolve_speed(ten, cuda).compile
    assert resolve_speed(ten, cuda).why_compile == \
        "compile auto: off, 3,910 planned steps, too few to repay a compile (4,000 do)"
    five = resolve_speed(alexnet.replace(epochs=5), cpu)
    assert not five.compile_kernels and five.why_compile.startswith("compile auto: off, 1,955 planned steps")
    # The data set's size counts: a subset of 5,120 at 32 a step is 160 steps an epoch.
    assert resolve_speed(alexnet.replace(epochs=13, batch_size=32), cpu, train_images=5_120).compile_kernels
    assert not resolve_speed(alexnet.replace(epochs=12, batch_size=32), cpu, train_images=5_120).compile_kernels
    # An explicit switch is obeyed (the whole model) and needs no reason.
    on = resolve_speed(alexnet.replace(compile="on"), cpu)
    assert on == Speed(kernels.amp, True, False, True) and on.why_compile == ""
    assert not resolve_speed(alexnet.replace(compile="off"), cpu).compile_kernels


def test_explicit_switches_win_and_graphs_need_cuda():
    cfg = ExperimentConfig.from_mapping({"amp": "off", "compile": "on", "channels_last": "on", "cuda_graphs": "off"})
    assert resolve_speed(cfg, torch.device("cuda")) == Speed(False, True, False, True)
    assert resolve_speed(cfg.replace(amp="on"), torch.device("cpu")) == Speed(True, True, False, True)
    with pytest.raises(UsageError, match="cuda_graphs"):
        resolve_speed(cfg.replace(cuda_graphs="on"), torch.device("cpu"))


# ------------------------------------------------------------------------------------------
# Optimizer state: what the capture saves and restores, and a tensor lr


def test_restore_puts_back_every_weight_and_buffer_in_place():
    model = build_model("mlp1", seed=0)
    opt = sgd(model)
    x, y = data(16)
    fresh = _snapshot(model, opt)  # before the first step: no momentum buffer yet
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    saved = _snapshot(model, opt)
    live = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    weight = next(model.parameters())
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert not torch.equal(live[0], saved["optimizer"][weight]["momentum_buffer"])
    _restore(model, opt, saved)
    for p, buf in zip(model.parameters(), live):
        assert opt.state[p]["momentum_buffer"] is buf  # same storage: a graph holds its address
        assert torch.equal(buf, saved["optimizer"][p]["momentum_buffer"])
    assert next(model.parameters()) is weight and torch.equal(weight, saved["model"]["hidden.0.weight"])
    _restore(model, opt, fresh)  # nothing saved (a fresh optimizer): buffers become zeros
    assert all(not buf.any() for buf in live)


def test_fused_sgd_with_a_tensor_lr_follows_the_float_lr_schedule():
    x, y = data(32)
    runs = {}
    for name, kw in {"float": {}, "tensor-fused": {"tensor_lr": True, "fused": True}}.items():
        model = build_model("mlp1", seed=0)
        opt = sgd(model, **kw)
        lr_before = opt.param_groups[0]["lr"]
        scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            scheduler.step()
        if kw:  # the scheduler updated the very tensor a captured graph reads
            assert opt.param_groups[0]["lr"] is lr_before
        runs[name] = (model, float(opt.param_groups[0]["lr"]))
    assert runs["tensor-fused"][1] == pytest.approx(0.05 * 0.5**3, rel=1e-7)
    assert_models_equal(runs["float"][0], runs["tensor-fused"][0], rtol=1e-5, atol=1e-7)


def test_checkpoint_lr_takes_the_live_form(tmp_path):
    """A float-lr checkpoint loaded into a graphs run keeps the live tensor's form, and back."""
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu"})
    eager = engine.build_run(cfg, torch.device("cpu"), PLAIN)
    eager.optimizer.param_groups[0]["fused"] = False  # as an older, unfused run would have saved it
    eager.optimizer.step()  # no gradients: a no-op that keeps the scheduler's order check quiet
    eager.scheduler.step()
    payload = state.to_payload(eager, cfg, "fp")
    graphs_like = engine.build_run(cfg, torch.device("cpu"), PLAIN)
    lr = torch.tensor(0.5)  # as build_run makes it under CUDA graphs, here on the CPU
    graphs_like.optimizer.param_groups[0]["lr"] = lr
    state.restore(graphs_like, payload)
    group = graphs_like.optimizer.param_groups[0]
    assert isinstance(group["lr"], torch.Tensor) and group["lr"].dtype == torch.float32
    assert float(group["lr"]) == pytest.approx(0.01 * 0.95, rel=1e-7)
    assert group["fused"] is True  # execution settings are the live run's, not the checkpoint's
    back = engine.build_run(cfg, torch.device("cpu"), PLAIN)
    state.restore(back, state.to_payload(graphs_like, cfg, "fp"))
    assert isinstance(back.optimizer.param_groups[0]["lr"], float)
    assert back.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.95, rel=1e-7)


# ------------------------------------------------------------------------------------------
# The CUDA-graph bookkeeping, on the CPU


@pytest.mark.parametrize("make", [TinyBN, lambda: build_model("mlp1", seed=1)], ids=["batchnorm", "mlp1"])
def test_captured_steps_equal_plain_steps_bitwise(make):
    """Two epochs of 40 images in batches of 16 (shapes 16 and 8: two captures), lr decayed in between."""
    x, y = data(40)
    results = {}
    for name in ("plain", "graphs"):
        model = make()
        opt = sgd(model, tensor_lr=True, fused=True)
        graphs = RerunGraphs(opt) if name == "graphs" else None
        step = TrainStep(model, opt, PLAIN, graphs=graphs)
        sums = train(step, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5), x, y, batch=16, epochs=2)
        results[name] = model, opt, sums, graphs
    (m0, o0, s0, _), (m1, o1, s1, graphs) = results["plain"], results["graphs"]
    assert graphs.captures == 2  # one per batch shape, reused in the second epoch
    assert_models_equal(m0, m1)  # weights and BatchNorm running statistics
    for a, b in zip(o0.state.values(), o1.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    for (l0, c0), (l1, c1) in zip(s0, s1):
        assert torch.equal(l0, l1) and torch.equal(c0, c1)


def test_engine_epochs_with_captured_steps_equal_plain_epochs(monkeypatch):
    """engine.train end to end (partial last batch, lr decay, evaluation, metrics) with the stand-in."""

    class StandinStep(TrainStep):
        def __init__(self, model, optimizer, speed, **kw):
            graphs = RerunGraphs(optimizer) if speed.cuda_graphs else None
            super().__init__(model, optimizer, speed, graphs=graphs, **kw)

    monkeypatch.setattr(engine, "TrainStep", StandinStep)
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu", "epochs": 2,
                                         "batch_size": 100, "random_crop": True})  # 1024 = 10 x 100 + 24
    resident = ResidentData.build(make_synthetic(), randomization="none", corrupt_prob=0.0, seed=0,
                                  train_subset=None, device="cpu")
    loader = make_loader("torch", resident, 100, dtype=torch.float32, channels_last=False)
    runs = {}
    for graphs in (False, True):
        build = dataclasses.replace(PLAIN, cuda_graphs=True)  # tensor lr either way
        run = engine.build_run(cfg, torch.device("cpu"), build)
        speed = dataclasses.replace(PLAIN, cuda_graphs=graphs)
        assert engine.train(cfg, run, resident, loader, speed, engine.Hooks(save=lambda mid: None, quiet=True))
        runs[graphs] = run
    plain, captured = runs[False], runs[True]
    assert_models_equal(plain.model, captured.model)
    for key in engine.METRIC_KEYS:
        if key not in ("epoch_seconds", "eval_seconds", "images_per_second"):
            assert plain.metrics[key] == captured.metrics[key], key
    assert captured.metrics["lr"] == pytest.approx([0.01, 0.0095], rel=1e-6)


# ------------------------------------------------------------------------------------------
# compile, channels_last, AMP, evaluation


@pytest.mark.slow  # torch.compile on CPU: ~20 s of Inductor codegen
def test_compiled_mlp1_trains_like_eager():
    x, y = data(64)
    runs = {}
    for compiled in (False, True):
        model = build_model("mlp1", seed=0)
        opt = sgd(model)
        step = TrainStep(model, opt, Speed(False, compiled, False, False))
        sums = train(step, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.0), x, y, batch=32, epochs=2)
        runs[compiled] = model, sums
    assert runs[True][0] is not None
    assert_models_equal(runs[False][0], runs[True][0], rtol=1e-4, atol=1e-5)
    for (l0, c0), (l1, c1) in zip(runs[False][1], runs[True][1]):
        torch.testing.assert_close(l1, l0, rtol=1e-4, atol=0)
        assert torch.equal(c0, c1)


@pytest.mark.slow  # inductor compiles the two LRN tails for two batch shapes: ~10 s
def test_compiled_lrn_kernels_train_alexnet_like_eager(monkeypatch):
    """`compile_kernels` (a CPU's `compile: auto` for AlexNet) compiles models/lrn.py's tails, the same functions
    eager runs: bf16 + channels_last training agrees to rounding (inductor fuses into FMAs). An injected failure
    falls back to the eager tails with the weights put back, as a failed whole-model compile does: bit for bit."""
    x, y = data(48)
    x = x.bfloat16().contiguous(memory_format=torch.channels_last)
    runs, told = {}, []
    for name, fail in (("eager", False), ("kernels", False), ("failed", True)):
        monkeypatch.setenv(FAIL_ENV, "compile" if fail else "")
        model = build_model("alexnet", seed=0).to(memory_format=torch.channels_last)
        opt = sgd(model)
        speed = Speed(True, False, False, True, compile_kernels=name != "eager")
        step = TrainStep(model, opt, speed, on_fallback=lambda switch, reason: told.append((switch, reason)))
        sums = train(step, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.0), x, y, batch=32, epochs=2)
        eager = {layer.kernels == lrn.EAGER for layer in (model.norm1, model.norm2)}
        runs[name] = model, sums, step.speed.compile_kernels, eager
    assert runs["kernels"][2] and runs["kernels"][3] == {False}  # really compiled (48 images: shapes 32, 16)
    assert not runs["failed"][2] and runs["failed"][3] == {True}
    assert told == [("compile", f"_InjectedFailure: injected compile failure ({FAIL_ENV})")]
    assert_models_equal(runs["eager"][0], runs["failed"][0])
    assert_models_equal(runs["eager"][0], runs["kernels"][0], rtol=1e-3, atol=1e-5)
    for (l0, c0), (l1, c1), (l2, c2) in zip(*(runs[name][1] for name in ("eager", "kernels", "failed"))):
        assert torch.equal(l0, l2) and torch.equal(c0, c2)
        torch.testing.assert_close(l1, l0, rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", ["alexnet", "inception"])
def test_channels_last_trains_like_contiguous(name):
    """One SGD step in each layout: same loss, same updated weights and BatchNorm statistics.

    One step, because max-pooling makes longer runs chaotic: a 1e-7 difference
    between two nearly tied inputs of a pooling window reroutes its gradient
    (bench/NOTES.md §4 measured 6% apart after two steps of inception, 3e-8 after one).
    """
    x, y = data(8)
    runs = {}
    for cl in (False, True):
        model = build_model(name, seed=0)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = sgd(model, lr=0.01)
        step = TrainStep(model, opt, Speed(False, False, False, cl))
        xb = x.contiguous(memory_format=torch.channels_last) if cl else x
        sums = train(step, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.0), xb, y, batch=8, epochs=1)
        runs[cl] = model, sums[0][0]
    first_conv = next(runs[True][0].parameters())
    assert first_conv.dim() == 4 and first_conv.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=1e-5, atol=0)
    assert_models_equal(runs[False][0], runs[True][0], rtol=1e-4, atol=1e-5)


def test_amp_feeds_bf16_and_trains():
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu", "amp": "on",
                                         "compile": "off", "channels_last": "off", "lr": 0.05})
    speed = resolve_speed(cfg, torch.device("cpu"))
    resident = ResidentData.build(make_synthetic(256, 64), randomization="none", corrupt_prob=0.0, seed=0,
                                  train_subset=None, device="cpu")
    loader = make_loader("torch", resident, 64, dtype=speed.input_dtype, channels_last=speed.channels_last)
    run = engine.build_run(cfg, torch.device("cpu"), speed)
    seen = []
    run.model.hidden[0].register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, out.dtype)))
    step = TrainStep(run.model, run.optimizer, speed)
    losses = []
    for epoch in (1, 2, 3):
        plan = epoch_plan(0, epoch, 256, False, "cpu")
        loss_sum = torch.zeros(())
        for s in range(steps_per_epoch(256, 64)):
            x, y = loader(plan, s)
            step(x, y, loss_sum, torch.zeros((), dtype=torch.int64))
        losses.append(loss_sum.item() / 256)
    assert x.dtype == torch.bfloat16
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}  # the first layer computes in bf16
    assert run.model.hidden[0].weight.dtype == torch.float32  # master weights stay fp32
    assert losses[2] < losses[0] * 0.7, losses


def test_evaluate_runs_under_inference_mode_and_restores_training():
    model = TinyBN().train()
    flags = []
    model.register_forward_hook(lambda m, i, o: flags.append((torch.is_inference_mode_enabled(), m.training)))
    x, y = data(10)
    loss, acc = evaluate(model, [(x[:6], y[:6]), (x[6:], y[6:])], PLAIN)
    assert flags == [(True, False), (True, False)] and model.training
    with torch.no_grad():
        logits = model.eval()(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert acc == pytest.approx(100.0 * (logits.argmax(1) == y).sum().item() / 10)


# ------------------------------------------------------------------------------------------
# CUDA (`make gpu-check` runs this on a GPU machine; graphs against eager on CUDA are
# tests/test_gpu_path_on_cpu.py::test_cuda_graphs_train_as_eager_does)


def _cuda_steps(name: str, speed: Speed, *, graphs: bool, epochs: int = 2, n: int = 200, batch: int = 64):
    """Train `name` for `epochs` on synthetic data on CUDA; (model, per-epoch sums, final lr).

    The run is built as for CUDA graphs (fused SGD, float32 lr tensor) either way,
    so that with `graphs` False the only difference is replaying versus launching.
    """
    cfg = ExperimentConfig.from_mapping({"model": name, "dataset": "synthetic", "device": "cuda", "batch_size": batch})
    device = torch.device("cuda")
    resident = ResidentData.build(make_synthetic(n, 16), randomization="none", corrupt_prob=0.0, seed=0,
                                  train_subset=None, device=device)
    loader = make_loader("auto", resident, batch, dtype=speed.input_dtype, channels_last=speed.channels_last)
    run = engine.build_run(cfg, device, dataclasses.replace(speed, cuda_graphs=True))
    step = TrainStep(run.model, run.optimizer, dataclasses.replace(speed, cuda_graphs=graphs))
    sums = []
    for epoch in range(1, epochs + 1):
        plan = epoch_plan(0, epoch, n, True, device)
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.int64, device=device)
        for s in range(steps_per_epoch(n, batch)):
            step(*loader(plan, s), loss_sum, correct)
        sums.append((loss_sum.item(), correct.item()))
        run.scheduler.step()
    return run.model, sums, float(run.optimizer.param_groups[0]["lr"])


@pytest.mark.cuda
@cuda
def test_full_fast_path_trains_on_cuda():
    """auto on CUDA for a convolutional model: bf16, compile, graphs, channels_last, Triton loader; the loss falls.

    AlexNet rather than Inception: the same switches at a third of the compile time
    (the GPU suite compiles Inception in its benchmarks, and checks graphs with
    BatchNorm in the test above).
    """
    cfg = types.SimpleNamespace(model="alexnet", amp="auto", compile="auto", cuda_graphs="auto", channels_last="auto")
    speed = resolve_speed(cfg, torch.device("cuda"))
    assert speed == Speed(True, True, True, True)
    _, sums, _ = _cuda_steps("alexnet", speed, graphs=True, epochs=3, n=512, batch=128)
    assert sums[-1][0] < sums[0][0], sums
