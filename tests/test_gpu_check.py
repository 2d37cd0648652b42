"""`make gpu-check` (bench/gpu_check/): its dry run on the CPU as a real process, and its refusals.

The check is built for a machine with one CUDA GPU; FASTZHANG_GPU_DRY_RUN=1 runs every
stage's plumbing on the CPU at tiny sizes (Triton through its interpreter, no compile):
the scratch install, a subprocess per stage, the `fastzhang` runs they start, the
comparisons, and one summary. Stage G (Table 1 rows) joins when the real CIFAR-10 is
at hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, find_shared_cifar

STAGES = ["install", "A", "B", "C", "D", "E", "F"]


def gpu_check(env: dict, *, make: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["make", "-s", "gpu-check", f"PYTHON={sys.executable}"] if make else [sys.executable, "-m", "gpu_check"]
    return subprocess.run(cmd, cwd=REPO, env={**env, "PYTHONPATH": str(REPO / "bench")}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_writes_one_summary_in_which_every_stage_passes(tmp_path, user_env):
    out = tmp_path / "out"
    data = find_shared_cifar()  # stage G's plumbing when the real data set is here
    env = {**user_env, "FASTZHANG_GPU_DRY_RUN": "1", "GPU_CHECK_OUT": str(out)}
    env.pop("GPU_CHECK_DATA", None)
    if data is not None:
        env["GPU_CHECK_DATA"] = str(data)
    proc = gpu_check(env, make=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    summary = json.loads((out / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == STAGES + (["G"] if data is not None else [])
    failed = [(s["stage"], r["check"], r["value"], r["detail"]) for s in stages.values() for r in s["rows"]
              if r["status"] == "FAIL"]
    assert not failed
    assert all(s["status"] == "PASS" and s["rows"] for s in stages.values())
    assert summary["dry_run"] and summary["ok"] and summary["synthetic_s"] < 180
    markdown = (out / "summary.md").read_text()
    assert markdown.startswith("# GPU check: PASS") and all(f"## {key}: " in markdown for key in stages)

    rows = {(key, r["check"]): r for key, s in stages.items() for r in s["rows"]}
    installed = rows["install", "fastzhang"]["value"]
    assert installed.startswith(str(out / "pydeps"))  # the product as installed, not the checkout
    assert rows["A", "fastzhang"]["value"].startswith(installed)
    assert rows["B", "epoch bfloat16 channels_last"]["data"]["last_batch"] == 8
    assert [f["switch"] for f in rows["C", "injected compile failure"]["data"]["fallbacks"]] == ["compile"]
    assert rows["C", "injected compile failure"]["data"]["bitwise"]
    killed = rows["D", "SIGKILL after a mid-epoch checkpoint"]["data"]
    assert killed["point"] == killed["announced"] and killed["point"][1] > 0
    assert rows["D", "resumed against uninterrupted"]["data"]["bitwise"]  # one thread, one device: exact
    assert rows["E", "mlp1 off"]["data"]["images_per_s"] > 0
    assert rows["F", "2 run(s) at once"]["data"]["per_run"][1] > 0


@pytest.mark.parametrize("setting, message", [
    ({"FASTZHANG_GPU_DRY_RUN": "yes"}, "FASTZHANG_GPU_DRY_RUN must be 1 (dry run on the CPU) or 0, got 'yes'"),
    ({"GPU_CHECK_DATA": "/nonexistent/cifar"},
     "GPU_CHECK_DATA=/nonexistent/cifar: no such folder (it should hold CIFAR-10, as --data-dir does)"),
])
def test_a_bad_setting_is_refused_before_anything_is_written(tmp_path, setting, message):
    out = tmp_path / "out"
    proc = gpu_check({**os.environ, "FASTZHANG_GPU_DRY_RUN": "1", "GPU_CHECK_OUT": str(out), **setting})
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"gpu-check: {message}"
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_only_the_dry_run_runs(tmp_path):
    out = tmp_path / "out"
    proc = gpu_check({**os.environ, "FASTZHANG_GPU_DRY_RUN": "0", "GPU_CHECK_OUT": str(out)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("gpu-check: no CUDA device is visible to PyTorch (torch ")
    assert lines[1] == "gpu-check: FASTZHANG_GPU_DRY_RUN=1 runs every stage's plumbing on the CPU instead."
    assert not out.exists()
