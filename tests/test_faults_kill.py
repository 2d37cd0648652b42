"""SIGKILL at random moments, many inside checkpoint writes: every restart resumes, the end is exact.

A real `fastzhang run` is killed again and again (no handler can run: SIGKILL) and
restarted each time. FASTZHANG_TEST_SLOW_WRITE makes every write sleep between
writing its data and fsyncing/renaming it, so many kills land inside a write;
a kill landed there when the dead process left its hidden `.tmp` file behind.
Every other life is killed at the first write it starts after its random moment,
so some kills surely land inside a write however the machine's speed falls.
The kill moments come from a seeded generator, so a failure names a reproducible
schedule (the machine's speed still decides where in the run each moment falls).
Two folders are killed side by side, each its own chain of lives, because
process start-up (importing torch) is most of a life.
"""

from __future__ import annotations

import pytest

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import TINY_RUN, Fz, assert_same_results, assert_same_training, fz_env, temporaries

from fastzhang import checkpoint, results
from fastzhang.atomicio import SLOW_WRITE_ENV

# Short epochs (256 images, 16 steps), so kills also land in evaluations and epoch-end writes;
# 256 steps in all: more than 4 short lives get through, so every life is cut short.
EPOCHS, SUBSET, STEPS = 16, 256, 16
ARGS = (*TINY_RUN, "--epochs", str(EPOCHS), "--train-subset", str(SUBSET))
EID = f"mlp1_synthetic_random_labels_bs16_ep{EPOCHS}_sub{SUBSET}"
CHAINS, KILLS_PER_CHAIN = 2, 4  # a life is mostly process start-up: 8 kills in all, 2 at a time
SEED = 5_2017
MAX_DELAY = 0.45  # seconds after the run announces it is training
EVERY = 4  # --checkpoint-every-steps
# Each write sleeps this long, which also caps a life at EVERY / SLOW_WRITE steps per second
# however fast the machine.
SLOW_WRITE = "0.05"
STARTED = r"fastzhang: \S+: (starting|resuming after epoch (\d+)(?:, step (\d+))?)"
ALARMS = ("Traceback", "damaged", "corrupt", "error", "Error")


def resumed_at(match) -> tuple[int, int] | None:
    """(epoch, step_in_epoch) a life announced it resumed from; None for a fresh start."""
    if match[1].startswith("starting"):
        return None
    return int(match[2]), int(match[3] or 0)


def newest_good(latest: Path) -> tuple[int, int] | None:
    """What a restart must resume from, read without touching anything; no file may be damaged."""
    payload, used, damage = checkpoint.inspect_latest(latest)
    assert not damage, [str(d) for d in damage]
    return None if payload is None else (payload["epoch"], payload["step_in_epoch"])


def kill_chain(root: Path, seed: int) -> list[tuple[int, tuple | None, list[str]]]:
    """Start, kill at a random moment, check, repeat; then finish the run. Returns (life, resume point, .tmp left)."""
    rng = random.Random(seed)
    ckpt_dir, res_dir = root / "checkpoints", root / "results"
    latest = checkpoint.latest_path(ckpt_dir, EID)
    env = fz_env(**{SLOW_WRITE_ENV: SLOW_WRITE})
    expected, history = None, []
    for life in range(KILLS_PER_CHAIN):
        before = temporaries(ckpt_dir, res_dir)
        fz = Fz([*ARGS, "--checkpoint-every-steps", EVERY], root, name=f"life{life:02d}", env=env)
        try:
            assert resumed_at(fz.wait_for(STARTED)) == expected, (root.name, life, history)
            time.sleep(rng.uniform(0.0, MAX_DELAY))
            deadline = time.monotonic() + 60
            while life % 2 and not temporaries(ckpt_dir, res_dir) - before:  # wait for a write under way
                assert fz.proc.poll() is None and time.monotonic() < deadline, (root.name, life, fz.stderr[-2000:])
                time.sleep(0.002)
            assert fz.proc.poll() is None, f"{root.name} life {life} ended before its kill:\n{fz.stderr[-2000:]}"
        finally:
            fz.kill()
        left = temporaries(ckpt_dir, res_dir) - before  # a dead process removes nothing: it was mid-write
        alarms = [a for a in ALARMS if a in fz.stderr]
        assert not alarms, f"{root.name} life {life} printed {alarms}:\n{fz.stderr[-3000:]}"
        now = newest_good(latest)
        if expected is not None:
            assert now is not None and now >= expected, f"{root.name} life {life}: from {expected} back to {now}"
        history.append((life, now, sorted(left)))
        expected = now

    final = Fz(ARGS, root, name="final")  # uninterrupted to the end, at full speed
    assert final.wait() == 0, final.stderr[-3000:]
    assert resumed_at(re.search(STARTED, final.stderr)) == expected
    assert not [a for a in ALARMS if a in final.stderr], final.stderr[-3000:]
    # Under the lock, the run removed the temporaries that the kills left behind.
    assert temporaries(ckpt_dir, res_dir) == set()
    return history


@pytest.mark.e2e
def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(tmp_path, reference_run):
    reference = reference_run(ARGS)  # trains beside the kills
    roots = [tmp_path / f"chain{i}" for i in range(CHAINS)]
    for root in roots:
        root.mkdir()
    with ThreadPoolExecutor(CHAINS) as pool:
        histories = list(pool.map(kill_chain, roots, [SEED + i for i in range(CHAINS)]))

    ref_state, ref_results = reference.result()
    for root in roots:
        assert_same_training(checkpoint.load(checkpoint.latest_path(root / "checkpoints", EID)), ref_state)
        [entry] = results.scan(root / "results")
        assert entry.problem is None and entry.payload["completed"]
        assert_same_results(entry.payload, ref_results)
        assert entry.payload["metrics"]["steps"] == [STEPS * e for e in range(1, EPOCHS + 1)]

    kills = [h for history in histories for h in history]
    in_write = sum(bool(h[2]) for h in kills)
    points = [[h[1] for h in history] for history in histories]
    print(f"\n{len(kills)} SIGKILLs, {in_write} inside a write; resume points: {points}")
    assert len(kills) >= CHAINS * KILLS_PER_CHAIN - 2  # a life may end before its kill
    assert in_write >= 2, f"only {in_write} of {len(kills)} kills landed inside a write: {histories}"
    # Resumed from inside an epoch too (the GPU check's SIGKILL test, skipped on a plain CPU, relies on it).
    assert any(point and point[1] > 0 for chain in points for point in chain), points
