"""A small CIFAR-shaped data set for tests and benches: deterministic, learnable, instant.

Each class has a fixed random pattern of 4x4 blocks (8x8 pixels each, per channel); an image is
its pattern plus pixel noise, under a random contrast and brightness (which whitening undoes).
The blocks survive a crop offset of up to 4 pixels, so an MLP fits the set within a few epochs
and generalizes to its test split. Same bytes on every call and machine (one seed, numpy PCG64).
"""

from __future__ import annotations

import numpy as np

from fastzhang.data.cifar import CIFAR10, CifarArrays, arrays_from

SEED = 20170224  # fixed: the data set, not the experiment, owns this seed
NUM_TRAIN, NUM_TEST = 1024, 256
SYNTHETIC_CLASSES = CIFAR10.classes  # CIFAR-shaped: ten classes, named like CIFAR-10's
PATTERN, NOISE = 40.0, 35.0  # pixel units: class signal and per-pixel noise


def make_synthetic(num_train: int = NUM_TRAIN, num_test: int = NUM_TEST) -> CifarArrays:
    """The synthetic data set (layout "synthetic", fingerprint named "synthetic")."""
    g = np.random.Generator(np.random.PCG64(SEED))
    coarse = g.standard_normal((len(SYNTHETIC_CLASSES), 3, 4, 4), dtype=np.float32)
    patterns = PATTERN * coarse.repeat(8, axis=2).repeat(8, axis=3)
    train_x, train_y = _draw(g, patterns, num_train)
    test_x, test_y = _draw(g, patterns, num_test)
    return arrays_from(train_x, train_y, test_x, test_y, source="synthetic", layout="synthetic",
                       classes=SYNTHETIC_CLASSES, names=("synthetic", "synthetic"))


def _draw(g: np.random.Generator, patterns: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = g.permutation(np.arange(n, dtype=np.int64) % len(patterns))  # balanced classes
    contrast = g.uniform(0.7, 1.3, size=(n, 1, 1, 1)).astype(np.float32)
    brightness = g.uniform(-30.0, 30.0, size=(n, 1, 1, 1)).astype(np.float32)
    x = g.standard_normal((n, 3, 32, 32), dtype=np.float32)
    x *= NOISE
    x += patterns[labels]
    x *= contrast
    x += 128.0 + brightness
    np.clip(np.rint(x, out=x), 0, 255, out=x)
    return x.astype(np.uint8), labels
