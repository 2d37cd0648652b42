"""docs/architecture.md's checkpoint table is the schema train/state.py writes and reads."""

from __future__ import annotations

import re

import torch

from conftest import REPO
from fastzhang.config import ExperimentConfig
from fastzhang.train import engine, state
from fastzhang.train.fastpath import Speed


def _documented_keys() -> dict[str, bool]:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Checkpoint payload", 1)[1].split("\n## ", 1)[0]
    return {key: needed == "yes" for key, needed in re.findall(r"^\| `(\w+)` \| .* \| (yes|no) \|$", section, re.M)}


def test_the_documented_table_is_the_schema():
    assert _documented_keys() == {key: key in state.REQUIRED for key in state.SCHEMA}


def test_a_payload_holds_exactly_the_schema():
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu"})
    run = engine.build_run(cfg, torch.device("cpu"), Speed(False, False, False, False))
    assert list(state.to_payload(run, cfg, "fingerprint")) == list(state.SCHEMA)
