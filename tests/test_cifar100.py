"""CIFAR-100: read in every layout from generated files, downloaded from a local server, trained end to end."""

from __future__ import annotations

import hashlib
import os
import pickle
import re

import numpy as np
import pytest
from conftest import cifar_arrays, make_cifar_dir, py2_pickle, run_cli, served

from fastzhang import checkpoint, results
from fastzhang.cli import main
from fastzhang.data import cifar, download
from fastzhang.data.cifar import content_fingerprint, fingerprint
from fastzhang.data.randomize import randomize
from fastzhang.data.seeds import rng
from fastzhang.data.sources import load_dataset
from fastzhang.errors import DataError


def test_every_layout_loads_the_exact_arrays_with_100_classes(cifar100_any):
    got = load_dataset("cifar100", cifar100_any.root, download=False, per_batch=20)
    assert got.layout == cifar100_any.layout and got.source == str(cifar100_any.path)
    for have, want in zip((got.train_images, got.train_labels, got.test_images, got.test_labels),
                          cifar100_any.arrays()):
        assert have.dtype == want.dtype and have.shape == want.shape and np.array_equal(have, want)
    assert (len(got.train_labels), len(got.test_labels)) == (100, 20)
    assert sorted(got.train_labels.tolist()) == list(range(100))  # the fine labels, 0..99, each once
    assert got.num_classes == 100 and got.classes[0] == "apple" and got.classes[99] == "worm"
    assert got.fingerprint == fingerprint(*cifar100_any.arrays())
    assert got.content_fingerprint == content_fingerprint(*cifar100_any.arrays())


def test_layouts_share_the_fingerprint_and_cifar10_has_another(tmp_path):
    loaded = [load_dataset("cifar100", make_cifar_dir(tmp_path, layout, dataset="cifar100").root, download=False,
                           per_batch=20) for layout in ("python", "binary", "tarball")]
    assert len({a.fingerprint for a in loaded}) == 1
    ten = load_dataset("cifar10", make_cifar_dir(tmp_path, "python", name="ten").root, download=False, per_batch=20)
    assert ten.fingerprint != loaded[0].fingerprint and ten.num_classes == 10


