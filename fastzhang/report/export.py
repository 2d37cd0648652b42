"""The tidy export beside report.md: runs.csv (one row per experiment and epoch) and summary.csv.

Both hold the newest completed results file of each experiment (the one the
report would pick among runs of that experiment), ordered by experiment ID, and
start with the experiment ID and every identity field of its config
(ExperimentConfig.IDENTITY, the learning rate resolved). runs.csv then has the
epoch and each per-epoch metric series of the results file (its learning rate
as `epoch_lr`, beside the config's initial `lr`); summary.csv the
file, its completion fields, the summary metrics, the throughput, and the steps
to fit at the report's fit threshold. A missing number (a diverged epoch, no
fit) is an empty cell. `pandas.read_csv("runs.csv")` reads it all.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from fastzhang.atomicio import atomic_write
from fastzhang.config import ExperimentConfig
from fastzhang.report.fit import steps_to_fit
from fastzhang.report.tables import FinishedRun, latest_runs
from fastzhang.results import METRIC_SCALARS, METRIC_SERIES, THROUGHPUT_KEYS

RUNS_CSV = "runs.csv"
SUMMARY_CSV = "summary.csv"
_EPOCH_SERIES = tuple(k for k in METRIC_SERIES if k != "epochs")
# A series named like an identity field (lr: the epoch's rate, not the config's initial one) gets a prefix.
RUNS_HEADER = ("experiment_id", *ExperimentConfig.IDENTITY, "epoch",
               *(f"epoch_{k}" if k in ExperimentConfig.IDENTITY else k for k in _EPOCH_SERIES))
SUMMARY_HEADER = ("experiment_id", *ExperimentConfig.IDENTITY, "results_file", "timestamp", "total_epochs",
                  "target_epochs", "stopped_early", *METRIC_SCALARS, *THROUGHPUT_KEYS,
                  "fit_threshold", "steps_to_fit")


def _key(run: FinishedRun) -> list[Any]:
    identity = run.cfg.identity()
    return [run.experiment_id, *(identity[name] for name in ExperimentConfig.IDENTITY)]


def runs_rows(runs: list[FinishedRun]) -> list[list[Any]]:
    rows = []
    for run in latest_runs(runs):
        m = run.metrics
        for i, epoch in enumerate(m["epochs"]):
            rows.append([*_key(run), epoch, *(m[k][i] for k in _EPOCH_SERIES)])
    return rows


def summary_rows(runs: list[FinishedRun], fit_threshold: float) -> list[list[Any]]:
    rows = []
    for run in latest_runs(runs):
        p, m = run.payload, run.metrics
        rows.append([*_key(run), run.path.name, p["timestamp"], p["total_epochs"],
                     p["target_epochs"], p["stopped_early"], *(m.get(k) for k in METRIC_SCALARS),
                     *(p["throughput"][k] for k in THROUGHPUT_KEYS),
                     fit_threshold, steps_to_fit(m, fit_threshold)])
    return rows


def _write_csv(path: Path, header: Iterable[str], rows: list[list[Any]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)  # the csv module writes None as an empty cell
    data = text.getvalue().encode("utf-8")
    atomic_write(path, lambda f: f.write(data), what=path.name)


def write_csvs(runs: list[FinishedRun], out_dir: Path, fit_threshold: float) -> list[str]:
    """Write runs.csv and summary.csv into `out_dir`; return their names."""
    _write_csv(out_dir / RUNS_CSV, RUNS_HEADER, runs_rows(runs))
    _write_csv(out_dir / SUMMARY_CSV, SUMMARY_HEADER, summary_rows(runs, fit_threshold))
    return [RUNS_CSV, SUMMARY_CSV]
