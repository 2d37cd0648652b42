"""`fastzhang report` from synthetic results files: Table 1 beside the paper, Figure 1, demo, damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastzhang import results
from fastzhang.cli import main
from fastzhang.config import ExperimentConfig
from fastzhang.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_result(folder: Path, stamp: str, *, train=100.0, test=50.0, epochs=3, fit_step=None,
                 completed=True, stopped_early=False, **settings) -> Path:
    """A valid results file of `epochs` epochs, as experiment.py writes it (lr resolved in the config)."""
    cfg = ExperimentConfig.from_mapping({"epochs": epochs, **settings})
    n = epochs
    steps = [391 * (i + 1) for i in range(n)]
    payload = {
        "schema_version": results.SCHEMA_VERSION,
        "experiment_id": cfg.experiment_id,
        "config": {**cfg.to_dict(), "lr": cfg.effective_lr},
        "metrics": {
            "epochs": list(range(1, n + 1)), "train_loss": [2.3 / (i + 1) for i in range(n)],
            "train_acc": [train * (i + 1) / n for i in range(n)], "test_loss": [2.0] * n,
            "test_acc": [test] * n, "lr": [0.1] * n, "epoch_seconds": [1.0] * n,
            "images_per_second": [5e4] * n, "steps": steps,
            "best_test_acc": test, "final_train_acc": train, "final_test_acc": test,
            "fit_epoch": n if fit_step else None, "fit_step": fit_step,
        },
        "timestamp": stamp, "completed": completed, "total_epochs": n,
        "target_epochs": cfg.epochs, "stopped_early": stopped_early,
        "data_fingerprint": "0" * 64, "data_fingerprint_name": None,
        "environment": {"fastzhang": "0.1.0", "torch": "2.13.0", "python": "3.12", "device": "cpu", "platform": "x"},
        "throughput": {"mean_images_per_second": 5e4, "train_seconds": float(n)},
    }
    return results.write(folder, payload)


def row_line(report: str, start: str) -> str:
    lines = [line for line in report.splitlines() if line.startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0]


@pytest.fixture
def results_dir(tmp_path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    # Table 1 rows (with a default-schedule run and a newer short run for the same row).
    write_result(d, "20250101_000000", model="inception", random_crop=True, weight_decay=5e-4,
                 train=99.98, test=88.1, epochs=100)
    write_result(d, "20250102_000000", model="inception", random_crop=True, weight_decay=5e-4,
                 train=90.0, test=70.0, epochs=5)
    write_result(d, "20250101_000001", model="mlp1", randomization="random_labels", train=99.5, test=10.02)
    write_result(d, "20250101_000002", model="inception", train=100.0, test=85.0)
    # Figure 1a curves.
    write_result(d, "20250101_000003", model="inception", randomization="random_labels", train=100.0, test=9.9)
    write_result(d, "20250101_000004", model="inception", randomization="gaussian", train=100.0, test=10.0)
    # Figure 1b: p spelled partial (0.4), canonical (p = 1 -> random_labels), one that never fit.
    write_result(d, "20250101_000005", model="alexnet", randomization="partial", corrupt_prob=0.4,
                 stop_at_train_acc=100.0, fit_step=12000, test=45.0, stopped_early=True)
    write_result(d, "20250101_000006", model="alexnet", randomization="partial", corrupt_prob=1.0,
                 stop_at_train_acc=100.0, fit_step=30500, test=10.0, stopped_early=True)
    write_result(d, "20250101_000007", model="mlp1", randomization="partial", corrupt_prob=0.8,
                 stop_at_train_acc=100.0, test=20.0)
    # Not completed.
    write_result(d, "20250101_000008", model="mlp3", completed=False, epochs=2)
    # Damaged: broken JSON, and valid JSON whose config does not load.
    (d / "inception_cifar10_baseline_20250103_000000.json").write_text('{"schema_version": 1, "exper')
    bad = write_result(d, "20250101_000009", model="mlp1")
    bad.write_text(bad.read_text().replace('"model": "mlp1"', '"model": "resnet"'))
    return d


def test_table1_beside_the_paper(results_dir, tmp_path):
    report = build_report(results_dir, tmp_path / "out").read_text()
    # The default-schedule run wins over the newer 5-epoch run of the same row.
    assert row_line(report, "| Inception | yes | yes |") == (
        "| Inception | yes | yes | 100.0 | 89.05 | 99.98 | 88.10 | -0.02 | -0.95 | 100 "
        "| `inception_cifar10_baseline_wd0.0005_crop` |")
    assert row_line(report, "| MLP 1x512, random labels |") == (
        "| MLP 1x512, random labels | no | no | 99.34 | 10.61 | 99.50 | 10.02 | +0.16 | -0.59 | 3 "
        "| `mlp1_cifar10_random_labels_ep3` |")
    assert row_line(report, "| AlexNet | yes | yes |") == (
        "| AlexNet | yes | yes | 99.90 | 81.22 | not run | not run | — | — | — | — |")
    assert row_line(report, "| Inception w/o BatchNorm | no | no |").startswith(
        "| Inception w/o BatchNorm | no | no | 100.0 | 82.00 | not run")
    # Any completed run of the row counts, here Figure 1b's (stopped once it fit), with its epochs.
    assert row_line(report, "| AlexNet, random labels |") == (
        "| AlexNet, random labels | no | no | 99.82 | 9.86 | 100.00 | 10.00 | +0.18 | +0.14 | 3 (stopped: fit) "
        "| `alexnet_cifar10_random_labels_ep3_stop100` |")
    assert "5 of 19 rows have a completed run" in report
    for paper in ("89.31", "86.03", "85.75", "9.78", "83.00", "10.12", "79.66", "77.36", "76.07",
                  "9.86", "53.35", "52.39", "10.48", "50.39", "50.51"):
        assert f"| {paper} |" in report


def test_damaged_and_unfinished_files_are_listed_not_fatal(results_dir, tmp_path):
    report = build_report(results_dir, tmp_path / "out").read_text()
    damaged = report.split("## Damaged or unreadable results files", 1)[1]
    assert "inception_cifar10_baseline_20250103_000000.json`: not valid JSON" in damaged
    assert "mlp1_cifar10_baseline_ep3_20250101_000009.json`: its config: model must be one of" in damaged
    assert "From `%s`: 12 results files, 9 completed runs, 2 damaged or unreadable." % results_dir in report
    unfinished = report.split("## Runs not completed", 1)[1].split("##", 1)[0]
    assert "| `mlp3_cifar10_baseline_ep2` | 2 / 2 |" in unfinished
    # The damaged baseline file does not stand in for the Inception baseline row.
    assert row_line(report, "| Inception | no | no |").startswith("| Inception | no | no | 100.0 | 85.75 | 100.00 | 85.00")


def test_figures_are_drawn_with_their_data(results_dir, tmp_path):
    out = tmp_path / "out"
    report = build_report(results_dir, out).read_text()
    for name in ("figure1a.png", "figure1b.png", "figure1c.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in report
    assert not (out / "demo.png").exists() and "## Demo" not in report
    assert row_line(report, "| random labels | `inception_cifar10_random_labels_ep3` |") == (
        "| random labels | `inception_cifar10_random_labels_ep3` | 3 | 1173 | 0.7667 | 100.00 |")
    assert row_line(report, "| shuffled pixels |") == "| shuffled pixels | not run | — | — | — | — |"
    assert row_line(report, "| AlexNet | 0.4 |") == (
        "| AlexNet | 0.4 | `alexnet_cifar10_partial_corrupt_corrupt40_ep3_stop100` | 12000 | 3 (stopped: fit) | 55.00 |")
    assert row_line(report, "| AlexNet | 1 |") == (
        "| AlexNet | 1 | `alexnet_cifar10_random_labels_ep3_stop100` | 30500 | 3 (stopped: fit) | 90.00 |")
    assert row_line(report, "| MLP 1x512 | 0.8 |") == (
        "| MLP 1x512 | 0.8 | `mlp1_cifar10_partial_corrupt_corrupt80_ep3_stop100` | not reached in 3 epochs | 3 | 80.00 |")
    # A Table 1 run (no stop threshold) stands in for p = 0 and p = 1, without a fit step.
    assert row_line(report, "| Inception | 0 |") == (
        "| Inception | 0 | `inception_cifar10_baseline_ep3` | not recorded (no stop_at_train_acc) | 3 | 15.00 |")
    assert row_line(report, "| Inception | 0.2 |") == "| Inception | 0.2 | not run | — | — | — |"


def test_demo_section_when_demo_results_exist(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    write_result(d, "20250101_000000", model="mlp1", train_subset=5000, epochs=40, train=99.9, test=41.7)
    write_result(d, "20250101_000001", model="mlp1", randomization="random_labels", train_subset=5000,
                 epochs=40, train=99.86, test=10.31)
    out = tmp_path / "out"
    report = build_report(d, out).read_text()
    assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC
    assert row_line(report, "| `mlp1_cifar10_random_labels_ep40_sub5000` |") == (
        "| `mlp1_cifar10_random_labels_ep40_sub5000` | MLP 1x512 | random labels | 5000 | 40 | 99.86 | 10.31 |")
    assert "- MLP 1x512, random labels: train accuracy 99.86% against test accuracy 10.31% (chance: 10%)." in report
    # Subset runs never fill a Table 1 row, and no figure is drawn without its runs (stale ones go).
    assert row_line(report, "| MLP 1x512 | no | no |").endswith("| not run | not run | — | — | — | — |")
    (out / "figure1a.png").write_bytes(PNG_MAGIC)
    build_report(d, out)
    assert not (out / "figure1a.png").exists()


def test_cli_writes_report_and_says_where(results_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", "--results", str(results_dir), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said == f"Report written to {out / 'report.md'} (figures: figure1a.png, figure1b.png, figure1c.png)\n"
    assert (out / "report.md").is_file()


def test_cli_default_out_and_missing_results(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 2
    assert "results folder results does not exist" in capsys.readouterr().err
    (tmp_path / "results").mkdir()
    assert main(["report"]) == 0
    assert (tmp_path / "results" / "report" / "report.md").read_text().startswith("# fastzhang report")
