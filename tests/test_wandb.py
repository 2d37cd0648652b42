"""--use_wandb: per-epoch metrics in W&B, which never costs a run.

The real wandb package, with no network of its own: no API key at all, or a
throw-away key and a closed local port for the server. Each run trains to the
end, warns once and logs offline under the run id its checkpoint keeps; a
stopped and resumed run lands in one W&B run (in this process: how W&B started
does not change which run id a resumed run continues).
"""

from __future__ import annotations

import builtins
import json
import re
import struct

import pytest
from conftest import Fz, fz_env, run_cli, stderr_lines

from fastzhang import checkpoint, results
from fastzhang.experiment import Interrupted, run_experiment
from fastzhang.lock import ExperimentLock
from test_engine import opts, stop_requested_after, tiny

pytest.importorskip("wandb", reason="the W&B extra is not installed")

ARGS = ("run", "--dataset", "synthetic", "--model", "mlp1", "--epochs", "2", "--use_wandb", "--device", "cpu",
        "--batch-size", "16")
EID = "mlp1_synthetic_baseline_bs16_ep2"
KEY = "0123456789abcdef" * 3  # a throw-away key: W&B checks its form; it never leaves this machine
CASES = {  # name -> (environment, the reason the warning names)
    "no_key": ({}, "no W&B API key: set WANDB_API_KEY or run `wandb login`"),
    "closed_port": ({"WANDB_API_KEY": KEY, "WANDB_BASE_URL": "http://127.0.0.1:9"}, "connection refused"),
}


def wandb_env(folder, **extra: str) -> dict:
    """A child's environment with none of the user's W&B settings or credentials."""
    home = folder / "home"
    home.mkdir(parents=True)
    env = {k: v for k, v in fz_env().items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), XDG_CONFIG_HOME=str(home / ".config"),
               WANDB_DIR=str(folder), WANDB_ERROR_REPORTING="false", **extra)
    return env


def records(run_folder):
    """The records of an offline run's transaction log: LevelDB log chunks of W&B protobufs.

    W&B's Python package has no reader for it (wandb-core, in Go, reads it for `wandb sync`).
    """
    from wandb.proto.wandb_internal_pb2 import Record

    [path] = run_folder.glob("run-*.wandb")
    data, pos, chunk = path.read_bytes(), 7, b""  # 7 bytes of W&B header, then 32 KiB blocks
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            yield Record.FromString(chunk)
            chunk = b""


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def history(run_folder) -> dict[int, dict]:
    """{step: the values logged} of an offline run."""
    rows = [_items(r.history.item) for r in records(run_folder) if r.WhichOneof("record_type") == "history"]
    return {row["_step"]: row for row in rows}


def summary(run_folder) -> dict:
    """The offline run's summary as its last updates left it."""
    found: dict = {}
    for r in records(run_folder):
        if r.WhichOneof("record_type") == "summary":
            found.update(_items(r.summary.update))
    return found


@pytest.mark.e2e
def test_no_key_or_no_server_logs_offline_with_one_warning(tmp_path):
    folders = {name: tmp_path / name for name in CASES}
    envs = {name: wandb_env(folders[name], **extra) for name, (extra, _) in CASES.items()}
    runs = {name: Fz(ARGS, folders[name], env=envs[name]) for name in CASES}  # side by side
    assert {name: fz.wait() for name, fz in runs.items()} == {name: 0 for name in CASES}

    for name, (_, reason) in CASES.items():
        folder, fz = folders[name], runs[name]
        run_id = checkpoint.load(checkpoint.latest_path(folder / "checkpoints", EID))["wandb_run_id"]
        assert run_id and "Traceback" not in fz.stderr + fz.stdout, fz.stderr
        [warning] = [line for line in stderr_lines(fz.stderr) if "warning" in line.lower()]
        assert warning.startswith(f"fastzhang: warning: {EID}: W&B logs offline (") and reason in warning
        assert warning.endswith(f"; sync later with: wandb sync {folder}/wandb/offline-run-*-{run_id}")
        [run] = (folder / "wandb").glob(f"offline-run-*-{run_id}")
        [entry] = results.scan(folder / "results")
        metrics = entry.payload["metrics"]
        assert entry.payload["completed"] and metrics["epochs"] == [1, 2]
        logged = history(run)
        assert sorted(logged) == [1, 2]
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "steps"):
            assert [logged[epoch][key] for epoch in (1, 2)] == metrics[key], (name, key)
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}  # best_test_acc, ...
        assert {k: summary(run).get(k) for k in scalars} == scalars, name
        with ExperimentLock(folder / "checkpoints", EID):  # released
            pass


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline in this process, logging under tmp_path; its service is shut down afterwards."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # W&B sets it for children: later tests' children start clean
    yield
    wandb.teardown()


