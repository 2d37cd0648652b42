"""The report's CIFAR-100 section: train and test accuracy of each recipes/cifar100 run, chance marked.

Zhang et al. 2017 train on CIFAR-10 (and ImageNet); the CIFAR-100 runs extend the
study as the most complete public reproduction does: Inception, AlexNet and
MLP 1x512 on true and on random labels, the paper's schedule. With 100 classes
chance is 1%: random labels should be fitted (train accuracy near 100%) while
test accuracy stays near 1%.
"""

from __future__ import annotations

from fastzhang.config import ExperimentConfig
from fastzhang.models.registry import display_name
from fastzhang.report.paper import chance_acc
from fastzhang.report.tables import (
    NOT_RUN, FinishedRun, diff, epochs_text, labels_text, markdown_table, pct, pick,
)

DATASET = "cifar100"
MODELS = ("inception", "alexnet", "mlp1")
LABELS = ("none", "random_labels")


def cifar100_match(model: str, randomization: str, runs: list[FinishedRun]) -> FinishedRun | None:
    """The run of one row: full CIFAR-100, no crop or weight decay (early stopping counts as a departure)."""
    def wanted(cfg: ExperimentConfig) -> bool:
        return (cfg.dataset == DATASET and cfg.train_subset is None and cfg.model == model
                and cfg.randomization == randomization and not cfg.random_crop and cfg.weight_decay == 0)

    return pick(runs, wanted)


def cifar100_section(runs: list[FinishedRun]) -> list[str]:
    """The section's Markdown lines; none when no CIFAR-100 run exists at all."""
    if not any(r.cfg.dataset == DATASET for r in runs):
        return []
    chance = chance_acc(DATASET)
    header = ["Model", "Labels", "Train acc", "Test acc", "Test − chance", "Epochs", "Experiment"]
    rows = []
    for model in MODELS:
        for randomization in LABELS:
            run = cifar100_match(model, randomization, runs)
            labels = labels_text(ExperimentConfig(model=model, dataset=DATASET, randomization=randomization))
            if run is None:
                rows.append([display_name(model), labels, NOT_RUN, NOT_RUN, "—", "—", "—"])
                continue
            test = run.metrics["final_test_acc"]
            above = diff(test, chance)
            rows.append([display_name(model), labels, pct(run.metrics["final_train_acc"]), pct(test), above,
                         epochs_text(run), f"`{run.experiment_id}`"])
    return [
        "## CIFAR-100: train / test accuracy (%)", "",
        f"Chance accuracy on CIFAR-100 is {chance:g}% (100 classes). Accuracies after the last epoch of "
        "the matching run (full CIFAR-100, no random crop, no weight decay; recipes/cifar100); where "
        "several match, the one closest to the paper's schedule (early stopping is a departure), then the newest.", "",
        *markdown_table(header, rows), "",
    ]
