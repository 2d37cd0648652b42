"""`fastzhang batch --backend local`: packing, pinning, skip, fail, busy, dedup, signals.

Real `fastzhang run` children train tiny synthetic MLPs (a few seconds each); the
tests watch them from outside through their lock files (holder pid, held or not)
and /proc/<pid>/environ, so what is asserted is what the processes really did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from conftest import Fz, fz_env
from fastzhang import checkpoint, lock, results
from fastzhang.batch import local
from fastzhang.batch.plan import BatchOptions, collect, format_summary
from fastzhang.cli import main
from fastzhang.config import ExperimentConfig
from fastzhang.lock import ExperimentLock

RECIPE = "model: mlp1\ndataset: synthetic\nepochs: {epochs}\nbatch_size: 16\ndevice: cpu\nseed: {seed}\n"


def write_recipe(folder: Path, name: str, *, seed: int, epochs: int = 2, subset: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(RECIPE.format(epochs=epochs, seed=seed) + (f"train_subset: {subset}\n" if subset else ""))
    return path


def eid(path: Path) -> str:
    return ExperimentConfig.from_yaml(path).experiment_id


def clean_env() -> dict[str, str]:
    """The test's environment without thread settings, so the batch chooses them."""
    return {k: v for k, v in os.environ.items() if k not in local.THREAD_VARS}


