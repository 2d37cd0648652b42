"""Results files -> the runs the report uses, and the report's Markdown tables.

A run is a valid results file whose config loads and gives the file's own
experiment ID. For each Table 1 row or figure point the report picks one
completed run by its config: it prefers the paper's schedule (fewest settings
away from the defaults) and then the newest file, but accepts any run that
matches the row, and shows its epochs and experiment ID so the reader knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from fastzhang.config import ExperimentConfig
from fastzhang.errors import UsageError
from fastzhang.models.registry import display_name
from fastzhang.report.paper import TABLE1, Table1Row, chance_acc

# Identity settings that are not part of a row's definition; the fewer differ
# from the defaults, the closer a run is to the paper's schedule.
SCHEDULE_FIELDS = ("epochs", "batch_size", "lr", "lr_decay", "momentum", "seed", "stop_at_train_acc",
                   "early_stop_patience", "early_stop_min_epochs")
_DEFAULTS = ExperimentConfig()
NOT_RUN = "not run"


@dataclass(frozen=True)
class FinishedRun:
    """One completed results file, as the report reads it (not train/engine.Run, the live state)."""

    path: Path
    cfg: ExperimentConfig
    payload: dict[str, Any]
    order: int  # position in the scan (oldest first): the larger, the newer

    @property
    def experiment_id(self) -> str:
        return self.payload["experiment_id"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.payload["metrics"]

    @property
    def completed(self) -> bool:
        return self.payload["completed"]

    @property
    def epochs(self) -> int:
        return self.payload["total_epochs"]


def load_runs(entries: Iterable[Any]) -> tuple[list[FinishedRun], list[tuple[Path, str]]]:
    """Split `results.scan` entries into usable runs and (path, problem) pairs."""
    runs, damaged = [], []
    for order, entry in enumerate(entries):
        if entry.payload is None:
            damaged.append((entry.path, entry.problem or "unreadable"))
            continue
        try:
            cfg = ExperimentConfig.from_mapping(entry.payload["config"], source="its config")
        except UsageError as e:
            damaged.append((entry.path, str(e)))
            continue
        if cfg.experiment_id != entry.payload["experiment_id"]:
            damaged.append((entry.path, f"its config is experiment {cfg.experiment_id!r}, "
                                        f"not the {entry.payload['experiment_id']!r} it claims"))
            continue
        runs.append(FinishedRun(entry.path, cfg, entry.payload, order))
    return runs, damaged


def departures(cfg: ExperimentConfig, ignore: tuple[str, ...] = ()) -> int:
    return sum(getattr(cfg, f) != getattr(_DEFAULTS, f) for f in SCHEDULE_FIELDS if f not in ignore)


def pick(runs: Iterable[FinishedRun], wanted: Callable[[ExperimentConfig], bool], *,
         ignore: tuple[str, ...] = (), prefer: Callable[[FinishedRun], bool] | None = None) -> FinishedRun | None:
    """The completed run `wanted` accepts: `prefer`red first, then closest to the defaults, then newest."""
    found = [r for r in runs if r.completed and wanted(r.cfg)]
    if not found:
        return None
    return max(found, key=lambda r: (bool(prefer(r)) if prefer else False, -departures(r.cfg, ignore), r.order))


def full_cifar(cfg: ExperimentConfig) -> bool:
    """The paper's setting: all of CIFAR-10's training set."""
    return cfg.dataset == "cifar10" and cfg.train_subset is None


def pct(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and value == value else "n/a"


def diff(ours: Any, paper: float) -> str:
    return f"{ours - paper:+.2f}" if isinstance(ours, (int, float)) and ours == ours else "—"


def epochs_text(run: FinishedRun) -> str:
    text = str(run.epochs)
    if not run.payload.get("stopped_early"):
        return text
    return text + (" (stopped: early)" if run.metrics.get("early_stop_epoch") is not None else " (stopped: fit)")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# ------------------------------------------------------------------------------------------
# Table 1

def table1_match(row: Table1Row, runs: list[FinishedRun], *, any_subset: bool = False) -> FinishedRun | None:
    def wanted(cfg: ExperimentConfig) -> bool:
        data = cfg.dataset == "cifar10" if any_subset else full_cifar(cfg)
        return (data and cfg.model == row.model and cfg.randomization == row.randomization
                and cfg.random_crop == row.random_crop and (cfg.weight_decay > 0) == row.weight_decay)

    return pick(runs, wanted)


def table1_runs(runs: list[FinishedRun]) -> list[tuple[Table1Row, FinishedRun | None]]:
    """Each Table 1 row, in the paper's order, with the run that stands for it."""
    return [(row, table1_match(row, runs)) for row in TABLE1]


