"""Results files -> runs -> configurations over seeds, and the report's Markdown tables.

A run is a valid results file whose config loads and gives the file's own experiment ID.
A configuration is an experiment ID without its seeds (`seed`, `data_seed`): its Group holds
the newest completed run of each of its experiment IDs, one per seed. For each Table 1 row or
figure point the report picks one group by its config: it prefers the paper's schedule (fewest
settings away from the defaults), then more seeds, then the newest file, but accepts any group
that matches the row, and shows its epochs, configuration and seeds so the reader knows. Every
number of a group is a stats.Summary over its runs (`spread`, `delta`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from fastzhang.config import ExperimentConfig, experiment_id
from fastzhang.errors import UsageError
from fastzhang.models.registry import display_name
from fastzhang.report.paper import TABLE1, Table1Row, chance_acc
from fastzhang.report.stats import Summary, summarize, welch

# Identity settings that are not part of a row's definition; the fewer differ
# from the defaults, the closer a run is to the paper's schedule.
SCHEDULE_FIELDS = ("epochs", "batch_size", "lr", "lr_decay", "momentum", "stop_at_train_acc",
                   "early_stop_patience", "early_stop_min_epochs")
_DEFAULTS = ExperimentConfig()
NOT_RUN = "not run"
STATISTICS = (
    "Over seeds: each configuration's runs (one per seed, its newest completed results file) give "
    "mean ± sample standard deviation (min–max) and n; one run shows its value alone. Δ = mean − reference "
    "(the paper's value, or chance); from n = 2 on, followed by the 95% t-interval of the mean less the "
    "reference (Student's t, n − 1 degrees of freedom) and ✓ when the reference lies inside it, ✗ when not. "
    "Figures draw the mean over the seeds with a band from their minimum to their maximum (none for one run).")


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
        try:  # a file from before data_seed existed reads as data seed = seed (the config's default)
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


def config_id(cfg: ExperimentConfig) -> str:
    """The experiment ID without the seeds: what the runs of one configuration share."""
    return experiment_id({**cfg.identity(), "seed": 0, "data_seed": 0})


@dataclass(frozen=True)
class Group:
    """The completed runs of one configuration, one per (seed, data seed), in that order."""

    runs: tuple[FinishedRun, ...]

    @property
    def cfg(self) -> ExperimentConfig:
        return self.runs[0].cfg

    @property
    def n(self) -> int:
        return len(self.runs)

    def stat(self, value: str | Callable[[FinishedRun], Any]) -> Summary:
        """A metric (a key of the results file's metrics, or a function of a run) over the runs."""
        return summarize(r.metrics[value] if isinstance(value, str) else value(r) for r in self.runs)

    def each(self, text: Callable[[FinishedRun], str]) -> str:
        """What the runs say, each different text once: "100", or "3 (stopped: fit), 4"."""
        return ", ".join(dict.fromkeys(text(r) for r in self.runs))

    def who(self) -> str:
        seeds = self.each(lambda r: f"{r.cfg.seed}" + (f" (data {r.cfg.data_seed})" if r.cfg.data_seed is not None
                                                       else ""))
        return f"`{config_id(self.cfg)}`, n = {self.n} (seed{'s' * (self.n > 1)} {seeds})"


def latest_runs(runs: list[FinishedRun]) -> list[FinishedRun]:
    """The newest completed run of each experiment, by experiment ID."""
    newest = {r.experiment_id: r for r in sorted((r for r in runs if r.completed), key=lambda r: r.order)}
    return sorted(newest.values(), key=lambda r: r.experiment_id)


def groups(runs: list[FinishedRun]) -> list[Group]:
    """One Group per configuration, by its ID without the seeds."""
    by: dict[str, list[FinishedRun]] = {}
    for run in latest_runs(runs):
        by.setdefault(config_id(run.cfg), []).append(run)
    return [Group(tuple(sorted(found, key=lambda r: (r.cfg.seed, r.cfg.effective_data_seed))))
            for _, found in sorted(by.items())]


def departures(cfg: ExperimentConfig, ignore: tuple[str, ...] = ()) -> int:
    return sum(getattr(cfg, f) != getattr(_DEFAULTS, f) for f in SCHEDULE_FIELDS if f not in ignore)


def pick(runs: Iterable[FinishedRun], wanted: Callable[[ExperimentConfig], bool], *,
         ignore: tuple[str, ...] = (), prefer: Callable[[Group], int] | None = None) -> Group | None:
    """The configuration `wanted` accepts: `prefer`red first, then closest to the defaults, more seeds, newest."""
    found = [g for g in groups(list(runs)) if wanted(g.cfg)]
    return max(found, default=None, key=lambda g: (prefer(g) if prefer else 0, -departures(g.cfg, ignore), g.n,
                                                   max(r.order for r in g.runs)))


def full_cifar(cfg: ExperimentConfig) -> bool:
    """The paper's setting: all of CIFAR-10's training set."""
    return cfg.dataset == "cifar10" and cfg.train_subset is None


def pct(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and value == value else "n/a"


def spread(s: Summary, digits: int = 2) -> str:
    """mean ± sample std (min–max); one value alone; n/a for none."""
    if s.n < 2:
        return f"{s.mean:.{digits}f}" if s.n else "n/a"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f} ({s.lo:.{digits}f}–{s.hi:.{digits}f})"


def delta(s: Summary, reference: float) -> str:
    """mean − reference; from two values on with the t-interval less the reference and ✓ (reference inside) or ✗."""
    interval = s.interval()
    if interval is None:
        return f"{s.mean - reference:+.2f}" if s.n else "—"
    lo, hi = interval
    return f"{s.mean - reference:+.2f} [{lo - reference:+.2f}, {hi - reference:+.2f}] {mark(lo <= reference <= hi)}"


def mark(inside: bool) -> str:
    return "✓" if inside else "✗"


def epochs_text(run: FinishedRun) -> str:
    text = str(run.epochs)
    if not run.payload.get("stopped_early"):
        return text
    return text + (" (stopped: early)" if run.metrics.get("early_stop_epoch") is not None else " (stopped: fit)")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def yes_no(on: bool) -> str:
    return "yes" if on else "no"


# ------------------------------------------------------------------------------------------
# Table 1, and the differences the paper reads from it

def table1_match(row: Table1Row, runs: list[FinishedRun], *, any_subset: bool = False) -> Group | None:
    def wanted(cfg: ExperimentConfig) -> bool:
        data = cfg.dataset == "cifar10" if any_subset else full_cifar(cfg)
        return (data and cfg.model == row.model and cfg.randomization == row.randomization
                and cfg.random_crop == row.random_crop and (cfg.weight_decay > 0) == row.weight_decay)

    return pick(runs, wanted)


def table1_groups(runs: list[FinishedRun]) -> list[tuple[Table1Row, Group | None]]:
    """Each Table 1 row, in the paper's order, with the configuration that stands for it."""
    return [(row, table1_match(row, runs)) for row in TABLE1]


def accuracy_cells(group: Group | None, *references: float) -> list[str]:
    """Train and test accuracy over the seeds, Δ against the references (train's and test's, or test's alone),
    the epochs and the configuration; "not run" and dashes without a group."""
    if group is None:
        return [NOT_RUN, NOT_RUN] + ["—"] * (len(references) + 2)
    stats = [group.stat("final_train_acc"), group.stat("final_test_acc")]
    return ([spread(s) for s in stats] + [delta(s, ref) for s, ref in zip(stats[-len(references):], references)]
            + [group.each(epochs_text), group.who()])


def table1_section(runs: list[FinishedRun]) -> list[str]:
    header = ["Model", "Random crop", "Weight decay", "Paper train", "Paper test",
              "Ours train", "Ours test", "Δ train", "Δ test", "Epochs", "Configuration"]
    found = table1_groups(runs)
    rows = [[row.label, yes_no(row.random_crop), yes_no(row.weight_decay), row.train, row.test,
             *accuracy_cells(group, row.paper_train, row.paper_test)] for row, group in found]
    return [
        "## Table 1: CIFAR-10 train / test accuracy (%)", "",
        f"{sum(g is not None for _, g in found)} of {len(TABLE1)} rows have a completed run. Ours: accuracies after "
        "the last epoch of the matching runs (model, randomization, random crop, weight decay > 0, full CIFAR-10), "
        "over seeds; where several configurations match, the one closest to the paper's schedule, then the one "
        "with more seeds, then the newest. Δ = ours − paper. The paper gives no weight-decay value; the recipes "
        "use 5e-4.", "",
        *markdown_table(header, rows), "", *differences_section(dict(found)),
    ]


REGULARIZERS = (("weight_decay", "weight decay"), ("random_crop", "random crop"))


def without(row: Table1Row, field: str) -> Table1Row | None:
    """The Table 1 row that is `row` without the regularizer `field`, when `row` has it."""
    same = ("model", "randomization", *(f for f, _ in REGULARIZERS if f != field))
    return next((r for r in TABLE1 if getattr(row, field) and not getattr(r, field)
                 and all(getattr(r, f) == getattr(row, f) for f in same)), None)


def differences_section(found: dict[Table1Row, Group | None]) -> list[str]:
    """Each pair of Table 1 rows that differ in one regularizer: the difference of the mean test accuracies."""
    rows = []
    for row, group in found.items():
        for field, name in REGULARIZERS:
            other = without(row, field)
            if other is None:
                continue
            a, b = (g.stat("final_test_acc") if g else summarize(()) for g in (group, found[other]))
            paper, interval = row.paper_test - other.paper_test, welch(a, b)
            reading = "—"
            if interval is not None:
                _, lo, hi = interval
                verdict = "helps" if lo > 0 else "hurts" if hi < 0 else "no clear difference"
                reading = f"[{lo:+.2f}, {hi:+.2f}] {verdict} {mark(lo <= paper <= hi)}"
            beside = [n for f, n in REGULARIZERS if f != field and getattr(row, f)] or ["nothing"]
            rows.append([row.label, name, beside[0], f"{paper:+.2f}",
                         f"{a.mean - b.mean:+.2f}" if a.n and b.n else NOT_RUN, reading, f"{a.n} / {b.n}"])
    return [
        "### Regularizers: the differences the paper reads from Table 1", "",
        "Each pair of rows that differ in one regularizer: test accuracy with it minus without it, on the "
        "means, with the 95% Welch interval (n ≥ 2 on both sides): the regularizer helps or hurts when the "
        "interval leaves out 0, else no clear difference; ✓ when the paper's difference lies inside it.", "",
        *markdown_table(["Model", "Adds", "Beside", "Paper Δ test", "Ours Δ test", "95% interval (Welch)",
                         "n with / without"], rows), "",
    ]


# ------------------------------------------------------------------------------------------
# CIFAR-100 (recipes/cifar100: Zhang et al. train on CIFAR-10 only; the most complete public reproduction adds
# it): random labels should be fitted while test accuracy stays near chance, 1%.

CIFAR100_MODELS = ("inception", "alexnet", "mlp1")
CIFAR100_LABELS = ("none", "random_labels")


def cifar100_section(runs: list[FinishedRun]) -> list[str]:
    """The section's Markdown lines; none when no CIFAR-100 run exists at all."""
    if not any(r.cfg.dataset == "cifar100" for r in runs):
        return []
    chance = chance_acc("cifar100")
    rows = []
    for model in CIFAR100_MODELS:
        for labels in CIFAR100_LABELS:
            group = pick(runs, lambda c: (c.dataset == "cifar100" and c.train_subset is None and c.model == model
                                          and c.randomization == labels and not c.random_crop and not c.weight_decay))
            rows.append([display_name(model), labels_text(ExperimentConfig(model=model, randomization=labels)),
                         *accuracy_cells(group, chance)])
    header = ["Model", "Labels", "Train acc", "Test acc", "Test − chance", "Epochs", "Configuration"]
    return [
        "## CIFAR-100: train / test accuracy (%)", "",
        f"Chance accuracy on CIFAR-100 is {chance:g}% (100 classes). Accuracies after the last epoch of "
        "the matching runs (full CIFAR-100, no random crop, no weight decay; recipes/cifar100); where several "
        "configurations match, the one closest to the paper's schedule (early stopping is a departure), then the "
        "one with more seeds, then the newest.", "",
        *markdown_table(header, rows), "",
    ]


# ------------------------------------------------------------------------------------------
# Demo, unfinished runs, damaged files

def demo_groups(runs: list[FinishedRun]) -> list[Group]:
    """The configurations trained on a subset (the CPU demo's kind)."""
    return [g for g in groups(runs) if g.cfg.train_subset is not None]


def labels_text(cfg: ExperimentConfig) -> str:
    if cfg.randomization == "partial":
        return f"corrupted labels, p = {cfg.corrupt_prob:g}"
    return {"none": "true labels"}.get(cfg.randomization, cfg.randomization.replace("_", " "))


def demo_section(found: list[Group], figure: str | None) -> list[str]:
    if not found:
        return []
    header = ["Model", "Data", "Train images", "Train acc", "Test acc", "Test − chance", "Epochs", "Configuration"]
    rows = [[display_name(g.cfg.model), labels_text(g.cfg), str(g.cfg.train_subset),
             *accuracy_cells(g, chance_acc(g.cfg.dataset))] for g in found]
    lines = ["## Demo: fitting random labels (CPU-sized)", "",
             "Networks trained on a fixed subset of the training set, tested on the full test set.", "",
             *markdown_table(header, rows), ""]
    lines += [f"- {display_name(g.cfg.model)}, {labels_text(g.cfg)} (n = {g.n}): train accuracy "
              f"{pct(g.stat('final_train_acc').mean)}% against test accuracy {pct(g.stat('final_test_acc').mean)}% "
              f"(chance: {chance_acc(g.cfg.dataset):g}%)." for g in found if g.cfg.randomization != "none"]
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
