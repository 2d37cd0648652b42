"""bench/history.py (`make bench-compare`) on planted histories: what is a regression, and against what.

Each history is a folder of pytest-benchmark storage files as `make bench` saves them
(bench/history/<interpreter>/NNNN_<tag>.json, commit_info, machine_info with the
fastzhang block bench/conftest.py adds, stats of the rounds, extra_info), written here
with chosen numbers; the check runs as the real command. No benchmark is timed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

HISTORY = REPO / "bench" / "history.py"
KIND_A = "AMD EPYC, avx512_bf16+avx512f+avx2, 2 cores, no GPU"
KIND_B = "Intel Xeon, avx2, 8 cores, no GPU"
IMAGES = 10_000
NAIVE = "bench/test_bench_data.py::test_naive_per_sample_dataloader[0]"
RESIDENT = "bench/test_bench_data.py::test_resident_torch_loader"


def bench(fullname: str, rate: float, spread: float, rounds: int, load: float, **info) -> dict:
    """One benchmark of a run: rounds of one epoch of IMAGES images at `rate` images/s, spread (max - min) / median."""
    median = IMAGES / rate
    stats = {"min": median * (1 - spread / 2), "max": median * (1 + spread / 2), "median": median, "mean": median,
             "stddev": median * spread / 2, "rounds": rounds, "iterations": 1, "ops": 1 / median}
    return {"group": None, "name": fullname.split("::")[1], "fullname": fullname, "params": None, "param": None,
            "options": {}, "stats": stats,
            "extra_info": {"images_per_s": rate, "device": "cpu", "torch_threads": 1, "loadavg_1m": load, **info}}


def plant(folder, number: int, commit: str, naive: float, ratio: float, *, kind: str = KIND_A,
          spread: float = 0.02, rounds: int = 3, load: float = 1.5) -> None:
    """A saved run: the naive loader at `naive` images/s and the resident one at `ratio` times that."""
    runs = folder / "Linux-CPython-3.11-64bit"
    runs.mkdir(parents=True, exist_ok=True)
    data = {
        "machine_info": {"node": "planted", "cpu": {"brand_raw": kind.split(",")[0]},
                         "fastzhang": {"kind": kind, "cores": 2, "torch": "2.13.0", "torch_threads": 1,
                                       "loadavg_1m": load}},
        "commit_info": {"id": commit * 8, "dirty": False, "project": "fastzhang", "branch": "main"},
        "benchmarks": [bench(NAIVE, naive, spread, rounds, load, name="naive-w0"),
                       bench(RESIDENT, naive * ratio, spread, rounds, load, name="resident", baseline="naive-w0",
                             ratio_vs_naive=ratio)],
        "datetime": f"2026-12-01T10:{number:02d}:00+00:00", "version": "5.3.1",
    }
    (runs / f"{number:04d}_{commit * 8}_20261201.json").write_text(json.dumps(data))


def compare(folder, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HISTORY), "--history", str(folder), *args], capture_output=True,
                          text=True, timeout=60)


def row(out: str, label: str) -> list[str]:
    """The table row of one benchmark metric, as its cells."""
    found = [line for line in out.splitlines() if line.startswith(f"| {label} |")]
    assert len(found) == 1, out
    return [cell.strip() for cell in found[0].strip("|").split("|")]


def test_a_30_percent_drop_in_a_ratio_is_flagged_with_the_commit_it_first_appeared_in(tmp_path):
    plant(tmp_path, 1, "aaaaa", 20_000, 10.0)
    plant(tmp_path, 2, "bbbbb", 20_000, 10.0)
    plant(tmp_path, 3, "ccccc", 20_000, 7.0)  # the drop
    plant(tmp_path, 4, "ddddd", 20_000, 7.0)  # still there: the latest run
    figure = tmp_path / "trend.png"
    proc = compare(tmp_path, "--figure", str(figure))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION: resident_torch_loader ratio vs naive 10 -> 7 (-30.0%, noise 10%), first in commit cccccccccc" \
        in proc.stdout
    assert row(proc.stdout, "resident_torch_loader ratio vs naive")[1:] == [
        "any cpu", "10 (3)", "7", "-30.0%", "10%", "REGRESSION since cccccccccc"]
    assert row(proc.stdout, "naive_per_sample_dataloader[0] images/s")[-1] == "ok"
    assert proc.stdout.count("REGRESSION:") == 2  # the resident loader's images/s fell with its ratio
    assert "2 regression(s) among 3 comparison(s)" in proc.stdout
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_3_percent_wobble_is_not_a_regression(tmp_path):
    wobble = [("aaaaa", 10.0), ("bbbbb", 10.3), ("ccccc", 10.0), ("ddddd", 9.7)]
    for number, (commit, ratio) in enumerate(wobble, start=1):
        plant(tmp_path, number, commit, 20_000 * (1 + 0.03 * (-1) ** number), ratio)
    proc = compare(tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row(proc.stdout, "resident_torch_loader ratio vs naive")[1:] == [
        "any cpu", "10 (3)", "9.7", "-3.0%", "10%", "ok"]
    assert row(proc.stdout, "naive_per_sample_dataloader[0] images/s")[-3:] == ["+6.2%", "10%", "ok"]
    assert "0 regression(s) among 3 comparison(s)" in proc.stdout


def test_a_run_on_another_cpu_kind_is_compared_on_ratios_only(tmp_path):
    plant(tmp_path, 1, "aaaaa", 20_000, 10.0, kind=KIND_A)
    plant(tmp_path, 2, "bbbbb", 20_000, 10.0, kind=KIND_A)
    plant(tmp_path, 3, "ccccc", 8_000, 10.0, kind=KIND_B)  # a slower machine, the same code
    proc = compare(tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"on {KIND_B}" in proc.stdout.splitlines()[0]
    for label in ("naive_per_sample_dataloader[0] images/s", "resident_torch_loader images/s"):
        cells = row(proc.stdout, label)
        assert (cells[1], cells[2], cells[-1]) == ("same kind, 1 thread(s)", "none yet", "new")
    assert row(proc.stdout, "resident_torch_loader ratio vs naive")[1:3] == ["any cpu", "10 (2)"]

    plant(tmp_path, 4, "ddddd", 8_000, 10.0, kind=KIND_B)
    plant(tmp_path, 5, "eeeee", 8_000, 6.5, kind=KIND_B)  # its ratio drops: compared with kind A's runs too
    proc = compare(tmp_path)
    assert proc.returncode == 1
    assert "REGRESSION: resident_torch_loader ratio vs naive 10 -> 6.5 (-35.0%, noise 10%), first in commit " \
           "eeeeeeeeee" in proc.stdout
    assert row(proc.stdout, "resident_torch_loader images/s")[2:] == ["80,000 (2)", "52,000", "-35.0%", "10%",
                                                                       "REGRESSION since eeeeeeeeee"]


def test_the_noise_of_the_rounds_widens_the_line(tmp_path):
    """Rounds spread by 35% (each term of the ratio): the ratio's noise is their quadrature sum, 49%."""
    plant(tmp_path, 1, "aaaaa", 20_000, 10.0, spread=0.35)
    plant(tmp_path, 2, "bbbbb", 20_000, 10.0, spread=0.35)
    plant(tmp_path, 3, "ccccc", 20_000, 7.0, spread=0.35)
    proc = compare(tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row(proc.stdout, "resident_torch_loader ratio vs naive")[-3:] == ["-30.0%", "49%", "ok"]
    assert row(proc.stdout, "resident_torch_loader images/s")[-3:] == ["-30.0%", "35%", "ok"]


def test_no_verdict_until_two_earlier_runs_measure_the_noise_between_runs(tmp_path):
    """Rounds say nothing of how far the load moves a run (one round here: they say nothing at all)."""
    plant(tmp_path, 1, "aaaaa", 20_000, 10.0, spread=0.0, rounds=1)
    plant(tmp_path, 2, "bbbbb", 20_000, 7.0, spread=0.0, rounds=1)
    proc = compare(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row(proc.stdout, "resident_torch_loader ratio vs naive")[-3:] == [
        "-30.0%", "?", "no verdict: 1 earlier run(s)"]
    assert "0 regression(s) among 0 comparison(s); 3 without a verdict (fewer than 2 earlier" in proc.stdout

    plant(tmp_path, 3, "ccccc", 20_000, 7.0, spread=0.0, rounds=1)  # runs 1-2: 10 and 7, spread 3 MADs = 53%
    proc = compare(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row(proc.stdout, "resident_torch_loader ratio vs naive")[-5:] == ["8.5 (2)", "7", "-17.6%", "53%", "ok"]


def test_a_drop_measured_on_a_contended_machine_is_shown_not_judged(tmp_path):
    plant(tmp_path, 1, "aaaaa", 20_000, 10.0)
    plant(tmp_path, 2, "bbbbb", 20_000, 10.0)
    plant(tmp_path, 3, "ccccc", 20_000, 7.0, load=4.0)  # 4 runnable threads on 2 cores
    proc = compare(tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row(proc.stdout, "resident_torch_loader ratio vs naive")[-3:] == [
        "-30.0%", "10%", "drop beyond the noise, not judged: load 4.0 > 2 cores"]
    assert "0 regression(s) among 3 comparison(s), 3 of them measured on a contended machine" in proc.stdout


def test_an_unreadable_history_is_refused_naming_the_file(tmp_path):
    proc = compare(tmp_path / "missing")
    assert (proc.returncode, proc.stdout) == (2, "")
    missing = tmp_path / "missing"
    assert proc.stderr.strip() == f"history.py: {missing}: no such folder (make bench records its runs there)"

    plant(tmp_path, 1, "aaaaa", 20_000, 10.0)
    bad = tmp_path / "Linux-CPython-3.11-64bit" / "0002_broken.json"
    bad.write_text("{not json")
    proc = compare(tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.strip() == f"history.py: {bad}: not a pytest-benchmark JSON file"


@pytest.fixture(scope="module")
def history_module():
    """bench/history.py imported from its file (bench/ is not a package), registered while the tests use it."""
    spec = importlib.util.spec_from_file_location("bench_history", HISTORY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_machine_kind_names_the_flags_that_matter(history_module):
    cpu = {"brand_raw": "Intel(R) Xeon(R) Platinum 8481C", "flags": ["sse4_2", "avx2", "avx512f", "avx512_bf16",
                                                                   "amx_bf16", "amx_tile", "fma"]}
    assert history_module.machine(cpu, 16, "NVIDIA H200") == {
        "kind": "Intel(R) Xeon(R) Platinum 8481C, amx_bf16+avx512_bf16+avx512f+avx2, 16 cores, NVIDIA H200",
        "cpu": "Intel(R) Xeon(R) Platinum 8481C", "flags": ["amx_bf16", "avx512_bf16", "avx512f", "avx2"],
        "cores": 16, "gpu": "NVIDIA H200"}
    assert history_module.machine({}, 2, None)["kind"] == "unknown CPU, no avx2, 2 cores, no GPU"


def test_every_committed_run_names_its_commit_and_machine(history_module):
    runs = history_module.load_runs(REPO / "bench" / "history")
    assert runs, "bench/history/ holds no run"
    for run in runs:
        data = json.loads(open(run.path).read())
        ours = data["machine_info"]["fastzhang"]
        assert ours["kind"] == run.kind and ours["torch"] and ours["torch_threads"] >= 1, run.path
        assert len(data["commit_info"]["id"]) == 40 and run.benchmarks, run.path
        assert all("images_per_s" in b["extra_info"] or b["stats"]["median"] > 0 for b in data["benchmarks"])
