"""The python layout is read through a restricted unpickler: crafted files cannot run code."""

from __future__ import annotations

import builtins
import os
import pickle
import warnings

import numpy as np
import pytest
from conftest import batch_dict, py2_pickle

from fastzhang.data import safe_pickle
from fastzhang.data.sources import load_dataset
from fastzhang.errors import DataError


class SystemCall:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class OpenCall:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


@pytest.mark.parametrize("payload", [SystemCall, OpenCall])
@pytest.mark.parametrize("protocol", [2, 4])
def test_refuses_pickle_that_would_create_a_file(tmp_path, payload, protocol):
    target = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": payload(target), "labels": [0]}, protocol=protocol))
    # Sanity: plain pickle really would create the file, so the refusal is what saves us.
    assert not target.exists()
    with pytest.raises(DataError) as err:
        safe_pickle.load(evil)
    msg = str(err.value)
    assert str(evil) in msg and "refused" in msg
    assert f"{os.system.__module__}.system" in msg if payload is SystemCall else "io.open" in msg
    assert not target.exists()


def test_plain_pickle_would_have_run_the_payload(tmp_path):
    # Demonstrates the threat the unpickler closes (the payload is harmless: it makes a file).
    target = tmp_path / "made-by-pickle"
    pickle.loads(pickle.dumps(OpenCall(target))).close()
    assert target.exists()


def test_payload_hidden_in_labels_of_a_batch_folder(cifar_python, tmp_path):
    target = tmp_path / "pwned"
    bad = cifar_python.path / "data_batch_4"
    entries = batch_dict(cifar_python.train_images[:20], cifar_python.train_labels[:20], "data_batch_4")
    entries[b"labels"][7] = OpenCall(target)
    bad.write_bytes(py2_pickle(entries))  # official style up to the payload
    with pytest.raises(DataError, match="data_batch_4.*refused.*open"):
        load_dataset("cifar10", cifar_python.root, download=False, per_batch=20)
    assert not target.exists()


def test_persistent_ids_are_refused(tmp_path):
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if obj == "external" else None

    path = tmp_path / "batch"
    with open(path, "wb") as f:
        WithPid(f, protocol=2).dump({"data": "external"})
    with pytest.raises(DataError, match=str(path)):
        safe_pickle.load(path)


def test_official_style_python2_pickle_loads_with_bytes_keys(tmp_path):
    images = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3, 32, 32)
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_pickle(batch_dict(images, np.array([3, 9]), "data_batch_1")))
    assert b"numpy.core.multiarray\n_reconstruct" in path.read_bytes()  # as the official files say
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 warns on importing numpy.core; we must not
        obj = safe_pickle.load(path)
    assert set(obj) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert obj[b"labels"] == [3, 9]
    assert obj[b"data"].dtype == np.uint8
    assert np.array_equal(obj[b"data"], images.reshape(2, -1))


def test_python3_pickle_with_str_keys_loads(tmp_path):
    path = tmp_path / "test_batch"
    data = np.full((1, 3072), 7, np.uint8)
    path.write_bytes(pickle.dumps({"data": data, "labels": [1]}, protocol=4))
    obj = safe_pickle.load(path)
    assert np.array_equal(obj["data"], data) and obj["labels"] == [1]


@pytest.mark.parametrize("cut", [0, 1, 100, -1])
def test_truncated_pickle_names_the_file(tmp_path, cut):
    blob = py2_pickle(batch_dict(np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.int64), "test_batch"))
    path = tmp_path / "test_batch"
    path.write_bytes(blob[:cut] if cut >= 0 else blob[: len(blob) // 2])
    with pytest.raises(DataError, match=f"{path}: not a readable CIFAR pickle"):
        safe_pickle.load(path)


def test_unreadable_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        safe_pickle.load(tmp_path / "absent")
