"""Configuration: defaults from the paper, validation, experiment IDs."""

from __future__ import annotations

import itertools
import re

import pytest

from fastzhang.cli import build_parser
from fastzhang.cli.run import config_from_args
from fastzhang.config import ConfigError, ExperimentConfig, experiment_id


def from_flags(*argv: str) -> ExperimentConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))[0]


def test_defaults_follow_the_paper():
    c = ExperimentConfig()
    assert (c.momentum, c.lr_decay, c.batch_size, c.epochs, c.weight_decay, c.random_crop) == (0.9, 0.95, 128, 100,
                                                                                               0.0, False)
    assert ExperimentConfig.from_mapping({"model": "inception"}).effective_lr == 0.1
    assert ExperimentConfig.from_mapping({"model": "inception_no_bn"}).effective_lr == 0.1
    for model in ("alexnet", "mlp1", "mlp3"):
        assert ExperimentConfig.from_mapping({"model": model}).effective_lr == 0.01


@pytest.mark.parametrize("values, expected", [
    ({}, "inception_cifar10_baseline"),
    ({"randomization": "random_labels"}, "inception_cifar10_random_labels"),
    ({"weight_decay": 0.0005, "random_crop": True}, "inception_cifar10_baseline_wd0.0005_crop"),
    ({"randomization": "partial", "corrupt_prob": 0.2}, "inception_cifar10_partial_corrupt_corrupt20"),
    ({"randomization": "shuffled_pixels"}, "inception_cifar10_shuffled_pixels"),
    ({"model": "mlp1", "lr": 0.05}, "mlp1_cifar10_baseline_lr0.05"),
    ({"epochs": 50}, "inception_cifar10_baseline_ep50"),
    ({"seed": 1}, "inception_cifar10_baseline_seed1"),
    ({"model": "alexnet", "lr": 0.01}, "alexnet_cifar10_baseline"),  # the model's default lr is not a change
    ({"model": "mlp1", "train_subset": 5000, "randomization": "random_labels"}, "mlp1_cifar10_random_labels_sub5000"),
    ({"stop_at_train_acc": 100.0, "randomization": "partial", "corrupt_prob": 0.4},
     "inception_cifar10_partial_corrupt_corrupt40_stop100"),
])
def test_experiment_ids(values, expected):
    assert ExperimentConfig.from_mapping(values).experiment_id == expected


def test_equivalent_spellings_share_one_id():
    rand = ExperimentConfig.from_mapping({"randomization": "random_labels"})
    assert ExperimentConfig.from_mapping({"randomization": "partial", "corrupt_prob": 1.0}) == rand
    assert ExperimentConfig.from_mapping({"randomization": "partial", "corrupt_prob": 0.0}) == ExperimentConfig()


def test_execution_settings_do_not_change_the_id():
    a = ExperimentConfig.from_mapping({"device": "cpu", "amp": "off", "compile": "on", "data_dir": "/x",
                                       "checkpoint_every_steps": 5, "loader": "dali", "use_wandb": True})
    assert a.experiment_id == "inception_cifar10_baseline"


def test_recipe_and_flags_give_one_id(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: inception\nrandomization: partial\ncorrupt_prob: 0.2\nrandom_crop: true\n"
                      "weight_decay: 0.0005\nepochs: 100\nbatch_size: 128\nlr: 0.1\nseed: 0\n")
    flags = from_flags("--model", "inception", "--dataset", "cifar10", "--randomization", "partial",
                       "--corrupt-prob", "0.2", "--random-crop", "--weight-decay", "0.0005", "--epochs", "100",
                       "--batch-size", "128", "--lr", "0.1", "--seed", "0", "--device", "auto")
    assert from_flags("--config", str(recipe)).experiment_id == flags.experiment_id \
        == "inception_cifar10_partial_corrupt_wd0.0005_crop_corrupt20"


def test_flags_override_the_recipe_and_defaults_do_not(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: mlp1\nepochs: 7\nrandom_crop: true\n")
    cfg = from_flags("--config", str(recipe), "--epochs", "9")
    assert (cfg.model, cfg.epochs, cfg.random_crop) == ("mlp1", 9, True)
    assert from_flags("--config", str(recipe), "--no-random-crop").random_crop is False


def test_different_configurations_never_share_an_id():
    grid = {
        "model": ["inception", "mlp1"], "randomization": ["none", "random_labels", "gaussian"],
        "weight_decay": [0.0, 0.0005], "random_crop": [False, True], "epochs": [100, 5],
        "lr": [None, 0.05], "seed": [0, 3], "data_seed": [None, 0, 3], "batch_size": [128, 64],
        "train_subset": [None, 500],
    }
    ids = {}
    for combo in itertools.product(*grid.values()):
        cfg = ExperimentConfig.from_mapping(dict(zip(grid, combo)))
        ids.setdefault(cfg.experiment_id, set()).add(tuple(sorted(cfg.identity().items(), key=str)))
    assert all(len(identities) == 1 for identities in ids.values())
    # seed x data seed: 4 experiments of 6 spellings (a data seed equal to the seed is the default)
    assert len(ids) == 2 * 3 * 2 * 2 * 2 * 2 * 4 * 2 * 2


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "a/b\\c", "x\x00y", "rm -rf *; echo", "é?<>|:\"'", "." * 300])
def test_ids_are_safe_file_names_whatever_the_input(hostile):
    identity = ExperimentConfig().identity() | {"model": hostile, "dataset": hostile, "randomization": hostile}
    eid = experiment_id(identity)
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", eid) and len(eid) <= 180
    assert eid not in (".", "..") and "/" not in eid and not eid.startswith(".")


@pytest.mark.parametrize("values, message", [
    ({"modle": "mlp1"}, "unknown setting 'modle'"),
    ({"epochs": "ten"}, "epochs must be an integer"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"random_crop": "yes"}, "random_crop must be true or false"),
    ({"corrupt_prob": 1.5, "randomization": "partial"}, r"corrupt_prob must be in \[0, 1\]"),
    ({"lr": -0.1}, "lr must be > 0"),
    ({"model": "resnet"}, "model must be one of"),
    ({"randomization": "noise"}, "randomization must be one of"),
    ({"corrupt_prob": 0.3}, "corrupt_prob applies only to randomization 'partial'"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda"),
    ({"stop_at_train_acc": 101}, r"stop_at_train_acc must be in \(0, 100\]"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"epochs": 3, "early_stop_patience": 2, "early_stop_min_epochs": 5},
     r"early_stop_min_epochs must be at most epochs \(3\); got 5"),
    ({"model": "MLP1"}, r"model must be one of .*; got 'MLP1' \(did you mean mlp1\?\)"),
])
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message) as e:
        ExperimentConfig.from_mapping(values)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("", "recipe is empty"),
    ("- model: mlp1\n", "expected a mapping of settings, got a list"),
    ("model: [mlp1\n", "broken YAML at line"),
    ("42\n", "expected a mapping of settings, got a number"),
])
def test_bad_recipes(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_yaml(recipe)
