"""Each randomization meets its definition (docs/zhang2017-facts.md §2.1), deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from fastzhang.data.randomize import channel_stats, randomize
from fastzhang.data.seeds import PURPOSE_ID, rng
from fastzhang.errors import UsageError


def _dataset(n_train=400, n_test=100, seed=0):
    g = np.random.default_rng(seed)
    return (g.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n_train).astype(np.int64),
            g.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n_test).astype(np.int64))


def _probe(n):
    """Images whose channels 0 and 1 spell each pixel's position; channel 2 is (ch0 + ch1) % 256."""
    pos = np.arange(1024)
    img = np.stack([pos % 256, pos // 256, (pos % 256 + pos // 256) % 256]).astype(np.uint8).reshape(3, 32, 32)
    return np.repeat(img[None], n, axis=0)


def _decode(images):
    """The source position of every pixel: [n, 1024]; checks the channels travelled together."""
    flat = images.reshape(len(images), 3, 1024).astype(np.int64)
    assert np.array_equal(flat[:, 2], (flat[:, 0] + flat[:, 1]) % 256), "a pixel's channels were separated"
    return flat[:, 0] + 256 * flat[:, 1]


def test_seed_streams_are_named_and_independent():
    assert list(PURPOSE_ID) == ["labels", "pixels", "subset", "order", "crop"]
    assert np.array_equal(rng(3, "order", 2).integers(0, 1 << 30, 8), rng(3, "order", 2).integers(0, 1 << 30, 8))
    draws = {(p, m): rng(3, p, *m).integers(0, 1 << 62, 4).tobytes()
             for p in PURPOSE_ID for m in ((), (1,), (2,))}
    assert len(set(draws.values())) == len(draws)
    assert rng(3, "order").random() != rng(4, "order").random()
    with pytest.raises(ValueError, match="purpose"):
        rng(0, "weights")


def test_none_returns_the_data_untouched():
    data = _dataset()
    out = randomize(*data, kind="none", corrupt_prob=0.0, seed=0, num_classes=10)
    assert all(a is b for a, b in zip(out, data))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_partial_corrupts_about_p_of_train_labels(p):
    n = 20_000
    labels = np.random.default_rng(1).integers(0, 10, n).astype(np.int64)
    images = np.zeros((n, 3, 32, 32), np.uint8)
    test_x, test_y = images[:10], labels[:10].copy()
    out_x, out_y, out_tx, out_ty = randomize(images, labels, test_x, test_y, kind="partial", corrupt_prob=p, seed=7,
                                             num_classes=10)
    changed = (out_y != labels).mean()
    sd = np.sqrt(0.9 * p * (1 - 0.9 * p) / n)
    assert abs(changed - 0.9 * p) < 5 * sd, (changed, 0.9 * p)
    # A replaced label is a uniform class: the changed ones spread evenly over the other nine.
    counts = np.bincount((out_y[out_y != labels] - labels[out_y != labels]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()
    assert out_x is images and out_tx is test_x and np.array_equal(out_ty, test_y)  # test labels stay true
    assert out_y.dtype == np.int64


def test_partial_draws_follow_the_labels_stream():
    labels = np.arange(1000, dtype=np.int64) % 10
    out = randomize(labels[:, None, None, None], labels, None, None, kind="partial", corrupt_prob=0.3, seed=5,
                    num_classes=10)[1]
    g = rng(5, "labels")
    replace = g.random(1000) < 0.3
    drawn = g.integers(0, 10, 1000)
    assert np.array_equal(out, np.where(replace, drawn, labels))


def test_random_labels_is_partial_with_p_one_and_levels_are_nested():
    x, y, tx, ty = _dataset(n_train=5000)
    rand = randomize(x, y, tx, ty, kind="random_labels", corrupt_prob=1.0, seed=2, num_classes=10)[1]
    assert np.array_equal(rand, randomize(x, y, tx, ty, kind="partial", corrupt_prob=1.0, seed=2, num_classes=10)[1])
    assert np.array_equal(rand, randomize(x, y, tx, ty, kind="random_labels", corrupt_prob=0.0, seed=2,
                                          num_classes=10)[1])
    assert abs((rand != y).mean() - 0.9) < 0.03
    assert np.array_equal(randomize(x, y, tx, ty, kind="partial", corrupt_prob=0.0, seed=2, num_classes=10)[1], y)
    low = randomize(x, y, tx, ty, kind="partial", corrupt_prob=0.3, seed=2, num_classes=10)[1]
    high = randomize(x, y, tx, ty, kind="partial", corrupt_prob=0.6, seed=2, num_classes=10)[1]
    assert np.array_equal(high[low != y], rand[low != y])  # corrupted at 0.3 -> corrupted the same at 0.6


def test_shuffled_pixels_use_one_permutation_for_train_and_test():
    x, y, tx, ty = _dataset()
    x[0], tx[0] = _probe(1)[0], _probe(1)[0]
    ox, oy, otx, oty = randomize(x, y, tx, ty, kind="shuffled_pixels", corrupt_prob=0.0, seed=4, num_classes=10)
    perm = _decode(ox[:1])[0]
    assert sorted(perm) == list(range(1024)) and not np.array_equal(perm, np.arange(1024))
    assert np.array_equal(_decode(otx[:1])[0], perm)
    expect = lambda imgs: imgs.reshape(len(imgs), 3, 1024)[:, :, perm].reshape(imgs.shape)  # noqa: E731
    assert np.array_equal(ox, expect(x)) and np.array_equal(otx, expect(tx))
    assert oy is y and oty is ty


def test_random_pixels_permute_each_image_independently():
    x, y, tx, ty = _dataset(n_train=300, n_test=60)
    x[:200], tx[:50] = _probe(200), _probe(50)
    ox, oy, otx, oty = randomize(x, y, tx, ty, kind="random_pixels", corrupt_prob=0.0, seed=4, num_classes=10)
    perms = np.concatenate([_decode(ox[:200]), _decode(otx[:50])])
    assert np.array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(1024), perms.shape))
    assert len({p.tobytes() for p in perms}) == len(perms)  # every image its own permutation
    # Uniform: each source position lands in each half of the image about equally often.
    assert abs((perms[:, :512] < 512).mean() - 0.5) < 0.01
    # Every image keeps its multiset of pixels (channels together).
    def packed(imgs):
        f = imgs.reshape(len(imgs), 3, 1024).astype(np.int64)
        return np.sort(f[:, 0] | f[:, 1] << 8 | f[:, 2] << 16, axis=1)
    assert np.array_equal(packed(ox), packed(x)) and np.array_equal(packed(otx), packed(tx))
    assert not np.array_equal(ox[200:], x[200:])
    assert oy is y and oty is ty


def test_gaussian_matches_per_channel_mean_and_variance():
    g = np.random.default_rng(3)
    mean, std = np.array([90.0, 128.0, 160.0]), np.array([20.0, 30.0, 25.0])
    draws = g.normal(mean[None, :, None, None], std[None, :, None, None], (600, 3, 32, 32))
    x = np.clip(np.rint(draws), 0, 255).astype(np.uint8)
    tx = x[:100].copy()
    y, ty = np.zeros(600, np.int64), np.zeros(100, np.int64)
    ox, oy, otx, oty = randomize(x, y, tx, ty, kind="gaussian", corrupt_prob=0.0, seed=1, num_classes=10)
    want_mean, want_std = channel_stats(x)
    for out in (ox, otx):
        assert out.dtype == np.uint8 and out.shape == (len(out), 3, 32, 32)
        got_mean, got_std = channel_stats(out)
        assert np.allclose(got_mean, want_mean, atol=0.3), (got_mean, want_mean)
        assert np.allclose(got_std, want_std, rtol=0.01), (got_std, want_std)
    # Pixels are independent draws: neighbours are uncorrelated, images carry nothing of the originals.
    a, b = ox[:, 0, :, :-1].astype(float).ravel(), ox[:, 0, :, 1:].astype(float).ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    for c in range(3):
        assert abs(np.corrcoef(ox[:, c].astype(float).ravel(), x[:, c].astype(float).ravel())[0, 1]) < 0.01
    assert oy is y and oty is ty


def test_channel_stats_matches_numpy():
    x = _dataset()[0]
    mean, std = channel_stats(x)
    assert np.allclose(mean, x.astype(float).mean(axis=(0, 2, 3)))
    assert np.allclose(std, x.astype(float).std(axis=(0, 2, 3)))


@pytest.mark.parametrize("kind,p", [("partial", 0.4), ("random_labels", 1.0), ("shuffled_pixels", 0.0),
                                    ("random_pixels", 0.0), ("gaussian", 0.0)])
def test_same_seed_same_bytes_other_seed_other_bytes(kind, p):
    data = _dataset(n_train=200, n_test=50)
    copies = [a.copy() for a in data]
    one = randomize(*data, kind=kind, corrupt_prob=p, seed=11, num_classes=10)
    two = randomize(*data, kind=kind, corrupt_prob=p, seed=11, num_classes=10)
    other = randomize(*data, kind=kind, corrupt_prob=p, seed=12, num_classes=10)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(one, two))
    assert any(not np.array_equal(a, b) for a, b in zip(one, other))
    assert all(np.array_equal(a, b) for a, b in zip(data, copies))  # inputs untouched
    assert one[0].dtype == np.uint8 and one[2].dtype == np.uint8


def test_chunking_does_not_change_random_pixels(monkeypatch):
    from fastzhang.data import randomize as module

    data = _dataset(n_train=70, n_test=10)
    whole = randomize(*data, kind="random_pixels", corrupt_prob=0.0, seed=3, num_classes=10)
    monkeypatch.setattr(module, "CHUNK", 16)
    chunked = randomize(*data, kind="random_pixels", corrupt_prob=0.0, seed=3, num_classes=10)
    assert all(np.array_equal(a, b) for a, b in zip(whole, chunked))


@pytest.mark.parametrize("kind,p,match", [
    ("rotated", 0.0, "must be one of"), ("partial", 1.5, "in \\[0, 1\\]"), ("partial", -0.1, "in \\[0, 1\\]"),
    ("random_labels", 0.5, "means corrupt_prob 1.0"), ("gaussian", 0.3, "applies only to"),
])
def test_bad_arguments_are_usage_errors(kind, p, match):
    with pytest.raises(UsageError, match=match):
        randomize(*_dataset(10, 10), kind=kind, corrupt_prob=p, seed=0, num_classes=10)
