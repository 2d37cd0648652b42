"""The speed switches and the training step they shape.

`resolve_speed` turns the config's auto/on/off switches into booleans for the device at
hand; the `auto` defaults (README's Speed table) come from measurement (bench/NOTES.md §4).
`TrainStep` runs one optimizer step and adds the batch's summed loss and correct count to
device-resident accumulators, so an epoch never waits for the host. With CUDA graphs it
captures the whole step (forward, backward, SGD) once per batch shape: the full batch and
the epoch's smaller last batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fastzhang.data.cifar import PER_BATCH, TRAIN_BATCHES
from fastzhang.errors import UsageError, one_line
from fastzhang.models.lrn import EAGER, Kernels, use_kernels
from fastzhang.models.registry import MODELS

TRAIN_IMAGES = TRAIN_BATCHES * PER_BATCH  # every data set's training set (data/cifar.py)
WARMUP_STEPS = 3  # eager steps before a capture: compile, cuDNN/cuBLAS workspaces, optimizer state


@dataclass(frozen=True)
class Speed:
    amp: bool  # bf16 autocast
    compile: bool  # torch.compile of the model
    cuda_graphs: bool  # capture the whole step
    channels_last: bool
    compile_kernels: bool = False  # torch.compile of the model's kernels alone (models/lrn.Kernels): `auto` on a CPU
    why_compile: str = dataclasses.field(default="", compare=False)  # what `compile: auto` chose and why

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp else torch.float32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def activate_device(device: torch.device) -> None:
    """Make `device` CUDA's current device: streams, events, captures and Triton launches made without an
    explicit device go to the current one, where `cuda:1` tensors would otherwise meet work queued on device 0."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls and convolutions beat fp32 (NOTES §4: 1.4x-2.8x)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# Planned steps from which `compile: auto` compiles: where the compile repays itself. A CPU: AlexNet's LRN kernels
# compile in ~10 s cold and save ~6 ms a step (bench/NOTES.md §13): even at 1,700 steps; 2,000 = 10 epochs of
# 25,000 images. CUDA: a whole model compiles in 15-90 s cold (§10); the step it saves there is not measured yet
# (no GPU lent so far): 4,000 steps, ~10 epochs of CIFAR-10 at batch 128, until it is.
COMPILE_MIN_STEPS = {"cpu": 2_000, "cuda": 4_000}


def auto_compile(cfg, device: torch.device, train_images: int) -> tuple[bool, bool, str]:
    """What `compile: auto` does for this run: (the whole model, its kernels alone, the reason for the first line)."""
    cpu = device.type != "cuda"
    if cpu and not MODELS[cfg.model].kernels:
        # Measured in one run on a Zen 4 EPYC (bench/NOTES.md §13): AlexNet 0.53x, Inception 0.91x of eager.
        return False, False, "compile auto: off, inductor's CPU code trains slower than eager"
    steps, least = cfg.epochs * math.ceil(train_images / cfg.batch_size), COMPILE_MIN_STEPS["cpu" if cpu else "cuda"]
    if steps < least:
        return False, False, f"compile auto: off, {steps:,} planned steps, too few to repay a compile ({least:,} do)"
    if cpu:
        return False, True, f"compile auto: LRN kernels only, {steps:,} planned steps repay them (the whole " \
                            f"model trains slower compiled on a CPU)"
    return True, False, f"compile auto: on, {steps:,} planned steps repay a compile"


def resolve_speed(cfg, device: torch.device, train_images: int = TRAIN_IMAGES) -> Speed:
    """auto/on/off -> booleans; `train_images` sizes the run for `compile: auto`. `cuda_graphs: on` without CUDA
    is refused, not ignored."""
    cuda = device.type == "cuda"
    if cfg.cuda_graphs == "on" and not cuda:
        raise UsageError(f"cuda_graphs: 'on' needs a CUDA device; this run is on {device}")
    whole, kernels, why = auto_compile(cfg, device, train_images) if cfg.compile == "auto" \
        else (cfg.compile == "on", False, "")
    # channels_last: an MLP only pays a copy
    auto = {"amp": cuda or cpu_has_native_bf16(), "cuda_graphs": cuda, "channels_last": MODELS[cfg.model].convolutional}
    chosen = {name: auto[name] if getattr(cfg, name) == "auto" else getattr(cfg, name) == "on" for name in auto}
    return Speed(**chosen, compile=whole, compile_kernels=kernels, why_compile=why)