def test_binary_records_take_the_fine_label_not_the_coarse_one(tmp_path):
    fx = make_cifar_dir(tmp_path, "binary", dataset="cifar100")
    record = (fx.path / "test.bin").read_bytes()[:2]
    assert record == bytes((fx.test_labels[0] // 5, fx.test_labels[0]))  # coarse, then fine
    assert np.array_equal(load_dataset("cifar100", fx.root, download=False, per_batch=20).test_labels, fx.test_labels)


def test_a_poisoned_file_is_refused_before_it_runs(tmp_path):
    fx = make_cifar_dir(tmp_path, "python", dataset="cifar100")
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    (fx.path / "train").write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    with pytest.raises(DataError, match=f"{fx.path / 'train'}: refused to unpickle: it asks for posix.system"):
        load_dataset("cifar100", fx.root, download=False, per_batch=20)
    assert not target.exists()


@pytest.mark.parametrize("bad", [100, -1])
def test_a_label_outside_0_to_99_is_named(tmp_path, bad):
    fx = make_cifar_dir(tmp_path, "python", dataset="cifar100")
    labels = fx.test_labels.copy()
    labels[7] = bad
    entries = {b"fine_labels": labels.tolist(), b"coarse_labels": (fx.test_labels // 5).tolist(),
               b"data": fx.test_images.reshape(20, -1)}
    (fx.path / "test").write_bytes(py2_pickle(entries))
    with pytest.raises(DataError, match=f"{fx.path / 'test'}: labels must be in 0..99; found {bad} at index 7"):
        load_dataset("cifar100", fx.root, download=False, per_batch=20)


def test_a_cifar100_file_read_as_cifar10_says_which_it_is(tmp_path):
    ten = make_cifar_dir(tmp_path, "python")
    hundred = make_cifar_dir(tmp_path, "python", dataset="cifar100")
    (hundred.path / "test").replace(ten.path / "test_batch")  # a CIFAR-10 name, CIFAR-100 content
    with pytest.raises(DataError, match=r"test_batch: missing key\(s\) labels; .* \(a CIFAR-100 file\? "
                                        r"dataset: cifar100\)"):
        load_dataset("cifar10", ten.root, download=False, per_batch=20)


def test_random_labels_are_drawn_over_100_classes():
    train_x, train_y, test_x, test_y = cifar_arrays(200, num_classes=100)
    out = randomize(train_x, train_y, test_x, test_y, kind="random_labels", corrupt_prob=1.0, seed=3,
                    num_classes=100)[1]
    g = rng(3, "labels")
    g.random(1000)
    assert np.array_equal(out, g.integers(0, 100, 1000))  # the same stream as CIFAR-10's, over 100 classes
    assert out.max() > 9 and set(out.tolist()) <= set(range(100))


def test_data_info_lists_the_hundred_classes(tmp_path, monkeypatch, capsys):
    fx = make_cifar_dir(tmp_path, "binary", dataset="cifar100")
    monkeypatch.setattr(cifar, "PER_BATCH", 20)
    assert main(["data", "info", "--dataset", "cifar100", "--data-dir", str(fx.root), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "train images: 100\n" in out and "test images:  20\n" in out
    assert re.search(r"^0  apple\s+1\s+\d+$", out, re.M) and re.search(r"^99 worm\s+1\s+0$", out, re.M)


# ------------------------------------------------------------------------------------------
# Download (a local HTTP server on 127.0.0.1; never the network)


@pytest.fixture
def served_cifar100(tmp_path, monkeypatch):
    fx = make_cifar_dir(tmp_path / "site", "tarball", name="www", dataset="cifar100")
    with served(fx.root) as base:
        monkeypatch.setattr(download, "CIFAR100_URL", f"{base}/cifar-100-python.tar.gz")
        monkeypatch.setattr(download, "CIFAR100_MD5", hashlib.md5(fx.path.read_bytes()).hexdigest())
        monkeypatch.setattr(download, "CIFAR10_URL", f"{base}/no-such-file")  # never asked for
        yield fx


def test_download_then_load(served_cifar100, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar, "PER_BATCH", 20)
    root = tmp_path / "data"
    make_cifar_dir(tmp_path, "python", name="data")  # CIFAR-10 already there: both share the folder
    got = load_dataset("cifar100", root)
    assert (root / "cifar-100-python.tar.gz").read_bytes() == served_cifar100.path.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-100-python.tar.gz"]
    assert got.layout == "tarball" and np.array_equal(got.train_labels, served_cifar100.train_labels)
    err = capsys.readouterr().err
    assert f"no CIFAR-100 in {root}; downloading {download.CIFAR100_URL}" in err
    assert "cifar-100-python.tar.gz: 100%" in err  # the tqdm bar reached the end
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("downloaded twice"))
    assert load_dataset("cifar100", root).fingerprint == got.fingerprint
    assert load_dataset("cifar10", root).num_classes == 10


def test_download_with_wrong_md5_is_discarded(served_cifar100, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CIFAR100_MD5", "0" * 32)
    root = tmp_path / "data"
    root.mkdir()
    got = hashlib.md5(served_cifar100.path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=f"downloaded file has md5 {got}, expected 0{{32}}; discarded it. "
                                        f"Retry, or put cifar-100-python.tar.gz in {root} yourself"):
        load_dataset("cifar100", root)
    assert list(root.iterdir()) == []


def test_the_official_address_and_checksum():
    assert download.official(cifar.CIFAR100) == ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                                 "eb9058c3a382ffc7106e4002c42a8d85")


# ------------------------------------------------------------------------------------------
# End to end


def test_mlp1_trains_on_random_cifar100_labels_end_to_end(tmp_path, monkeypatch, capsys, one_thread):
    from fastzhang.report import build_report

    fx = make_cifar_dir(tmp_path, "tarball", dataset="cifar100")
    monkeypatch.setattr(cifar, "PER_BATCH", 20)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", "mlp1", "--dataset", "cifar100", "--randomization", "random_labels",
            "--data-dir", fx.root, "--epochs", "2", "--batch-size", "25", "--device", "cpu", "--quiet"]
    assert run_cli(argv) == 0
    eid = "mlp1_cifar100_random_labels_bs25_ep2"
    [path] = results.files_for("results", eid)
    payload = results.read(path).payload
    assert payload["completed"] and payload["total_epochs"] == 2 and not payload["stopped_early"]
    assert payload["data_fingerprint"] == fingerprint(*fx.arrays())
    weights = checkpoint.load(checkpoint.latest_path("checkpoints", eid))["model_state_dict"]
    assert weights["classifier.weight"].shape == (100, 512)  # one output per CIFAR-100 class
    capsys.readouterr()
    assert run_cli(argv) == 0
    assert "EXPERIMENT ALREADY COMPLETED" in capsys.readouterr().out

    report = build_report("results", "report").read_text()
    section = report.split("## CIFAR-100: train / test accuracy (%)", 1)[1].split("\n## ", 1)[0]
    assert "Chance accuracy on CIFAR-100 is 1% (100 classes)" in section
    m = payload["metrics"]
    test = m["final_test_acc"]
    row = (f"| MLP 1x512 | random labels | {m['final_train_acc']:.2f} | {test:.2f} | {test - 1:+.2f} | 2 | "
           f"`{eid}`, n = 1 (seed 0) |")
    assert row in section.splitlines()
    assert "| Inception | true labels | not run | not run | — | — | — |" in section