def test_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch, one_thread, wandb_offline):
    cfg = tiny(epochs=2, use_wandb=True)
    with stop_requested_after(monkeypatch, epoch=1):
        with pytest.raises(Interrupted):
            run_experiment(cfg, opts(tmp_path))
    saved = checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", cfg.experiment_id))
    run_id = saved["wandb_run_id"]
    assert run_id
    outcome = run_experiment(cfg, opts(tmp_path))
    assert outcome.status == "trained"
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # `wandb sync` joins them; W&B adds "-1" to a folder name taken already (two sessions in the same second).
    assert len(runs) == 2 and all(re.search(rf"-{run_id}(-\d+)?$", run.name) for run in runs), runs
    final = checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", cfg.experiment_id))
    assert final["wandb_run_id"] == run_id
    # Epoch 1 was logged by the stopped session, epoch 2 by the resumed one: together, the run's metrics.
    assert sorted(sorted(history(run)) for run in runs) == [[1], [2]]
    logged = {**history(runs[0]), **history(runs[1])}
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "steps"):
        assert [logged[epoch][key] for epoch in (1, 2)] == outcome.results["metrics"][key], key


def test_a_failing_wandb_log_call_costs_one_warning_not_the_run(tmp_path, monkeypatch, capsys, one_thread,
                                                                wandb_offline):
    from wandb.sdk.wandb_run import Run

    real_log, calls = Run.log, []

    def log(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise BrokenPipeError("the W&B service went away")
        return real_log(self, *args, **kwargs)

    monkeypatch.setattr(Run, "log", log)
    cfg = tiny(epochs=3, use_wandb=True)
    outcome = run_experiment(cfg, opts(tmp_path))
    assert outcome.status == "trained" and len(calls) == 2  # nothing is sent after the failure
    [entry] = results.scan(tmp_path / "results")
    assert entry.problem is None and entry.payload["completed"] and entry.payload["metrics"]["epochs"] == [1, 2, 3]
    assert len(entry.payload["metrics"]["test_acc"]) == 3 and entry.payload["metrics"]["final_test_acc"] is not None
    run_id = checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", cfg.experiment_id))["wandb_run_id"]
    [run_folder] = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    [warning] = [line for line in stderr_lines(capsys.readouterr().err) if "warning" in line]
    assert warning == (f"fastzhang: warning: {cfg.experiment_id}: W&B log failed (the W&B service went away); "
                       "training continues without W&B logging; what was logged is kept: "
                       f"wandb sync {tmp_path}/wandb/offline-run-*-{run_id}")
    assert sorted(history(run_folder)) == [1]  # epoch 1 was logged, and the run was closed properly


def test_missing_wandb_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    code = run_cli(["run", "--dataset", "synthetic", "--model", "mlp1", "--epochs", "1", "--use_wandb",
                    "--device", "cpu", "--checkpoint-dir", tmp_path / "checkpoints", "--results-dir",
                    tmp_path / "results"])
    assert code == 2
    assert stderr_lines(capsys.readouterr().err) == [
        "fastzhang: error: --use_wandb needs the wandb package: pip install 'fastzhang[wandb]'"]
    assert list(tmp_path.iterdir()) == []
