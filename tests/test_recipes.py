"""The recipes in recipes/: they load, cover Table 1 and Figure 1, and shared experiments share an ID."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fastzhang.config import ExperimentConfig
from fastzhang.report.fit import FIT_THRESHOLD
from fastzhang.report.paper import CORRUPTION_LEVELS, FIGURE1A_CURVES, FIGURE1B_MODELS, TABLE1

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ALL = sorted(RECIPES.glob("*/*.yaml"))
COUNTS = {"table1": 19, "figure1a": 5, "figure1b": 18, "baseline": 1, "random_labels": 1, "demo": 2,
          "cifar100": 6}
# Settings a recipe states even at their default value, because they define its row.
DEFINING = {"model", "randomization", "corrupt_prob", "random_crop", "weight_decay", "stop_at_train_acc"}


def load(rel: str) -> ExperimentConfig:
    return ExperimentConfig.from_yaml(RECIPES / rel)


def category(name: str) -> list[ExperimentConfig]:
    return [ExperimentConfig.from_yaml(p) for p in sorted((RECIPES / name).glob("*.yaml"))]


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads_and_says_what_it_reproduces(path):
    cfg = ExperimentConfig.from_yaml(path)
    text = path.read_text()
    assert text.startswith("# "), "a recipe starts with a comment naming its table row or figure"
    values = yaml.safe_load(text)
    defaults = ExperimentConfig()
    for key, value in values.items():
        assert key in DEFINING or value != getattr(defaults, key), f"{key}: restates a default"
    assert cfg.dataset == ("cifar100" if path.parent.name == "cifar100" else "cifar10")
    assert cfg.device == "auto"  # execution is the runner's choice


def test_categories_hold_the_listed_experiments():
    found = {d.name: len(list(d.glob("*.yaml"))) for d in RECIPES.iterdir() if d.is_dir()}
    assert found == COUNTS
    for name in COUNTS:
        ids = [c.experiment_id for c in category(name)]
        assert len(set(ids)) == len(ids), f"{name}: two recipes define the same experiment"
    assert len({c.experiment_id for name in COUNTS for c in category(name)}) == 48


def test_table1_has_every_row_of_the_paper():
    rows = {(c.model, c.randomization, c.random_crop, c.weight_decay > 0) for c in category("table1")}
    assert rows == {(r.model, r.randomization, r.random_crop, r.weight_decay) for r in TABLE1}
    for path in sorted((RECIPES / "table1").glob("*.yaml")):
        cfg = ExperimentConfig.from_yaml(path)
        assert cfg.weight_decay in (0.0, 5e-4)
        assert ("is a choice: the paper gives no value" in path.read_text()) == (cfg.weight_decay > 0)
        # The paper's schedule: every other identity setting at its default.
        plain = cfg.replace(model="inception", randomization="none", corrupt_prob=0.0, random_crop=False,
                            weight_decay=0.0)
        assert plain == ExperimentConfig()


def test_figure1a_is_inception_under_each_randomization_with_one_schedule():
    configs = category("figure1a")
    assert sorted(c.randomization for c in configs) == sorted(r for r, _ in FIGURE1A_CURVES)
    assert {c.replace(randomization="none", corrupt_prob=0.0) for c in configs} == {ExperimentConfig(model="inception")}


def test_figure1b_is_three_models_at_six_corruption_levels():
    points = {}
    for c in category("figure1b"):
        p = {"none": 0.0, "random_labels": 1.0}.get(c.randomization, c.corrupt_prob)
        points[(c.model, p)] = c
        # They stop where the report counts a fit by default (99%: MLP 1x512 never reaches 100%).
        assert c.stop_at_train_acc == FIT_THRESHOLD == 99.0 and not c.random_crop and c.weight_decay == 0
        assert c.epochs == 100 and c.lr is None
    assert set(points) == {(m, p) for m in FIGURE1B_MODELS for p in CORRUPTION_LEVELS}
    assert points[("mlp1", 0.0)].randomization == "none"  # written partial p=0, canonical spelling
    assert points[("alexnet", 1.0)].randomization == "random_labels"
    assert points[("inception", 0.4)].experiment_id == "inception_cifar10_partial_corrupt_corrupt40_stop99"
    assert points[("mlp1", 1.0)].experiment_id == "mlp1_cifar10_random_labels_stop99"


def test_shared_experiments_have_one_id():
    baseline = load("baseline/inception_baseline.yaml").experiment_id
    assert baseline == "inception_cifar10_baseline"
    assert load("table1/inception_baseline.yaml").experiment_id == baseline
    assert load("figure1a/inception_true_labels.yaml").experiment_id == baseline
    random = load("random_labels/inception_random_labels.yaml").experiment_id
    assert random == "inception_cifar10_random_labels"
    assert load("table1/inception_random_labels.yaml").experiment_id == random
    assert load("figure1a/inception_random_labels.yaml").experiment_id == random


def test_demo_pair_differs_only_in_the_labels():
    true, random = load("demo/mlp1_true_labels.yaml"), load("demo/mlp1_random_labels.yaml")
    assert (true.randomization, random.randomization) == ("none", "random_labels")
    assert random.replace(randomization="none", corrupt_prob=0.0) == true
    assert true.model == "mlp1" and true.train_subset == 5000 and true.epochs <= 60


def test_cifar100_is_three_models_on_true_and_random_labels_with_the_paper_schedule():
    from fastzhang.report.tables import CIFAR100_LABELS, CIFAR100_MODELS

    configs = category("cifar100")
    assert sorted((c.model, c.randomization) for c in configs) == sorted(
        (m, r) for m in CIFAR100_MODELS for r in CIFAR100_LABELS)
    for c in configs:
        assert c.replace(model="inception", dataset="cifar10", randomization="none", corrupt_prob=0.0) == \
            ExperimentConfig()
    assert load("cifar100/inception_random_labels.yaml").experiment_id == "inception_cifar100_random_labels"
    assert load("cifar100/mlp1_true_labels.yaml").experiment_id == "mlp1_cifar100_baseline"
