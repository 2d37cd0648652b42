"""`run --resume-from`: the README's table, one test per row, as real `fastzhang` processes."""

from __future__ import annotations

import hashlib
import shlex

import pytest

from conftest import Fz, files_under, stderr_lines
from fastzhang import checkpoint, results

pytestmark = pytest.mark.e2e

SMALL = ("run", "--model", "mlp1", "--dataset", "synthetic", "--batch-size", "64", "--device", "cpu", "--quiet")
ID2, ID4 = "mlp1_synthetic_baseline_bs64_ep2", "mlp1_synthetic_baseline_bs64_ep4"


def weights_sha256(path) -> str:
    """sha256 over the final weights (names and raw bytes, in order)."""
    h = hashlib.sha256()
    for name, tensor in checkpoint.load(path)["model_state_dict"].items():
        h.update(name.encode() + tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def _run(tmp_path, *args, name: str) -> Fz:
    fz = Fz([*SMALL, *args], tmp_path, name=name)
    fz.wait()
    return fz


def test_epochs_above_the_checkpoints_extend_it_bitwise_as_a_run_from_scratch(tmp_path):
    assert _run(tmp_path, "--epochs", "2", name="two").proc.returncode == 0
    latest2 = checkpoint.latest_path(tmp_path / "checkpoints", ID2)
    extended = _run(tmp_path, "--resume-from", latest2, "--epochs", "4", name="extended")
    assert extended.proc.returncode == 0, extended.stderr
    assert f"{ID4}: continuing {ID2} after epoch 2" in checkpoint.log_path(tmp_path / "checkpoints", ID4).read_text()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert _run(fresh, "--epochs", "4", name="four").proc.returncode == 0
    got = weights_sha256(checkpoint.latest_path(tmp_path / "checkpoints", ID4))
    assert got == weights_sha256(checkpoint.latest_path(fresh / "checkpoints", ID4)), got
    [ours] = [e for e in results.scan(tmp_path / "results") if e.experiment_id == ID4]
    [theirs] = results.scan(fresh / "results")
    for key in ("train_acc", "test_acc", "lr", "steps"):
        assert ours.payload["metrics"][key] == theirs.payload["metrics"][key], key
    assert len(results.files_for(tmp_path / "results", ID2)) == 1  # the 2-epoch experiment is untouched


def test_other_fields_are_refused_with_advice_that_works_and_force_is_refused(tmp_path):
    assert _run(tmp_path, "--epochs", "2", name="two").proc.returncode == 0
    latest = checkpoint.latest_path(tmp_path / "checkpoints", ID2)
    before = files_under(tmp_path / "checkpoints"), files_under(tmp_path / "results")
    forced = _run(tmp_path, "--resume-from", latest, "--force", name="forced")
    assert forced.proc.returncode == 2 and stderr_lines(forced.stderr) == [
        "fastzhang: error: --force trains from epoch 1 and --resume-from continues a checkpoint: give one of them "
        "(--resume-from alone trains a completed experiment again from that checkpoint)"]
    other = _run(tmp_path, "--resume-from", latest, "--seed", "3", "--epochs", "1", name="other")
    assert other.proc.returncode == 2
    [line] = stderr_lines(other.stderr)
    assert line.startswith(f"fastzhang: error: checkpoint {latest} belongs to a different configuration (epochs: "
                           "checkpoint 2 vs requested 1; seed: checkpoint 0 vs requested 3, and --epochs must "
                           "exceed the 2 it has trained); to continue it: ")
    assert (files_under(tmp_path / "checkpoints"), files_under(tmp_path / "results")) == before
    cont, fresh = line.split("; to continue it: ")[1].split("; to train the requested settings from epoch 1: ")
    followed = Fz(shlex.split(cont)[1:], tmp_path, name="cont")  # continue: completed, the block
    assert followed.wait() == 0 and "EXPERIMENT ALREADY COMPLETED" in followed.stdout
    followed = Fz(shlex.split(fresh)[1:], tmp_path, name="fresh")  # the requested settings, from epoch 1
    assert followed.wait() == 0, followed.stderr
    assert results.files_for(tmp_path / "results", "mlp1_synthetic_baseline_bs64_ep1_seed3")


def test_a_cut_off_checkpoint_is_exit_4_with_one_clear_line(tmp_path):
    assert _run(tmp_path, "--epochs", "1", name="one").proc.returncode == 0
    cut = tmp_path / "cut.pth"
    data = checkpoint.latest_path(tmp_path / "checkpoints", "mlp1_synthetic_baseline_bs64_ep1").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    fz = _run(tmp_path, "--resume-from", cut, name="cut")
    assert fz.proc.returncode == 4 and stderr_lines(fz.stderr) == [
        f"fastzhang: error: --resume-from {cut}: a cut-off or damaged torch archive (RuntimeError: "
        "PytorchStreamReader failed reading zip archive: failed finding central directory)"]
