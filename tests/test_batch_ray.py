"""`fastzhang batch --backend ray` on a local 2-CPU Ray instance.

Three tiny synthetic experiments run as Ray tasks; the worker process running one
of them is SIGKILLed after its first epoch (its pid is the one in the
experiment's lock file). Ray retries the task, the retry resumes from the
checkpoint, and every experiment ends with exactly one results file whose
metrics (timing aside) and final weights equal those of the same experiment run
alone by `fastzhang run`. Ray workers run with one thread (OMP_NUM_THREADS=1), and
so do the reference runs: float sums on the CPU depend on the thread count.
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
import torch

from fastzhang import checkpoint, lock, results
from fastzhang.batch import ray_backend
from fastzhang.cli import main
from fastzhang.config import ExperimentConfig

ray = pytest.importorskip("ray")

RECIPE = "model: mlp1\ndataset: synthetic\nepochs: 3\nbatch_size: 16\ntrain_subset: 512\ndevice: cpu\nseed: {seed}\n"
TIMING = ("epoch_seconds", "eval_seconds", "images_per_second")
SEEDS = (0, 1, 2)


def out_flags(root: Path) -> list[str]:
    return ["--checkpoint-dir", str(root / "ckpt"), "--results-dir", str(root / "res")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The recipes, their reference runs (one process each, started before Ray to overlap), and Ray."""
    root = tmp_path_factory.mktemp("ray_batch")
    recipes = root / "recipes"
    recipes.mkdir()
    paths = []
    for seed in SEEDS:
        paths.append(recipes / f"seed{seed}.yaml")
        paths[-1].write_text(RECIPE.format(seed=seed))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    refs = [subprocess.Popen([sys.executable, "-m", "fastzhang", "run", "--config", str(p), "--quiet",
                              *out_flags(root / "alone")], env=env, stdout=subprocess.DEVNULL) for p in paths]
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        assert [p.wait(timeout=300) for p in refs] == [0, 0, 0]
        yield root, [ExperimentConfig.from_yaml(p).experiment_id for p in paths]
    finally:
        ray.shutdown()


def kill_one_worker_mid_run(ckpt: Path, ids: list[str], done: threading.Event, killed: dict) -> None:
    """SIGKILL the Ray worker of the first experiment that has finished epoch 1 of 3."""
    while not done.is_set():
        for ident in ids:
            latest = checkpoint.latest_path(ckpt, ident)
            if not (checkpoint.prev_path(latest).exists() and lock.is_held(ckpt, ident)):
                continue
            pid = lock.holder_pid(lock.lock_path(ckpt, ident))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
            if pid and cmdline.startswith(f"ray::fastzhang:{ident}".encode()):  # Ray's title for our task
                os.kill(pid, signal.SIGKILL)
                killed.update(id=ident, pid=pid, epoch_before=checkpoint.load_latest(latest)[0]["epoch"])
                return
        time.sleep(0.02)


def weights(root: Path, ident: str) -> dict:
    payload, _ = checkpoint.load_latest(checkpoint.latest_path(root / "ckpt", ident))
    return payload["model_state_dict"]


@pytest.mark.e2e
def test_killed_worker_is_retried_and_every_result_equals_a_run_alone(cluster, capsys):
    root, ids = cluster
    batch_root = root / "batch"
    done, killed = threading.Event(), {}
    killer = threading.Thread(target=kill_one_worker_mid_run, args=(batch_root / "ckpt", ids, done, killed))
    killer.start()
    try:
        code = main(["batch", str(root / "recipes"), "--backend", "ray", *out_flags(batch_root)])
    finally:
        done.set()
        killer.join()
    out = capsys.readouterr().out
    assert code == 0, out
    assert killed, "no worker was killed mid-run"
    assert 1 <= killed["epoch_before"] < 3
    assert "== summary for batch: 3 ran, 0 skipped (already completed), 0 busy elsewhere, 0 failed" in out

    for ident in ids:
        [mine] = results.files_for(batch_root / "res", ident)
        [alone] = results.files_for(root / "alone" / "res", ident)
        a, b = orjson.loads(mine.read_bytes()), orjson.loads(alone.read_bytes())
        assert a["completed"] and a["total_epochs"] == 3 and a["config"] == b["config"]
        for key, series in b["metrics"].items():
            if key not in TIMING:
                assert a["metrics"][key] == series, (ident, key)
        w, ref = weights(batch_root, ident), weights(root / "alone", ident)
        assert w.keys() == ref.keys() and all(torch.equal(w[k], ref[k]) for k in ref), ident
        if ident == killed["id"]:  # the retry, not the killed worker, finished it
            assert a["environment"]["pid"] != killed["pid"]

    again = main(["batch", str(root / "recipes"), "--backend", "ray", *out_flags(batch_root)])
    out = capsys.readouterr().out
    assert again == 0
    assert "== summary for batch: 0 ran, 3 skipped (already completed), 0 busy elsewhere, 0 failed" in out
    assert all(len(results.files_for(batch_root / "res", ident)) == 1 for ident in ids)


