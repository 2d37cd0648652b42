"""results: schema, atomic orjson files, strict names, damaged files never count as completed."""

from __future__ import annotations

import datetime as dt
import errno
import os

import numpy as np
import orjson
import pytest

from fastzhang import results as R
from fastzhang.errors import WriteError

BASE = "inception_cifar10_baseline"
LONGER = "inception_cifar10_baseline_wd0.0005_crop"


def make(experiment_id: str = BASE, timestamp: str = "20240102_030405", **changes) -> dict:
    epochs = 3
    payload = {
        "schema_version": 1,
        "experiment_id": experiment_id,
        "config": {"model": "inception", "epochs": epochs},
        "metrics": {
            "epochs": [1, 2, 3], "train_loss": [2.0, 1.5, 1.0], "train_acc": [30.0, 50.0, 70.0],
            "test_loss": [2.1, 1.7, 1.4], "test_acc": [28.0, 45.0, 52.5], "lr": [0.1, 0.095, 0.09025],
            "epoch_seconds": [1.0, 1.0, 1.0], "images_per_second": [5e4, 5e4, 5e4], "steps": [391, 782, 1173],
            "best_test_acc": 52.5, "final_train_acc": 70.0, "final_test_acc": 52.5,
            "fit_epoch": None, "fit_step": None,
        },
        "timestamp": timestamp, "completed": True, "total_epochs": epochs, "target_epochs": epochs,
        "stopped_early": False, "data_fingerprint": "ab" * 32, "data_fingerprint_name": "cifar-10-python",
        "environment": {"fastzhang": "0.1.0", "torch": "2.13.0", "python": "3.11", "device": "cpu", "platform": "linux"},
        "throughput": {"mean_images_per_second": 5e4, "train_seconds": 3.0},
    }
    payload.update(changes)
    return payload


def test_write_roundtrip_with_numpy_values(tmp_path):
    payload = make()
    payload["metrics"]["test_acc"] = np.array([28.0, 45.0, 52.5], dtype=np.float32)
    payload["metrics"]["steps"] = [np.int64(391), np.int64(782), np.int64(1173)]
    payload["metrics"]["train_loss"] = [float("nan"), 1.5, 1.0]  # a diverged loss becomes null
    path = R.write(tmp_path / "results", payload)
    assert path == tmp_path / "results" / f"{BASE}_20240102_030405.json"
    text = path.read_text()
    assert text.startswith('{\n  "schema_version": 1,') and text.endswith("}\n")
    back = orjson.loads(text)
    assert back["metrics"]["test_acc"] == [28.0, 45.0, 52.5]
    assert back["metrics"]["steps"] == [391, 782, 1173]
    assert back["metrics"]["train_loss"] == [None, 1.5, 1.0]
    assert os.listdir(path.parent) == [path.name]
    assert R.find_completed(tmp_path / "results", BASE) == (path, back)


def test_iso_timestamp_and_name_collisions(tmp_path):
    stamp = "2024-01-02T03:04:05+01:00"
    paths = [R.write(tmp_path, make(timestamp=stamp)) for _ in range(3)]
    assert [p.name for p in paths] == [
        f"{BASE}_20240102_030405.json", f"{BASE}_20240102_030405_2.json", f"{BASE}_20240102_030405_3.json"
    ]
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")  # local time with its UTC offset
    assert now[:4].isdigit() and R.validate(make(timestamp=now)) is None


def test_invalid_payload_is_refused_before_writing(tmp_path):
    bad = make()
    del bad["metrics"]["fit_step"]
    with pytest.raises(ValueError, match="missing field 'metrics.fit_step'"):
        R.write(tmp_path, bad)
    assert os.listdir(tmp_path) == []


def test_disk_full_leaves_nothing_behind(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError, match=rf"cannot write results file .*{BASE}_20240102_030405.json: No space"):
        R.write(tmp_path, make())
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda p: p.pop("completed"), "missing field 'completed'"),
        (lambda p: p.update(schema_version=2), "schema_version is 2"),
        (lambda p: p.update(completed="yes"), "field 'completed' should be true or false"),
        (lambda p: p.update(total_epochs=True), "field 'total_epochs' should be an integer"),
        (lambda p: p.update(timestamp="yesterday"), "timestamp 'yesterday'"),
        (lambda p: p["metrics"]["test_acc"].pop(), "different lengths"),
        (lambda p: p["metrics"].update(lr=["x", 1, 2]), "metrics.lr holds a value that is not a number"),
        (lambda p: p["environment"].pop("torch"), "missing field 'environment.torch'"),
        (lambda p: p["throughput"].pop("train_seconds"), "missing field 'throughput.train_seconds'"),
    ],
)
def test_validate_names_the_first_problem(change, problem):
    payload = make()
    change(payload)
    assert problem in R.validate(payload)
    assert R.validate(make()) is None
    assert R.validate([1]) == "expected a JSON object, found a list"


