"""`fastzhang status` and `fastzhang clean` on real folders."""

from __future__ import annotations

import io
import os
import re
import time
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastzhang import checkpoint as C
from fastzhang import results as R
from fastzhang.cli import main
from fastzhang.lock import ExperimentLock

ROOT = Path(__file__).resolve().parents[1]
DONE = "mlp1_cifar10_baseline"
DONE_LONGER = "mlp1_cifar10_baseline_wd0.0005"  # shares DONE as a prefix
HALF = "alexnet_cifar10_random_labels"
RUNNING = "inception_cifar10_baseline"
BROKEN = "mlp3_cifar10_baseline"
BAD_RESULTS = "mlp3_cifar10_random_pixels"


def ckpt(ident: str, epoch: int, epochs: int = 10, **extra) -> dict:
    return {
        "experiment_id": ident, "config": {"epochs": epochs}, "epoch": epoch, "step_in_epoch": 0,
        "model_state_dict": {"w": torch.ones(4)}, "best_test_acc": 40.0 + epoch,
        "all_metrics": {"epochs": list(range(1, epoch + 1)), "test_acc": [30.0 + e for e in range(1, epoch + 1)],
                        "train_acc": [50.0 + e for e in range(1, epoch + 1)],
                        "images_per_second": [100.0 * e for e in range(1, epoch + 1)]}, **extra,
    }


def results_payload(ident: str, best: float, final: float, **changes) -> dict:
    n = 2
    payload = {
        "schema_version": 1, "experiment_id": ident, "config": {"epochs": n},
        "metrics": {
            **{k: [1.0] * n for k in R.METRIC_SERIES},
            "best_test_acc": best, "final_train_acc": 99.0, "final_test_acc": final, "fit_epoch": 2, "fit_step": 8,
        },
        "timestamp": "20240301_101010", "completed": True, "total_epochs": n, "target_epochs": n,
        "stopped_early": False, "data_fingerprint": None, "data_fingerprint_name": None,
        "environment": {k: "x" for k in R.ENVIRONMENT_KEYS},
        "throughput": {"mean_images_per_second": 1.0, "train_seconds": 1.0},
    }
    payload.update(changes)
    return payload


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A working folder with ./checkpoints and ./results holding one experiment of each kind."""
    monkeypatch.chdir(tmp_path)
    ck, res = Path("checkpoints"), Path("results")
    C.save(ckpt(DONE, 2, epochs=2), C.latest_path(ck, DONE))
    C.save(ckpt(DONE, 2, epochs=2), C.snapshot_path(ck, DONE, 2))  # --snapshot-every 2
    R.write(res, results_payload(DONE, 91.5, 90.25))
    R.write(res, results_payload(DONE_LONGER, 80.0, 79.0, stopped_early=True, total_epochs=1))
    C.save(ckpt(HALF, 3), C.latest_path(ck, HALF))
    C.save(ckpt(HALF, 4), C.latest_path(ck, HALF))
    running = ckpt(RUNNING, 5)
    running["all_metrics"]["epoch_seconds"] = [30.0, 31.0, 29.0, 30.0, 25.0]
    C.save(running, C.latest_path(ck, RUNNING))
    C.latest_path(ck, BROKEN).write_bytes(b"\0" * 100)
    (res / f"{BAD_RESULTS}_20240301_101010.json").write_text('{"schema_version": 1, "experim')
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def status_rows(capsys) -> tuple[dict[str, list[str]], str]:
    """{ID: [TRAIN%, TEST%, BEST%, IMG/S, state line]} from `status`'s two lines per experiment."""
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()
    assert table[0].split() == ["TRAIN%", "TEST%", "BEST%", "IMG/S", "UPDATED", "ID"]
    assert max(len(line) for line in table) <= 100
    start, end = table[0].index("UPDATED"), table[0].index("ID")  # aligned columns
    rows = {}
    for line, state in zip(table[1::2], table[2::2]):  # UPDATED: the time of the newest file, else -
        assert re.fullmatch(r"(\d\d-\d\d \d\d:\d\d|-) *", line[start:end]), line
        assert state.startswith("    ") and state[4] != " "
        rows[line[end:]] = line[:start].split() + [state.strip()]
    return rows, out


