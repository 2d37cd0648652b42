"""Issue 24: sweeps over seeds (batch --seeds, make SEEDS=), the data seed apart from the training seed, and the
report's statistics over seeds (report/stats.py) from crafted results files whose numbers are known exactly."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch

from conftest import REPO, run_cli
from fastzhang import results
from fastzhang.cli.batch import parse_seeds
from fastzhang.config import ExperimentConfig
from fastzhang.errors import ConfigMismatch, UsageError
from fastzhang.report import build_report
from fastzhang.report.stats import summarize, t_quantile, welch
from fastzhang.report.tables import groups, load_runs
from test_report import row_line, write_result

# ------------------------------------------------------------------------------------------
# report/stats.py against values computed elsewhere

# Student's t, 97.5% quantile: printed tables (3 decimals), and for df = 2.5 scipy.stats.t.ppf(0.975, 2.5) and
# mpmath (findroot on betainc, 30 digits) agree on 3.5746548420036817.
@pytest.mark.parametrize("df, want, tolerance", [
    (1, 12.706, 5e-4), (2, 4.303, 5e-4), (4, 2.776, 5e-4), (10, 2.228, 5e-4), (30, 2.042, 5e-4),
    (2.5, 3.5746548420036817, 1e-9), (1e5, 1.960, 5e-4), (math.inf, 1.959963984540054, 1e-12),
])
def test_t_quantile_matches_the_tables(df, want, tolerance):
    assert abs(t_quantile(df) - want) < tolerance


def test_mean_std_and_intervals_known_exactly():
    s = summarize([1, 2, 3, None, float("nan")])  # a diverged run's null and NaN are left out
    assert (s.n, s.mean, s.std, s.lo, s.hi) == (3, 2.0, 1.0, 1.0, 3.0)
    lo, hi = s.interval()  # 2 ± t(2) / sqrt(3): scipy.stats.t.interval(0.95, 2, loc=2, scale=1/sqrt(3))
    assert (lo, hi) == pytest.approx((-0.48413771175033027, 4.48413771175033), abs=1e-12)
    one = summarize([7.5])
    assert (one.n, one.mean, one.lo, one.hi, one.interval()) == (1, 7.5, 7.5, 7.5, None) and math.isnan(one.std)
    # Welch, df = 216/53: scipy.stats.ttest_ind([1, 2, 3], [2, 4, 6, 8], equal_var=False).confidence_interval()
    d, lo, hi = welch(summarize([1, 2, 3]), summarize([2, 4, 6, 8]))
    assert (d, lo, hi) == pytest.approx((-3.0, -6.897975451083128, 0.8979754510831279), abs=1e-12)
    assert welch(summarize([1, 2, 3]), one) is None and welch(summarize([5, 5]), summarize([4, 4])) == (1, 1, 1)


# ------------------------------------------------------------------------------------------
# The report over seeds, from crafted results files

def old_style(path: Path) -> Path:
    """Rewrite a results file as written before the data seed existed: no `data_seed` in its config."""
    payload = orjson.loads(path.read_bytes())
    del payload["config"]["data_seed"]
    path.write_bytes(orjson.dumps(payload))
    return path


@pytest.fixture
def seeded(tmp_path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    full = {"epochs": 100}
    # Inception with crop and weight decay, seeds 0 and 1 from before data_seed, seed 2 after: test 88, 89, 90.
    for seed, test in enumerate((88.0, 89.0, 90.0)):
        path = write_result(d, f"20250101_00000{seed}", model="inception", random_crop=True, weight_decay=5e-4,
                            test=test, seed=seed, **full)
        if seed < 2:
            old_style(path)
    for seed, test in enumerate((90.0, 92.0, 94.0)):  # Inception, crop alone
        write_result(d, f"20250102_00000{seed}", model="inception", random_crop=True, test=test, seed=seed, **full)
    for seed, (wd, test) in enumerate([(5e-4, 60.0), (5e-4, 61.0), (5e-4, 62.0), (0, 50.0), (0, 51.0), (0, 52.0)]):
        write_result(d, f"20250103_00000{seed}", model="mlp3", weight_decay=wd, test=test, seed=seed % 3, **full)
    # MLP 1x512: one data set (data seed 0) under two training seeds; on random labels a single run.
    for seed, test in ((1, 50.0), (2, 51.0)):
        write_result(d, f"20250104_00000{seed}", model="mlp1", test=test, seed=seed, data_seed=0, **full)
    write_result(d, "20250105_000000", model="mlp1", randomization="random_labels", train=99.5, test=10.02, **full)
    return d


def test_table1_gives_mean_std_range_and_the_t_interval_against_the_paper(seeded, tmp_path):
    report = build_report(seeded, tmp_path / "out").read_text()
    # 89 ± 4.3027 / sqrt(3) = [86.516, 91.484], less 89.05; train 100 on every seed: no spread at all.
    assert row_line(report, "| Inception | yes | yes |") == (
        "| Inception | yes | yes | 100.0 | 89.05 | 100.00 ± 0.00 (100.00–100.00) | 89.00 ± 1.00 (88.00–90.00) "
        "| +0.00 [+0.00, +0.00] ✓ | -0.05 [-2.53, +2.43] ✓ | 100 "
        "| `inception_cifar10_baseline_wd0.0005_crop`, n = 3 (seeds 0, 1, 2) |")
    # 61 ± 2.4841 = [58.52, 63.48]: the paper's 53.35 is outside.
    assert row_line(report, "| MLP 3x512 | no | yes |") == (
        "| MLP 3x512 | no | yes | 100.0 | 53.35 | 100.00 ± 0.00 (100.00–100.00) | 61.00 ± 1.00 (60.00–62.00) "
        "| +0.00 [+0.00, +0.00] ✓ | +7.65 [+5.17, +10.13] ✗ | 100 "
        "| `mlp3_cifar10_baseline_wd0.0005`, n = 3 (seeds 0, 1, 2) |")
    # Two training seeds on one data set: t(1) = 12.706; 50.5 ± 12.706 x 0.7071 / sqrt(2) = [44.147, 56.853].
    assert row_line(report, "| MLP 1x512 | no | no |") == (
        "| MLP 1x512 | no | no | 100.0 | 50.51 | 100.00 ± 0.00 (100.00–100.00) | 50.50 ± 0.71 (50.00–51.00) "
        "| +0.00 [+0.00, +0.00] ✓ | -0.01 [-6.36, +6.34] ✓ | 100 "
        "| `mlp1_cifar10_baseline`, n = 2 (seeds 1 (data 0), 2 (data 0)) |")
    # n = 1: the value alone, no interval, no mark.
    assert row_line(report, "| MLP 1x512, random labels |") == (
        "| MLP 1x512, random labels | no | no | 99.34 | 10.61 | 99.50 | 10.02 | +0.16 | -0.59 | 100 "
        "| `mlp1_cifar10_random_labels`, n = 1 (seed 0) |")
    # Judged on the mean: within 1.5 points for Inception with crop and weight decay (89.00 against 89.05), not
    # with crop alone (92.00 against 89.31), nor MLP 3x512 with weight decay; the other three rows are. n per row.
    assert "- test accuracy within 1.5 points of the paper: 4 of 6\n" in report
    assert "  - Inception (random crop yes, weight decay yes): n = 3\n" in report
    assert "  - MLP 1x512, random labels (random crop no, weight decay no): n = 1\n" in report
    # Figure 1c's point at p = 0 for MLP 1x512: the test error over the two seeds.
    assert row_line(report, "| MLP 1x512 | 0 |").endswith("| 100 | 49.50 ± 0.71 (49.00–50.00) |")


def test_regularizer_differences_with_their_welch_interval(seeded, tmp_path):
    report = build_report(seeded, tmp_path / "out").read_text()
    # [88, 89, 90] - [90, 92, 94]: scipy.stats.ttest_ind(..., equal_var=False).confidence_interval() =
    # [-7.1554, 1.1554] (df 50/17); the paper's -0.26 inside it.
    assert row_line(report, "| Inception | weight decay | random crop |") == (
        "| Inception | weight decay | random crop | -0.26 | -3.00 | [-7.16, +1.16] no clear difference ✓ | 3 / 3 |")
    # [60, 61, 62] - [50, 51, 52]: df 4, 10 ± 2.7764 x sqrt(2/3); the paper's +0.96 outside.
    assert row_line(report, "| MLP 3x512 | weight decay | nothing |") == (
        "| MLP 3x512 | weight decay | nothing | +0.96 | +10.00 | [+7.73, +12.27] helps ✗ | 3 / 3 |")
    assert row_line(report, "| MLP 1x512 | weight decay | nothing |") == (
        "| MLP 1x512 | weight decay | nothing | -0.12 | not run | — | 0 / 2 |")
    assert row_line(report, "| Inception | random crop | weight decay |") == (
        "| Inception | random crop | weight decay | +3.02 | not run | — | 3 / 0 |")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csvs_carry_both_seeds_and_summarize_each_configuration(seeded, tmp_path):
    build_report(seeded, tmp_path / "out")
    seeds = {(r["experiment_id"], r["seed"], r["data_seed"]) for r in read_csv(tmp_path / "out" / "runs.csv")}
    assert {s for s in seeds if s[0].startswith(("inception_cifar10_baseline_wd", "mlp1_cifar10_baseline"))} == {
        ("inception_cifar10_baseline_wd0.0005_crop", "0", "0"),  # old files: data seed = seed
        ("inception_cifar10_baseline_wd0.0005_crop_seed1", "1", "1"),
        ("inception_cifar10_baseline_wd0.0005_crop_seed2", "2", "2"),
        ("mlp1_cifar10_baseline_seed1_dseed0", "1", "0"), ("mlp1_cifar10_baseline_seed2_dseed0", "2", "0")}
    summary = {r["configuration"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert len(summary) == 6 and "seed" not in next(iter(summary.values()))
    inception = summary["inception_cifar10_baseline_wd0.0005_crop"]
    assert {k: inception[k] for k in ("seeds", "data_seeds", "final_test_acc_mean", "final_test_acc_std",
                                      "final_test_acc_n", "final_test_acc_min", "final_test_acc_max")} == {
        "seeds": "0 1 2", "data_seeds": "0 1 2", "final_test_acc_mean": "89.0", "final_test_acc_std": "1.0",
        "final_test_acc_n": "3", "final_test_acc_min": "88.0", "final_test_acc_max": "90.0"}
    # Train accuracy climbs linearly to 100 over 100 epochs: 99% at epoch 99, 391 steps each, on every seed.
    assert (inception["steps_to_fit_mean"], inception["steps_to_fit_std"], inception["steps_to_fit_n"]) == (
        "38709.0", "0.0", "3")
    mlp1 = summary["mlp1_cifar10_baseline"]
    assert (mlp1["seeds"], mlp1["data_seeds"], mlp1["final_test_acc_n"]) == ("1 2", "0 0", "2")
    single = summary["mlp1_cifar10_random_labels"]
    assert (single["final_test_acc_mean"], single["final_test_acc_std"], single["final_test_acc_n"]) == (
        "10.02", "", "1")


def test_curves_are_the_mean_with_a_min_max_band_and_none_for_one_run(seeded):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fastzhang.report.figures import curve

    by_id = {g.cfg.experiment_id: g for g in groups(load_runs(results.scan(seeded))[0])}
    for experiment, n, want in (("inception_cifar10_baseline_wd0.0005_crop", 3, (89.0, 88.0, 90.0)),
                                ("mlp1_cifar10_random_labels", 1, (10.02, None, None))):
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        group = by_id[experiment]
        steps, mean, band = curve(ax, group, "test_acc")
        assert group.n == n and len(steps) == 100 and steps[-1] == 39.1 and set(mean) == {want[0]}
        if n == 1:
            assert band is None and not ax.collections  # nothing shaded
        else:
            assert (set(band[0]), set(band[1])) == ({want[1]}, {want[2]}) and len(ax.collections) == 1


# ------------------------------------------------------------------------------------------
# Two seeds: the data set's and the training's

def data_and_weights(**settings) -> tuple[str, torch.Tensor]:
    """(checksum of the randomized training set, first layer's initial weights) as a run builds them."""
    from fastzhang.data.sources import load_dataset
    from fastzhang.experiment import _prepare
    from fastzhang.train import engine

    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "randomization": "random_labels",
                                         "train_subset": 500, "device": "cpu", **settings})
    data, speed, _ = _prepare(cfg, load_dataset("synthetic", None))
    digest = hashlib.sha256(data.train_y.numpy().tobytes() + data.train_x.numpy().tobytes()).hexdigest()
    return digest, next(engine.build_run(cfg, data.device, speed).model.parameters()).detach().clone()