def test_prefix_ids_never_match_each_other(tmp_path):
    longer = R.write(tmp_path, make(LONGER))
    assert R.find_completed(tmp_path, BASE) is None
    assert R.files_for(tmp_path, BASE) == []
    base = R.write(tmp_path, make(BASE, timestamp="20240102_030406"))
    assert R.find_completed(tmp_path, BASE)[0] == base
    assert R.find_completed(tmp_path, LONGER)[0] == longer
    (tmp_path / f"{BASE}_20240102_030405.json.bak").write_text("{}")
    (tmp_path / f"{BASE}_x_20240102_030405.json").write_text("{}")
    assert R.files_for(tmp_path, BASE) == [base]


def test_newest_valid_file_wins_and_damaged_newer_file_is_reported(tmp_path, capsys):
    old = R.write(tmp_path, make(timestamp="20240101_000000"))
    newer = R.write(tmp_path, make(timestamp="20240102_000000", metrics={**make()["metrics"], "best_test_acc": 60.0}))
    assert R.find_completed(tmp_path, BASE) == (newer, orjson.loads(newer.read_bytes()))
    newer.write_bytes(newer.read_bytes()[:200])  # a partial file
    found = R.find_completed(tmp_path, BASE)
    assert found[0] == old
    err = capsys.readouterr().err
    assert f"results file {newer} is damaged (not valid JSON" in err and f"using the older {old}" in err


@pytest.mark.parametrize(
    "content, reason",
    [
        (lambda: orjson.dumps(make())[:-40], "not valid JSON"),
        (lambda: b"", "the file is empty"),
        (lambda: b"[1, 2]", "expected a JSON object, found a list"),
        (lambda: b'{"accuracy": 99}', "missing field 'schema_version'"),
        (lambda: orjson.dumps(make(LONGER)), "it holds experiment 'inception_cifar10_baseline_wd0.0005_crop'"),
    ],
    ids=["partial", "empty", "list", "foreign", "other-experiment"],
)
def test_damaged_file_means_not_completed_with_warning(tmp_path, capsys, content, reason):
    path = tmp_path / f"{BASE}_20240102_030405.json"
    path.write_bytes(content())
    assert R.find_completed(tmp_path, BASE) is None
    err = capsys.readouterr().err
    assert f"fastzhang: warning: results file {path} is damaged ({reason}" in err
    assert err.rstrip().endswith("treating the experiment as not completed")


def test_incomplete_run_is_not_completed_and_not_damaged(tmp_path, capsys):
    R.write(tmp_path, make(completed=False))
    assert R.find_completed(tmp_path, BASE) is None
    assert capsys.readouterr().err == ""


def test_scan_lists_every_json_with_its_problem(tmp_path):
    good = R.write(tmp_path, make())
    (tmp_path / f"{LONGER}_20240102_030405.json").write_bytes(b'{"schema_version": 1')
    (tmp_path / "summary.json").write_bytes(orjson.dumps(make()))
    (tmp_path / "report").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    entries = {e.path.name: e for e in R.scan(tmp_path)}
    assert set(entries) == {good.name, f"{LONGER}_20240102_030405.json", "summary.json"}
    assert entries[good.name].problem is None and entries[good.name].experiment_id == BASE
    broken = entries[f"{LONGER}_20240102_030405.json"]
    assert broken.payload is None and "not valid JSON" in broken.problem and broken.experiment_id == LONGER
    assert entries["summary.json"].problem.startswith("its name is not") and entries["summary.json"].experiment_id is None
    assert R.scan(tmp_path / "missing") == []


def test_best_epoch_is_the_first_to_reach_the_best_and_the_best_checkpoint_agrees():
    from types import SimpleNamespace

    from fastzhang.train.state import is_best

    epochs, acc = [1, 2, 3, 4, 5], [10.0, 42.5, 30.0, 42.5, float("nan")]
    assert R.best_epoch(epochs, acc) == 2  # epoch 4 ties: an equal accuracy is no improvement
    assert R.best_epoch([1, 2], [None, 7.0]) == 2 and R.best_epoch([], []) is None
    # The best checkpoint is written at exactly that epoch: after epochs 1 and 2, not after 3 or 4.
    written = [is_best(SimpleNamespace(metrics={"test_acc": acc[:k]}), mid_epoch=False) for k in (1, 2, 3, 4)]
    assert written == [True, True, False, False]
    assert not is_best(SimpleNamespace(metrics={"test_acc": acc[:2]}), mid_epoch=True)