@pytest.mark.e2e
def test_our_errors_are_answers_not_retried(cluster, capsys):
    root, ids = cluster
    bad_root = root / "bad"
    latest = checkpoint.latest_path(bad_root / "ckpt", ids[0])
    latest.parent.mkdir(parents=True)
    latest.write_bytes(b"garbage")  # no usable checkpoint: CheckpointError, exit 4, on every attempt
    start = time.monotonic()
    code = main(["batch", str(root / "recipes" / "seed0.yaml"), "--backend", "ray", "--quiet", *out_flags(bad_root)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAILED:\n  {root / 'recipes' / 'seed0.yaml'} ({ids[0]}): exit 4 (no usable checkpoint" in out
    assert time.monotonic() - start < 60
    assert latest.read_bytes() == b"garbage" and results.files_for(bad_root / "res", ids[0]) == []


def test_forced_retry_resumes_what_this_batch_started(tmp_path):
    """With --force, a retry resumes the batch's own restart instead of restarting again."""
    ident = "mlp1_synthetic_baseline"
    mark = tmp_path / ".fastzhang-batch-x.started"
    mark.touch()
    assert not ray_backend._started_since(mark, tmp_path, tmp_path, ident)  # first attempt: force
    old = os.stat(mark).st_mtime - 60
    latest = checkpoint.latest_path(tmp_path, ident)
    latest.write_bytes(b"x")
    os.utime(latest, (old, old))  # a checkpoint from before the batch: still force
    assert not ray_backend._started_since(mark, tmp_path, tmp_path, ident)
    latest.touch()  # written after the batch began: the retry must resume it
    assert ray_backend._started_since(mark, tmp_path, tmp_path, ident)


def test_without_ray_the_backend_is_a_usage_error(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(seed=0))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["batch", str(recipe), "--backend", "ray", *out_flags(tmp_path)]) == 2
    assert "--backend ray needs the ray package: pip install 'fastzhang[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_gpu_fraction_fits_k_tasks_per_gpu():
    for k in (1, 2, 3, 4, 7):
        assert ray_backend.gpu_fraction(k) * k <= 1.0 and ray_backend.gpu_fraction(k) > 1 / k - 1e-4


@pytest.mark.e2e
def test_retry_waits_for_the_lock_of_a_dying_holder_then_runs(tmp_path):
    """run_task in this process (no Ray needed): the lock's holder is SIGKILLed after ~1 s."""
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu", "epochs": 1})
    ckpt, res = tmp_path / "ckpt", tmp_path / "res"
    ckpt.mkdir()
    checkpoint.latest_path(ckpt, cfg.experiment_id).write_bytes(b"garbage")  # past the lock: exit 4 at once
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fastzhang.lock import ExperimentLock\n"
         "ExperimentLock(sys.argv[1], sys.argv[2]).acquire(); print('held', flush=True); time.sleep(600)",
         str(ckpt), cfg.experiment_id], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    threading.Timer(1.0, holder.kill).start()
    start = time.monotonic()
    answer = ray_backend.run_task(cfg.to_dict(), str(ckpt), str(res), None, lock_grace_s=30)
    waited = time.monotonic() - start
    holder.wait()
    assert 0.9 <= waited < 30  # it waited for the holder to die
    assert (answer["status"], answer["exit_code"]) == ("failed", 4) and "no usable checkpoint" in answer["detail"]

    holder = subprocess.Popen(holder.args, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    try:  # a live holder: after the grace period the experiment is busy elsewhere
        answer = ray_backend.run_task(cfg.to_dict(), str(ckpt), str(res), None, lock_grace_s=1.0)
    finally:
        holder.kill()
        holder.wait()
    assert (answer["status"], answer["exit_code"]) == ("busy", 3) and "already running" in answer["detail"]
