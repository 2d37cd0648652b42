"""The paper's multi-layer perceptrons: MLP 1x512 and MLP 3x512."""

from __future__ import annotations

import torch
from torch import nn

INPUT_FEATURES = 3 * 28 * 28


class MLP(nn.Module):
    """Flatten 3x28x28 = 2,352 inputs -> `depth` hidden layers of `width` with ReLU -> classes.

    Biases everywhere: 1,209,866 (1x512) and 1,735,178 (3x512) trainable parameters for 10 classes
    (Table 1). Glorot uniform weights and zero biases (the TensorFlow/Keras default for dense layers)
    keep the 2,352-wide first layer's outputs O(1) at the paper's lr 0.01.
    """

    def __init__(self, num_classes: int = 10, depth: int = 1, width: int = 512) -> None:
        super().__init__()
        sizes = [INPUT_FEATURES] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.classifier = nn.Linear(width, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer in [*self.hidden, self.classifier]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flatten copies a channels_last input into C, H, W order, so weights don't depend on layout.
        x = torch.flatten(x, 1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.classifier(x)
