"""The data set resident on the training device, and the batches drawn from it.

`ResidentData.build` randomizes the data set once and moves the uint8 images and int64
labels to the device (184 MB for CIFAR-10): no loader threads, no host-to-device copies.
An epoch's plan (image order, crop offsets) is drawn from the seed alone, so the batch at
any (epoch, step) is regenerated without saved loader state. Steps count from 0 within
an epoch; epochs from 1. Batches are cropped and whitened on the device by `preprocess`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from fastzhang.data.cifar import CifarArrays
from fastzhang.data.preprocess import CENTER, MAX_OFFSET, center_offsets, preprocess
from fastzhang.data.randomize import randomize
from fastzhang.data.seeds import rng
from fastzhang.errors import UsageError


@dataclass(frozen=True, eq=False)
class ResidentData:
    train_x: torch.Tensor  # uint8 [n, 3, 32, 32] on the device, randomized
    train_y: torch.Tensor  # int64 [n]
    test_x: torch.Tensor  # uint8 [m, 3, 32, 32]
    test_y: torch.Tensor  # int64 [m], true labels
    fingerprint: str  # of the data set before randomization
    fingerprint_name: str | None

    @property
    def num_train(self) -> int:
        return self.train_x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @classmethod
    def build(cls, arrays: CifarArrays, *, randomization: str, corrupt_prob: float, seed: int,
              train_subset: int | None, device: torch.device | str) -> "ResidentData":
        train_x, train_y, test_x, test_y = randomize(
            arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels,
            kind=randomization, corrupt_prob=corrupt_prob, seed=seed, num_classes=arrays.num_classes,
        )
        if train_subset is not None:
            keep = subset_indices(len(train_y), train_subset, seed)
            train_x, train_y = train_x[keep], train_y[keep]
        return cls(_to_device(train_x, np.uint8, device), _to_device(train_y, np.int64, device),
                   _to_device(test_x, np.uint8, device), _to_device(test_y, np.int64, device),
                   arrays.fingerprint, arrays.fingerprint_name)


def subset_indices(n: int, k: int, seed: int) -> np.ndarray:
    """The first k of a fixed permutation of range(n): nested for growing k."""
    if not 1 <= k <= n:
        raise UsageError(f"train_subset must be in 1..{n} (the training images); got {k}")
    return rng(seed, "subset").permutation(n)[:k]


def _to_device(array: np.ndarray, dtype, device) -> torch.Tensor:
    # A private contiguous copy: torch must not alias the caller's (maybe read-only) arrays.
    return torch.from_numpy(np.array(array, dtype=dtype, order="C", copy=True)).to(device)


@dataclass(frozen=True, eq=False)
class EpochPlan:
    order: torch.Tensor  # int64 [n]: the image at each position of the epoch
    offsets: torch.Tensor  # int64 [n, 2]: (dy, dx) crop offset for each position


def epoch_plan(seed: int, epoch: int, n: int, random_crop: bool, device: torch.device | str) -> EpochPlan:
    """Image order and crop offsets of `epoch` (>= 1), drawn on the CPU from the seed."""
    if epoch < 1:
        raise ValueError(f"epochs count from 1; got {epoch}")
    order = rng(seed, "order", epoch).permutation(n)
    if random_crop:
        offsets = rng(seed, "crop", epoch).integers(0, MAX_OFFSET + 1, size=(n, 2), dtype=np.int64)
    else:
        offsets = np.full((n, 2), CENTER, dtype=np.int64)
    return EpochPlan(torch.from_numpy(order.astype(np.int64)).to(device), torch.from_numpy(offsets).to(device))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """ceil(n / batch_size): the last step takes the n mod batch_size images left over."""
    return math.ceil(n / batch_size)


def step_span(plan: EpochPlan, step: int, batch_size: int, num_train: int) -> slice:
    """Positions of step `step` (from 0) in the epoch plan; every loader checks its step here."""
    n = plan.order.shape[0]
    if n != num_train:
        raise ValueError(f"epoch plan covers {n} images but the data set has {num_train}")
    steps = steps_per_epoch(n, batch_size)
    if not 0 <= step < steps:
        raise ValueError(f"step {step} outside 0..{steps - 1}")
    return slice(step * batch_size, min((step + 1) * batch_size, n))


def train_batch(data: ResidentData, plan: EpochPlan, step: int, batch_size: int, *,
                dtype: torch.dtype = torch.float32, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step` (from 0) of the epoch `plan` describes: whitened crops and labels."""
    span = step_span(plan, step, batch_size, data.num_train)
    index = plan.order[span]
    x = preprocess(data.train_x, plan.offsets[span], dtype=dtype, channels_last=channels_last, index=index)
    return x, data.train_y.index_select(0, index)


def eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Center-cropped, whitened batches of `images` in order, with their labels."""
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size]
        offsets = center_offsets(chunk.shape[0], chunk.device)
        yield preprocess(chunk, offsets, dtype=dtype, channels_last=channels_last), labels[start:start + batch_size]
