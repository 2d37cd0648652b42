"""The speed switches and the training step they shape.

`resolve_speed` turns the config's auto/on/off switches into booleans for the
device at hand. The defaults come from measurement (bench/NOTES.md): on CUDA
everything is on; on CPU plain fp32 eager is fastest for these models, so
`auto` means off there.

`TrainStep` runs one optimizer step and adds the batch's summed loss and
correct count to device-resident accumulators, so an epoch never waits for the
host. With CUDA graphs it captures the whole step (forward, backward, SGD)
once per batch shape: the full batch and the epoch's smaller last batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def resolve_speed(cfg, device: torch.device) -> Speed:
    cuda = device.type == "cuda"

    def switch(value: str) -> bool:
        return cuda if value == "auto" else value == "on"

    return Speed(
        amp=switch(cfg.amp),
        compile=switch(cfg.compile),
        cuda_graphs=switch(cfg.cuda_graphs) and cuda,
        channels_last=switch(cfg.channels_last),
    )


def _forward_loss(model, x, y, amp: bool):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    correct = (logits.argmax(dim=1) == y).sum()
    return loss, correct


class TrainStep:
    """One SGD step; accumulates the summed loss and correct count on the device."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, speed: Speed):
        self.model = model
        self.optimizer = optimizer
        self.speed = speed
        self.forward = torch.compile(model) if speed.compile else model
        self._graphs: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        if self.speed.cuda_graphs:
            self._graphed(x, y, loss_sum, correct)
            return
        loss, right = self._eager_step(x, y)
        loss_sum += loss.detach() * y.shape[0]
        correct += right

    def _eager_step(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        loss, right = _forward_loss(self.forward, x, y, self.speed.amp)
        loss.backward()
        self.optimizer.step()
        return loss, right

    # -- CUDA graphs -------------------------------------------------------------------
    def _graphed(self, x, y, loss_sum, correct) -> None:
        key = tuple(x.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, y)
        graph, static_x, static_y, static_loss, static_right = self._graphs[key]
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        loss_sum += static_loss * y.shape[0]
        correct += static_right

    def _capture(self, x, y):
        """Warm up on a side stream, then capture forward+backward+step for this shape.

        The learning rate lives in a device tensor (see engine.build_optimizer), so the
        scheduler's per-epoch update reaches the captured step. Warm-up steps run on
        copies of the real batch and are undone by restoring the saved state, so
        capturing never changes the training trajectory.
        """
        model_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        opt_state = _clone_tree(self.optimizer.state_dict())
        static_x, static_y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._eager_step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss, static_right = _forward_loss(self.forward, static_x, static_y, self.speed.amp)
            static_loss.backward()
            self.optimizer.step()
        # Undo the warm-up and capture steps: the graph replays from the true state.
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(model_state[k])
        _restore_optimizer(self.optimizer, opt_state)
        return graph, static_x, static_y, static_loss.detach(), static_right


def _clone_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    return obj


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Copy saved optimizer buffers back in place (the graph holds their addresses)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, p in enumerate(params):
        buffers = saved["state"].get(index)
        live = optimizer.state.get(p)
        if buffers is None or live is None:
            if live is not None:
                for value in live.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
            continue
        for name, value in buffers.items():
            if isinstance(value, torch.Tensor):
                live[name].copy_(value)


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