def test_data_seed_fixes_the_data_set_and_seed_the_training():
    labels, weights = data_and_weights(seed=0, data_seed=5)
    other_training = data_and_weights(seed=1, data_seed=5)
    other_data = data_and_weights(seed=0, data_seed=6)
    assert other_training[0] == labels and not torch.equal(other_training[1], weights)
    assert other_data[0] != labels and torch.equal(other_data[1], weights)
    # Default: the data seed follows the seed, as before issue 24.
    assert data_and_weights(seed=5)[0] == labels and data_and_weights(seed=5, data_seed=5)[0] == labels


@pytest.mark.parametrize("settings, eid", [
    ({"seed": 3}, "mlp1_cifar10_random_labels_seed3"),
    ({"seed": 3, "data_seed": 3}, "mlp1_cifar10_random_labels_seed3"),  # the same experiment, one spelling
    ({"seed": 3, "data_seed": 0}, "mlp1_cifar10_random_labels_seed3_dseed0"),
    ({"data_seed": 7}, "mlp1_cifar10_random_labels_dseed7"),
])
def test_an_explicit_data_seed_is_part_of_the_id(settings, eid):
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "randomization": "random_labels", **settings})
    assert cfg.experiment_id == eid
    assert cfg.identity()["data_seed"] == settings.get("data_seed", settings.get("seed"))


