"""Zhang et al. 2017's numbers, and the rows and curves the report rebuilds, as data.

Table 1's accuracies are kept as the paper prints them ("100.0", "99.90"), so the
report quotes the paper exactly; `Table1Row.paper_train`/`paper_test` give floats.
Source: the project's facts sheet on the paper (zhang2017-facts.md: Table 1, Figure 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastzhang.data.sources import classes
from fastzhang.models.registry import display_name


def chance_acc(dataset: str) -> float:
    """Accuracy (%) of guessing a class: 10 on CIFAR-10, 1 on CIFAR-100."""
    return 100.0 / len(classes(dataset))


CHANCE_ACC = chance_acc("cifar10")  # the paper's data set


@dataclass(frozen=True)
class Table1Row:
    model: str  # config.model
    randomization: str  # config.randomization: "none" or "random_labels"
    random_crop: bool
    weight_decay: bool  # any weight decay > 0 (the paper gives no value)
    train: str  # the paper's train accuracy (%), as printed
    test: str  # the paper's test accuracy (%), as printed

    @property
    def label(self) -> str:
        name = display_name(self.model)
        return f"{name}, random labels" if self.randomization == "random_labels" else name

    @property
    def paper_train(self) -> float:
        return float(self.train)

    @property
    def paper_test(self) -> float:
        return float(self.test)


# Table 1 (CIFAR-10), in the paper's order.
TABLE1 = (
    Table1Row("inception", "none", True, True, "100.0", "89.05"),
    Table1Row("inception", "none", True, False, "100.0", "89.31"),
    Table1Row("inception", "none", False, True, "100.0", "86.03"),
    Table1Row("inception", "none", False, False, "100.0", "85.75"),
    Table1Row("inception", "random_labels", False, False, "100.0", "9.78"),
    Table1Row("inception_no_bn", "none", False, True, "100.0", "83.00"),
    Table1Row("inception_no_bn", "none", False, False, "100.0", "82.00"),
    Table1Row("inception_no_bn", "random_labels", False, False, "100.0", "10.12"),
    Table1Row("alexnet", "none", True, True, "99.90", "81.22"),
    Table1Row("alexnet", "none", True, False, "99.82", "79.66"),
    Table1Row("alexnet", "none", False, True, "100.0", "77.36"),
    Table1Row("alexnet", "none", False, False, "100.0", "76.07"),
    Table1Row("alexnet", "random_labels", False, False, "99.82", "9.86"),
    Table1Row("mlp3", "none", False, True, "100.0", "53.35"),
    Table1Row("mlp3", "none", False, False, "100.0", "52.39"),
    Table1Row("mlp3", "random_labels", False, False, "100.0", "10.48"),
    Table1Row("mlp1", "none", False, True, "99.80", "50.39"),
    Table1Row("mlp1", "none", False, False, "100.0", "50.51"),
    Table1Row("mlp1", "random_labels", False, False, "99.34", "10.61"),
)

# Figure 1a: Inception, one training-loss curve per randomization, same schedule.
FIGURE1A_MODEL = "inception"
FIGURE1A_CURVES = (
    ("none", "true labels"),
    ("random_labels", "random labels"),
    ("shuffled_pixels", "shuffled pixels"),
    ("random_pixels", "random pixels"),
    ("gaussian", "Gaussian"),
)

# Figure 1b/1c: one line per model against the label-corruption level p.
FIGURE1B_MODELS = ("inception", "alexnet", "mlp1")
CORRUPTION_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

# Figure 2, its CIFAR-10 half: Inception with and without BatchNorm on true labels, test accuracy
# over training with the cumulative best shaded (the paper's figure, not the facts sheet's).
FIGURE2_MODELS = ("inception", "inception_no_bn")
