"""data.preprocess against a numpy transcription of the paper's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import numpy_preprocess

from fastzhang.data.preprocess import CENTER, MIN_STD, center_offsets, crop, preprocess, whiten


def test_crop_equals_slicing_at_every_offset():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (25, 3, 32, 32), dtype=np.uint8))
    offsets = torch.tensor([(dy, dx) for dy in range(5) for dx in range(5)])
    got = crop(images, offsets)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(got[i], images[i, :, dy:dy + 28, dx:dx + 28])
    assert torch.equal(center_offsets(3), torch.full((3, 2), CENTER)) and CENTER == 2


def test_whitening_matches_the_formula():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    images[3] = 77  # constant image: std 0, divided by 1/sqrt(N) instead -> all zeros
    images[4] = rng.integers(100, 102, (3, 32, 32))  # tiny std, below the floor
    offsets = rng.integers(0, 5, (16, 2))
    got = preprocess(torch.from_numpy(images), torch.from_numpy(offsets)).double().numpy()
    want = numpy_preprocess(images, offsets)
    assert np.allclose(got, want, atol=2e-5)
    assert np.abs(got[3]).max() < 1e-5  # float32 mean of a constant image is not exact
    assert MIN_STD == pytest.approx(1 / math.sqrt(2352))
    flat = got.reshape(16, -1)
    normal = [i for i in range(16) if i not in (3, 4)]
    assert np.allclose(flat[normal].mean(1), 0, atol=1e-5) and np.allclose(flat[normal].std(1), 1, atol=1e-4)


def test_whiten_is_per_image():
    x = torch.rand(4, 3, 28, 28)
    assert torch.allclose(whiten(x)[1:], whiten(x[1:]))


def test_index_gathers_the_batch_from_the_whole_set():
    """crop/preprocess with `index` equal cropping images[index]; the last image's last window is in bounds."""
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    index = torch.tensor([39, 0, 39, 7, 21])  # repeats, both ends of the set
    offsets = torch.tensor([[4, 4], [0, 0], [0, 4], [4, 0], [2, 3]])
    assert torch.equal(crop(images, offsets, index), crop(images[index], offsets))
    assert torch.equal(crop(images, offsets, index)[0], images[39, :, 4:32, 4:32])
    for cl in (False, True):
        assert torch.equal(preprocess(images, offsets, index=index, channels_last=cl),
                           preprocess(images[index], offsets, channels_last=cl))
    assert crop(images, offsets[:0], index[:0]).shape == (0, 3, 28, 28)


def test_whiten_leaves_its_input_alone():
    x = torch.rand(4, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    out = whiten(x)
    assert torch.equal(x, before) and out.is_contiguous() and out.dtype == torch.float32
