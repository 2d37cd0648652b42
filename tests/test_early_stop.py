"""Early stopping: the rule, its ID tags, a run that ends where the rule says, and its exact resumption.

The runs go through `fastzhang run`'s command line in this process, on one thread.
"""

from __future__ import annotations

import math
import re

import pytest
from conftest import TINY_RUN, assert_same_training, run_cli

from fastzhang import checkpoint, results
from fastzhang.config import ExperimentConfig
from fastzhang.train.engine import early_stop_due
from test_engine import stop_requested_after

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


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> tuple[dict, dict]:
    """(final checkpoint, results file) of the run never stopped, through `fastzhang run` in this process."""
    folder = tmp_path_factory.mktemp("early_stop")
    assert run_cli([*ES_RUN, "--quiet", "--checkpoint-dir", folder / "checkpoints",
                    "--results-dir", folder / "results"]) == 0
    [entry] = results.scan(folder / "results")
    return checkpoint.load(checkpoint.latest_path(folder / "checkpoints", ES_ID)), entry.payload


@pytest.mark.slow  # whole runs, in process: ~3 s
def test_a_run_ends_where_the_rule_says_and_resumes_there_exactly(reference, tmp_path, monkeypatch, capsys):
    want_ckpt, want = reference
    m = want["metrics"]
    stop = rule_epoch(m["test_acc"], PATIENCE, MIN_EPOCHS)
    assert stop is not None and stop < EPOCHS
    assert want["experiment_id"] == ES_ID and m["epochs"] == list(range(1, stop + 1))
    assert (want["completed"], want["stopped_early"], want["total_epochs"], want["target_epochs"]) == \
        (True, True, stop, EPOCHS)
    assert (m["early_stop_epoch"], m["fit_epoch"]) == (stop, None)
    improved = min(m["epochs"], key=lambda e: (-m["test_acc"][e - 1], e))  # the first to reach the best
    assert m["best_epoch"] == improved

    # Stopped inside the window (after the last improvement, before the stop), then resumed.
    window = improved + 1
    assert window < stop
    monkeypatch.chdir(tmp_path)
    with stop_requested_after(monkeypatch, epoch=window):
        assert run_cli(ES_RUN) == 143
    assert checkpoint.load(checkpoint.latest_path("checkpoints", ES_ID))["epoch"] == window
    assert not results.files_for("results", ES_ID)
    capsys.readouterr()
    assert run_cli(ES_RUN) == 0
    resumed = capsys.readouterr()
    assert f"resuming after epoch {window}:" in resumed.err
    assert_same_training(checkpoint.load(checkpoint.latest_path("checkpoints", ES_ID)), want_ckpt)
    [path] = results.files_for("results", ES_ID)
    got = results.read(path).payload
    assert (got["total_epochs"], got["metrics"]["early_stop_epoch"], got["metrics"]["best_epoch"]) == \
        (stop, stop, m["best_epoch"])

    assert run_cli(ES_RUN) == 0
    again = capsys.readouterr().out
    assert "EXPERIMENT ALREADY COMPLETED" in again
    ended = f"early stopping after epoch {stop}: test accuracy last improved at epoch {improved} (patience {PATIENCE})"
    assert f"  Ended: {ended}" in again.splitlines()
    assert f"fastzhang: {ES_ID} completed: {ended}; final train accuracy" in resumed.out  # why it stopped
    assert re.search(r"^  Completed: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", again, re.M)  # not 20261203_164602


@pytest.mark.slow  # the reference run
def test_a_results_file_from_before_early_stopping_stays_valid(reference):
    _, payload = reference
    older = {**payload, "metrics": {k: v for k, v in payload["metrics"].items()
                                    if k not in ("best_epoch", "early_stop_epoch")}}
    assert results.validate(older) is None
    assert results.validate({**payload, "metrics": {**payload["metrics"], "early_stop_epoch": "5"}}) == \
        "metrics.early_stop_epoch should be a number or null, found '5'"
