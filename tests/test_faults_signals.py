"""SIGTERM and SIGINT on a real `fastzhang run`: finish the step, checkpoint, exit 143 / 130, resume exactly.

One run is stopped twice, each time at a seeded random moment after it announces
that it trains (usually mid-epoch): by SIGTERM, then by SIGINT twice in a row (the
user insists: the second one interrupts even the checkpoint write the first one
started). Each restart resumes exactly where the newest intact checkpoint says,
and the end is bitwise equal to a run never stopped. No `--checkpoint-every-steps`
here, so a checkpoint with steps inside an epoch can only come from a stop request.
A single SIGINT is the same stop with exit 130: test_engine.py sends a real one
(in process), test_batch_local.py one through `fastzhang batch` to its run.
"""

from __future__ import annotations

import pytest

import random
import re
import signal
import time

from conftest import TINY_RUN, Fz, assert_same_results, assert_same_training, fz_env, stderr_lines

from fastzhang import checkpoint, results
from fastzhang.atomicio import SLOW_WRITE_ENV

EPOCHS = 8  # the experiment of test_faults_concurrency.py: one reference run serves both
ARGS = (*TINY_RUN, "--epochs", str(EPOCHS))
# Each write of a life that is stopped sleeps this long: an epoch ends in at least one write, so a life
# (0.1-0.3 s) trains at most 3 epochs on any machine and two never reach the end of 8; the second SIGINT
# usually lands in the write the first one started.
SLOW_WRITE = "0.1"
EID = f"mlp1_synthetic_random_labels_bs16_ep{EPOCHS}"
INTERRUPTED = "fastzhang: interrupted; the last complete checkpoint is kept"
STARTED = r"fastzhang: \S+: (starting|resuming after epoch (\d+)(?:, step (\d+))?)"


def _position(match) -> tuple[int, int] | None:
    return None if match[1].startswith("starting") else (int(match[2]), int(match[3] or 0))


def _inode(path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _stop(tmp_path, name: str, rng: random.Random, signals: tuple[signal.Signals, ...]) -> tuple[Fz, int, tuple]:
    """Start a run, let it train a random moment, send `signals`.

    Returns the process, the inode of the latest checkpoint just before the first
    signal (every save writes a new file), and where the run said it resumed from.
    """
    fz = Fz(ARGS, tmp_path, name=name, env=fz_env(**{SLOW_WRITE_ENV: SLOW_WRITE}))
    resumed = _position(fz.wait_for(STARTED))
    time.sleep(rng.uniform(0.1, 0.3))
    before = _inode(checkpoint.latest_path(tmp_path / "checkpoints", EID))
    assert fz.proc.poll() is None, f"{name} ended before its signal:\n{fz.stderr[-2000:]}"
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.002)  # usually lands in the step or the checkpoint write the first one started
        fz.proc.send_signal(sig)
    fz.wait()
    return fz, before, resumed


@pytest.mark.e2e
def test_sigterm_then_double_sigint_then_exact_resumption(tmp_path, reference_run):
    reference = reference_run(ARGS)
    rng = random.Random(143_130)
    latest = checkpoint.latest_path(tmp_path / "checkpoints", EID)
    saved_note = f"checkpoint saved to checkpoints/{EID}_checkpoint.pth; to resume: " \
                 "fastzhang run --model mlp1"

    fz, before, resumed = _stop(tmp_path, "sigterm", rng, (signal.SIGTERM,))
    assert resumed is None
    assert fz.proc.returncode == 143, (fz.proc.returncode, fz.stderr[-2000:])
    assert fz.stdout == "" and stderr_lines(fz.stderr)[-1].startswith(f"fastzhang: stopped by SIGTERM; {saved_note}")
    assert "Traceback" not in fz.stderr and "warning" not in fz.stderr, fz.stderr[-2000:]
    assert _inode(latest) != before  # a checkpoint written after the signal arrived
    saved = checkpoint.load(latest)
    expected = (saved["epoch"], saved["step_in_epoch"])
    assert saved["global_step"] == 64 * saved["epoch"] + saved["step_in_epoch"]
    assert saved["epoch"] < EPOCHS and not (tmp_path / "results").exists()

    fz, _, resumed = _stop(tmp_path, "twice", rng, (signal.SIGINT, signal.SIGINT))
    assert resumed == expected
    assert fz.proc.returncode == 130 and "Traceback" not in fz.stderr, fz.stderr[-3000:]
    # Either the second signal cut the stop short (one line says so) or came after it had finished.
    interrupted = stderr_lines(fz.stderr)[-1].endswith(INTERRUPTED)
    assert interrupted or stderr_lines(fz.stderr)[-1].startswith(f"fastzhang: stopped by SIGINT; {saved_note}"), \
        fz.stderr[-2000:]
    payload, _, damage = checkpoint.inspect_latest(latest)
    assert not damage and payload is not None
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # an interrupted write removes its file
    expected = (payload["epoch"], payload["step_in_epoch"])

    final = Fz(ARGS, tmp_path, name="final")
    assert final.wait() == 0, final.stderr[-3000:]
    assert _position(re.search(STARTED, final.stderr)) == expected
    ref_state, ref_results = reference.result()
    assert_same_training(checkpoint.load(latest), ref_state)
    [entry] = results.scan(tmp_path / "results")
    assert entry.problem is None
    assert_same_results(entry.payload, ref_results)