def test_checkpoints_carry_both_seeds_and_old_ones_resume_as_data_seed_equals_seed():
    from fastzhang.train import engine, state
    from fastzhang.train.fastpath import Speed

    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu", "seed": 2})
    payload = state.to_payload(engine.build_run(cfg, torch.device("cpu"), Speed(False, False, False, False)), cfg, "f")
    assert (payload["config"]["seed"], payload["config"]["data_seed"]) == (2, 2)
    old = {**payload, "config": {k: v for k, v in payload["config"].items() if k != "data_seed"}}
    assert state.check_resumable(old, cfg, Path("old.pth")) is old
    with pytest.raises(ConfigMismatch, match=r"\(data_seed: checkpoint 2 vs requested 0\)") as e:
        state.check_resumable(old, cfg.replace(data_seed=0), Path("old.pth"))
    assert e.value.fields == ["data_seed"]
    with pytest.raises(ConfigMismatch) as e:  # data seeds that follow their seeds: only the seed is named
        state.check_resumable(old, cfg.replace(seed=4), Path("old.pth"))
    assert e.value.fields == ["seed"]


def test_a_run_with_a_data_seed_records_both(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", "mlp1", "--dataset", "synthetic", "--randomization", "random_labels", "--epochs", "1",
            "--train-subset", "64", "--batch-size", "32", "--device", "cpu", "--seed", "1", "--data-seed", "4",
            "--quiet"]
    assert run_cli(argv) == 0
    eid = "mlp1_synthetic_random_labels_bs32_ep1_sub64_seed1_dseed4"
    [path] = results.files_for("results", eid)
    config = results.read(path).payload["config"]
    assert (config["seed"], config["data_seed"]) == (1, 4)
    assert "seed 1, data seed 4" in (tmp_path / "checkpoints" / f"{eid}.log").read_text()  # its first line