def table1_section(runs: list[FinishedRun]) -> list[str]:
    header = ["Model", "Random crop", "Weight decay", "Paper train", "Paper test",
              "Ours train", "Ours test", "Δ train", "Δ test", "Epochs", "Experiment"]
    rows, done = [], 0
    for row, run in table1_runs(runs):
        yes_no = ["yes" if row.random_crop else "no", "yes" if row.weight_decay else "no"]
        if run is None:
            rows.append([row.label, *yes_no, row.train, row.test, NOT_RUN, NOT_RUN, "—", "—", "—", "—"])
            continue
        done += 1
        train, test = run.metrics["final_train_acc"], run.metrics["final_test_acc"]
        rows.append([row.label, *yes_no, row.train, row.test, pct(train), pct(test),
                     diff(train, row.paper_train), diff(test, row.paper_test), epochs_text(run),
                     f"`{run.experiment_id}`"])
    return [
        "## Table 1: CIFAR-10 train / test accuracy (%)", "",
        f"{done} of {len(TABLE1)} rows have a completed run. Ours: accuracies after the last epoch of the "
        "matching run (model, randomization, random crop, weight decay > 0, full CIFAR-10); where several "
        "match, the one closest to the paper's schedule, then the newest. Δ = ours − paper. The paper "
        "gives no weight-decay value; the recipes use 5e-4.", "",
        *markdown_table(header, rows), "",
    ]


# ------------------------------------------------------------------------------------------
# Demo, unfinished runs, damaged files

def latest_runs(runs: list[FinishedRun]) -> list[FinishedRun]:
    """The newest completed run of each experiment, by experiment ID."""
    newest: dict[str, FinishedRun] = {}
    for run in runs:
        if run.completed and (run.experiment_id not in newest or run.order > newest[run.experiment_id].order):
            newest[run.experiment_id] = run
    return sorted(newest.values(), key=lambda r: r.experiment_id)


def demo_runs(runs: list[FinishedRun]) -> list[FinishedRun]:
    """The newest completed run of each experiment trained on a subset (the CPU demo's kind)."""
    return [r for r in latest_runs(runs) if r.cfg.train_subset is not None]


def labels_text(cfg: ExperimentConfig) -> str:
    if cfg.randomization == "partial":
        return f"corrupted labels, p = {cfg.corrupt_prob:g}"
    return {"none": "true labels"}.get(cfg.randomization, cfg.randomization.replace("_", " "))


def demo_section(runs: list[FinishedRun], figure: str | None) -> list[str]:
    header = ["Experiment", "Model", "Data", "Train images", "Epochs", "Train acc", "Test acc"]
    rows = [[f"`{r.experiment_id}`", display_name(r.cfg.model), labels_text(r.cfg),
             str(r.cfg.train_subset), epochs_text(r), pct(r.metrics["final_train_acc"]),
             pct(r.metrics["final_test_acc"])] for r in runs]
    lines = ["## Demo: fitting random labels (CPU-sized)", "",
             "Networks trained on a fixed subset of the training set, tested on the full test set.", "",
             *markdown_table(header, rows), ""]
    for r in runs:
        if r.cfg.randomization != "none":
            lines.append(f"- {display_name(r.cfg.model)}, {labels_text(r.cfg)}: train "
                         f"accuracy {pct(r.metrics['final_train_acc'])}% against test accuracy "
                         f"{pct(r.metrics['final_test_acc'])}% (chance: {chance_acc(r.cfg.dataset):g}%).")
    if figure:
        lines += ["", f"![Demo: train and test accuracy per epoch]({figure})"]
    return lines + [""]


def unfinished_section(runs: list[FinishedRun]) -> list[str]:
    rows = [[f"`{r.experiment_id}`", f"{r.epochs} / {r.payload['target_epochs']}", f"`{r.path.name}`"]
            for r in runs if not r.completed]
    if not rows:
        return []
    return ["## Runs not completed", "", *markdown_table(["Experiment", "Epochs", "File"], rows), ""]


def damaged_section(damaged: list[tuple[Path, str]]) -> list[str]:
    if not damaged:
        return []
    return ["## Damaged or unreadable results files", "",
            "These files were skipped; nothing in this report comes from them.", "",
            *[f"- `{path}`: {problem}" for path, problem in damaged], ""]
