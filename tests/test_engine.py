"""The training engine: exact resumption, completion, --force, --resume-from, results.

The lock is tested in test_lock.py (and a real race in test_faults_concurrency.py); SIGKILL
in test_faults_kill.py, SIGTERM/SIGINT through a real process in test_faults_signals.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from fastzhang import checkpoint, experiment, results
from fastzhang.config import ExperimentConfig
from fastzhang.errors import UsageError
from fastzhang.experiment import Interrupted, RunOptions, run_experiment
from fastzhang.train import engine

TINY = dict(model="mlp1", dataset="synthetic", epochs=4, batch_size=64, device="cpu")
TIMING = ("epoch_seconds", "eval_seconds", "images_per_second")


def tiny(**changes) -> ExperimentConfig:
    return ExperimentConfig.from_mapping({**TINY, **changes})


def opts(root: Path, **changes) -> RunOptions:
    return RunOptions(checkpoint_dir=root / "checkpoints", results_dir=root / "results", quiet=True, **changes)


def final_state(root: Path, cfg: ExperimentConfig) -> dict:
    return checkpoint.load(checkpoint.latest_path(root / "checkpoints", cfg.experiment_id))


def assert_same_run(a: dict, b: dict) -> None:
    """Bitwise-equal weights and optimizer buffers, equal metric lists (timing aside)."""
    for key, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][key]), key
    for index, buffers in a["optimizer_state_dict"]["state"].items():
        assert torch.equal(buffers["momentum_buffer"], b["optimizer_state_dict"]["state"][index]["momentum_buffer"])
    for key, values in a["all_metrics"].items():
        if key not in TIMING:
            assert values == b["all_metrics"][key], key
    assert a["best_test_acc"] == b["best_test_acc"]


@contextmanager
def stop_requested_after(monkeypatch, *, epoch: int | None = None, steps: int | None = None):
    """Deliver a stop request, as SIGTERM would, after `epoch` epochs or after `steps` optimizer steps."""
    original_finish, original_step, original_signals = engine._finish_epoch, engine.TrainStep.__call__, \
        experiment.stop_signals
    holder, count = {}, [0]

    def finish(cfg, run, *args):
        row = original_finish(cfg, run, *args)
        if run.epoch == epoch:
            holder["flag"].signum = signal.SIGTERM
        return row

    def step(self, *args):
        original_step(self, *args)
        count[0] += 1
        if count[0] == steps:
            holder["flag"].signum = signal.SIGTERM

    @contextmanager
    def signals(**kwargs):
        with original_signals(**kwargs) as flag:
            holder["flag"] = flag
            yield flag

    with monkeypatch.context() as m:
        m.setattr(engine, "_finish_epoch", finish)
        m.setattr(engine.TrainStep, "__call__", step)
        m.setattr(experiment, "stop_signals", signals)
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("reference")
    outcome = run_experiment(tiny(), opts(root))
    return root, final_state(root, tiny()), outcome.results_path


@pytest.mark.parametrize("k", [3])  # after epoch N-1 (the SIGTERM test stops at other moments)
def test_resume_after_epoch_k_is_bitwise_exact(tmp_path, monkeypatch, reference, k):
    with stop_requested_after(monkeypatch, epoch=k):
        with pytest.raises(Interrupted) as stopped:
            run_experiment(tiny(), opts(tmp_path))
    assert stopped.value.exit_code == 143
    assert final_state(tmp_path, tiny())["epoch"] == k
    assert not list((tmp_path / "results").glob("*.json"))
    outcome = run_experiment(tiny(), opts(tmp_path))
    assert outcome.status == "trained"
    assert_same_run(reference[1], final_state(tmp_path, tiny()))
    ours, theirs = outcome.results["metrics"], json.loads(reference[2].read_bytes())["metrics"]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "steps", "best_test_acc"):
        assert ours[key] == theirs[key], key


def test_resume_mid_epoch_is_bitwise_exact(tmp_path, monkeypatch, reference):
    with stop_requested_after(monkeypatch, steps=2 * 16 + 5):  # 16 steps per epoch: 1,024 images, batch 64
        with pytest.raises(Interrupted):
            run_experiment(tiny(), opts(tmp_path))
    saved = final_state(tmp_path, tiny())
    assert (saved["epoch"], saved["step_in_epoch"]) == (2, 5)
    run_experiment(tiny(), opts(tmp_path))
    assert_same_run(reference[1], final_state(tmp_path, tiny()))


def test_a_signal_during_the_last_evaluation_stops_at_once_and_resumes_exactly(tmp_path, monkeypatch, capsys,
                                                                            reference):
    """A real SIGINT while the last epoch is evaluated: said at once (terminal and log), checkpointed, exact."""
    original = engine.eval_batches

    def batches(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the 4th epoch's evaluation, before its first batch is evaluated
            os.kill(os.getpid(), signal.SIGINT)
        yield from original(*args, **kwargs)

    calls: list = []
    monkeypatch.setattr(engine, "eval_batches", batches)
    with pytest.raises(Interrupted) as stopped:
        run_experiment(tiny(), opts(tmp_path))
    assert stopped.value.exit_code == 130
    said = f"{tiny().experiment_id}: SIGINT: stopping: checkpoint after this step"
    assert said in capsys.readouterr().err.splitlines()[0]  # under --quiet too
    logged = [line[20:] for line in checkpoint.log_path(tmp_path / "checkpoints", tiny().experiment_id)
              .read_text().splitlines()]
    assert logged[-2:] == [said, f"{tiny().experiment_id}: stopped by SIGINT after epoch 3, step 16; checkpoint saved"]
    saved = final_state(tmp_path, tiny())
    assert (saved["epoch"], saved["step_in_epoch"]) == (3, 16) and not list((tmp_path / "results").glob("*.json"))
    monkeypatch.undo()
    run_experiment(tiny(), opts(tmp_path))
    assert_same_run(reference[1], final_state(tmp_path, tiny()))


def test_results_file_schema(reference):
    root, _, path = reference
    assert re.fullmatch(r"mlp1_synthetic_baseline_bs64_ep4_\d{8}_\d{6}\.json", path.name)
    r = json.loads(path.read_bytes())
    for key in ("experiment_id", "config", "metrics", "timestamp", "completed", "total_epochs", "target_epochs",
                "schema_version", "data_fingerprint", "environment", "throughput"):
        assert key in r, key
    for key in ("epochs", "train_loss", "train_acc", "test_loss", "test_acc", "best_test_acc", "final_train_acc",
                "final_test_acc"):
        assert key in r["metrics"], key
    assert r["completed"] is True and r["total_epochs"] == r["target_epochs"] == 4
    assert r["metrics"]["epochs"] == [1, 2, 3, 4]
    assert r["metrics"]["steps"] == [16, 32, 48, 64]
    assert r["metrics"]["final_test_acc"] == r["metrics"]["test_acc"][-1]
    assert r["metrics"]["best_test_acc"] == max(r["metrics"]["test_acc"])
    assert r["metrics"]["lr"] == pytest.approx([0.01 * 0.95**e for e in range(4)])
    assert r["config"]["lr"] == 0.01 and r["environment"]["torch"] == torch.__version__
    assert r["metrics"]["train_acc"][-1] > 50.0  # the synthetic set is learnable


def test_checkpoints_are_code_free_and_complete(reference):
    root, _, _ = reference
    eid = tiny().experiment_id
    for name in (f"{eid}_checkpoint.pth", f"{eid}_best.pth"):
        payload = torch.load(root / "checkpoints" / name, weights_only=True)
        for key in ("epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "best_test_acc",
                    "config", "all_metrics", "experiment_id", "rng_state", "global_step", "data_fingerprint",
                    "format_version"):
            assert key in payload, (name, key)
    best = torch.load(root / "checkpoints" / f"{eid}_best.pth", weights_only=True)
    assert best["all_metrics"]["test_acc"][-1] == best["best_test_acc"]


def test_completed_experiment_is_not_trained_again(tmp_path, reference):
    root, _, path = reference
    before = sorted(p.name for p in (root / "checkpoints").iterdir())
    mtime = checkpoint.latest_path(root / "checkpoints", tiny().experiment_id).stat().st_mtime_ns
    outcome = run_experiment(tiny(), opts(root))
    assert outcome.status == "already_completed" and outcome.results_path == path
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == before
    assert checkpoint.latest_path(root / "checkpoints", tiny().experiment_id).stat().st_mtime_ns == mtime


def test_force_trains_again_and_keeps_old_results(tmp_path):
    cfg = tiny(epochs=1)
    first = run_experiment(cfg, opts(tmp_path))
    time.sleep(1.01)  # results names carry the second
    second = run_experiment(cfg, opts(tmp_path, force=True))
    assert second.status == "trained" and first.results_path.exists() and second.results_path != first.results_path
    assert second.results["metrics"]["test_acc"] == first.results["metrics"]["test_acc"]  # same seed, same run


def test_a_stopped_force_run_resumes_with_the_command_its_stop_message_gives(tmp_path, monkeypatch, reference):
    run_experiment(tiny(), opts(tmp_path))
    time.sleep(0.02)  # the restart's checkpoints are newer than the old results file
    with stop_requested_after(monkeypatch, epoch=1):
        with pytest.raises(Interrupted):
            run_experiment(tiny(), opts(tmp_path, force=True))
    again = run_experiment(tiny(), opts(tmp_path))  # the same command, without --force
    assert again.status == "trained" and len(results.files_for(tmp_path / "results", tiny().experiment_id)) == 2
    assert_same_run(reference[1], final_state(tmp_path, tiny()))


def test_resume_from_matching_and_mismatching_checkpoint(tmp_path, reference):
    root, ref_state, _ = reference
    best = checkpoint.best_path(root / "checkpoints", tiny().experiment_id)
    outcome = run_experiment(tiny(), opts(tmp_path, resume_from=best))
    assert outcome.status == "trained" and outcome.results["total_epochs"] == 4
    with pytest.raises(UsageError, match=r"different configuration.*seed: checkpoint 0 vs requested 1.*--force"):
        run_experiment(tiny(seed=1), opts(tmp_path, resume_from=best))
    with pytest.raises(UsageError, match="no such checkpoint"):
        run_experiment(tiny(), opts(tmp_path, resume_from=tmp_path / "nope.pth"))


def test_checkpoint_of_another_config_is_never_reused(tmp_path):
    cfg = tiny(epochs=1)
    run_experiment(cfg, opts(tmp_path))
    eid = cfg.experiment_id
    # A checkpoint at this ID's path that was written by another configuration.
    payload = checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", eid))
    payload["config"]["seed"] = 7
    checkpoint.save(payload, checkpoint.latest_path(tmp_path / "checkpoints", eid))
    for p in (tmp_path / "results").glob("*.json"):
        p.unlink()
    with pytest.raises(UsageError, match="different configuration.*--force"):
        run_experiment(cfg, opts(tmp_path))


def _cli(*args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "fastzhang", "run", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


CLI_TINY = ["--model", "mlp1", "--dataset", "synthetic", "--epochs", "4", "--batch-size", "64", "--device", "cpu",
            "--quiet"]


def test_evaluation_shows_progress(capsys):
    """Issue 22: evaluation showed no progress (a bar on a terminal, as training has)."""
    from fastzhang.data.batches import ResidentData
    from fastzhang.data.sources import load_dataset
    from fastzhang.train.fastpath import Speed
    from fastzhang.train.loaders import make_loader

    cfg = tiny(epochs=1)
    data = ResidentData.build(load_dataset("synthetic", None), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device="cpu")
    speed = Speed(False, False, False, False)
    loader = make_loader("torch", data, cfg.batch_size, dtype=torch.float32, channels_last=False)
    for quiet in (False, True):
        run = engine.build_run(cfg, torch.device("cpu"), speed)
        assert engine.train(cfg, run, data, loader, speed, engine.Hooks(save=lambda mid: None, quiet=quiet))
        assert ("test 1/1" in capsys.readouterr().err) is not quiet
