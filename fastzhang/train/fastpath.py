"""The speed switches and the training step they shape.

`resolve_speed` turns the config's auto/on/off switches into booleans for the
device at hand. The `auto` defaults come from measurement (bench/NOTES.md §4):

| switch        | CUDA | CPU                                                           |
| ------------- | ---- | ------------------------------------------------------------- |
| amp (bf16)    | on   | on where the CPU has native bf16 (AMX / AVX512-BF16), else off |
| channels_last | on for the convolutional models (an MLP only pays a copy)    |
| compile       | on   | off (slower or even on the CPU, and 15 s-3 min to compile)     |
| cuda_graphs   | on   | off (CUDA only)                                               |

`TrainStep` runs one optimizer step and adds the batch's summed loss and
correct count to device-resident accumulators, so an epoch never waits for the
host. With CUDA graphs it captures the whole step (forward, backward, SGD)
once per batch shape: the full batch and the epoch's smaller last batch
(data.batches.steps_per_epoch: the last batch holds n mod B images).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WARMUP_STEPS = 3  # eager steps before a capture: compile, cuDNN/cuBLAS workspaces, optimizer state


@dataclass(frozen=True)
class Speed:
    amp: bool  # bf16 autocast
    compile: bool  # torch.compile of the model
    cuda_graphs: bool  # capture the whole step
    channels_last: bool

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp else torch.float32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from fastzhang.errors import UsageError

        raise UsageError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls and convolutions beat fp32 (NOTES §4: 1.4x-2.8x)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


CONVOLUTIONAL = ("inception", "inception_no_bn", "alexnet")


def resolve_speed(cfg, device: torch.device) -> Speed:
    """auto/on/off -> booleans. `cuda_graphs: on` without CUDA is refused, not ignored."""
    cuda = device.type == "cuda"
    auto = {
        "amp": cuda or cpu_has_native_bf16(),
        "compile": cuda,
        "cuda_graphs": cuda,
        "channels_last": cfg.model in CONVOLUTIONAL,
    }

    def switch(name: str) -> bool:
        value = getattr(cfg, name)
        return auto[name] if value == "auto" else value == "on"

    if cfg.cuda_graphs == "on" and not cuda:
        from fastzhang.errors import UsageError

        raise UsageError(f"cuda_graphs: 'on' needs a CUDA device; this run is on {device}")
    return Speed(amp=switch("amp"), compile=switch("compile"), cuda_graphs=switch("cuda_graphs"),
                 channels_last=switch("channels_last"))


def _forward_loss(forward, x, y, amp: bool):
    # No autocast weight cache: each weight is cast once per forward anyway, and a cache
    # entry made inside a CUDA-graph capture must not outlive it.
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        logits = forward(x)
    loss = F.cross_entropy(logits.float(), y)
    correct = (logits.argmax(dim=1) == y).sum()
    return loss, correct


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
        """Record fn's kernels; returns (replay, fn's outputs, which each replay rewrites)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn()
        return graph.replay, outputs


class TrainStep:
    """One SGD step; accumulates the summed loss and correct count on the device."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, speed: Speed, *,
                 compile_mode: str | None = None, graphs=None):
        self.model = model
        self.optimizer = optimizer
        self.speed = speed
        # dynamic=False: one static compilation per batch shape (full and last), like the graphs.
        # The default mode: "reduce-overhead" would nest inductor's CUDA graphs in ours.
        self.forward = torch.compile(model, mode=compile_mode, dynamic=False) if speed.compile else model
        self.graphs = graphs if graphs is not None else (CudaGraphs() if speed.cuda_graphs else None)
        self._captured: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        if self.graphs is not None:
            loss, right = self._replay(x, y)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss, right = self._step(x, y)
        loss_sum += loss.detach() * y.shape[0]
        correct += right

    def _step(self, x, y):
        """Forward, backward, SGD: the work a graph captures (gradients start as None)."""
        loss, right = _forward_loss(self.forward, x, y, self.speed.amp)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), right

    # -- CUDA graphs -------------------------------------------------------------------
    def _replay(self, x, y):
        key = (tuple(x.shape), x.stride(), x.dtype)
        if key not in self._captured:
            self._captured[key] = self._capture(x, y)
        replay, static_x, static_y, outputs = self._captured[key]
        static_x.copy_(x)
        static_y.copy_(y)
        replay()
        return outputs

    def _capture(self, x, y):
        """Warm up, then capture forward+backward+step for this batch shape.

        The learning rate lives in a device tensor (engine.build_run), so the
        scheduler's per-epoch `fill_` reaches the captured step. Warm-up steps
        change weights, BatchNorm statistics and momentum; all are copied back in
        place afterwards (the graph holds their addresses), so capturing never
        changes the training trajectory.
        """
        saved_model = {k: v.clone() for k, v in self.model.state_dict().items()}
        saved_state = _clone_tree(self.optimizer.state_dict()["state"])
        static_x, static_y = x.clone(), y.clone()
        with self.graphs.warmup():
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._step(static_x, static_y)
        # Gradients None before capture: backward then allocates them in the graph's pool
        # and every replay writes them afresh rather than accumulating.
        self.optimizer.zero_grad(set_to_none=True)
        replay, outputs = self.graphs.capture(lambda: self._step(static_x, static_y))
        with torch.no_grad():
            for name, value in self.model.state_dict().items():  # detached views of the live tensors
                value.copy_(saved_model[name])
        _restore_optimizer(self.optimizer, saved_state)
        return replay, static_x, static_y, outputs


def _clone_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    return obj


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Copy saved per-parameter buffers (state_dict()["state"]) back in place.

    A buffer the warm-up created (no saved value) is zeroed: for SGD a zero
    momentum buffer gives exactly the first step's `buf = grad`.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, p in enumerate(params):
        live = optimizer.state.get(p, {})
        stored = saved.get(index, {})
        for name, value in live.items():
            if not isinstance(value, torch.Tensor):
                continue
            if isinstance(stored.get(name), torch.Tensor):
                value.copy_(stored[name])
            else:
                value.zero_()


def evaluate(model: torch.nn.Module, batches, speed: Speed) -> tuple[float, float]:
    """Mean loss and accuracy (%) over `batches`; one host sync at the end."""
    was_training = model.training
    model.eval()
    loss_sum = correct = None
    count = 0
    with torch.inference_mode():
        for x, y in batches:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=speed.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            right = (logits.argmax(dim=1) == y).sum()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            correct = right if correct is None else correct + right
            count += y.shape[0]
    model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return loss_sum.item() / count, 100.0 * correct.item() / count
