"""The paper's small AlexNet: the TensorFlow CIFAR-10 tutorial's network on 28x28 inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fastzhang.models.lrn import LocalResponseNorm


class SmallAlexNet(nn.Module):
    """conv5x5(64) -> maxpool3x3/2 -> LRN -> conv5x5(64) -> LRN -> maxpool3x3/2 -> fc 384 -> 192 -> classes.

    ReLU after every conv and hidden fully connected layer, "same" padding (28 -> 14 -> 7; the
    pools pad both sides where TensorFlow pads bottom/right, same sizes), biases everywhere:
    1,387,786 trainable parameters for 10 classes (Table 1). LRN is TensorFlow's (models/lrn.py).
    Initialization is the TensorFlow tutorial's (cifar10.py, `reset_parameters`): truncated normal
    weights; the tutorial's plain SGD at lr 0.1 is the paper's lr 0.01 with momentum 0.9.
    """

    def __init__(self, num_classes: int = 10, make_lrn: Callable[[], nn.Module] = LocalResponseNorm) -> None:
        super().__init__()
        # `make_lrn` lets the benchmark swap in nn.LocalResponseNorm (lrn.torch_equivalent).
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.norm1 = make_lrn()
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.norm2 = make_lrn()
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer, std, bias in (
            (self.conv1, 5e-2, 0.0),
            (self.conv2, 5e-2, 0.1),
            (self.fc1, 0.04, 0.1),
            (self.fc2, 0.04, 0.1),
            (self.fc3, 1.0 / 192.0, 0.0),
        ):
            # tf.truncated_normal: redraw anything beyond two standard deviations.
            nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
            layer.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pool(relu(x)) == relu(pool(x)), values and gradients alike (ReLU is monotone; a window whose max
        # is <= 0 passes no gradient either way): the ReLU and its backward run on a quarter of the pixels.
        x = self.norm1(torch.relu(self.pool1(self.conv1(x))))
        x = self.pool2(self.norm2(torch.relu(self.conv2(x))))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)
