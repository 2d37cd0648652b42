"""Early stopping: the rule, its ID tags, a real run that ends where the rule says, and its exact resumption."""

from __future__ import annotations

import math
import re

import pytest
from conftest import TINY_RUN, Fz, assert_same_training

from fastzhang import checkpoint, results
from fastzhang.config import ExperimentConfig
from fastzhang.train.engine import early_stop_due

PATIENCE, MIN_EPOCHS, EPOCHS = 4, 5, 30
# Batches of 32 halve the steps; test accuracy last improves early (at epoch 3 here: the run stops at 7).
ES_RUN = (*TINY_RUN, "--batch-size", 32, "--epochs", EPOCHS, "--early-stop-patience", PATIENCE,
          "--early-stop-min-epochs", MIN_EPOCHS)
ES_ID = "mlp1_synthetic_random_labels_bs32_ep30_es4_esmin5"


def rule_epoch(test_acc: list[float], patience: int, min_epochs: int) -> int | None:
    """The rule written out: the first epoch >= min_epochs whose best test accuracy was first reached
    `patience` or more epochs before (an equal accuracy is no improvement)."""
    best, improved = -math.inf, 0
    for epoch, acc in enumerate(test_acc, 1):
        if acc > best:
            best, improved = acc, epoch
        if epoch >= min_epochs and epoch - improved >= patience:
            return epoch
    return None


def stops_at(test_acc: list[float], **settings) -> int | None:
    """The first epoch after which the engine's rule ends the run."""
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "epochs": 100, **settings})
    epochs = list(range(1, len(test_acc) + 1))
    return next((e for e in epochs if early_stop_due(cfg, epochs[:e], test_acc[:e])), None)


@pytest.mark.parametrize("test_acc,settings,expected", [
    ([10, 20, 30, 25, 26, 29, 31, 30], {"early_stop_patience": 3}, 6),
    ([10, 20, 20, 20, 20], {"early_stop_patience": 3}, 5),  # equalling the best is no improvement
    ([50, 40, 30, 20, 10], {"early_stop_patience": 1}, 2),
    ([50, 40, 30, 20, 10], {"early_stop_patience": 1, "early_stop_min_epochs": 4}, 4),
    ([10, 20, 30, 40, 50], {"early_stop_patience": 1}, None),
    ([50, 40, 30, 20, 10], {}, None),  # off by default
])
def test_the_rule(test_acc, settings, expected):
    assert stops_at(test_acc, **settings) == expected
    if settings:
        assert rule_epoch(test_acc, settings["early_stop_patience"], settings.get("early_stop_min_epochs", 0)) \
            == expected


def test_settings_are_part_of_the_experiment():
    base = {"model": "inception", "dataset": "cifar100", "randomization": "random_labels"}
    assert ExperimentConfig.from_mapping(base).experiment_id == "inception_cifar100_random_labels"
    cfg = ExperimentConfig.from_mapping({**base, "early_stop_patience": 10, "early_stop_min_epochs": 25})
    assert cfg.experiment_id == "inception_cifar100_random_labels_es10_esmin25"
    assert {"early_stop_patience", "early_stop_min_epochs"} <= set(cfg.identity())


@pytest.mark.e2e
def test_a_run_ends_where_the_rule_says_and_resumes_there_exactly(reference_run, tmp_path):
    reference = reference_run(ES_RUN)
    want_ckpt, want = reference.result()
    m = want["metrics"]
    stop = rule_epoch(m["test_acc"], PATIENCE, MIN_EPOCHS)
    assert stop is not None and stop < EPOCHS
    assert want["experiment_id"] == ES_ID and m["epochs"] == list(range(1, stop + 1))
    assert (want["completed"], want["stopped_early"], want["total_epochs"], want["target_epochs"]) == \
        (True, True, stop, EPOCHS)
    assert (m["early_stop_epoch"], m["fit_epoch"]) == (stop, None)
    improved = min(m["epochs"], key=lambda e: (-m["test_acc"][e - 1], e))  # the first to reach the best
    assert m["best_epoch"] == improved

    # Killed inside the window (after the last improvement, before the stop), then resumed.
    window = improved + 1
    assert window < stop
    killed = Fz(ES_RUN, tmp_path, name="killed")
    killed.wait_for(rf"{ES_ID} epoch {window}/{EPOCHS}:", timeout=120)
    killed.kill()
    assert not results.files_for(tmp_path / "results", ES_ID), "the kill came after the run had ended"
    resumed = Fz(ES_RUN, tmp_path, name="resumed")
    assert resumed.wait() == 0, resumed.stderr
    assert window <= int(re.search(r"resuming after epoch (\d+)", resumed.stderr)[1]) < stop
    got_ckpt = checkpoint.load(checkpoint.latest_path(tmp_path / "checkpoints", ES_ID))
    assert_same_training(got_ckpt, want_ckpt)
    [path] = results.files_for(tmp_path / "results", ES_ID)
    got = results.read(path).payload
    assert (got["total_epochs"], got["metrics"]["early_stop_epoch"], got["metrics"]["best_epoch"]) == \
        (stop, stop, m["best_epoch"])

    again = Fz(ES_RUN, tmp_path, name="again")
    assert again.wait() == 0, again.stderr
    assert "EXPERIMENT ALREADY COMPLETED" in again.stdout
    ended = f"early stopping after epoch {stop}: test accuracy last improved at epoch {improved} (patience {PATIENCE})"
    assert f"  Ended: {ended}" in again.stdout.splitlines()
    assert f"fastzhang: {ES_ID} completed: {ended}; final train accuracy" in resumed.stdout  # why it stopped
    assert re.search(r"^  Completed: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", again.stdout, re.M)  # not 20261203_164602


@pytest.mark.e2e
def test_a_results_file_from_before_early_stopping_stays_valid(reference_run):
    _, payload = reference_run(ES_RUN).result()
    older = {**payload, "metrics": {k: v for k, v in payload["metrics"].items()
                                    if k not in ("best_epoch", "early_stop_epoch")}}
    assert results.validate(older) is None
    assert results.validate({**payload, "metrics": {**payload["metrics"], "early_stop_epoch": "5"}}) == \
        "metrics.early_stop_epoch should be a number or null, found '5'"
