"""atomicio and checkpoint: atomic writes, checksums, damaged files, fallback to .prev."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fastzhang import checkpoint as C
from fastzhang.atomicio import SLOW_WRITE_ENV, atomic_write
from fastzhang.errors import CheckpointError, WriteError

ROOT = Path(__file__).resolve().parents[1]


def payload(epoch: int = 1, **extra) -> dict:
    g = torch.Generator().manual_seed(epoch)
    return {
        "experiment_id": "mlp1_synthetic_baseline",
        "config": {"model": "mlp1", "epochs": 10, "lr": None},
        "epoch": epoch,
        "step_in_epoch": 0,
        "global_step": 7 * epoch,
        "model_state_dict": {"w": torch.randn(64, 32, generator=g), "b": torch.zeros(32, dtype=torch.bfloat16)},
        "optimizer_state_dict": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "best_test_acc": 12.5,
        "all_metrics": {"test_acc": [10.0, 12.5], "train_loss": [float("nan"), 2.25]},
        "rng_state": {"torch": torch.get_rng_state(), "numpy": np.random.default_rng(3).bit_generator.state},
        "data_fingerprint": "ab" * 32,
        "wandb_run_id": None,
        **extra,
    }


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------
# atomic_write

def test_atomic_write_replaces_whole_file_and_leaves_no_tmp(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))
    target.chmod(0o640)
    atomic_write(target, lambda f: f.write(b"new content"))
    assert target.read_bytes() == b"new content"
    assert os.listdir(target.parent) == ["f.bin"]
    assert target.stat().st_mode & 0o777 == 0o640  # the mode of the file it replaced


def _old_file(tmp_path: Path) -> Path:
    target = tmp_path / "x_checkpoint.pth"
    target.write_bytes(b"previous good bytes" * 100)
    return target


def test_enospc_during_write_keeps_old_file_and_removes_tmp(tmp_path):
    target = _old_file(tmp_path)
    before = files_in(tmp_path)

    def half_then_full(f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as err:
        atomic_write(target, half_then_full, what="checkpoint")
    assert str(err.value) == f"cannot write checkpoint {target}: No space left on device"
    assert err.value.exit_code == 5
    assert files_in(tmp_path) == before


def test_enospc_at_fsync_keeps_old_file(tmp_path, monkeypatch):
    target = _old_file(tmp_path)
    before = files_in(tmp_path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError, match="No space left on device"):
        atomic_write(target, lambda f: f.write(b"new"), what="checkpoint")
    monkeypatch.undo()
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("where", ["open", "replace"])
def test_permission_and_readonly_errors_keep_old_file(tmp_path, monkeypatch, where):
    # Tests run as root, for whom chmod does not make a folder unwritable, so the
    # kernel's EACCES / EROFS answers are simulated at the two calls that meet them.
    target = _old_file(tmp_path)
    before = files_in(tmp_path)
    code = errno.EACCES if where == "open" else errno.EROFS

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, where, refuse)
    with pytest.raises(WriteError) as err:
        atomic_write(target, lambda f: f.write(b"new"), what="checkpoint")
    monkeypatch.undo()
    assert str(err.value) == f"cannot write checkpoint {target}: {os.strerror(code)}"
    assert files_in(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions; see the simulated test above")
def test_real_readonly_folder(tmp_path):
    target = _old_file(tmp_path)
    before = files_in(tmp_path)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="Permission denied"):
            atomic_write(target, lambda f: f.write(b"new"), what="checkpoint")
    finally:
        tmp_path.chmod(0o755)
    assert files_in(tmp_path) == before


def test_failing_writer_removes_tmp_and_propagates(tmp_path):
    target = _old_file(tmp_path)
    before = files_in(tmp_path)
    with pytest.raises(ZeroDivisionError):
        atomic_write(target, lambda f: (f.write(b"partial"), 1 / 0))
    assert files_in(tmp_path) == before


@pytest.mark.e2e
def test_kill_inside_checkpoint_write_keeps_old_checkpoint(tmp_path):
    path = tmp_path / "x_checkpoint.pth"
    C.save(payload(epoch=1), path)
    old = path.read_bytes()
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); import torch; from fastzhang import checkpoint as C;"
        "C.save({'epoch': 2, 'w': torch.ones(1000)}, sys.argv[1])"
    )
    env = {**os.environ, SLOW_WRITE_ENV: "60"}
    child = subprocess.Popen([sys.executable, "-c", script, str(path), str(ROOT)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".x_checkpoint.pth.*.tmp")):
            assert child.poll() is None, "writer exited before writing"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == old  # the final name never saw the new bytes
    assert not C.prev_path(path).exists()  # rotation happens only after the data is durable
    got, used = C.load_latest(path)
    assert (got["epoch"], used) == (1, path)


# ------------------------------------------------------------------------------------------
# save / load

def test_roundtrip_is_bitwise_and_plain_torch_load_reads_it(tmp_path):
    path = tmp_path / "x_checkpoint.pth"
    original = payload(epoch=3)
    C.save(original, path)
    assert "checksum" not in original  # save() does not touch the caller's dict
    got = C.load(path)
    plain = torch.load(path, weights_only=True)
    for loaded in (got, plain):
        assert loaded["format"] == "fastzhang-checkpoint" and loaded["format_version"] == 1
        assert len(loaded["checksum"]) == 64
        assert torch.equal(loaded["model_state_dict"]["w"], original["model_state_dict"]["w"])
        assert loaded["model_state_dict"]["b"].dtype == torch.bfloat16
        assert loaded["optimizer_state_dict"]["state"][0]["momentum_buffer"].tolist() == [1.0, 1.0, 1.0]
        assert loaded["rng_state"]["numpy"] == original["rng_state"]["numpy"]  # 128-bit ints survive
        assert torch.equal(loaded["rng_state"]["torch"], original["rng_state"]["torch"])


def test_checksum_covers_every_bit_dtype_and_shape():
    base = payload()
    ref = C.checksum(base)
    assert C.checksum(dict(reversed(list(base.items())))) == ref  # key order does not matter
    flipped = payload()
    w = flipped["model_state_dict"]["w"]
    w.view(-1).view(torch.int32)[1000] ^= 1 << 7  # one bit of one float
    assert not torch.equal(w, base["model_state_dict"]["w"])
    assert C.checksum(flipped) != ref
    reshaped = payload()
    reshaped["model_state_dict"]["w"] = reshaped["model_state_dict"]["w"].reshape(32, 64)
    assert C.checksum(reshaped) != ref
    as_int = payload()
    as_int["model_state_dict"]["w"] = as_int["model_state_dict"]["w"].view(torch.int32)
    assert C.checksum(as_int) != ref
    assert C.checksum({"a": 1}) != C.checksum({"a": 1.0}) != C.checksum({"a": True})
    assert C.checksum({"a": ["b"]}) != C.checksum({"a": "b"})


def test_flipped_bit_on_disk_is_caught_by_checksum(tmp_path):
    path = tmp_path / "x_checkpoint.pth"
    C.save(payload(), path)
    with zipfile.ZipFile(path) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    # a zip local header is 30 bytes + name + extra; torch stores tensor data uncompressed after it
    name_len, extra_len = struct.unpack_from("<HH", raw, entry.header_offset + 26)
    raw[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x10
    path.write_bytes(raw)
    torch.load(path, weights_only=True)  # the zip container itself does not notice
    with pytest.raises(C.CheckpointCorrupt, match="checksum mismatch"):
        C.load(path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _write_exploit_torch(path: Path, marker: Path) -> None:
    torch.save({"format": "fastzhang-checkpoint", "format_version": 1, "x": _Exploit(marker)}, path)


def _write_exploit_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"x": _Exploit(marker)}))


@pytest.mark.parametrize("writer", [_write_exploit_torch, _write_exploit_pickle])
def test_pickle_exploit_is_refused_and_never_runs(tmp_path, writer):
    armed = tmp_path / "armed"
    writer(tmp_path / "probe.pth", armed)
    with pytest.raises(Exception) if writer is _write_exploit_pickle else contextlib.nullcontext():
        torch.load(tmp_path / "probe.pth", weights_only=False)  # an unsafe load runs the code...
    assert armed.exists()  # ...so the exploit is live
    marker = tmp_path / "pwned"
    path = tmp_path / "x_checkpoint.pth"
    writer(path, marker)
    with pytest.raises(C.CheckpointCorrupt, match="refused unread") as err:
        C.load(path)
    assert not marker.exists()
    assert err.value.exit_code == 4 and err.value.path == path


def _truncated(path: Path) -> None:
    C.save(payload(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "make, reason",
    [
        (_truncated, "a cut-off or damaged torch archive"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a readable torch file"),
        (lambda p: p.write_text('{"epoch": 3, "format": "fastzhang-checkpoint"}'), "not a readable torch file"),
        (lambda p: torch.save({"w": torch.ones(3)}, p), "not a fastzhang checkpoint"),
        (lambda p: torch.save([1, 2], p), "not a fastzhang checkpoint"),
        (lambda p: torch.save({**torch.load(_saved(p), weights_only=True), "format_version": 99}, p), "format_version 99"),
        (lambda p: torch.save({**torch.load(_saved(p), weights_only=True), "epoch": 9}, p), "checksum mismatch"),
    ],
    ids=["truncated", "empty", "random", "json", "foreign-torch", "list", "future-version", "edited"],
)
def test_damaged_and_foreign_files_are_corrupt(tmp_path, make, reason):
    path = tmp_path / "x_checkpoint.pth"
    make(path)
    with pytest.raises(C.CheckpointCorrupt, match=reason):
        C.load(path)


def _saved(path: Path) -> Path:
    C.save(payload(), path)
    return path


def test_save_refuses_values_weights_only_cannot_read(tmp_path):
    path = tmp_path / "x_checkpoint.pth"
    with pytest.raises(TypeError, match=r"payload.best_test_acc: a numpy.float64 cannot be stored"):
        C.save(payload(best_test_acc=np.float64(1.0)), path)
    assert os.listdir(tmp_path) == []


def test_missing_file_is_checkpoint_error_not_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as err:
        C.load(tmp_path / "nope.pth")
    assert not isinstance(err.value, C.CheckpointCorrupt)


# ------------------------------------------------------------------------------------------
# rotation and load_latest

def test_paths_and_rotation(tmp_path):
    latest = C.latest_path(tmp_path, "e1")
    assert latest == tmp_path / "e1_checkpoint.pth"
    assert C.best_path(tmp_path, "e1") == tmp_path / "e1_best.pth"
    assert C.prev_path(latest) == tmp_path / "e1_checkpoint.prev.pth"
    for epoch in (1, 2, 3):
        C.save(payload(epoch=epoch), latest)
    assert (C.load(latest)["epoch"], C.load(C.prev_path(latest))["epoch"]) == (3, 2)
    C.save(payload(epoch=4), latest, copy_to=[C.best_path(tmp_path, "e1")])  # the copy gets no .prev
    assert set(os.listdir(tmp_path)) == {"e1_best.pth", "e1_checkpoint.pth", "e1_checkpoint.prev.pth"}


def test_load_latest_none_when_nothing_exists(tmp_path):
    assert C.load_latest(tmp_path / "e1_checkpoint.pth") is None


def test_corrupt_latest_falls_back_to_prev_and_is_kept(tmp_path, capsys):
    latest = tmp_path / "e1_checkpoint.pth"
    C.save(payload(epoch=1), latest)
    C.save(payload(epoch=2), latest)
    latest.write_bytes(latest.read_bytes()[:-100])
    bad = latest.read_bytes()
    got, used = C.load_latest(latest)
    assert (got["epoch"], used) == (1, C.prev_path(latest))
    err = capsys.readouterr().err
    assert f"checkpoint {latest} is damaged" in err and str(C.prev_path(latest)) in err
    kept = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == bad and kept[0].name in err
    assert kept[0].name.startswith("e1_checkpoint.pth.corrupt-")
    assert not latest.exists()
    # the next save must not rotate the damaged file over the good one
    C.save(payload(epoch=2), latest)
    assert C.load(C.prev_path(latest))["epoch"] == 1
    assert kept[0].read_bytes() == bad


def test_crash_between_rotation_and_rename_resumes_from_prev(tmp_path, monkeypatch, capsys):
    latest = tmp_path / "e1_checkpoint.pth"
    C.save(payload(epoch=1), latest)
    real_replace = os.replace

    def fail_final_rename(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_final_rename)
    with pytest.raises(WriteError, match="Input/output error"):
        C.save(payload(epoch=2), latest)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["e1_checkpoint.prev.pth"]
    got, used = C.load_latest(latest)
    assert (got["epoch"], used) == (1, C.prev_path(latest))
    assert "is missing" in capsys.readouterr().err


def test_damaged_prev_next_to_good_latest_is_moved_aside(tmp_path, capsys):
    latest = tmp_path / "e1_checkpoint.pth"
    C.save(payload(epoch=1), latest)
    C.save(payload(epoch=2), latest)
    C.prev_path(latest).write_bytes(b"")
    got, used = C.load_latest(latest)
    assert (got["epoch"], used) == (2, latest)
    assert not C.prev_path(latest).exists()
    assert any(p.name.startswith("e1_checkpoint.prev.pth.corrupt-") for p in tmp_path.iterdir())
    assert "is damaged (the file is empty" in capsys.readouterr().err


@pytest.mark.parametrize("with_prev", [True, False])
def test_no_good_checkpoint_raises_and_deletes_nothing(tmp_path, with_prev):
    latest = tmp_path / "e1_checkpoint.pth"
    C.save(payload(epoch=1), latest)
    if with_prev:
        C.save(payload(epoch=2), latest)
        C.prev_path(latest).write_bytes(b"junk")
    latest.write_bytes(b"")
    before = files_in(tmp_path)
    with pytest.raises(CheckpointError) as err:
        C.load_latest(latest)
    message = str(err.value)
    assert str(latest) in message and "--force" in message and err.value.exit_code == 4
    assert (str(C.prev_path(latest)) in message) == with_prev
    assert files_in(tmp_path) == before


def test_experiment_files_and_discover_ids(tmp_path):
    names = [
        "a_checkpoint.pth", "a_checkpoint.prev.pth", "a_best.pth", "a_checkpoint.pth.corrupt-20240101_120000",
        ".a_checkpoint.pth.abc123_x.tmp", "a_wd0.0005_checkpoint.pth", "a.lock", "notes.txt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in C.experiment_files(tmp_path, "a")] == sorted(names[:5])
    assert C.discover_ids(tmp_path) == {"a", "a_wd0.0005"}
