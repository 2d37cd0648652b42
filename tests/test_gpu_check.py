"""bench/gpu_check.py (`make gpu-check`): its summary from pytest's own reports, and its refusals.

The checks themselves are the tests marked `cuda` (they run in this suite on the CPU, those
that start real `fastzhang` processes only under FASTZHANG_GPU_DRY_RUN=1);
`FASTZHANG_GPU_DRY_RUN=1 make gpu-check` runs them again through the offline install,
which is the lead's check, not this suite's.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

TESTS_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_gpu_path_on_cpu" name="test_environment_and_what_auto_picks" time="1.5">
  <properties><property name="device" value="NVIDIA H200, 139 GiB"/><property name="loader auto" value="triton"/>
  </properties></testcase>
<testcase classname="tests.test_gpu_path_on_cpu" name="test_table1_rows_on_the_real_data" time="0.0">
  <skipped type="pytest.skip" message="GPU_CHECK_DATA is not set">skip</skipped></testcase>
<testcase classname="tests.test_kernels" name="test_empty_batch" time="2.0">
  <failure message="AssertionError: shape (1, 3, 28, 28)&#10;second line">trace</failure></testcase>
</testsuite></testsuites>
"""
BENCH_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="1">
<testcase classname="bench.test_bench_train" name="test_train_step[mlp1-eager]" time="3.25"/>
</testsuite></testsuites>
"""
SPEED = """| benchmark | images/s | vs baseline | notes | load (1 min) |
| --- | --- | --- | --- | --- |
| test_train_step[mlp1-eager] | 51,200 |  | first_step_s 0.5 | 0.4 |
"""  # bench/conftest.py's table, written beside benchmarks.json


def test_the_summary_is_written_from_the_junit_xml_and_the_benchmark_json(tmp_path):
    (tmp_path / "tests.xml").write_text(TESTS_XML)
    (tmp_path / "bench.xml").write_text(BENCH_XML)
    (tmp_path / "benchmarks.md").write_text(SPEED)
    text, ok = gpu_check.summary(tmp_path, dry=False)
    assert not ok
    lines = text.splitlines()
    assert lines[0] == "# GPU check: FAIL"
    assert lines[2] == ("On the GPU: tests marked cuda 1 passed, 1 skipped, 1 failed; "
                        "benchmarks 1 passed, 0 skipped, 0 failed; 7 s in all.")
    assert "- `test_kernels::test_empty_batch` (FAILED): AssertionError: shape (1, 3, 28, 28)" in lines
    assert "| test_environment_and_what_auto_picks | device | NVIDIA H200, 139 GiB |" in lines
    assert "| test_environment_and_what_auto_picks | loader auto | triton |" in lines
    speed = lines.index("## Speed (pytest-benchmark)")
    assert lines[speed + 2 : speed + 5] == SPEED.splitlines()
    assert "| test_gpu_path_on_cpu::test_table1_rows_on_the_real_data | skipped | 0.0 |" in lines

    (tmp_path / "tests.xml").write_text(TESTS_XML.replace('<failure message="AssertionError: shape (1, 3, 28, 28)'
                                                          '&#10;second line">trace</failure>', ""))
    text, ok = gpu_check.summary(tmp_path, dry=True)
    assert ok and text.startswith("# GPU check: PASS\n\nDry run on the CPU (tiny sizes): tests marked cuda 2 passed")
    (tmp_path / "bench.xml").unlink()  # a report that never came is a failure, not a pass
    assert gpu_check.summary(tmp_path, dry=True)[1] is False


def check(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "check"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("setting, message", [
    ({"FASTZHANG_GPU_DRY_RUN": "yes"}, "FASTZHANG_GPU_DRY_RUN must be 1 (dry run on the CPU) or 0, got 'yes'"),
    ({"GPU_CHECK_DATA": "/nonexistent/cifar"},
     "GPU_CHECK_DATA=/nonexistent/cifar: no such folder (it should hold CIFAR-10, as --data-dir does)"),
    ({"GPU_CHECK_TABLE1_S": "30"}, "GPU_CHECK_TABLE1_S must be a whole number of seconds >= 60, got '30'"),
])
def test_a_bad_setting_is_refused_before_anything_is_written(tmp_path, setting, message):
    out = tmp_path / "out"
    proc = check({**os.environ, "FASTZHANG_GPU_DRY_RUN": "1", "GPU_CHECK_OUT": str(out), **setting})
    assert (proc.returncode, proc.stderr.strip()) == (2, f"gpu-check: {message}")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_only_the_dry_run_runs(tmp_path):
    out = tmp_path / "out"
    proc = check({**os.environ, "FASTZHANG_GPU_DRY_RUN": "0", "GPU_CHECK_OUT": str(out)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("gpu-check: no CUDA device is visible to PyTorch (torch ")
    assert lines[1] == "gpu-check: FASTZHANG_GPU_DRY_RUN=1 runs all of it on the CPU instead."
    assert not out.exists()


def test_missing_packages_without_a_wheel_folder_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None if name == "orjson" else object())
    with pytest.raises(gpu_check.Refused, match=r"^this Python lacks orjson and .*/nowheels holds no wheels "
                                                r"\(run `make gpu-wheels`"):
        gpu_check.install(tmp_path / "pydeps", tmp_path / "nowheels")
    assert not (tmp_path / "pydeps").exists()