class CudaGraphs:
    """How TrainStep warms up and captures on CUDA (a test can pass a CPU stand-in)."""

    @contextmanager
    def warmup(self):
        # Warm-up on a side stream, as torch.cuda.graph's documentation prescribes.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, fn):
        """Record fn's kernels; returns (replay, fn's outputs, which each replay rewrites). Thread-local mode: the
        global one aborts the capture when another thread (DALI's workers) makes a CUDA call meanwhile."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = fn()
        return graph.replay, outputs


# Test-only hook (like atomicio's FASTZHANG_TEST_SLOW_WRITE): comma-separated "capture" and/or
# "compile" make that stage fail, so the fallback below can be exercised on any machine.
FAIL_ENV = "FASTZHANG_TEST_FAIL"


def compile_model(model: torch.nn.Module, **options):
    """torch.compile(model, **options), once torch's pre-grad passes are imported without the 14 warnings
    (torch.jit.script_method is deprecated) that torch.utils.mkldnn's ScriptModules give at import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script_method` is", DeprecationWarning)
        import torch._inductor.fx_passes.pre_grad  # noqa: F401
    return torch.compile(model, **options)


class _InjectedFailure(RuntimeError):
    pass


class TrainStep:
    """One SGD step; accumulates the summed loss and correct count on the device.

    A failed CUDA-graph capture or torch.compile must not end a long run: the first step of
    each batch shape runs under a snapshot of the weights and optimizer state; on failure the
    state is put back, the switch turned off (graphs first, then compile), `on_fallback(switch,
    reason)` told, and the step tried again. `speed` is always the switches actually in use.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, speed: Speed, *,
                 compile_mode: str | None = None, graphs=None,
                 on_fallback: Callable[[str, str], None] = lambda switch, reason: None):
        self.model = model
        self.optimizer = optimizer
        self.speed = speed
        self.on_fallback = on_fallback
        self._fail = {part.strip() for part in os.environ.get(FAIL_ENV, "").split(",")}
        # dynamic=False: one static compilation per batch shape (full and last), like the graphs.
        # The default mode: "reduce-overhead" would nest inductor's CUDA graphs in ours.
        self.forward = compile_model(model, mode=compile_mode, dynamic=False) if speed.compile else model
        if speed.compile and "compile" in self._fail:
            self.forward = _failing_compile
        if speed.compile_kernels:
            failing = "compile" in self._fail
            kernels = Kernels(_failing_compile, _failing_compile) if failing else \
                Kernels.compiled(functools.partial(compile_model, dynamic=False))
            if not use_kernels(model, kernels):
                self.speed = dataclasses.replace(speed, compile_kernels=False)  # nothing of the kind in this model
        self.graphs = graphs if graphs is not None else (CudaGraphs() if speed.cuda_graphs else None)
        self._captured: dict[tuple, tuple] = {}
        self._proven: set[tuple] = set()  # batch shapes whose first step succeeded

    def __call__(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        key = (tuple(x.shape), x.stride(), x.dtype)
        loss, right = self._run(key, x, y) if key in self._proven else self._first(key, x, y)
        loss_sum += loss.detach() * y.shape[0]
        correct += right

    def _run(self, key, x, y):
        if self.graphs is None:
            self.optimizer.zero_grad(set_to_none=True)
            return self._step(x, y)
        replay, static_x, static_y, outputs = self._captured[key]
        static_x.copy_(x)
        static_y.copy_(y)
        replay()
        return outputs

    def _first(self, key, x, y):
        """The first step of a batch shape: compile and capture happen here, and may fail."""
        if self.graphs is None and not self._compiles:
            return self._run(key, x, y)  # the plain path: nothing to fall back from
        while True:
            saved = _snapshot(self.model, self.optimizer)
            try:
                if self.graphs is not None:
                    self._captured[key] = self._capture(x, y, saved)
                out = self._run(key, x, y)
                self._proven.add(key)
                return out
            except _CaptureFailed as failed:
                _restore(self.model, self.optimizer, saved)
                self._fall_back("cuda_graphs", failed.__cause__)
            except Exception as e:  # inductor compiles at the first forward and the first backward
                if not self._compiles:
                    raise
                _restore(self.model, self.optimizer, saved)
                self._fall_back("compile", e)

    @property
    def _compiles(self) -> bool:
        """Whether this step runs anything inductor compiles: the whole model, or its kernels alone."""
        return self.forward is not self.model or self.speed.compile_kernels

    def _fall_back(self, switch: str, error: BaseException) -> None:
        off = {switch: False}
        if switch == "cuda_graphs":
            self.graphs, self._captured = None, {}
        else:
            self.forward = self.model
            use_kernels(self.model, EAGER)
            off["compile_kernels"] = False
        self._proven.clear()
        self.speed = dataclasses.replace(self.speed, **off)
        self.on_fallback(switch, one_line(error))

    def _step(self, x, y):
        """Forward, backward, SGD: the work a graph captures (gradients start as None)."""
        # No autocast weight cache: each weight is cast once per forward anyway, and a cache
        # entry made inside a CUDA-graph capture must not outlive it.
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.speed.amp, cache_enabled=False):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        right = (logits.argmax(dim=1) == y).sum()
        loss.backward()
        self.optimizer.step()
        return loss.detach(), right

    def _capture(self, x, y, saved: dict):
        """Warm up, then capture forward+backward+step for this batch shape. Warm-up changes weights,
        BatchNorm statistics and momentum: all are put back in place, so capturing never changes the
        trajectory (the learning rate is a device tensor, engine.build_run, which the schedule updates)."""
        static_x, static_y = x.clone(), y.clone()
        with self.graphs.warmup():
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._step(static_x, static_y)
        # Gradients None before capture: backward then allocates them in the graph's pool
        # and every replay writes them afresh rather than accumulating.
        self.optimizer.zero_grad(set_to_none=True)
        try:
            if "capture" in self._fail:
                raise _InjectedFailure(f"injected capture failure ({FAIL_ENV})")
            replay, outputs = self.graphs.capture(lambda: self._step(static_x, static_y))
        except Exception as e:
            raise _CaptureFailed from e
        _restore(self.model, self.optimizer, saved)
        return replay, static_x, static_y, outputs


class _CaptureFailed(Exception):
    """The capture failed (not the step captured); __cause__ says why."""


def _failing_compile(*args):
    raise _InjectedFailure(f"injected compile failure ({FAIL_ENV})")


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": {p: {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
                          for p, state in optimizer.state.items()}}


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Copy a snapshot back in place: a captured graph holds these tensors' addresses.

    An optimizer buffer the warm-up created (none saved) is zeroed: for SGD a zero momentum
    buffer gives exactly the first step's `buf = grad`.
    """
    with torch.no_grad():
        for name, value in model.state_dict().items():  # detached views of the live tensors
            value.copy_(saved["model"][name])
        for p, state in optimizer.state.items():
            for name, value in state.items():
                stored = saved["optimizer"].get(p, {}).get(name)
                if stored is not None:
                    value.copy_(stored)
                elif isinstance(value, torch.Tensor):
                    value.zero_()


def evaluate(model: torch.nn.Module, batches, speed: Speed) -> tuple[float, float]:
    """Mean loss and accuracy (%) over `batches`; one host sync at the end (nan for no batch)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in batches:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=speed.amp):
                logits = model(x)
            loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum")
            correct = correct + (logits.argmax(dim=1) == y).sum()
            count += y.shape[0]
    model.train(was_training)
    return (float(loss_sum) / count, 100.0 * float(correct) / count) if count else (math.nan, math.nan)
