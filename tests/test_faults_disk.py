"""Disk full, permission denied, read-only folder: during a real `fastzhang run`, through the CLI.

Tests run as root, for whom chmod makes nothing unwritable, so the kernel's
answers are simulated at the calls that meet them, for the files of one folder
only: ENOSPC at fsync (delayed allocation reports a full disk there), EACCES
when the temporary file is created, EROFS at the renames. The fault starts at
the n-th write into the folder and lasts (a full disk stays full). Whatever
fails, the files already there stay byte for byte as they were, no temporary
file is left, the error is one line naming the file, the exit code is 5, and a
rerun on a healthy disk ends exactly like an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
from conftest import assert_same_results, assert_same_training, files_under, run_cli, stderr_lines, temporaries

from fastzhang import checkpoint, results

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS = 3
ARGS = ["run", "--model", "mlp1", "--dataset", "synthetic", "--randomization", "random_labels",
        "--batch-size", "64", "--epochs", str(EPOCHS), "--device", "cpu", "--quiet"]
EID = f"mlp1_synthetic_random_labels_bs64_ep{EPOCHS}"


def cli_args(root: Path) -> list:
    return [*ARGS, "--checkpoint-dir", root / "checkpoints", "--results-dir", root / "results"]


class DiskFault:
    """From the `nth` atomic write into `folder` on, `call` fails there with `code`."""

    def __init__(self, monkeypatch, folder: Path, call: str, code: int, nth: int, watched: tuple[Path, ...]):
        self.folder, self.call, self.code, self.nth, self.watched = folder, call, code, nth, watched
        self.writes, self.fired, self.snapshot = 0, 0, None
        real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

        def create(path, *args, **kwargs):  # atomicio creates its temporary file with os.open
            if os.fspath(path).endswith(".tmp") and self._here(os.path.dirname(os.fspath(path))):
                self.writes += 1
                self._maybe_fail("open")
            return real_open(path, *args, **kwargs)

        def fsync(fd):
            name = os.readlink(f"/proc/self/fd/{fd}")
            if name.endswith(".tmp") and self._here(os.path.dirname(name)):
                self._maybe_fail("fsync")
            return real_fsync(fd)

        def replace(src, dst, **kwargs):
            if self._here(os.path.dirname(os.fspath(dst))):
                self._maybe_fail("replace")
            return real_replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "open", create)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def _here(self, folder) -> bool:
        return folder is not None and Path(folder).resolve() == self.folder.resolve()

    def _maybe_fail(self, call: str) -> None:
        if call != self.call or self.writes < self.nth:
            return
        if self.snapshot is None:  # what "the previous files" were when the disk gave out
            self.snapshot = {str(f): _final_files(f) for f in self.watched}
        self.fired += 1
        raise OSError(self.code, os.strerror(self.code))


def _final_files(folder: Path) -> dict[str, bytes]:
    return {name: data for name, data in files_under(folder).items() if not name.endswith(".tmp")}


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    assert run_cli(cli_args(root)) == 0
    return root


def _assert_equals_reference(root: Path, reference: Path) -> dict:
    assert_same_training(checkpoint.load(checkpoint.latest_path(root / "checkpoints", EID)),
                         checkpoint.load(checkpoint.latest_path(reference / "checkpoints", EID)))
    [entry] = results.scan(root / "results")
    [ref] = results.scan(reference / "results")
    assert entry.problem is None
    assert_same_results(entry.payload, ref.payload)
    return entry.payload


FAULTS = [("fsync", errno.ENOSPC), ("open", errno.EACCES), ("replace", errno.EROFS)]
FAULT_IDS = ["ENOSPC-at-fsync", "EACCES-at-create", "EROFS-at-rename"]


@pytest.mark.parametrize("call, code", FAULTS, ids=FAULT_IDS)
def test_checkpoint_write_fails_mid_run(tmp_path, monkeypatch, capsys, reference, call, code):
    ckpt, res = tmp_path / "checkpoints", tmp_path / "results"
    # Writes: 1 the epoch-0 checkpoint, then per epoch `best` (when test accuracy is a new best)
    # and `latest`; the fourth is in epoch 2 or 3, with good checkpoints already on disk.
    fault = DiskFault(monkeypatch, ckpt, call, code, nth=4, watched=(ckpt, res))
    assert run_cli(cli_args(tmp_path)) == 5
    monkeypatch.undo()
    captured = capsys.readouterr()
    [line] = stderr_lines(captured.err)
    assert re.fullmatch(rf"fastzhang: error: cannot write checkpoint {re.escape(str(ckpt))}/{EID}_"
                        rf"(checkpoint|best)\.pth: {os.strerror(code)}", line), line
    assert fault.fired == 1 and captured.out == ""
    assert {str(ckpt): _final_files(ckpt), str(res): _final_files(res)} == fault.snapshot
    assert temporaries(ckpt, res) == set()
    assert checkpoint.load_latest(checkpoint.latest_path(ckpt, EID))[0]["epoch"] >= 1
    assert not res.exists()

    assert run_cli(cli_args(tmp_path)) == 0  # the disk has room again
    assert stderr_lines(capsys.readouterr().err) == []
    _assert_equals_reference(tmp_path, reference)


@pytest.mark.parametrize("call, code", FAULTS, ids=FAULT_IDS)
def test_results_write_fails_at_the_end_and_rerun_writes_it_without_training(
        tmp_path, monkeypatch, capsys, reference, call, code):
    ckpt, res = tmp_path / "checkpoints", tmp_path / "results"
    res.mkdir()
    (res / "other_20240101_000000.json").write_text("{}")  # a neighbour that must stay as it is
    fault = DiskFault(monkeypatch, res, call, code, nth=1, watched=(ckpt, res))
    assert run_cli(cli_args(tmp_path)) == 5
    monkeypatch.undo()
    [line] = stderr_lines(capsys.readouterr().err)
    assert re.fullmatch(rf"fastzhang: error: cannot write results file {re.escape(str(res))}/{EID}_"
                        rf"\d{{8}}_\d{{6}}\.json: {os.strerror(code)}", line), line
    assert fault.fired == 1
    assert {str(ckpt): _final_files(ckpt), str(res): _final_files(res)} == fault.snapshot
    assert temporaries(ckpt, res) == set()
    latest = checkpoint.latest_path(ckpt, EID)
    final = checkpoint.load(latest)
    assert (final["epoch"], final["step_in_epoch"]) == (EPOCHS, 0)  # the finished training is kept
    kept = latest.read_bytes()

    assert run_cli(cli_args(tmp_path)) == 0
    assert stderr_lines(capsys.readouterr().err) == []
    assert latest.read_bytes() == kept  # nothing trained, nothing saved
    (res / "other_20240101_000000.json").unlink()
    payload = _assert_equals_reference(tmp_path, reference)
    assert payload["metrics"]["epoch_seconds"] == final["all_metrics"]["epoch_seconds"]  # not measured again
