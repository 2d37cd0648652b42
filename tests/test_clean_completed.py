"""`fastzhang clean --completed`: free the checkpoints of finished experiments, never of running ones."""

from __future__ import annotations

import pytest

import subprocess
import sys
import time

from conftest import REPO, files_under, run_cli
from fastzhang import checkpoint, lock
from fastzhang.config import ExperimentConfig
from fastzhang.experiment import RunOptions, run_experiment


def tiny(**extra) -> ExperimentConfig:
    return ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu", "epochs": 2,
                                          "batch_size": 256, **extra})


def hold_lock(ckpt, ident) -> subprocess.Popen:
    """A real second process that holds the experiment's lock until its stdin closes."""
    code = ("import sys; from fastzhang.lock import ExperimentLock\n"
            f"with ExperimentLock({str(ckpt)!r}, {ident!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.e2e
def test_dry_run_lists_exactly_what_is_then_freed_and_running_experiments_keep_everything(
        tmp_path, capsys, monkeypatch, one_thread):
    ckpt, res = tmp_path / "checkpoints", tmp_path / "results"
    opts = RunOptions(checkpoint_dir=ckpt, results_dir=res, quiet=True)
    done = tiny(snapshot_every=1)
    locked = tiny(seed=1)
    for cfg in (done, locked):
        assert run_experiment(cfg, opts).status == "trained"
    half = tiny(seed=2, epochs=5)  # in progress: a checkpoint, no results file
    half_files = {}
    run_experiment(tiny(seed=2), RunOptions(checkpoint_dir=tmp_path / "elsewhere", results_dir=tmp_path / "x",
                                            quiet=True))
    for path in checkpoint.experiment_files(tmp_path / "elsewhere", tiny(seed=2).experiment_id):
        target = ckpt / path.name.replace(tiny(seed=2).experiment_id, half.experiment_id)
        target.write_bytes(path.read_bytes())
        half_files[target.name] = target.read_bytes()
    holder = hold_lock(ckpt, locked.experiment_id)
    try:
        before = files_under(ckpt)
        assert run_cli(["clean", "--completed", "--dry-run", "--keep-best", "--checkpoint-dir", ckpt,
                        "--results-dir", res]) == 0
        listed = capsys.readouterr().out
        assert files_under(ckpt) == before  # a dry run deletes nothing
        assert f"skipped {locked.experiment_id}: its lock" in listed
        would = sorted(line.split()[0] for line in listed.splitlines() if line.startswith("  "))
        eid = done.experiment_id
        assert would == sorted(str(ckpt / name) for name in (
            f"{eid}_checkpoint.pth", f"{eid}_checkpoint.prev.pth", f"{eid}_epoch001.pth", f"{eid}_epoch002.pth"))

        assert run_cli(["clean", "--completed", "--keep-best", "--yes", "--checkpoint-dir", ckpt,
                        "--results-dir", res]) == 0
        out = capsys.readouterr().out
        size = sum(len(before[p.split("/")[-1]]) for p in would)
        assert f"freed 4 files, {size / 1e6:.1f} MB ({size:,} bytes)" in out
        after = files_under(ckpt)
        assert sorted(set(before) - set(after)) == sorted(p.split("/")[-1] for p in would)
        assert after[f"{eid}_best.pth"] == before[f"{eid}_best.pth"]  # --keep-best
        for name, data in before.items():
            if not name.startswith(eid):
                assert after[name] == data, name  # the locked and the in-progress experiments are untouched
        assert len(list(res.glob("*.json"))) == 2  # results files stay
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)

    time.sleep(0.05)
    assert run_cli(["clean", "--completed", "--yes", "--checkpoint-dir", ckpt, "--results-dir", res]) == 0
    left = files_under(ckpt)  # lock released: the locked one is freed too; best goes without --keep-best
    assert not [n for n in left if n.startswith((done.experiment_id, locked.experiment_id)) and ".pth" in n]
    assert {n: d for n, d in left.items() if n.startswith(half.experiment_id)} == half_files
    assert not lock.is_held(ckpt, locked.experiment_id)


def test_completed_flags_are_refused_alone_or_mixed(tmp_path, capsys):
    out = ["--checkpoint-dir", tmp_path / "c", "--results-dir", tmp_path / "r"]
    assert run_cli(["clean", "--keep-best", "x", *out]) == 2
    assert "--keep-best goes with --completed" in capsys.readouterr().err
    assert run_cli(["clean", "--dry-run", *out]) == 2
    assert "one of the three" in capsys.readouterr().err
    assert run_cli(["clean", "--completed", "--all", *out]) == 2
    assert "one of the three" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


def test_dry_run_with_ids_lists_what_would_be_deleted(tmp_path, capsys):
    """Issue 22: `clean --dry-run ID` was refused ("go with --completed"); `clean --help` had no description."""
    ckpt, res = tmp_path / "c", tmp_path / "r"
    ckpt.mkdir()
    (ckpt / "x_checkpoint.pth").write_bytes(b"0")
    (ckpt / "x.log").write_text("a line\n")
    before = files_under(tmp_path)
    assert run_cli(["clean", "x", "--dry-run", "--checkpoint-dir", ckpt, "--results-dir", res]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "would delete 2 files of 1 experiment:", f"  {ckpt / 'x.log'}", f"  {ckpt / 'x_checkpoint.pth'}"]
    assert files_under(tmp_path) == before
    assert run_cli(["clean", "--help"]) == 0
    assert "Delete the files of the experiments named" in capsys.readouterr().out
