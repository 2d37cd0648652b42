"""`run --resume-from`: the README's table, one test per row, through `fastzhang`'s command line.

In this process (`cli.main`, as the `fastzhang` command runs it): what is asserted is what the
command says, exits with and writes; a real process's exit status and signals are the
business of test_bad_input.py and test_faults_*.py.
"""

from __future__ import annotations

import hashlib
import shlex

import pytest

from conftest import files_under, run_cli, stderr_lines
from fastzhang import checkpoint, results

pytestmark = [pytest.mark.usefixtures("in_tmp_path"), pytest.mark.slow]  # whole runs, in process: ~1 s each

SMALL = ("run", "--model", "mlp1", "--dataset", "synthetic", "--batch-size", "64", "--device", "cpu", "--quiet")
ID2, ID4 = "mlp1_synthetic_baseline_bs64_ep2", "mlp1_synthetic_baseline_bs64_ep4"


def weights_sha256(path) -> str:
    """sha256 over the final weights (names and raw bytes, in order)."""
    h = hashlib.sha256()
    for name, tensor in checkpoint.load(path)["model_state_dict"].items():
        h.update(name.encode() + tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_epochs_above_the_checkpoints_extend_it_bitwise_as_a_run_from_scratch(tmp_path):
    assert run_cli([*SMALL, "--epochs", "2"]) == 0
    latest2 = checkpoint.latest_path(tmp_path / "checkpoints", ID2)
    assert run_cli([*SMALL, "--resume-from", latest2, "--epochs", "4"]) == 0
    assert f"{ID4}: continuing {ID2} after epoch 2" in checkpoint.log_path(tmp_path / "checkpoints", ID4).read_text()
    fresh = tmp_path / "fresh"
    assert run_cli([*SMALL, "--epochs", "4", "--checkpoint-dir", fresh / "checkpoints",
                    "--results-dir", fresh / "results"]) == 0
    got = weights_sha256(checkpoint.latest_path(tmp_path / "checkpoints", ID4))
    assert got == weights_sha256(checkpoint.latest_path(fresh / "checkpoints", ID4)), got
    [ours] = [e for e in results.scan(tmp_path / "results") if e.experiment_id == ID4]
    [theirs] = results.scan(fresh / "results")
    for key in ("train_acc", "test_acc", "lr", "steps"):
        assert ours.payload["metrics"][key] == theirs.payload["metrics"][key], key
    assert len(results.files_for(tmp_path / "results", ID2)) == 1  # the 2-epoch experiment is untouched


def test_other_fields_are_refused_with_advice_that_works_and_force_is_refused(tmp_path, capsys):
    assert run_cli([*SMALL, "--epochs", "2"]) == 0
    latest = checkpoint.latest_path(tmp_path / "checkpoints", ID2)
    before = files_under(tmp_path / "checkpoints"), files_under(tmp_path / "results")
    capsys.readouterr()
    assert run_cli([*SMALL, "--resume-from", latest, "--force"]) == 2
    assert stderr_lines(capsys.readouterr().err) == [
        "fastzhang: error: --force trains from epoch 1 and --resume-from continues a checkpoint: give one of them "
        "(--resume-from alone trains a completed experiment again from that checkpoint)"]
    assert run_cli([*SMALL, "--resume-from", latest, "--seed", "3", "--epochs", "1"]) == 2
    [line] = stderr_lines(capsys.readouterr().err)
    assert line.startswith(f"fastzhang: error: checkpoint {latest} belongs to a different configuration (epochs: "
                           "checkpoint 2 vs requested 1; seed: checkpoint 0 vs requested 3, and --epochs must "
                           "exceed the 2 it has trained); to continue it: ")
    assert (files_under(tmp_path / "checkpoints"), files_under(tmp_path / "results")) == before
    cont, fresh = line.split("; to continue it: ")[1].split("; to train the requested settings from epoch 1: ")
    assert run_cli(shlex.split(cont)[1:]) == 0  # continue: completed, the block
    assert "EXPERIMENT ALREADY COMPLETED" in capsys.readouterr().out
    assert run_cli(shlex.split(fresh)[1:]) == 0  # the requested settings, from epoch 1
    assert results.files_for(tmp_path / "results", "mlp1_synthetic_baseline_bs64_ep1_seed3")


def test_a_cut_off_checkpoint_is_exit_4_with_one_clear_line(tmp_path, capsys):
    assert run_cli([*SMALL, "--epochs", "1"]) == 0
    cut = tmp_path / "cut.pth"
    data = checkpoint.latest_path(tmp_path / "checkpoints", "mlp1_synthetic_baseline_bs64_ep1").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert run_cli([*SMALL, "--resume-from", cut]) == 4
    assert stderr_lines(capsys.readouterr().err) == [
        f"fastzhang: error: --resume-from {cut}: a cut-off or damaged torch archive (RuntimeError: "
        "PytorchStreamReader failed reading zip archive: failed finding central directory)"]
