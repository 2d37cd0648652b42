"""A model registered in one place (one registry entry) is known everywhere: config, help, run, models, report."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
import torch
from conftest import run_cli
from torch import nn

from fastzhang.config import ConfigError, ExperimentConfig
from fastzhang.models.registry import MODELS, ModelSpec
from fastzhang.train.fastpath import resolve_speed


class TinyConvNet(nn.Module):
    """conv3x3(3 -> width) -> ReLU -> global mean -> classes: 224 + 90 = 314 parameters for width 8."""

    def __init__(self, num_classes: int = 10, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def toy(monkeypatch):
    """The one and only place the toy model is registered: an entry in the registry."""
    entry = ModelSpec(f"{__name__}:TinyConvNet", default_lr=0.05, convolutional=True,
                      display_name="Tiny ConvNet", options={"width": 8})
    monkeypatch.setitem(MODELS, "toy", entry)
    return entry


def test_an_unregistered_model_is_refused():
    with pytest.raises(ConfigError, match="model must be one of inception, inception_no_bn, alexnet, mlp1, mlp3; "
                                          "got 'toy'"):
        ExperimentConfig.from_mapping({"model": "toy"})


def test_config_and_experiment_id_read_the_registry(toy):
    cfg = ExperimentConfig.from_mapping({"model": "toy", "dataset": "synthetic", "epochs": 2})
    assert cfg.effective_lr == 0.05 and cfg.identity()["lr"] == 0.05
    assert cfg.experiment_id == "toy_synthetic_baseline_ep2"
    assert ExperimentConfig.from_mapping({"model": "toy", "lr": 0.05}).lr is None  # its default: one spelling
    assert ExperimentConfig.from_mapping({"model": "toy", "lr": 0.1}).experiment_id == "toy_cifar10_baseline_lr0.1"


def test_channels_last_default_reads_convolutional(toy, monkeypatch):
    cfg = ExperimentConfig.from_mapping({"model": "toy", "device": "cpu"})
    assert resolve_speed(cfg, torch.device("cpu")).channels_last
    monkeypatch.setitem(MODELS, "toy", dataclasses.replace(toy, convolutional=False))
    assert not resolve_speed(cfg, torch.device("cpu")).channels_last


def test_run_help_lists_the_registered_model(toy, capsys):
    assert run_cli(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    assert "--model {inception,inception_no_bn,alexnet,mlp1,mlp3,toy} inception | inception_no_bn | alexnet | " \
           "mlp1 | mlp3 | toy" in out
    assert "0.1 for inception, inception_no_bn; 0.01 for alexnet, mlp1, mlp3; 0.05 for toy" in out


def test_registered_model_runs_end_to_end(toy, tmp_path, capsys):
    ckpt, res, out = tmp_path / "checkpoints", tmp_path / "results", tmp_path / "report"
    argv = ["run", "--model", "toy", "--dataset", "synthetic", "--epochs", "2", "--train-subset", "256",
            "--batch-size", "64", "--device", "cpu", "--quiet", "--checkpoint-dir", ckpt, "--results-dir", res]
    assert run_cli(argv) == 0
    [path] = res.glob("*.json")
    payload = orjson.loads(path.read_bytes())
    eid = "toy_synthetic_baseline_bs64_ep2_sub256"
    assert path.name.startswith(eid + "_") and payload["experiment_id"] == eid and payload["completed"]
    assert payload["config"]["model"] == "toy" and payload["config"]["lr"] == 0.05
    assert payload["metrics"]["lr"] == pytest.approx([0.05, 0.05 * 0.95])
    assert payload["metrics"]["steps"] == [4, 8]  # 256 images in batches of 64
    assert run_cli(argv) == 0 and list(res.glob("*.json")) == [path]  # found completed by its ID: skipped
    capsys.readouterr()

    # `fastzhang models`: built from the entry, no paper count to compare (exit 0), FLOPs counted.
    assert run_cli(["models"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["toy"] == ["toy", "314", "—", "—", "0.3"]  # 2 * (27 * 8 * 28 * 28 + 8 * 10) = 338,848 FLOPs
    assert rows["mlp1"][1:4] == ["1,209,866", "1,209,866", "yes"]

    # The report: a subset run is a demo run, shown under the entry's display name.
    assert run_cli(["report", "--results", res, "--out", out]) == 0
    report = (out / "report.md").read_text()
    assert "| Tiny ConvNet | true labels | 256 |" in report and f"| 2 | `{eid}`, n = 1 (seed 0) |" in report
    assert "1 results files, 1 completed runs, 0 damaged or unreadable" in report  # its config loaded