def test_status_one_row_per_experiment(lab, capsys):
    with ExperimentLock("checkpoints", RUNNING):
        before = snapshot(lab)
        rows, out = status_rows(capsys)
        after = snapshot(lab)
    assert set(rows) == {DONE, DONE_LONGER, HALF, RUNNING, BROKEN, BAD_RESULTS}
    # last epoch's train and test accuracy, best test accuracy, images/s (completed: the mean)
    assert rows[DONE] == ["99.00", "90.25", "91.50", "1", "completed; 1 snapshot"]
    assert rows[DONE_LONGER] == ["99.00", "79.00", "80.00", "1", "completed (stopped at epoch 1 of 2)"]
    assert rows[HALF] == ["54.00", "34.00", "44.00", "400", "stopped after epoch 4 of 10"]
    # the epoch it trains now, the last epoch's time and the time left: 5 epochs of 25 s
    assert rows[RUNNING] == ["55.00", "35.00", "45.00", "500",
                             "in progress: epoch 6 of 10; last epoch 25s, about 2m 05s left"]
    assert rows[BROKEN] == ["-", "-", "-", "-", "damaged checkpoint"]
    assert rows[BAD_RESULTS] == ["-", "-", "-", "-", "damaged results file"]
    problems = out.split("\ndamaged files:\n")[1].splitlines()
    assert problems[0].startswith(f"  checkpoints/{BROKEN}_checkpoint.pth: not a readable torch file")
    assert problems[1].startswith(f"  results/{BAD_RESULTS}_20240301_101010.json: not valid JSON")
    assert len(problems) == 2
    assert after == before  # status changes nothing, not even a damaged checkpoint


def test_status_fits_100_columns_and_says_which_epoch_runs(tmp_path, monkeypatch, capsys):
    """Issue 22: a 236-column table; "epoch 0 of 4" for a run in its first epoch."""
    monkeypatch.chdir(tmp_path)
    long_id = "inception_no_bn_cifar100_partial0.8_wd0.0005_crop_ep4_s9"  # 56 characters
    R.write("results", results_payload(long_id, 91.5, 90.25))
    first = ckpt(RUNNING, 0, epochs=4)
    first["step_in_epoch"] = 12
    C.save(first, C.latest_path("checkpoints", RUNNING))
    with ExperimentLock("checkpoints", RUNNING):
        rows, _ = status_rows(capsys)
    assert rows[RUNNING][-1] == "in progress: epoch 1 of 4 (step 12)"
    assert rows[long_id][-1] == "completed"
    rows, _ = status_rows(capsys)
    assert rows[RUNNING][-1] == "stopped in epoch 1 of 4 (step 12)"


def test_status_after_lock_released_and_with_damaged_latest(lab, capsys):
    latest = C.latest_path("checkpoints", HALF)
    latest.write_bytes(latest.read_bytes()[:50])
    rows, out = status_rows(capsys)
    assert rows[RUNNING][-1] == "stopped after epoch 5 of 10"
    assert rows[HALF][-1] == "stopped after epoch 3 of 10 (from the previous checkpoint: the latest is damaged)"
    assert f"  checkpoints/{HALF}_checkpoint.pth: a cut-off or damaged torch archive" in out


def test_status_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 0
    assert capsys.readouterr().out == "no experiments in checkpoints or results\n"
    assert list(tmp_path.iterdir()) == []


def test_status_other_folders(lab, capsys, tmp_path):
    other = tmp_path / "elsewhere"
    os.rename(lab / "checkpoints", other)
    assert main(["status", "--checkpoint-dir", str(other), "--results-dir", str(lab / "nothing")]) == 0
    out = capsys.readouterr().out
    assert HALF in out and BAD_RESULTS not in out


# ------------------------------------------------------------------------------------------
# clean

def test_clean_yes_deletes_everything_of_one_experiment_only(lab, capsys):
    ck = lab / "checkpoints"
    C.save(ckpt(DONE, 2, epochs=2), C.best_path(ck, DONE))
    C.save(ckpt(DONE, 2, epochs=2), C.latest_path(ck, DONE))  # makes a .prev
    (ck / f"{DONE}_checkpoint.pth.corrupt-20240101_000000").write_bytes(b"x")
    (ck / f".{DONE}_checkpoint.pth.k2j4h5g6.tmp").write_bytes(b"x")  # left by a killed writer
    (lab / "results" / f".{DONE}_20240301_101010.json.abcd1234.tmp").write_bytes(b"x")
    with ExperimentLock(ck, DONE):
        pass  # leaves the lock file
    before = snapshot(lab)
    assert main(["clean", DONE, "--yes"]) == 0
    out = capsys.readouterr().out
    gone = set(before) - set(snapshot(lab))
    assert gone == {
        f"checkpoints/{n}" for n in (
            f"{DONE}_checkpoint.pth", f"{DONE}_checkpoint.prev.pth", f"{DONE}_best.pth", f"{DONE}.lock",
            f"{DONE}_checkpoint.pth.corrupt-20240101_000000", f".{DONE}_checkpoint.pth.k2j4h5g6.tmp",
            f"{DONE}_epoch002.pth",  # snapshots too
        )
    } | {f"results/{DONE}_20240301_101010.json", f"results/.{DONE}_20240301_101010.json.abcd1234.tmp"}
    assert out.startswith("will delete 9 files of 1 experiment:\n") and out.endswith("deleted 9 files\n")
    assert all(f"  {name}" in out for name in gone)
    assert R.find_completed("results", DONE_LONGER) is not None  # the prefix-sharing ID is untouched


