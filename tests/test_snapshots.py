"""--snapshot-every: verified per-epoch snapshots, and restarting a finished experiment from one.

Through `fastzhang`'s command line in this process (`cli.main`): files, exit codes and output
are the command's own; nothing here depends on being a separate process.
"""

from __future__ import annotations

import pytest

import json

import torch

from conftest import TIMING, files_under, run_cli
from fastzhang import checkpoint
from fastzhang.config import ExperimentConfig

pytestmark = [pytest.mark.usefixtures("in_tmp_path"), pytest.mark.slow]  # whole runs, in process: ~1 s each

ARGS = ("run", "--model", "mlp1", "--dataset", "synthetic", "--randomization", "random_labels", "--epochs", "6",
        "--batch-size", "100", "--device", "cpu", "--quiet")
EID = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "randomization": "random_labels",
                                     "epochs": 6, "batch_size": 100}).experiment_id


def _results(folder) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "results").glob("*.json"))]


def test_snapshots_then_restart_from_epoch_2_is_bitwise_the_same_run(tmp_path, capsys):
    assert run_cli([*ARGS, "--snapshot-every", "2"]) == 0
    ckpt = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint.snapshots(ckpt, EID)] == [f"{EID}_epoch{e:03d}.pth" for e in (2, 4, 6)]
    assert EID == ExperimentConfig.from_mapping(  # an execution setting: the ID does not change
        {"model": "mlp1", "dataset": "synthetic", "randomization": "random_labels", "epochs": 6, "batch_size": 100,
         "snapshot_every": 2}).experiment_id
    final = checkpoint.load(checkpoint.latest_path(ckpt, EID))
    snapshot = checkpoint.snapshot_path(ckpt, EID, 2)
    assert (checkpoint.load(snapshot)["epoch"], checkpoint.load(snapshot)["step_in_epoch"]) == (2, 0)
    last = checkpoint.load(checkpoint.snapshot_path(ckpt, EID, 6))
    assert all(torch.equal(last["model_state_dict"][k], v) for k, v in final["model_state_dict"].items())

    capsys.readouterr()
    assert run_cli([*ARGS, "--resume-from", checkpoint.snapshot_path(ckpt, EID, 6)]) == 0  # nothing left to train
    assert "EXPERIMENT ALREADY COMPLETED" in capsys.readouterr().out and len(_results(tmp_path)) == 1

    assert run_cli([*ARGS, "--resume-from", snapshot]) == 0  # trains epochs 3-6 again
    old, new = _results(tmp_path)
    for key, series in old["metrics"].items():
        if isinstance(series, list) and key not in TIMING:
            assert new["metrics"][key] == series, key  # epochs 1-2 restored, 3-6 retrained identically
    resumed = checkpoint.load(checkpoint.latest_path(ckpt, EID))
    for key, value in final["model_state_dict"].items():
        assert torch.equal(resumed["model_state_dict"][key], value), key
    for index, buffers in final["optimizer_state_dict"]["state"].items():
        assert torch.equal(resumed["optimizer_state_dict"]["state"][index]["momentum_buffer"],
                           buffers["momentum_buffer"])


def test_a_damaged_snapshot_is_refused_with_exit_4_and_nothing_written(tmp_path, capsys):
    assert run_cli([*ARGS, "--epochs", "3", "--snapshot-every", "2"]) == 0
    eid = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "randomization": "random_labels",
                                         "epochs": 3, "batch_size": 100}).experiment_id
    assert [p.name[-7:] for p in checkpoint.snapshots(tmp_path / "checkpoints", eid)] == ["002.pth", "003.pth"]
    snapshot = checkpoint.snapshot_path(tmp_path / "checkpoints", eid, 2)
    data = bytearray(snapshot.read_bytes())
    payload = checkpoint.load(snapshot)
    weight = next(iter(payload["model_state_dict"].values()))
    marker = weight.flatten()[:4].numpy().tobytes()
    at = bytes(data).index(marker)  # a bit flip inside the tensor data: only the checksum sees it
    data[at] ^= 0x01
    snapshot.write_bytes(bytes(data))
    before = files_under(tmp_path / "checkpoints"), files_under(tmp_path / "results")
    capsys.readouterr()
    assert run_cli([*ARGS, "--epochs", "3", "--resume-from", snapshot]) == 4
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fastzhang: error: --resume-from {snapshot}: checksum mismatch")
    assert (files_under(tmp_path / "checkpoints"), files_under(tmp_path / "results")) == before
