"""Two `fastzhang run` processes started on one experiment at the same moment.

Exactly one trains; the other stops with exit 3 and one line naming the
experiment, the winner's pid and the lock file. The outcome is that of a single
run: one results file, and weights and metrics bitwise equal to a solo run.
Every write sleeps a little (FASTZHANG_TEST_SLOW_WRITE), so the winner holds the
lock for seconds and the loser, however late the scheduler starts it, meets it.
"""

from __future__ import annotations

import pytest

from conftest import TINY_RUN, Fz, assert_same_results, assert_same_training, fz_env, stderr_lines

from fastzhang import checkpoint, results
from fastzhang.atomicio import SLOW_WRITE_ENV

EPOCHS = 8  # the experiment of test_faults_signals.py: one reference run serves both
ARGS = (*TINY_RUN, "--epochs", str(EPOCHS))
EID = f"mlp1_synthetic_random_labels_bs16_ep{EPOCHS}"


@pytest.mark.e2e
def test_two_processes_on_one_experiment_exactly_one_trains(tmp_path, reference_run):
    reference = reference_run(ARGS)
    env = fz_env(**{SLOW_WRITE_ENV: "0.1"})
    a = Fz([*ARGS, "--quiet"], tmp_path, name="a", env=env)
    b = Fz([*ARGS, "--quiet"], tmp_path, name="b", env=env)
    codes = {a.wait(): a, b.wait(): b}
    assert sorted(codes) == [0, 3], (a.stderr, b.stderr)
    winner, loser = codes[0], codes[3]
    [line] = stderr_lines(loser.stderr)
    assert line == (f"fastzhang: error: experiment {EID} is already running in another process "
                    f"(pid {winner.pid}, lock file checkpoints/{EID}.lock); wait for it or stop it")
    assert loser.stdout == ""
    assert winner.stdout.startswith(f"fastzhang: {EID} completed: ")
    assert stderr_lines(winner.stderr) == []

    [entry] = results.scan(tmp_path / "results")
    assert entry.problem is None and entry.payload["environment"]["pid"] == winner.pid
    ref_state, ref_results = reference.result()
    assert_same_training(checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", EID)), ref_state)
    assert_same_results(entry.payload, ref_results)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(
        [f"{EID}.lock", f"{EID}.log", f"{EID}_best.pth", f"{EID}_checkpoint.pth", f"{EID}_checkpoint.prev.pth"])
