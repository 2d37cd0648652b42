"""The baseline every ratio is measured against: what a typical reproduction does.

A torch DataLoader over a Dataset that crops, scales and whitens one sample at a
time (the same preprocessing as data.preprocess, per image), an fp32 eager
model, and a `.item()` after every step to log the loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fastzhang.data.preprocess import CENTER, CROP, MAX_OFFSET, MIN_STD


class PerSampleCifar(Dataset):
    """Random (or center) crop, ToTensor-like scaling, per-image whitening, one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, random_crop: bool = True):
        self.images, self.labels, self.seed, self.random_crop = images, labels, seed, random_crop

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.random_crop:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            dy, dx = torch.randint(0, MAX_OFFSET + 1, (2,), generator=g).tolist()
        else:
            dy = dx = CENTER
        x = torch.from_numpy(self.images[i, :, dy : dy + CROP, dx : dx + CROP]).float().div(255.0)
        x = (x - x.mean()) / x.std(correction=0).clamp_min(MIN_STD)
        return x, int(self.labels[i])


def loader(images, labels, device: torch.device, *, batch: int, workers: int = 0, train: bool = True,
           seed: int = 0) -> DataLoader:
    return DataLoader(PerSampleCifar(images, labels, seed, random_crop=train), batch_size=batch, shuffle=train,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def train_epoch(model, optimizer, train_loader, test_loader, device: torch.device) -> tuple[float, float]:
    """One epoch as a typical reproduction writes it: `.item()` every step, then a test pass."""
    model.train()
    total = 0.0
    for x, y in train_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item()  # the per-step host sync of a logging loop
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in test_loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            seen += y.shape[0]
    return total, correct / max(seen, 1)