def test_clean_checkpoints_only_keeps_results(lab, capsys):
    assert main(["clean", DONE, HALF, "--checkpoints-only", "--yes"]) == 0
    left = snapshot(lab)
    assert f"results/{DONE}_20240301_101010.json" in left
    assert not any(name.startswith((f"checkpoints/{DONE}_", f"checkpoints/{HALF}_")) for name in left)
    assert "of 2 experiments" in capsys.readouterr().out


@pytest.mark.e2e
def test_clean_refuses_running_experiment_and_deletes_nothing(lab, capsys):
    before = snapshot(lab)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]); from fastzhang.lock import ExperimentLock\n"
         f"with ExperimentLock('checkpoints', '{RUNNING}'):\n    print('locked', flush=True); time.sleep(120)",
         str(ROOT)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(lab)
        assert main(["clean", "--all", "--yes"]) == 3
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    captured = capsys.readouterr()
    assert f"experiment {RUNNING} is already running in another process (pid {holder.pid}" in captured.err
    assert snapshot(lab) == before


@pytest.mark.e2e
def test_clean_without_terminal_refuses(lab):
    before = snapshot(lab)
    run = subprocess.run(
        [sys.executable, "-m", "fastzhang", "clean", HALF], cwd=lab, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2
    assert "refusing to delete without confirmation (stdin is not a terminal); pass --yes" in run.stderr
    assert f"checkpoints/{HALF}_checkpoint.pth" in run.stdout
    assert snapshot(lab) == before


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer, code", [("y\n", 0), ("n\n", 1), ("", 1)])
def test_clean_asks_on_a_terminal(lab, monkeypatch, capsys, answer, code):
    monkeypatch.setattr(sys, "stdin", FakeTerminal(answer))
    assert main(["clean", HALF]) == code
    out = capsys.readouterr().out
    assert "delete these 2 files? [y/N]" in out
    assert C.latest_path("checkpoints", HALF).exists() == (code != 0)


def test_clean_all_and_argument_errors(lab, capsys):
    (lab / "results" / "summary.json").write_text("{}")
    assert main(["clean", "--all", "--yes"]) == 0
    assert snapshot(lab) == {"results/summary.json": b"{}"}  # only the foreign file is left
    assert main(["clean", "--yes"]) == 2
    assert main(["clean", HALF, "--all", "--yes"]) == 2
    assert main(["clean", "../etc", "--yes"]) == 2
    assert main(["clean", "never_ran", "--yes"]) == 2  # a typo is not a success
    captured = capsys.readouterr()
    assert "give experiment IDs" in captured.err and "no files for experiment never_ran" in captured.err
    assert main(["clean", "--all", "--yes"]) == 0
    assert capsys.readouterr().out.endswith("nothing to delete\n")


def test_misspelled_id_is_refused_with_the_closest_and_nothing_deleted(lab, capsys):
    before = snapshot(lab)
    assert main(["clean", HALF, "alexnet_cifar10_random_label", "--yes"]) == 2
    assert main(["status", "alexnet_cifar10_random_label"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"fastzhang: error: clean: no files for experiment alexnet_cifar10_random_label in checkpoints "
                   f"or results (did you mean {HALF}?); nothing was deleted",
                   f"fastzhang: error: status: no experiment 'alexnet_cifar10_random_label' in checkpoints or "
                   f"results (did you mean {HALF}?)"]
    assert snapshot(lab) == before


def test_status_id_shows_the_epochs_and_the_log(lab, capsys):
    log = C.log_path("checkpoints", HALF)
    log.write_text("2024-03-01 10:10:10 epoch lines\n")
    assert main(["status", HALF]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{HALF}: stopped after epoch 4 of 10",
        "EPOCH  TRAIN_LOSS  TRAIN%  TEST_LOSS  TEST%  LR  TRAIN_S  TEST_S  IMG/S",
        *(f"{e}      -           {50 + e}.00   -          {30 + e}.00  -   -        -       {100 * e}"
          for e in range(1, 5)),
        f"log: {log}",
    ]
    assert main(["status", DONE]) == 0  # completed: from its results file
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"{DONE}: completed", "EPOCH  TRAIN_LOSS  TRAIN%  TEST_LOSS  TEST%  LR  TRAIN_S  TEST_S  IMG/S",
        "1      1.0000      1.00    1.0000     1.00   1   1.0      -       1"]


def test_status_flags_a_locked_run_that_stopped_writing(lab, capsys):
    latest = C.latest_path("checkpoints", RUNNING)
    hour_ago = time.time() - 3600
    os.utime(latest, (hour_ago, hour_ago))
    with ExperimentLock("checkpoints", RUNNING):
        rows, _ = status_rows(capsys)
    assert rows[RUNNING][-1] == \
        "in progress: epoch 6 of 10; last epoch 25s, about 2m 05s left (no update for 1h 00m: hung?)"
