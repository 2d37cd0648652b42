"""Device-resident data, epoch plans regenerated from the seed, and the batches they give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import numpy_preprocess

from fastzhang.data.batches import ResidentData, epoch_plan, eval_batches, steps_per_epoch, subset_indices, train_batch
from fastzhang.data.randomize import randomize
from fastzhang.data.seeds import rng
from fastzhang.data.synthetic import make_synthetic
from fastzhang.errors import UsageError


@pytest.fixture(scope="module")
def arrays():
    return make_synthetic()


def build(arrays, **kw):
    args = dict(randomization="none", corrupt_prob=0.0, seed=0, train_subset=None, device="cpu") | kw
    return ResidentData.build(arrays, **args)


def test_build_moves_uint8_and_int64_to_the_device(arrays):
    data = build(arrays)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.test_x.dtype == torch.uint8 and data.test_y.dtype == torch.int64
    assert data.train_x.shape == (1024, 3, 32, 32) and data.test_x.shape == (256, 3, 32, 32)
    assert data.device == torch.device("cpu") and data.num_train == 1024
    assert np.array_equal(data.train_x.numpy(), arrays.train_images)
    assert data.fingerprint == arrays.fingerprint
    data.train_x[0] = 0  # a private copy: the loaded arrays stay as they were
    assert arrays.train_images[0].any()


def test_randomization_first_then_subset(arrays):
    data = build(arrays, randomization="random_labels", corrupt_prob=1.0, seed=3, train_subset=100)
    keep = rng(3, "subset").permutation(1024)[:100]
    _, labels, _, test_labels = randomize(arrays.train_images, arrays.train_labels, arrays.test_images,
                                          arrays.test_labels, kind="random_labels", corrupt_prob=1.0, seed=3,
                                          num_classes=10)
    assert np.array_equal(data.train_y.numpy(), labels[keep])
    assert np.array_equal(data.train_x.numpy(), arrays.train_images[keep])
    assert np.array_equal(data.test_y.numpy(), arrays.test_labels)  # test labels stay true
    assert data.num_train == 100


def test_subsets_are_nested_and_bounded():
    assert np.array_equal(subset_indices(1000, 300, 5)[:100], subset_indices(1000, 100, 5))
    assert len(set(subset_indices(1000, 1000, 5))) == 1000
    for bad in (0, 1001):
        with pytest.raises(UsageError, match="train_subset must be in 1..1000"):
            subset_indices(1000, bad, 5)


def test_steps_per_epoch_policy():
    assert steps_per_epoch(50_000, 128) == 391 and steps_per_epoch(1024, 128) == 8 and steps_per_epoch(1, 128) == 1


@pytest.mark.parametrize("random_crop", [False, True])
def test_every_training_index_appears_once_per_epoch(arrays, random_crop):
    data = build(arrays, train_subset=1000)
    plan = epoch_plan(0, 1, 1000, random_crop, "cpu")
    assert torch.equal(plan.order.sort().values, torch.arange(1000))
    steps = steps_per_epoch(1000, 128)
    seen, labels = [], []
    for step in range(steps):
        x, y = train_batch(data, plan, step, 128)
        assert x.shape == (128 if step < steps - 1 else 1000 % 128, 3, 28, 28) and x.dtype == torch.float32
        seen.append(plan.order[step * 128:(step + 1) * 128])
        labels.append(y)
    seen = torch.cat(seen)
    assert torch.equal(seen.sort().values, torch.arange(1000))
    assert torch.equal(torch.cat(labels), data.train_y[seen])
    with pytest.raises(ValueError, match="step 8 outside 0..7"):
        train_batch(data, plan, steps, 128)


def test_seed_epoch_step_regenerates_the_batch(arrays):
    data = build(arrays)
    x1, y1 = train_batch(data, epoch_plan(7, 3, 1024, True, "cpu"), 5, 64)
    x2, y2 = train_batch(data, epoch_plan(7, 3, 1024, True, "cpu"), 5, 64)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for other in (epoch_plan(7, 4, 1024, True, "cpu"), epoch_plan(8, 3, 1024, True, "cpu")):
        assert not torch.equal(train_batch(data, other, 5, 64)[0], x1)
    a, b = epoch_plan(7, 3, 1024, True, "cpu"), epoch_plan(7, 3, 1024, False, "cpu")
    assert torch.equal(a.order, b.order)  # the crop switch does not move the order stream
    assert np.array_equal(a.order.numpy(), rng(7, "order", 3).permutation(1024))
    with pytest.raises(ValueError, match="epochs count from 1"):
        epoch_plan(7, 0, 1024, True, "cpu")


def test_crop_offsets_center_or_uniform():
    center = epoch_plan(0, 1, 5000, False, "cpu").offsets
    assert center.dtype == torch.int64 and torch.equal(center, torch.full((5000, 2), 2))
    drawn = epoch_plan(0, 1, 5000, True, "cpu").offsets
    counts = torch.bincount(drawn.flatten(), minlength=5)
    assert len(counts) == 5 and counts.min() > 0.9 * 2000 and counts.max() < 1.1 * 2000
    assert np.array_equal(drawn.numpy(), rng(0, "crop", 1).integers(0, 5, size=(5000, 2)))


@pytest.mark.parametrize("random_crop", [False, True])
def test_batches_equal_plain_slicing_and_the_formula(arrays, random_crop):
    data = build(arrays)
    plan = epoch_plan(1, 2, 1024, random_crop, "cpu")
    x, y = train_batch(data, plan, 3, 100)
    index = plan.order[300:400].numpy()
    offsets = plan.offsets[300:400].numpy()
    if not random_crop:
        assert (offsets == 2).all()
    want = numpy_preprocess(arrays.train_images[index], offsets)
    assert np.allclose(x.numpy(), want, atol=2e-5)
    assert np.array_equal(y.numpy(), arrays.train_labels[index])


def test_eval_batches_center_crop_in_order(arrays):
    data = build(arrays)
    xs, ys = zip(*eval_batches(data.test_x, data.test_y, 100))
    assert [len(y) for y in ys] == [100, 100, 56]
    assert np.array_equal(torch.cat(ys).numpy(), arrays.test_labels)
    want = numpy_preprocess(arrays.test_images, np.full((256, 2), 2))
    assert np.allclose(torch.cat(xs).numpy(), want, atol=2e-5)


def test_dtype_and_channels_last_pass_through(arrays):
    data = build(arrays)
    plan = epoch_plan(0, 1, 1024, True, "cpu")
    x32, _ = train_batch(data, plan, 0, 32)
    x16, _ = train_batch(data, plan, 0, 32, dtype=torch.bfloat16, channels_last=True)
    assert x16.dtype == torch.bfloat16 and x16.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x16.float(), x32.to(torch.bfloat16).float())  # the float32 batch rounded once
    xe, _ = next(eval_batches(data.test_x, data.test_y, 8, dtype=torch.bfloat16, channels_last=True))
    assert xe.dtype == torch.bfloat16 and xe.is_contiguous(memory_format=torch.channels_last)


def test_plan_must_match_the_data(arrays):
    with pytest.raises(ValueError, match="covers 1000 images but the data set has 1024"):
        train_batch(build(arrays), epoch_plan(0, 1, 1000, False, "cpu"), 0, 10)
