"""The tidy export beside report.md: runs.csv (one row per experiment and epoch) and summary.csv.

runs.csv: the newest completed results file of each experiment, by experiment ID: the ID, every
identity field (`seed` and `data_seed` included, lr and data seed resolved), the epoch and each
per-epoch series (its learning rate as `epoch_lr`, beside the config's initial `lr`). summary.csv:
one row per configuration (tables.Group: the ID without the seeds, the other identity fields, the
seeds and data seeds of its runs) with mean, sample std, n, min and max over its runs of the final
train and test accuracy and of the steps to fit at the report's threshold (over the runs that fit).
A missing number (a diverged epoch, no fit, one run's std) is an empty cell.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

from fastzhang.atomicio import atomic_write
from fastzhang.config import ExperimentConfig
from fastzhang.report.fit import steps_to_fit
from fastzhang.report.tables import FinishedRun, config_id, groups, latest_runs
from fastzhang.results import METRIC_SERIES

RUNS_CSV = "runs.csv"
SUMMARY_CSV = "summary.csv"
_EPOCH_SERIES = tuple(k for k in METRIC_SERIES if k != "epochs")
# A series named like an identity field (lr: the epoch's rate, not the config's initial one) gets a prefix.
RUNS_HEADER = ("experiment_id", *ExperimentConfig.IDENTITY, "epoch",
               *(f"epoch_{k}" if k in ExperimentConfig.IDENTITY else k for k in _EPOCH_SERIES))
_SHARED = tuple(k for k in ExperimentConfig.IDENTITY if k not in ("seed", "data_seed"))
SUMMARIZED = ("final_train_acc", "final_test_acc", "steps_to_fit")
SUMMARY_HEADER = ("configuration", *_SHARED, "seeds", "data_seeds", "fit_threshold",
                  *(f"{value}_{stat}" for value in SUMMARIZED for stat in ("mean", "std", "n", "min", "max")))


def runs_rows(runs: list[FinishedRun]) -> list[list[Any]]:
    rows = []
    for run in latest_runs(runs):
        identity, m = run.cfg.identity(), run.metrics
        for i, epoch in enumerate(m["epochs"]):
            rows.append([run.experiment_id, *(identity[k] for k in ExperimentConfig.IDENTITY), epoch,
                         *(m[k][i] for k in _EPOCH_SERIES)])
    return rows


def summary_rows(runs: list[FinishedRun], fit_threshold: float) -> list[list[Any]]:
    rows = []
    for group in groups(runs):
        identity = group.cfg.identity()
        stats = [group.stat(k) for k in SUMMARIZED[:2]] + [group.stat(lambda r: steps_to_fit(r.metrics, fit_threshold))]
        rows.append([config_id(group.cfg), *(identity[k] for k in _SHARED),
                     *(" ".join(str(r.cfg.identity()[k]) for r in group.runs) for k in ("seed", "data_seed")),
                     fit_threshold, *(None if isinstance(v, float) and math.isnan(v) else v
                                      for s in stats for v in (s.mean, s.std, s.n, s.lo, s.hi))])
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
