"""The paper's randomizations (§2.1) as pure functions of uint8 images, labels, p and seed.

`seed` is the experiment's data seed (config.effective_data_seed: `data_seed`, else
`seed`). Every draw comes from a named CPU stream (data/seeds.py), so a randomized
data set is a function of the data seed alone, bit-identical on every machine,
drawn once before training and never changed. Streams:

* labels:          rng(seed, "labels"): first n uniforms u, then n classes c in 0..K-1
                   (K = the data set's class count: 10, or 100 for CIFAR-100);
                   label i becomes c[i] where u[i] < p. The draws do not depend on p,
                   so random_labels (p = 1) replaces every label with the same c, and
                   the labels corrupted at level p are a subset of those at p' > p.
* shuffled pixels: rng(seed, "pixels", 1): one permutation of the 1,024 positions.
* random pixels:   rng(seed, "pixels", 2, split): one permutation per image, in order.
* gaussian:        rng(seed, "pixels", 3, split): standard normals, image by image.

split is 0 for train, 1 for test. Pixel randomizations apply to train and test
alike (docs/zhang2017-facts.md); label corruption touches training labels only.
A pixel position keeps its three channels together. Arrays a randomization does
not touch are returned as they came, not copied.
"""

from __future__ import annotations

import numpy as np

from fastzhang.data.choices import RANDOMIZATIONS
from fastzhang.data.seeds import rng
from fastzhang.errors import UsageError

POSITIONS = 32 * 32
TRAIN, TEST = 0, 1
SHUFFLED, RANDOM, GAUSSIAN = 1, 2, 3  # sub-streams of "pixels"
CHUNK = 4096  # images per vectorized step: bounds memory; results do not depend on it


def randomize(train_images, train_labels, test_images, test_labels, *, kind: str, corrupt_prob: float, seed: int,
              num_classes: int):
    """-> (train_images, train_labels, test_images, test_labels), randomized as `kind` says.

    Random labels are drawn from 0..num_classes-1: the data set's classes (CifarArrays.num_classes).
    """
    if kind not in RANDOMIZATIONS:
        raise UsageError(f"randomization must be one of {', '.join(RANDOMIZATIONS)}; got {kind!r}")
    if not 0.0 <= corrupt_prob <= 1.0:
        raise UsageError(f"corrupt_prob must be in [0, 1]; got {corrupt_prob}")
    if kind == "random_labels":
        if corrupt_prob not in (0.0, 1.0):
            raise UsageError(f"random_labels means corrupt_prob 1.0; got {corrupt_prob}")
        corrupt_prob = 1.0
    elif kind != "partial" and corrupt_prob:
        raise UsageError(f"corrupt_prob applies only to randomization 'partial'; got {kind!r}")

    if kind in ("partial", "random_labels"):
        return train_images, corrupt_labels(train_labels, corrupt_prob, seed, num_classes), test_images, test_labels
    if kind == "shuffled_pixels":
        perm = rng(seed, "pixels", SHUFFLED).permutation(POSITIONS)
        return shuffle_pixels(train_images, perm), train_labels, shuffle_pixels(test_images, perm), test_labels
    if kind == "random_pixels":
        return (random_pixels(train_images, rng(seed, "pixels", RANDOM, TRAIN)), train_labels,
                random_pixels(test_images, rng(seed, "pixels", RANDOM, TEST)), test_labels)
    if kind == "gaussian":
        mean, std = channel_stats(train_images)
        return (gaussian_images(len(train_images), mean, std, rng(seed, "pixels", GAUSSIAN, TRAIN)), train_labels,
                gaussian_images(len(test_images), mean, std, rng(seed, "pixels", GAUSSIAN, TEST)), test_labels)
    return train_images, train_labels, test_images, test_labels


def corrupt_labels(labels: np.ndarray, p: float, seed: int, num_classes: int) -> np.ndarray:
    """Each label independently with probability p becomes a uniform class of 0..num_classes-1 (maybe the same)."""
    g = rng(seed, "labels")
    n = len(labels)
    replace = g.random(n) < p  # u in [0, 1): p = 1 replaces all, p = 0 none
    drawn = g.integers(0, num_classes, size=n, dtype=np.int64)
    return np.where(replace, drawn, np.asarray(labels, dtype=np.int64))


def shuffle_pixels(images: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Move pixel position perm[j] to position j in every image (channels travel together)."""
    n = len(images)
    return np.take(images.reshape(n, 3, POSITIONS), perm, axis=2).reshape(images.shape)


def random_pixels(images: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """An independent uniform permutation of pixel positions for each image."""
    n = len(images)
    flat = images.reshape(n, 3, POSITIONS)
    out = np.empty_like(flat)
    index = np.empty((min(n, CHUNK), POSITIONS), dtype=np.int64)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        perms = index[:m]
        perms[:] = np.arange(POSITIONS)
        g.permuted(perms, axis=1, out=perms)  # Fisher-Yates, row by row
        # One flat gather per channel: row r's entry k reads r * 1024 + perm[r, k].
        perms += np.arange(0, m * POSITIONS, POSITIONS)[:, None]
        for c in range(3):
            out[start:start + m, c] = np.take(flat[start:start + m, c].reshape(-1), perms.ravel()).reshape(m, -1)
    return out.reshape(images.shape)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (population) of uint8 images, in pixel units."""
    flat = images.reshape(len(images), 3, -1)
    count = flat.shape[0] * flat.shape[2]
    total = flat.sum(axis=(0, 2), dtype=np.float64)
    squares = np.einsum("ncp,ncp->c", flat, flat, dtype=np.float64)
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))


def gaussian_images(n: int, mean: np.ndarray, std: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """n images of independent Gaussian pixels with per-channel `mean` and `std`.

    Values are rounded to the nearest integer and clamped to 0..255 so the data
    stays uint8 like every other variant. Clamping trims the tails where
    mean +- 2 std leaves 0..255, so on CIFAR-10 the stored images' variance is
    7-11% below the target per channel (std 4-5%) and the mean moves by under 1%.
    """
    out = np.empty((n, 3, POSITIONS), dtype=np.uint8)
    mean32 = np.asarray(mean, np.float32).reshape(1, 3, 1)
    std32 = np.asarray(std, np.float32).reshape(1, 3, 1)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        z = g.standard_normal((m, 3, POSITIONS), dtype=np.float32)
        z *= std32
        z += mean32
        np.clip(np.rint(z, out=z), 0, 255, out=z)
        out[start:start + m] = z
    return out.reshape(n, 3, 32, 32)
