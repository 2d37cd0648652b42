"""Reading CIFAR-10 in every layout: exact arrays, strict validation, fingerprints."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
from conftest import batch_dict, cifar_arrays, dump_batch, make_cifar_dir, py2_pickle, write_python_dir

from fastzhang.data import cifar
from fastzhang.data.cifar import content_fingerprint, fingerprint
from fastzhang.data.sources import load_dataset
from fastzhang.errors import DataError


def test_every_layout_loads_the_exact_arrays(cifar_any):
    got = load_dataset("cifar10", cifar_any.root, download=False, per_batch=20)
    assert got.layout == cifar_any.layout
    for have, want in zip((got.train_images, got.train_labels, got.test_images, got.test_labels), cifar_any.arrays()):
        assert have.dtype == want.dtype and have.shape == want.shape
        assert np.array_equal(have, want)
    assert got.train_images.shape == (100, 3, 32, 32) and got.train_labels.dtype == np.int64
    assert got.source == str(cifar_any.path)
    assert got.fingerprint == fingerprint(*cifar_any.arrays())


def test_layouts_of_the_same_data_share_fingerprints(tmp_path):
    roots = [make_cifar_dir(tmp_path, layout).root for layout in ("python", "binary", "tarball")]
    loaded = [load_dataset("cifar10", root, download=False, per_batch=20) for root in roots]
    assert len({a.fingerprint for a in loaded}) == 1
    assert len({a.content_fingerprint for a in loaded}) == 1


def test_python3_repickled_copy_with_str_keys_loads(make_cifar):
    fx = make_cifar("python", style="py3")
    assert b"_codecs" not in (fx.path / "data_batch_1").read_bytes()
    got = load_dataset("cifar10", fx.root, download=False, per_batch=20)
    assert np.array_equal(got.test_images, fx.test_images)


def test_fingerprint_follows_its_documented_recipe():
    arrays = cifar_arrays(per_batch=4)
    train_x, train_y, test_x, test_y = arrays
    h = hashlib.sha256(b"fastzhang-data-v1 20 4\n")
    for part in (train_x.tobytes(), train_y.astype("<i8").tobytes(), test_x.tobytes(), test_y.astype("<i8").tobytes()):
        h.update(part)
    assert fingerprint(*arrays) == h.hexdigest()

    def sorted_digests(x, y):
        return b"".join(sorted(hashlib.sha256(bytes([int(lab)]) + img.tobytes()).digest() for img, lab in zip(x, y)))

    header = b"fastzhang-content-v1 20 4\n"
    c = hashlib.sha256(header + sorted_digests(train_x, train_y) + sorted_digests(test_x, test_y))
    assert content_fingerprint(*arrays) == c.hexdigest()


def test_content_fingerprint_ignores_order_but_not_labels_or_pixels():
    train_x, train_y, test_x, test_y = cifar_arrays(per_batch=10)
    perm = np.random.default_rng(1).permutation(len(train_y))
    base = content_fingerprint(train_x, train_y, test_x, test_y)
    assert content_fingerprint(train_x[perm], train_y[perm], test_x[::-1], test_y[::-1]) == base
    assert fingerprint(train_x[perm], train_y[perm], test_x, test_y) != fingerprint(train_x, train_y, test_x, test_y)
    flipped = train_y.copy()
    flipped[0] = (flipped[0] + 1) % 10
    assert content_fingerprint(train_x, flipped, test_x, test_y) != base
    pixel = train_x.copy()
    pixel[3, 1, 5, 5] ^= 1
    assert content_fingerprint(pixel, train_y, test_x, test_y) != base
    # Moving an image from train to test is a different data set.
    assert content_fingerprint(train_x[1:], train_y[1:], np.concatenate([test_x, train_x[:1]]),
                               np.concatenate([test_y, train_y[:1]])) != base


def test_known_fingerprints_are_named(cifar_python, monkeypatch):
    plain = load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)
    assert plain.fingerprint_name is None and plain.content_fingerprint_name is None
    monkeypatch.setitem(cifar.KNOWN_CONTENT_FINGERPRINTS, plain.content_fingerprint, "tiny images")
    named = load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)
    assert (named.fingerprint_name, named.content_fingerprint_name) == ("tiny images", "tiny images")
    monkeypatch.setitem(cifar.KNOWN_FINGERPRINTS, plain.fingerprint, "tiny, this order")
    named = load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)
    assert named.fingerprint_name == "tiny, this order"


def test_offline_copy_fingerprints_are_recorded():
    assert "CIFAR-10 offline copy (shuffled order)" in cifar.KNOWN_FINGERPRINTS.values()
    assert "CIFAR-10 (official images and labels)" in cifar.KNOWN_CONTENT_FINGERPRINTS.values()


# ------------------------------------------------------------------------------------------
# Finding the folder


@pytest.mark.parametrize("layout", ["python", "binary", "tarball"])
def test_root_may_be_the_batches_folder_or_tarball_itself(tmp_path, layout):
    fx = make_cifar_dir(tmp_path, layout)
    got = load_dataset("cifar10", fx.path, download=False, per_batch=20)
    assert got.layout == layout and np.array_equal(got.train_labels, fx.train_labels)


def test_folder_preferred_over_tarball(tmp_path):
    fx = make_cifar_dir(tmp_path, "tarball", name="data")
    write_python_dir(fx.root / "cifar-10-batches-py", cifar_arrays(20, seed=5), 20)
    got = load_dataset("cifar10", fx.root, download=False, per_batch=20)
    assert got.layout == "python"
    assert np.array_equal(got.train_images, cifar_arrays(20, seed=5)[0])


def test_empty_folder_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError, match=f"no CIFAR-10 in {tmp_path}.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False, per_batch=20)


def test_data_dir_resolution_flag_env_default(tmp_path, monkeypatch):
    fx = make_cifar_dir(tmp_path, "binary", name="data")
    monkeypatch.setattr(cifar, "PER_BATCH", 20)
    monkeypatch.delenv("FASTZHANG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data
    assert load_dataset("cifar10", None, download=False).source == str(fx.path)
    other = make_cifar_dir(tmp_path, "python", name="elsewhere", seed=3)
    monkeypatch.setenv("FASTZHANG_DATA", str(other.root))
    assert load_dataset("cifar10", None, download=False).layout == "python"
    assert load_dataset("cifar10", fx.root, download=False).layout == "binary"  # the flag wins


def test_load_dataset_requires_full_size_batches(cifar_python):
    with pytest.raises(DataError, match=r"data_batch_1: 'data' must be a uint8 array of shape \(10000, 3072\)"):
        load_dataset("cifar10", cifar_python.root, download=False)


# ------------------------------------------------------------------------------------------
# Validation: every error names the file


@pytest.mark.parametrize("layout,missing", [("python", "data_batch_3"), ("python", "test_batch"),
                                            ("binary", "data_batch_5.bin"), ("binary", "test_batch.bin")])
def test_missing_batch_file_is_named(tmp_path, layout, missing):
    fx = make_cifar_dir(tmp_path, layout)
    (fx.path / missing).unlink()
    with pytest.raises(DataError, match=f"missing batch file.*{fx.path / missing}"):
        load_dataset("cifar10", fx.root, download=False, per_batch=20)


@pytest.mark.parametrize("size", [0, 3073 * 20 - 1, 3073 * 19, 3073 * 21])
def test_binary_batch_of_wrong_size_is_named(cifar_binary, size):
    path = cifar_binary.path / "data_batch_2.bin"
    blob = path.read_bytes()
    path.write_bytes((blob + blob)[:size])
    what = "too long" if size > len(blob) else "truncated"
    with pytest.raises(DataError, match=f"{path}: {what}: {size} bytes, expected 20 records of 3073 bytes"):
        load_dataset("cifar10", cifar_binary.root, download=False, per_batch=20)


def test_truncated_pickle_batch_is_named(cifar_python):
    path = cifar_python.path / "data_batch_5"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=f"{path}: not a readable CIFAR pickle"):
        load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_mislabeled_python_batch_is_named(cifar_python, bad):
    path = cifar_python.path / "test_batch"
    entries = batch_dict(cifar_python.test_images, cifar_python.test_labels, "test_batch")
    entries[b"labels"][13] = bad
    path.write_bytes(py2_pickle(entries))
    with pytest.raises(DataError, match=f"{path}: labels must be in 0..9; found {bad} at index 13"):
        load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)


def test_mislabeled_binary_batch_is_named(cifar_binary):
    path = cifar_binary.path / "data_batch_1.bin"
    blob = bytearray(path.read_bytes())
    blob[3073 * 4] = 10  # the label byte of record 4
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"{path}: labels must be in 0..9; found 10 at index 4"):
        load_dataset("cifar10", cifar_binary.root, download=False, per_batch=20)


def _rewrite(fx, name, change):
    entries = batch_dict(fx.train_images[:20], fx.train_labels[:20], name, style="py3")
    change(entries)
    (fx.path / name).write_bytes(dump_batch(entries, "py3"))
    return fx.path / name


@pytest.mark.parametrize("change,message", [
    (lambda e: e.pop("labels"), "missing key\\(s\\) labels"),
    (lambda e: e.update(data=e["data"].astype(np.int16)), "found int16 array of shape \\(20, 3072\\)"),
    (lambda e: e.update(data=e["data"][:19]), "found uint8 array of shape \\(19, 3072\\)"),
    (lambda e: e.update(data=e["data"].reshape(20, 3, 32, 32)), "found uint8 array of shape \\(20, 3, 32, 32\\)"),
    (lambda e: e.update(data=e["data"].tolist()), "found list"),
    (lambda e: e.update(labels=e["labels"][:-1]), "expected 20 labels, found shape \\(19,\\)"),
    (lambda e: e.update(labels=[str(v) for v in e["labels"]]), "labels must be integers"),
    (lambda e: e.update(labels=[float(v) for v in e["labels"]]), "labels must be integers"),
])
def test_malformed_python_batch_is_named(cifar_python, change, message):
    path = _rewrite(cifar_python, "data_batch_2", change)
    with pytest.raises(DataError, match=f"{path}: .*{message}"):
        load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)


def test_batch_that_is_not_a_dict_is_named(cifar_python):
    path = cifar_python.path / "data_batch_1"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError, match=f"{path}: expected a dict"):
        load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)
