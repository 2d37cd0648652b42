"""Tarball extraction (atomic, cached by sha256) and the download path, with no real network."""

from __future__ import annotations

import hashlib
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cifar_arrays, make_cifar_dir, served, write_tarball

from fastzhang.data import cifar, download
from fastzhang.data.sources import load_dataset
from fastzhang.errors import DataError


def _extractions(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.startswith("cifar-10-batches-py-"))


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTZHANG_CACHE", str(tmp_path / "a"))
    assert download.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FASTZHANG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "fastzhang"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "fastzhang"


def test_extraction_is_cached_by_sha256(cifar_tarball, isolated_cache, monkeypatch):
    first = load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20)
    digest = hashlib.sha256(cifar_tarball.path.read_bytes()).hexdigest()
    [folder] = _extractions(isolated_cache)
    assert folder.name == f"cifar-10-batches-py-{digest[:32]}"
    assert first.batches_dir == str(folder) and first.source == str(cifar_tarball.path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar.CIFAR10.files("python"))
    before = _snapshot(folder)

    def no_reextract(*a, **k):
        raise AssertionError("the tarball was opened again")

    monkeypatch.setattr(tarfile, "open", no_reextract)
    second = load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20)
    assert second.fingerprint == first.fingerprint
    assert _snapshot(folder) == before
    assert [p.name for p in isolated_cache.iterdir()] == [folder.name]  # no temp folders left


def test_different_tarball_never_reuses_a_stale_extraction(tmp_path, isolated_cache):
    fx = make_cifar_dir(tmp_path, "tarball")
    first = load_dataset("cifar10", fx.root, download=False, per_batch=20)
    write_tarball(fx.path, cifar_arrays(20, seed=9), 20)  # same path, other content
    second = load_dataset("cifar10", fx.root, download=False, per_batch=20)
    assert len(_extractions(isolated_cache)) == 2
    assert second.fingerprint != first.fingerprint
    assert np.array_equal(second.train_images, cifar_arrays(20, seed=9)[0])


def test_read_only_source_folder(cifar_tarball):
    before = _snapshot(cifar_tarball.root)
    cifar_tarball.path.chmod(0o444)
    cifar_tarball.root.chmod(0o555)
    try:
        got = load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20)
    finally:
        cifar_tarball.root.chmod(0o755)
    assert np.array_equal(got.train_images, cifar_tarball.train_images)
    assert _snapshot(cifar_tarball.root) == before  # nothing written beside the tarball


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_extraction_leaves_nothing_half_done(cifar_tarball, isolated_cache, monkeypatch, error):
    real_copy = shutil.copyfileobj
    calls = []

    def failing_copy(src, dst, length=0):
        calls.append(1)
        if len(calls) == 3:
            raise error
        real_copy(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", failing_copy)
    with pytest.raises(DataError if isinstance(error, OSError) else KeyboardInterrupt):
        load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20)
    assert list(isolated_cache.iterdir()) == []  # neither a final folder nor a temp one
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    assert load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20).layout == "tarball"


def test_leftover_temp_folder_from_a_killed_process_is_ignored(cifar_tarball, isolated_cache):
    digest = hashlib.sha256(cifar_tarball.path.read_bytes()).hexdigest()
    stale = isolated_cache / f".cifar-10-batches-py-{digest[:32]}.abc123.tmp"
    stale.mkdir()
    (stale / "data_batch_1").write_bytes(b"half")
    got = load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20)
    assert np.array_equal(got.test_labels, cifar_tarball.test_labels)


def test_truncated_tarball_is_named(cifar_tarball):
    blob = cifar_tarball.path.read_bytes()
    cifar_tarball.path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=f"{cifar_tarball.path}: not a readable gzip tarball"):
        load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20)


def test_tarball_lacking_a_batch_is_named(tmp_path):
    path = write_tarball(tmp_path / "cifar-10-python.tar.gz", cifar_arrays(20), 20, skip=("data_batch_2",))
    with pytest.raises(DataError, match=f"{path}: archive lacks cifar-10-batches-py/data_batch_2"):
        load_dataset("cifar10", tmp_path, download=False, per_batch=20)


def test_bad_batch_inside_tarball_names_tarball_and_file(tmp_path):
    path = write_tarball(tmp_path / "cifar-10-python.tar.gz", cifar_arrays(20), 20)
    shape = "\\(21, 3072\\)"
    with pytest.raises(DataError, match=f"{path}: .*/data_batch_1: 'data' must be a uint8 array of shape {shape}"):
        load_dataset("cifar10", tmp_path, download=False, per_batch=21)


