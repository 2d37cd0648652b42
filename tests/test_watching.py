"""Watching and steering runs (issue 17): what a run says, where it says it, and the advice it gives.

Real `fastzhang` processes where the behaviour is the command line's: a bare `run`,
output captured without a terminal, `--resume-from PATH` alone. A batch run's log (its
stderr) is test_batch_local.py's, beside the batch's thread count.
"""

from __future__ import annotations

import json
import os
import pty
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_RUN, Fz, assert_same_training, fz_env, run_cli, stderr_lines

from fastzhang import checkpoint, results

EPOCHS = 8  # test_faults_concurrency.py's experiment: its reference run serves here too
REFERENCE = (*TINY_RUN, "--epochs", str(EPOCHS))
REF_ID = f"mlp1_synthetic_random_labels_bs16_ep{EPOCHS}"
SMALL = ["run", "--model", "mlp1", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "64", "--device", "cpu"]
SMALL_ID = "mlp1_synthetic_baseline_bs64_ep2"


@pytest.mark.e2e
def test_bare_run_is_refused_at_once_and_creates_nothing(tmp_path):
    started = time.monotonic()
    fz = Fz(["run"], tmp_path)
    assert fz.wait(timeout=60) == 2
    assert time.monotonic() - started < 30  # no data loaded, no torch imported: far from a 5-hour run
    assert stderr_lines(fz.stderr) == [
        "fastzhang: error: run needs --config RECIPE or --model NAME (or --resume-from CHECKPOINT), "
        "e.g. fastzhang run --config recipes/demo/mlp1_true_labels.yaml; see fastzhang run --help"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fz.err", "fz.out"]


@pytest.mark.e2e
def test_output_without_a_terminal_log_file_and_completion_advice_that_works(tmp_path, monkeypatch, capsys,
                                                                            one_thread):
    fz = Fz(SMALL, tmp_path)  # stdout and stderr are files: no terminal
    assert fz.wait() == 0, fz.stderr
    assert "\r" not in fz.stderr + fz.stdout  # no progress bar redraws, only whole lines
    lines = fz.stderr.splitlines()
    log = checkpoint.log_path("checkpoints", SMALL_ID)
    assert lines[0] == (f"fastzhang: {SMALL_ID}: starting: mlp1 on synthetic, lr 0.01, 2 epochs, batch 64, seed 0; "
                        f"on cpu ({lines[0].split('on cpu (')[1].split(')')[0]}); "
                        f"compile auto: off, inductor's CPU code trains slower than eager; log {log}")
    assert lines[1].startswith(f"fastzhang: {SMALL_ID} epoch 1/2: train loss ") and " left" in lines[1]
    assert lines[2].startswith(f"fastzhang: {SMALL_ID} epoch 2/2: ") and len(lines) == 3
    [first] = results.scan(tmp_path / "results")
    m = first.payload["metrics"]
    assert m["best_epoch"] == results.best_epoch(m["epochs"], m["test_acc"])
    assert fz.stdout == (f"fastzhang: {SMALL_ID} completed: 2 epochs; final train accuracy {m['final_train_acc']:.2f}%, "
                         f"test {m['final_test_acc']:.2f}%; best test {m['best_test_acc']:.2f}% (epoch "
                         f"{m['best_epoch']}); results in {first.path.relative_to(tmp_path)}\n")
    logged = (tmp_path / log).read_text().splitlines()  # the same lines, time-stamped, and how it ended
    assert [line[20:] for line in logged] == [line.removeprefix("fastzhang: ") for line in lines] + \
        [fz.stdout.strip().removeprefix("fastzhang: ")]
    execution = first.payload["execution"]
    assert execution["threads"] == 1 and execution["data_source"] == "synthetic" and execution["device_name"]

    monkeypatch.chdir(tmp_path)
    assert run_cli(SMALL) == 0  # completed: the block, and nothing trains
    block = capsys.readouterr().out.splitlines()
    again = f"fastzhang {shlex.join(SMALL)}"
    assert block[5:8] == [
        "To re-run this experiment, either:",
        f"  1. Add --force flag (keeps the old results): {again} --force",
        f"  2. Delete its checkpoints and results, and train it: fastzhang clean {SMALL_ID} && {again}",
    ]
    assert f"  Final train accuracy: {m['final_train_acc']:.2f}%" in block
    assert run_cli(shlex.split(block[6].split(": ", 1)[1])[1:]) == 0  # option 1 trains again: a second results file
    assert len(results.files_for("results", SMALL_ID)) == 2 and log.read_text().count("starting") == 2
    option2 = block[7].split(": ", 1)[1]  # as printed, in a shell, answering clean's question on a terminal
    typed, terminal = pty.openpty()
    os.write(typed, b"y\n")
    done = subprocess.run(["bash", "-c", option2], cwd=tmp_path, stdin=terminal, capture_output=True, text=True,
                          env=fz_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(results.files_for("results", SMALL_ID)) == 1  # every old file went, then it trained from epoch 1
    assert log.read_text().count("starting") == 1 and "epoch 2/2" in log.read_text()


def test_deleting_the_results_file_recovers_it_from_the_final_checkpoint(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    assert run_cli([*SMALL, "--quiet"]) == 0
    [first] = results.files_for("results", SMALL_ID)
    final = checkpoint.latest_path("checkpoints", SMALL_ID).read_bytes()
    before = json.loads(first.read_text())["metrics"]
    first.unlink()
    capsys.readouterr()
    assert run_cli([*SMALL, "--quiet"]) == 0
    log = checkpoint.log_path("checkpoints", SMALL_ID).read_text().splitlines()
    assert log[-2][20:] == f"{SMALL_ID}: results missing: rewritten from the final checkpoint, nothing retrained"
    assert log[-1][20:].startswith(f"{SMALL_ID} completed: 2 epochs")  # no epoch line between: nothing trained
    assert checkpoint.latest_path("checkpoints", SMALL_ID).read_bytes() == final
    [again] = results.scan("results")
    assert again.payload["metrics"] == before


@pytest.mark.e2e
def test_resume_from_a_checkpoint_alone_continues_it_bit_exactly(tmp_path, reference_run):
    reference = reference_run(REFERENCE)
    reference.result()
    prev = tmp_path / "given.pth"  # the reference's checkpoint after epoch 7
    shutil.copy(checkpoint.prev_path(reference.folder / "checkpoints" / f"{REF_ID}_checkpoint.pth"), prev)
    assert run_cli(["run", "--resume-from", prev, "--seed", "9", "--checkpoint-dir", tmp_path / "c"]) == 2
    fz = Fz(["run", "--resume-from", prev, "--quiet", "--results-dir", "res"], tmp_path, name="resumed")
    assert fz.wait() == 0, fz.stderr
    assert_same_training(checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", REF_ID)),
                         reference.result()[0])
    logged = checkpoint.log_path(tmp_path / "checkpoints", REF_ID).read_text()
    assert f"{REF_ID}: resuming after epoch 7: mlp1 on synthetic (random_labels)" in logged


def test_suggestions_for_a_misspelled_model_key_and_flag(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: mlp1\nepoch: 3\n")
    assert run_cli(["run", "--model", "alexnt"]) == 2
    assert run_cli(["run", "--config", recipe]) == 2
    assert run_cli(["run", "--model", "mlp1", "--epoch", "3"]) == 2
    assert run_cli(["run", "--model", "mlp1", "--randomization", "partial"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("got 'alexnt' (did you mean alexnet?)")
    assert err[1] == f"fastzhang: error: {recipe}: unknown setting 'epoch' (did you mean epochs?)"
    assert err[2].startswith("fastzhang run: error: unrecognized arguments: --epoch 3 (did you mean --epochs?)")
    assert "randomization 'partial' needs corrupt_prob" in err[3]
    assert list(Path(tmp_path).iterdir()) == [recipe]


def test_a_warning_is_in_the_log_once_when_stderr_is_the_log(tmp_path, monkeypatch):
    """`fastzhang batch` sends a run's stderr into its log: the log must not get each warning twice."""
    import sys

    from fastzhang.runlog import RunLog

    separate = tmp_path / "y.log"
    RunLog(separate, quiet=True).warning("compile failed")  # stderr elsewhere: the log keeps a stamped copy
    assert separate.read_text().endswith(" warning: compile failed\n")
    log_path = tmp_path / "x.log"
    with open(log_path, "a", encoding="utf-8") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        RunLog(log_path, quiet=True).warning("compile failed")
        RunLog(log_path, quiet=False).say("epoch 1")
    assert [line.split(": ", 1)[-1] for line in log_path.read_text().splitlines()] == ["warning: compile failed",
                                                                                    "epoch 1"]


@pytest.mark.e2e
def test_skipping_a_completed_experiment_imports_no_torch(tmp_path, in_tmp_path):
    assert run_cli([*SMALL, "--quiet"]) == 0  # here; the skip below is a fresh process's
    code = (f"import sys; from fastzhang.cli import main; code = main({[*SMALL, '--quiet']!r}); "
            "sys.exit(10 + code if 'torch' in sys.modules else code)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=fz_env(), capture_output=True, text=True)
    assert done.returncode == 0 and "EXPERIMENT ALREADY COMPLETED" in done.stdout, (done.returncode, done.stderr)
