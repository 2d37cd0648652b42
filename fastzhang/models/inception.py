"""The paper's small Inception, with and without BatchNorm (Zhang et al. 2017, Figure 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (kind, c1, c3) after the first 3x3 conv (96); "inc" is Inception(c1, c3), "down" is Downsample(c3).
STEM_CHANNELS = 96
STAGES = (
    ("inc", 32, 32), ("inc", 32, 48), ("down", 0, 80),
    ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80), ("inc", 48, 96), ("down", 0, 96),
    ("inc", 176, 160), ("inc", 176, 160),
)  # fmt: skip


class BatchNormShift(nn.Module):
    """BatchNorm with a learned shift (beta, `bias`) and no scale (gamma), TensorFlow's default; PyTorch's
    momentum (0.1) and eps (1e-5) defaults (the paper gives none)."""

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, None, self.bias, self.training, self.momentum, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}, momentum={self.momentum}, eps={self.eps}"


class ConvModule(nn.Module):
    """conv -> BatchNormShift -> ReLU; without BatchNorm, conv with bias -> ReLU. "Same" padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=not batchnorm)
        self.bn = BatchNormShift(cout) if batchnorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Inception(c1, c3): a 1x1 module (c1) and a 3x3 module (c3) side by side, concatenated."""

    def __init__(self, cin: int, c1: int, c3: int, batchnorm: bool) -> None:
        super().__init__()
        self.branch1 = ConvModule(cin, c1, 1, 1, batchnorm)
        self.branch3 = ConvModule(cin, c3, 3, 1, batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class Downsample(nn.Module):
    """Downsample(c3): a 3x3 stride-2 module (c3) and a 3x3 stride-2 max-pool side by side, concatenated
    (PyTorch pads by one on both sides where TensorFlow's SAME pads one at the bottom/right: both 28 -> 14 -> 7)."""

    def __init__(self, cin: int, c3: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv = ConvModule(cin, c3, 3, 2, batchnorm)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class SmallInception(nn.Module):
    """conv3x3(96) -> Inc(32,32) -> Inc(32,48) -> Down(80) -> Inc(112,48) -> Inc(96,64) -> Inc(80,80)
    -> Inc(48,96) -> Down(96) -> Inc(176,160) -> Inc(176,160) -> 7x7 mean pool -> fc classes.

    Trainable parameters, 1,649,402 for 10 classes either way (Table 1): with
    BatchNorm, conv weights + one BatchNorm shift per conv channel (convs have
    no bias, BatchNorm no scale: TensorFlow's convention); without, conv
    weights + conv biases.

    Initialization: Glorot (Xavier) uniform weights, zero biases and shifts (the TensorFlow-slim
    / Keras default). Glorot's variance is at most 1/fan_in here, so without BatchNorm
    activations shrink with depth, and that network trains at the paper's lr 0.1 with momentum
    0.9 (loss 2.31 -> ~2.2 in 30 steps on 1,024 real images), where He normal init jumps to 4.7
    and stalls at chance, or reaches NaN in 4 steps on a random batch (tests/test_models.py).
    """

    def __init__(self, num_classes: int = 10, batchnorm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvModule(3, STEM_CHANNELS, 3, 1, batchnorm)]
        channels = STEM_CHANNELS
        for kind, c1, c3 in STAGES:
            if kind == "inc":
                layers.append(InceptionBlock(channels, c1, c3, batchnorm))
                channels = c1 + c3
            else:
                layers.append(Downsample(channels, c3, batchnorm))
                channels = channels + c3
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, BatchNormShift):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # The 7x7 mean pool covers the whole 7x7 map.
        return self.classifier(x.mean(dim=(2, 3)))
