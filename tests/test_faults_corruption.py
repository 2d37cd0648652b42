"""Damaged checkpoints and results files, end to end through `fastzhang run` and `fastzhang status`.

One interrupted run (latest = after epoch 2, .prev = after epoch 1) is copied
into each test; the test damages files in the copy and runs the real CLI
(in-process through `fastzhang.cli.main`, a few as real processes). Damage must
be detected before use: the run falls back to `.prev` with a warning naming both
files and ends bitwise equal to an uninterrupted run; with no good checkpoint it
stops with exit 4, one line, and every file as it was.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Fz, assert_same_results, assert_same_training, files_under, run_cli, stderr_lines
from test_engine import stop_requested_after

from fastzhang import checkpoint, results

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = ["run", "--model", "mlp1", "--dataset", "synthetic", "--randomization", "random_labels",
        "--batch-size", "64", "--epochs", "3", "--device", "cpu", "--quiet"]
EID = "mlp1_synthetic_random_labels_bs64_ep3"


def cli_args(root: Path, *more) -> list:
    return [*ARGS, "--checkpoint-dir", root / "checkpoints", "--results-dir", root / "results", *more]


@pytest.fixture(scope="module")
def runs(one_thread, tmp_path_factory):
    """(reference root, interrupted root): a whole run, and one stopped right after epoch 2."""
    reference = tmp_path_factory.mktemp("uninterrupted")
    assert run_cli(cli_args(reference)) == 0
    stopped = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as m, stop_requested_after(m, epoch=2):
        assert run_cli(cli_args(stopped)) == 128 + signal.SIGTERM
    latest = checkpoint.latest_path(stopped / "checkpoints", EID)
    assert checkpoint.load(latest)["epoch"] == 2
    assert checkpoint.load(checkpoint.prev_path(latest))["epoch"] == 1
    return reference, stopped


@pytest.fixture
def lab(runs, tmp_path):
    """A private copy of the interrupted run: (root, latest, prev)."""
    shutil.copytree(runs[1] / "checkpoints", tmp_path / "checkpoints")
    latest = checkpoint.latest_path(tmp_path / "checkpoints", EID)
    return tmp_path, latest, checkpoint.prev_path(latest)


def assert_equals_reference(root: Path, reference: Path) -> dict:
    ours = checkpoint.load(checkpoint.latest_path(root / "checkpoints", EID))
    theirs = checkpoint.load(checkpoint.latest_path(reference / "checkpoints", EID))
    assert_same_training(ours, theirs)
    [entry] = [e for e in results.scan(root / "results") if e.problem is None]
    [ref] = results.scan(reference / "results")
    assert_same_results(entry.payload, ref.payload)
    return entry.payload


# ------------------------------------------------------------------------------------------
# Ways to damage a checkpoint


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def _zip_entry_data(path: Path, pick, at=lambda size: size // 2) -> int:
    """Offset in the file of byte `at(size)` (the middle one) of the zip member chosen by `pick` (stored)."""
    with zipfile.ZipFile(path) as z:
        entry = pick(z.infolist())
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, entry.header_offset + 26)
    return entry.header_offset + 30 + name_len + extra_len + at(entry.file_size)


def flip_tensor_bit(path: Path) -> None:
    """One bit in the middle of the largest tensor: torch loads it happily, only the checksum notices."""
    at = _zip_entry_data(path, lambda infos: max(infos, key=lambda i: i.file_size))
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x08
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # still a perfectly readable torch file


def flip_pickle_bit(path: Path) -> None:
    """One bit of the pickle's first opcode after PROTO (a bit mid-pickle may hit an unused memo index)."""
    at = _zip_entry_data(path, lambda infos: next(i for i in infos if i.filename.endswith("data.pkl")),
                         at=lambda size: 2)
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def foreign_torch_file(path: Path) -> None:
    """Somebody's plain state_dict, saved where our checkpoint was."""
    torch.save({"weight": torch.ones(3, 3), "epoch": 7}, path)


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(2017).bytes(path.stat().st_size))


def text_file(path: Path) -> None:
    path.write_text("epoch: 2\nnot a checkpoint\n")


DAMAGE = [
    (truncate, "a cut-off or damaged torch archive"),
    (empty, "the file is empty (0 bytes)"),
    (flip_tensor_bit, "checksum mismatch"),
    (flip_pickle_bit, ""),
    (foreign_torch_file, "not a fastzhang checkpoint"),
    (random_bytes, "not a readable torch file"),
    (text_file, "not a readable torch file"),
]


@pytest.mark.parametrize("damage, reason", DAMAGE, ids=[d[0].__name__ for d in DAMAGE])
def test_damaged_latest_falls_back_to_prev_and_ends_exact(lab, runs, capsys, damage, reason):
    root, latest, prev = lab
    prev_payload = checkpoint.load(prev)
    damage(latest)
    bad = latest.read_bytes()
    assert run_cli(cli_args(root)) == 0
    err = stderr_lines(capsys.readouterr().err)
    [kept] = [p for p in latest.parent.iterdir() if p.name.startswith(f"{latest.name}.corrupt-")]
    assert len(err) == 1, err
    assert err[0].startswith(f"fastzhang: warning: checkpoint {latest} is damaged ({reason}")
    assert err[0].endswith(f"); using {prev}; the damaged file is kept as {kept}")
    logged = checkpoint.log_path(latest.parent, latest.name.removesuffix("_checkpoint.pth")).read_text()
    assert err[0].replace("fastzhang: ", "", 1) in logged  # the run's log says so too
    assert kept.read_bytes() == bad  # kept for inspection, byte for byte
    payload = assert_equals_reference(root, runs[0])
    # Epoch 1's measured time comes from .prev (a fresh start would have measured it again);
    # epochs 2 and 3 were trained again.
    assert payload["metrics"]["epoch_seconds"][0] == prev_payload["all_metrics"]["epoch_seconds"][0]


