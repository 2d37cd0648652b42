"""The synthetic data set: deterministic, CIFAR-shaped, fingerprinted, learnable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastzhang.data.batches import ResidentData, epoch_plan, eval_batches, steps_per_epoch, train_batch
from fastzhang.data.cifar import content_fingerprint, fingerprint
from fastzhang.data.sources import load_dataset
from fastzhang.data.synthetic import make_synthetic


def test_shape_counts_and_fingerprint():
    a = load_dataset("synthetic", None)
    assert a.layout == "synthetic" and a.source == "synthetic"
    assert a.train_images.shape == (1024, 3, 32, 32) and a.test_images.shape == (256, 3, 32, 32)
    assert a.train_images.dtype == np.uint8 and a.train_labels.dtype == np.int64
    assert np.bincount(a.train_labels).tolist() == [103] * 4 + [102] * 6
    assert np.bincount(a.test_labels, minlength=10).min() == 25
    arrays = (a.train_images, a.train_labels, a.test_images, a.test_labels)
    assert a.fingerprint == fingerprint(*arrays) and a.fingerprint_name == "synthetic"
    assert a.content_fingerprint == content_fingerprint(*arrays)


def test_same_bytes_every_call():
    a, b = make_synthetic(), make_synthetic()
    assert a.fingerprint == b.fingerprint
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.test_labels, b.test_labels)
    # Images are not near-copies of each other: the noise is real.
    assert len({img.tobytes() for img in a.train_images}) == 1024


@pytest.fixture
def one_thread():
    # Tiny matmuls: a second thread only adds sync cost, and a lot of it on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_an_mlp_fits_it_within_a_few_epochs(one_thread):
    torch.manual_seed(0)
    data = ResidentData.build(make_synthetic(), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device="cpu")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for epoch in range(1, 4):
        plan = epoch_plan(0, epoch, data.num_train, True, "cpu")
        for step in range(steps_per_epoch(data.num_train, 64)):
            x, y = train_batch(data, plan, step, 64)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    def accuracy(images, labels):
        with torch.no_grad():
            hits = sum((model(x).argmax(1) == y).sum().item() for x, y in eval_batches(images, labels, 256))
        return hits / len(labels)

    assert accuracy(data.train_x, data.train_y) > 0.95
    assert accuracy(data.test_x, data.test_y) > 0.8
