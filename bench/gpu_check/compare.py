"""How far apart two trainings ended: bitwise, within a tolerance, or neither; in numbers.

The tests assert equality (tests/conftest.assert_same_training); a GPU check must also
say by how much two runs differ when they do, so these return the largest differences.
"""

from __future__ import annotations

import math

import torch

TIMING = ("epoch_seconds", "eval_seconds", "images_per_second")  # measured, not trained: they differ between runs


def tensors(a: dict, b: dict, rtol: float, atol: float) -> dict:
    """Two {name: tensor} dicts (state_dicts): bitwise?, close?, the largest absolute difference."""
    if a.keys() != b.keys():
        raise ValueError(f"different tensors: {sorted(set(a) ^ set(b))[:5]}")
    bitwise, close, worst, where = True, True, 0.0, ""
    for name, x in a.items():
        x, y = x.detach().cpu(), b[name].detach().cpu()
        if x.shape != y.shape:
            raise ValueError(f"{name}: shape {tuple(x.shape)} against {tuple(y.shape)}")
        if torch.equal(x, y):
            continue
        bitwise = False
        if not x.is_floating_point():
            close, worst, where = False, math.inf, name
            continue
        close = close and torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol)
        diff = float((x.float() - y.float()).abs().max())
        if diff > worst:
            worst, where = diff, name
    return {"bitwise": bitwise, "close": close, "max_abs_diff": worst, "worst_tensor": where}


def momentum(optimizer_state: dict) -> dict:
    """{index/name: tensor} of an optimizer state_dict's per-parameter buffers."""
    return {f"{i}/{name}": value for i, buffers in optimizer_state["state"].items()
            for name, value in buffers.items() if isinstance(value, torch.Tensor)}


def series(a: dict, b: dict, rtol: float) -> dict:
    """Metric series ({name: [per epoch]}), timing aside: equal?, close?, the largest relative difference."""
    keys = [k for k in a if k not in TIMING and isinstance(a[k], list)]
    equal = all(a[k] == b[k] for k in keys)
    worst = 0.0
    for key in keys:
        for u, v in zip(a[key], b[key]):
            if u != v and isinstance(u, (int, float)) and isinstance(v, (int, float)):
                worst = max(worst, abs(u - v) / max(abs(u), abs(v), 1e-12))
    lengths = all(len(a[k]) == len(b[k]) for k in keys)
    return {"equal": equal, "close": lengths and worst <= rtol, "max_rel_diff": worst}


def trainings(a: dict, b: dict, rtol: float, atol: float) -> dict:
    """Two checkpoint payloads: weights (with BatchNorm statistics), momentum buffers, metric series."""
    weights = tensors(a["model_state_dict"], b["model_state_dict"], rtol, atol)
    buffers = tensors(momentum(a["optimizer_state_dict"]), momentum(b["optimizer_state_dict"]), rtol, atol)
    metrics = series(a["all_metrics"], b["all_metrics"], rtol)
    place = ("epoch", "step_in_epoch", "global_step")
    same_place = [a[k] for k in place] == [b[k] for k in place]
    return {"bitwise": weights["bitwise"] and buffers["bitwise"] and metrics["equal"] and same_place,
            "close": weights["close"] and buffers["close"] and metrics["close"] and same_place,
            "weights": weights, "momentum": buffers, "metrics": metrics}


def describe(diff: dict) -> str:
    if diff["bitwise"]:
        return "bitwise equal"
    parts = [f"weights max |diff| {diff['weights']['max_abs_diff']:.1e}",
             f"momentum {diff['momentum']['max_abs_diff']:.1e}",
             f"metrics max rel diff {diff['metrics']['max_rel_diff']:.1e}"]
    return ("within tolerance: " if diff["close"] else "NOT within tolerance: ") + ", ".join(parts)


def numbers(diff: dict) -> dict:
    """The figures of a trainings() result, for a row's data."""
    return {"bitwise": diff["bitwise"], "close": diff["close"], "max_abs_weight_diff": diff["weights"]["max_abs_diff"],
            "max_abs_momentum_diff": diff["momentum"]["max_abs_diff"],
            "max_rel_metric_diff": diff["metrics"]["max_rel_diff"]}
