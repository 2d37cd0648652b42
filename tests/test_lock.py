"""lock: one process per experiment, with real second processes and SIGKILL."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastzhang import lock as L
from fastzhang.errors import LockHeld

ROOT = Path(__file__).resolve().parents[1]
HOLDER = (
    "import sys, time; sys.path.insert(0, sys.argv[3]); from fastzhang.lock import ExperimentLock\n"
    "with ExperimentLock(sys.argv[1], sys.argv[2]):\n"
    "    print('locked', flush=True); time.sleep(120)\n"
)


def start_holder(checkpoint_dir: Path, ident: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(checkpoint_dir), ident, str(ROOT)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline() == "locked\n"
    return child


def test_lock_creates_folders_writes_pid_and_releases(tmp_path):
    ckpt = tmp_path / "a" / "checkpoints"
    with L.ExperimentLock(ckpt, "e1") as held:
        assert held.path == ckpt / "e1.lock"
        assert held.path.read_text() == f"{os.getpid()}\n"
        assert L.is_held(ckpt, "e1")
    assert not L.is_held(ckpt, "e1")
    assert held.path.exists()  # kept: deleting it would let two processes lock two inodes
    with L.ExperimentLock(ckpt, "e1"):  # free again
        pass
    assert L.ids_with_lock_files(ckpt) == {"e1"}


def test_second_holder_in_same_process_is_refused(tmp_path):
    with L.ExperimentLock(tmp_path, "e1"):
        with pytest.raises(LockHeld) as err:
            L.ExperimentLock(tmp_path, "e1").acquire()
        with L.ExperimentLock(tmp_path, "e2"):  # other experiments are independent
            pass
    assert str(err.value) == (
        f"experiment e1 is already running in another process (pid {os.getpid()}, "
        f"lock file {tmp_path / 'e1.lock'}); wait for it or stop it"
    )
    assert err.value.exit_code == 3


@pytest.mark.e2e
def test_other_process_holds_lock_until_sigkill(tmp_path):
    child = start_holder(tmp_path, "e1")
    try:
        assert L.is_held(tmp_path, "e1")
        with pytest.raises(LockHeld, match=f"pid {child.pid}, lock file"):
            with L.ExperimentLock(tmp_path, "e1"):
                pytest.fail("acquired a lock another process holds")
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert not L.is_held(tmp_path, "e1")  # the kernel dropped the dead holder's lock
    with L.ExperimentLock(tmp_path, "e1") as mine:
        assert mine.path.read_text() == f"{os.getpid()}\n"


def test_is_held_creates_nothing(tmp_path):
    assert not L.is_held(tmp_path / "missing", "e1")
    assert not L.is_held(tmp_path, "e1")
    assert list(tmp_path.iterdir()) == []


def test_lock_file_replaced_between_open_and_flock_is_retried(tmp_path, monkeypatch):
    # `clean` may delete the lock file after we opened it; a lock on the old inode would
    # exclude nobody, so acquire() must end up locking the file that carries the name.
    real_flock = fcntl.flock
    calls = []

    def racing_flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(tmp_path / "e1.lock")
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", racing_flock)
    with L.ExperimentLock(tmp_path, "e1") as held:
        monkeypatch.undo()
        assert len(calls) == 2
        assert L.is_held(tmp_path, "e1")
        assert os.stat(held.path).st_ino == os.fstat(held._fd).st_ino