def batch_cli(root: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fastzhang", "batch", *args,
           "--checkpoint-dir", str(root / "ckpt"), "--results-dir", str(root / "res")]
    return subprocess.Popen(cmd, cwd=root, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


class LockWatch:
    """Polls lock files: which experiments were held at the same moment, by which pids."""

    def __init__(self, ckpt: Path, ids: list[str]):
        self.ckpt, self.ids = ckpt, ids
        self.max_held = 0
        self.pids: dict[str, int] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.together: list[tuple[str, ...]] = []  # experiments seen holding their locks at once

    def poll(self) -> None:
        held = [i for i in self.ids if lock.is_held(self.ckpt, i)]
        self.max_held = max(self.max_held, len(held))
        pids = {}
        for i in held:
            pid = lock.holder_pid(lock.lock_path(self.ckpt, i))
            if pid:
                pids[i] = pid
                self.pids[i] = pid
                self.envs.setdefault(i, proc_env(pid))
        if len(pids) >= 2:
            self.together.append(tuple(sorted(pids)))


def results_files(root: Path, ident: str) -> list[Path]:
    return results.files_for(root / "res", ident)


# ------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_cpu_runs_at_once_then_skip_fail_busy_and_dedup(tmp_path):
    recipes = tmp_path / "recipes"
    a = write_recipe(recipes, "a.yaml", seed=0, epochs=2)
    b = write_recipe(recipes, "b.yaml", seed=1, epochs=2)
    write_recipe(recipes / "more", "a_again.yaml", seed=0, epochs=2)  # same experiment as a.yaml
    broken = write_recipe(recipes, "c_broken.yaml", seed=2, epochs=1)
    busy = write_recipe(recipes, "d_busy.yaml", seed=3, epochs=1)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    checkpoint.latest_path(ckpt, eid(broken)).write_bytes(b"not a checkpoint")  # every load fails: exit 4
    watch = LockWatch(ckpt, [eid(a), eid(b)])

    with ExperimentLock(ckpt, eid(busy)):  # another process holds d_busy's experiment
        proc = batch_cli(tmp_path, str(recipes), "--max-parallel", "2")
        while proc.poll() is None:
            watch.poll()
            time.sleep(0.02)
    out = proc.stdout.read()

    assert proc.returncode == 1, out  # a run failed
    assert watch.max_held == 2, out  # a and b trained at the same moment, in two processes
    assert watch.pids[eid(a)] != watch.pids[eid(b)]
    cores = local.usable_cores()
    for ident in (eid(a), eid(b)):  # 2 workers share the cores: cores // 2 threads each, no GPU
        assert watch.envs[ident]["OMP_NUM_THREADS"] == str(max(1, cores // 2))
        assert watch.envs[ident].get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
        [path] = results_files(tmp_path, ident)
        assert orjson.loads(path.read_bytes())["environment"]["pid"] == watch.pids[ident]
    assert "same experiment as" in out and "a_again.yaml" in out
    assert "== summary for batch: 2 ran, 0 skipped (already completed), 1 busy elsewhere, 1 failed" in out
    assert f"busy elsewhere (another process holds the lock; rerun later to pick them up):\n  {busy} ({eid(busy)})" in out
    assert f"FAILED:\n  {broken} ({eid(broken)}): exit 4 (no usable checkpoint" in out
    assert results_files(tmp_path, eid(busy)) == [] and results_files(tmp_path, eid(broken)) == []

    again = batch_cli(tmp_path, str(a), str(b), "--max-parallel", "2")
    out2, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out2
    assert "== summary for batch: 0 ran, 2 skipped (already completed), 0 busy elsewhere, 0 failed" in out2
    assert len(results_files(tmp_path, eid(a))) == len(results_files(tmp_path, eid(b))) == 1


@pytest.mark.e2e
def test_each_run_sees_one_gpu_up_to_k_per_gpu(tmp_path, monkeypatch):
    """GPU pinning without GPUs: the runs train on the CPU, but what they were given is real."""
    recipes = [write_recipe(tmp_path / "r", f"{n}.yaml", seed=n, epochs=2, subset=256) for n in range(3)]
    tasks, _ = collect([tmp_path / "r"])
    watch = LockWatch(tmp_path / "ckpt", [t.experiment_id for t in tasks])
    opts = BatchOptions(tmp_path / "ckpt", tmp_path / "res", quiet=True)
    for name in local.THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    report: dict = {}

    def batch():
        report["r"] = local.run_local(tasks, opts, gpus=["3", "5"], runs_per_gpu=2, max_parallel=3)

    worker = threading.Thread(target=batch)
    worker.start()
    while worker.is_alive():
        watch.poll()
        time.sleep(0.02)
    assert report["r"].exit_code() == 0
    assert [r.status for r in report["r"].results] == ["ran"] * 3
    gpu_of = {i: env.get("CUDA_VISIBLE_DEVICES") for i, env in watch.envs.items()}
    assert len(gpu_of) == 3 and set(gpu_of.values()) <= {"3", "5"}
    assert {r.where for r in report["r"].results} <= {"GPU 3", "GPU 5"}
    # 2 GPUs x K=2 capped at 3: all three at once, the least loaded GPU first, never 3 on one GPU
    assert sorted(gpu_of.values()) == ["3", "3", "5"] and watch.max_held == 3
    cores = local.usable_cores()
    assert {env["OMP_NUM_THREADS"] for env in watch.envs.values()} == {str(max(1, cores // 3))}
    assert all(len(results_files(tmp_path, eid(r))) == 1 for r in recipes)


def test_capacity_threads_and_commands(tmp_path):
    assert local.capacity([], 1, None) == 1
    assert local.capacity([], 4, 3) == 3
    assert local.capacity(["0", "1"], 4, None) == 8
    assert local.capacity(["0", "1"], 4, 5) == 5
    env = local.worker_env({"PATH": "/bin", "MKL_NUM_THREADS": "7"}, gpu="GPU-abc", threads=2)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "GPU-abc", "OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": "7"}
    path = tmp_path / "r.yaml"
    path.write_text("model: mlp1\ndataset: synthetic\ndevice: cuda:1\ndata_dir: /data\n")
    [task], _ = collect([path], seeds=[2])  # batch --seeds 2: the recipe's run with seed 2
    cmd = local.run_command(task, BatchOptions(Path("c"), Path("r"), force=True), pinned=True)
    assert cmd[1:] == ["-m", "fastzhang", "run", "--config", str(path), "--seed", "2", "--quiet", "--checkpoint-dir",
                       "c", "--results-dir", "r", "--data-dir", "/data", "--device", "cuda", "--force"]
    assert "--device" not in local.run_command(task, BatchOptions(), pinned=False)


def test_bad_recipe_or_flags_refuse_the_batch_before_anything_runs(tmp_path, capsys):
    good = write_recipe(tmp_path / "r", "good.yaml", seed=0)
    (tmp_path / "r" / "bad.yaml").write_text("model: mlp1\nepochs: many\n")
    out = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--results-dir", str(tmp_path / "res")]
    assert main(["batch", str(tmp_path / "r"), *out]) == 2
    assert "bad.yaml: epochs must be an integer, got 'many'" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "nope"), *out]) == 2
    assert "nope: no such recipe file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["batch", str(tmp_path / "empty"), *out]) == 2
    assert main(["batch", str(good), "--max-parallel", "0", *out]) == 2
    assert "--max-parallel must be >= 1; got 0" in capsys.readouterr().err
    assert main(["batch", str(good), "--address", "auto", *out]) == 2
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "res").exists()


def test_summary_is_the_batch_scripts_too():
    script = (Path(__file__).resolve().parents[1] / "recipes" / "run_all_recipes.sh").read_text()
    assert 'exec "$fz" batch ' in script  # its summary is format_summary's: no wording of its own
    assert not [words for words in ("summary", "already completed", "busy elsewhere") if words in script]
    assert format_summary([], 0, None) == (
        "\n== summary for batch: 0 ran, 0 skipped (already completed), 0 busy elsewhere, 0 failed")


@pytest.mark.e2e
def test_sigint_stops_the_running_one_after_its_checkpoint_and_starts_no_more(tmp_path):
    first = write_recipe(tmp_path / "r", "a.yaml", seed=0, epochs=200)
    second = write_recipe(tmp_path / "r", "b.yaml", seed=1, epochs=200)
    ckpt = tmp_path / "ckpt"
    proc = batch_cli(tmp_path, str(tmp_path / "r"), "--max-parallel", "1")
    latest = checkpoint.latest_path(ckpt, eid(first))
    deadline = time.monotonic() + 60
    while not (latest.exists() and lock.is_held(ckpt, eid(first))):  # epoch 0 saved, training under way
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    child = lock.holder_pid(lock.lock_path(ckpt, eid(first)))
    proc.send_signal(signal.SIGINT)  # as Ctrl-C would, but to the batch only: it passes one on
    out, _ = proc.communicate(timeout=60)

    assert proc.returncode == 130, out
    assert f"[{eid(first)}] fastzhang: stopped by SIGINT; checkpoint saved to" in out
    assert ("== summary for batch: 0 ran, 0 skipped (already completed), 0 busy elsewhere, 0 failed, "
            "1 stopped, 1 not started") in out
    assert f"stopped by SIGINT (resume by rerunning):\n  {first} ({eid(first)})" in out
    assert not lock.is_held(ckpt, eid(first)) and not Path(f"/proc/{child}").exists()
    saved, _ = checkpoint.load_latest(latest)
    assert saved["epoch"] < 200
    assert not lock.lock_path(ckpt, eid(second)).exists()  # never started


@pytest.mark.e2e
def test_the_users_thread_count_reaches_every_run_and_a_runs_log_holds_its_lines(tmp_path, capsys):
    """OMP_NUM_THREADS=1 alone: torch follows MKL_NUM_THREADS when set, so the batch must not set it otherwise.
    The run's stderr goes to its log (issue 17): its epoch lines and how it ended, which `status` reads."""
    recipe = write_recipe(tmp_path / "r", "a.yaml", seed=1, epochs=2, subset=256)
    env = {k: v for k, v in fz_env(OMP_NUM_THREADS="1").items() if k != "MKL_NUM_THREADS"}
    fz = Fz(["batch", recipe, "--max-parallel", "1"], tmp_path, env=env)
    assert fz.wait() == 0, fz.stderr
    assert "(CPU, 1 thread(s) each)" in (fz.stderr + fz.stdout).splitlines()[0]
    [found] = results.scan(tmp_path / "results")
    assert found.payload["execution"]["threads"] == 1

    ident, ckpt = eid(recipe), tmp_path / "checkpoints"
    logged = checkpoint.log_path(ckpt, ident).read_text().splitlines()
    assert [line[20:].split(":")[0] for line in logged[1:3]] == [f"{ident} epoch 1/2", f"{ident} epoch 2/2"]
    assert logged[-1].startswith(f"fastzhang: {ident} completed: 2 epochs")  # the run's own stdout, sent there
    assert main(["status", ident, "--checkpoint-dir", str(ckpt), "--results-dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{ident}: completed" and out[1].startswith("EPOCH") and len(out) == 6
    assert out[-2].startswith(f"results: {ident}_")
    assert out[-1] == f"log: {checkpoint.log_path(ckpt, ident)}"