def test_no_good_checkpoint_stops_with_exit_4_and_touches_nothing(lab, runs, capsys):
    root, latest, prev = lab
    truncate(latest)
    flip_tensor_bit(prev)
    before = files_under(root)
    assert run_cli(cli_args(root)) == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = stderr_lines(captured.err)
    assert line.startswith(f"fastzhang: error: no usable checkpoint ({latest}: a cut-off or damaged torch archive")
    assert f"; {prev}: checksum mismatch" in line
    assert line.endswith("nothing was deleted: inspect or remove these files, "
                         "or pass --force to start the experiment over")
    assert files_under(root) == before
    assert not (root / "results").exists()
    # Only --force starts over, and then it is the same experiment from epoch 1.
    assert run_cli(cli_args(root, "--force")) == 0
    assert_equals_reference(root, runs[0])


@pytest.mark.e2e
def test_no_good_checkpoint_exit_code_of_the_real_process(lab):
    root, latest, prev = lab
    empty(latest)
    random_bytes(prev)
    before = files_under(root / "checkpoints")
    (root / "cwd").mkdir()
    fz = Fz(cli_args(root), root / "cwd")
    assert fz.wait() == 4
    [line] = stderr_lines(fz.stderr)
    assert line.startswith("fastzhang: error: no usable checkpoint (") and "--force" in line
    assert files_under(root / "checkpoints") == before
    assert not (root / "results").exists()


# ------------------------------------------------------------------------------------------
# Checkpoints crafted to run code when unpickled


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def torch_exploit(path: Path, marker: Path) -> None:
    torch.save({"format": "fastzhang-checkpoint", "format_version": 1, "epoch": 99, "x": _Exploit(marker)}, path)


def pickle_exploit(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"format": "fastzhang-checkpoint", "x": _Exploit(marker)}, protocol=2))


def test_exploit_checkpoint_is_live_when_loaded_unsafely(tmp_path):
    """The crafted files really run code under an unsafe load, so the refusals below mean something."""
    for write in (torch_exploit, pickle_exploit):
        marker = tmp_path / f"armed-{write.__name__}"
        write(tmp_path / "probe.pth", marker)
        try:
            torch.load(tmp_path / "probe.pth", weights_only=False)
        except Exception:
            pass  # a raw pickle is unpickled by torch's legacy path before it complains
        assert marker.exists(), write.__name__


def test_exploit_in_place_of_latest_is_refused_unrun_and_prev_is_used(lab, runs, capsys):
    root, latest, prev = lab
    marker = root / "pwned"
    torch_exploit(latest, marker)
    assert run_cli(cli_args(root)) == 0
    [warning] = stderr_lines(capsys.readouterr().err)
    assert warning.startswith(f"fastzhang: warning: checkpoint {latest} is damaged (it holds objects other than "
                              "tensors and plain values")
    assert "refused unread by the weights-only loader" in warning and f"using {prev}" in warning
    assert not marker.exists()
    assert_equals_reference(root, runs[0])


@pytest.mark.e2e
def test_exploit_through_resume_from_and_as_only_checkpoint_never_runs(tmp_path):
    """Real processes: `--resume-from exploit` is bad input (2); an exploit as the only checkpoint is 4."""
    marker = tmp_path / "pwned"
    torch_exploit(tmp_path / "given.pth", marker)
    ckpt_dir = tmp_path / "only" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    pickle_exploit(checkpoint.latest_path(ckpt_dir, EID), marker)
    given = Fz(cli_args(tmp_path / "given", "--resume-from", tmp_path / "given.pth"), tmp_path, name="given")
    only = Fz(cli_args(tmp_path / "only"), tmp_path, name="only")
    assert given.wait() == 2 and only.wait() == 4
    [line] = stderr_lines(given.stderr)
    assert line.startswith(f"fastzhang: error: --resume-from {tmp_path / 'given.pth'}: it holds objects other "
                           "than tensors and plain values")
    [line] = stderr_lines(only.stderr)
    assert line.startswith("fastzhang: error: no usable checkpoint (") and "posix.system" in line
    assert "refused unread" in line
    assert not marker.exists()
    assert not (tmp_path / "given").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------
# Results files


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]),  # a partial write
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(p.read_bytes().replace(b'"completed": true', b'"completed": 1')),
], ids=["partial", "empty", "wrong-type"])
def test_damaged_results_file_is_reported_and_means_not_completed(runs, tmp_path, monkeypatch, capsys, damage):
    shutil.copytree(runs[0], tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    [bad] = (tmp_path / "results").glob("*.json")
    damage(bad)
    broken = bad.read_bytes()
    latest = checkpoint.latest_path(tmp_path / "checkpoints", EID)
    final = latest.read_bytes()

    assert run_cli(["status"]) == 0
    out = capsys.readouterr().out
    assert f"  results/{bad.name}: " in out.split("\ndamaged files:\n")[1]
    assert "completed" not in out.splitlines()[2]  # the experiment's state line

    assert run_cli(cli_args(tmp_path)) == 0
    [warning] = stderr_lines(capsys.readouterr().err)
    assert warning.startswith(f"fastzhang: warning: results file {bad} is damaged (")
    assert warning.endswith("); treating the experiment as not completed")
    assert bad.read_bytes() == broken  # reported, never deleted or rewritten
    assert latest.read_bytes() == final  # resumed after the last epoch: nothing retrained
    assert_equals_reference(tmp_path, runs[0])
    assert run_cli(["status"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "completed"