# ------------------------------------------------------------------------------------------
# batch --seeds, make SEEDS=

@pytest.mark.parametrize("text, seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]), ("2", [2]),
                                         (" 5-6 , 1", [5, 6, 1])])
def test_seeds_are_a_range_or_a_list(text, seeds):
    assert parse_seeds(text) == seeds


TINY = "model: mlp1\ndataset: synthetic\nepochs: 1\nbatch_size: 32\ntrain_subset: 64\ndevice: cpu\n"


@pytest.mark.parametrize("bad", ["4-0", "a", "", "0,0", "1-3,2", "-1", "1,,2", "0.5", "1-"])
def test_bad_seeds_refuse_the_batch_before_any_work(tmp_path, capsys, bad):
    (tmp_path / "r.yaml").write_text(TINY)
    out = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--results-dir", str(tmp_path / "res")]
    assert run_cli(["batch", tmp_path / "r.yaml", f"--seeds={bad}", *out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fastzhang: error: --seeds ") and repr(bad) in err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "res").exists()
    with pytest.raises(UsageError):
        parse_seeds(bad)


def test_dry_run_shows_every_recipe_at_every_seed_seed_after_seed(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(TINY + f"lr: 0.0{'23'[name == 'b']}\n")
    assert run_cli(["batch", tmp_path, "--seeds", "0,2", "--dry-run", "--results-dir", tmp_path / "res"]) == 0
    said = [line.split(" (")[1].split(")")[0] for line in capsys.readouterr().out.splitlines() if "yaml (" in line]
    assert said == ["mlp1_synthetic_baseline_lr0.02_bs32_ep1_sub64", "mlp1_synthetic_baseline_lr0.03_bs32_ep1_sub64",
                    "mlp1_synthetic_baseline_lr0.02_bs32_ep1_sub64_seed2",
                    "mlp1_synthetic_baseline_lr0.03_bs32_ep1_sub64_seed2"]


@pytest.mark.e2e
def test_batch_runs_each_seed_once_and_skips_them_when_done(tmp_path):
    (tmp_path / "r.yaml").write_text(TINY + "seed: 9\n")  # --seeds replaces the recipe's seed
    cmd = [sys.executable, "-m", "fastzhang", "batch", "r.yaml", "--seeds", "0-1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 ran, 0 skipped" in first.stdout
    ids = ["mlp1_synthetic_baseline_bs32_ep1_sub64", "mlp1_synthetic_baseline_bs32_ep1_sub64_seed1"]
    for seed, experiment in enumerate(ids):
        [path] = results.files_for(tmp_path / "results", experiment)
        assert results.read(path).payload["config"]["seed"] == seed
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 ran, 2 skipped (already completed)" in again.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_passes_seeds_to_every_batch_target():
    for target in ("demo", "table1", "all"):
        said = subprocess.run(["make", "-n", "-o", ".venv/.installed-dev", target, "SEEDS=0-4"], cwd=REPO,
                              capture_output=True, text=True, timeout=60).stdout
        assert f"recipes/run_all_recipes.sh --category {target} " in said and "--seeds 0-4;" in said, said
    said = subprocess.run(["make", "-n", "-o", ".venv/.installed-dev", "table1"], cwd=REPO, capture_output=True,
                          text=True, timeout=60).stdout
    assert "--seeds" not in said
