"""--use_wandb: per-epoch metrics in W&B (offline mode); a resumed run continues the same W&B run."""

from __future__ import annotations

import builtins

import pytest

from fastzhang import checkpoint
from fastzhang.errors import UsageError
from fastzhang.experiment import Interrupted, run_experiment
from test_engine import opts, stop_requested_after, tiny

pytest.importorskip("wandb", reason="the W&B extra is not installed")


def test_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = tiny(epochs=2, use_wandb=True)
    with stop_requested_after(monkeypatch, epoch=1):
        with pytest.raises(Interrupted):
            run_experiment(cfg, opts(tmp_path))
    saved = checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", cfg.experiment_id))
    run_id = saved["wandb_run_id"]
    assert run_id
    outcome = run_experiment(cfg, opts(tmp_path))
    assert outcome.status == "trained"
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs)
    final = checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", cfg.experiment_id))
    assert final["wandb_run_id"] == run_id


def test_missing_wandb_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(UsageError, match=r"--use_wandb needs the wandb package: pip install 'fastzhang\[wandb\]'"):
        run_experiment(tiny(use_wandb=True), opts(tmp_path))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results").exists()