def test_unwritable_cache_says_how_to_fix(cifar_tarball, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("FASTZHANG_CACHE", str(blocker / "cache"))  # under a file: even root cannot
    with pytest.raises(DataError, match="not writable.*FASTZHANG_CACHE"):
        load_dataset("cifar10", cifar_tarball.root, download=False, per_batch=20)


# ------------------------------------------------------------------------------------------
# Download (a local HTTP server on 127.0.0.1; never the network)


@pytest.fixture
def served_tarball(tmp_path, monkeypatch):
    """Serve a tiny tarball over HTTP and point the download constants at it."""
    fx = make_cifar_dir(tmp_path / "site", "tarball", name="www")
    with served(fx.root) as base:
        monkeypatch.setattr(download, "CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
        monkeypatch.setattr(download, "CIFAR10_MD5", hashlib.md5(fx.path.read_bytes()).hexdigest())
        yield fx


def test_download_then_load(served_tarball, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar, "PER_BATCH", 20)
    root = tmp_path / "fresh" / "data"
    root.mkdir(parents=True)  # a named folder must exist to be downloaded into
    got = load_dataset("cifar10", root)
    assert (root / "cifar-10-python.tar.gz").read_bytes() == served_tarball.path.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # no .part left
    assert got.layout == "tarball" and np.array_equal(got.train_images, served_tarball.train_images)
    err = capsys.readouterr().err
    assert "downloading" in err and download.CIFAR10_URL in err
    assert "cifar-10-python.tar.gz: 100%" in err  # the tqdm bar reached the end
    # Present now: a second call neither downloads nor complains.
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("downloaded twice"))
    assert load_dataset("cifar10", root).fingerprint == got.fingerprint


def test_download_with_wrong_md5_is_discarded(served_tarball, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CIFAR10_MD5", "0" * 32)
    root = tmp_path / "data"
    root.mkdir()
    got = hashlib.md5(served_tarball.path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=f"downloaded file has md5 {got}, expected 0{{32}}"):
        load_dataset("cifar10", root)
    assert list(root.iterdir()) == []


def test_no_download_flag_refuses(served_tarball, tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 in"):
        load_dataset("cifar10", tmp_path / "data", download=False)
    assert not (tmp_path / "data").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_network_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CIFAR10_URL", f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root)
    msg = str(err.value)
    assert "cannot download CIFAR-10 from http://127.0.0.1" in msg and "refused" in msg.lower()
    assert "put cifar-10-python.tar.gz, cifar-10-batches-py/ or cifar-10-batches-bin/ there" in msg
    assert str(root) in msg and "\n" not in msg
    assert list(root.iterdir()) == []


def test_unwritable_data_dir_cannot_download(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot download into it"):
        download.fetch_tarball(blocker / "data", cifar.CIFAR10)


def test_named_missing_folder_is_refused_without_network(tmp_path, monkeypatch):
    # A --data-dir (or FASTZHANG_DATA) that does not exist is a typo, not a place to download to.
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("tried the network"))
    for named in ("flag", "env"):
        missing = tmp_path / f"no-such-{named}"
        if named == "env":
            monkeypatch.setenv("FASTZHANG_DATA", str(missing))
        with pytest.raises(DataError) as err:
            load_dataset("cifar10", missing if named == "flag" else None)
        source = "--data-dir / data_dir" if named == "flag" else "FASTZHANG_DATA"
        assert str(err.value) == (f"{missing}: no such folder (named by {source}); fix the path, "
                                  "or create the folder to download CIFAR-10 into it")
        assert not missing.exists()


def test_connection_dropped_mid_download(tmp_path, monkeypatch):
    class Dropping:
        headers = {"Content-Length": "100"}

        def __init__(self):
            self.sent = False

        def read(self, n):
            if self.sent:
                raise ConnectionResetError(104, "Connection reset by peer")
            self.sent = True
            return b"x" * 10

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(download, "urlopen", lambda *a, **k: Dropping())
    root = tmp_path / "data"
    with pytest.raises(DataError, match="cannot download CIFAR-10 .*Connection reset"):
        download.fetch_tarball(root, cifar.CIFAR10)
    assert list(root.iterdir()) == []
