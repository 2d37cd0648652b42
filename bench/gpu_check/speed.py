"""Stage E: speed per model, each measurement in a fresh process (gpu_check.speed_child).

Per model, one process with an empty compiler cache measures images/s with every switch
off, each one on (amp, channels_last for the convolutional models, cuda_graphs) and all
on, the first step's seconds of each (cold: compile and capture from scratch), how far
the host runs ahead (off and all) and, for mlp1 and inception, an epoch of CIFAR-10's
size: training against evaluation seconds. A second process then takes the first step
of `all` again with the cache the first one filled (warm). mlp1 and inception always;
then, while the stage's time allows, alexnet, and compile alone (fp32) per model, whose
cold compile costs about what `all`'s did.
"""

from __future__ import annotations

import json
import subprocess
import sys

from gpu_check.context import FAIL, SKIP

MODELS = {"gpu": ("mlp1", "inception"), "dry": ("mlp1",)}
EXTRA_MODELS = {"gpu": ("alexnet",), "dry": ()}  # measured while time is left
EPOCH_MODELS = ("mlp1", "inception")
SIZES = {  # batch, steps per round, rounds, epoch images (train, test): 49,920 = 390 full batches of 128
    "gpu": {"batch": 128, "steps": 50, "rounds": 5, "epoch_images": [49_920, 10_000]},
    "dry": {"batch": 64, "steps": 4, "rounds": 2, "epoch_images": [1_024, 256]},
}
EXTRA_MODEL_S = 60  # predicted: alexnet's cold and warm processes (bench/NOTES.md, GPU check predictions)
RESERVE_S = 15  # kept for each required process still to come


def run(ctx, report) -> None:
    from fastzhang.models.registry import MODELS as REGISTRY

    kind = "dry" if ctx.dry else "gpu"
    cold_first: dict[str, float] = {}

    def measure(model: str, reserve: float) -> None:
        modes = ["off", "amp", *(["channels_last"] if REGISTRY[model].convolutional else []), "cuda_graphs", "all"]
        extras = ["lead", *(["epoch"] if model in EPOCH_MODELS else [])]
        for phase, phase_modes, phase_extras in (("cold", modes, extras), ("warm", ["all"], [])):
            spec = {"model": model, "modes": phase_modes, "extras": phase_extras, "phase": phase, "dry": ctx.dry,
                    **SIZES[kind]}
            for row in _child(ctx, spec, reserve if phase == "cold" else reserve - RESERVE_S):
                first = row["data"].get("first_step_s")
                if first is not None and row["check"] == f"{model} all":
                    cold_first[model] = first
                elif first is not None and phase == "warm" and model in cold_first:
                    row["value"] += f"; first step {first:.2f} s warm against {cold_first[model]:.2f} s cold"
                _forward(report, row)

    required = MODELS[kind]
    for index, model in enumerate(required):
        measure(model, RESERVE_S * (2 * (len(required) - index) - 1))
    for model in EXTRA_MODELS[kind]:
        if _fits(ctx, report, f"{model} (all modes)", EXTRA_MODEL_S):
            measure(model, RESERVE_S)
    for model in (*required, *EXTRA_MODELS[kind]):
        if ctx.dry:
            report.add(f"{model} compile", SKIP, "not measured", "dry run: no compile")
        elif _fits(ctx, report, f"{model} compile", 1.5 * cold_first.get(model, 30.0) + RESERVE_S):
            spec = {"model": model, "modes": ["compile"], "extras": [], "phase": "cold", "dry": False, **SIZES[kind]}
            for row in _child(ctx, spec, 0):
                _forward(report, row)


def _fits(ctx, report, check: str, needed: float) -> bool:
    if ctx.left() >= needed:
        return True
    report.add(check, SKIP, "no time left", f"needs ~{needed:.0f} s, {ctx.left():.0f} s left of the stage's limit")
    return False


def _forward(report, row: dict) -> None:
    report.add(row["check"], row["status"], row["value"], row["detail"], row.get("seconds"), **row["data"])


def _child(ctx, spec: dict, reserve: float) -> list[dict]:
    """Run one measuring process; its rows (a FAIL row added when it crashed or overran)."""
    name = f"{spec['model']}-{spec['modes'][0] if len(spec['modes']) == 1 else 'modes'}-{spec['phase']}"
    spec_path, rows_path = ctx.work / f"{name}.json", ctx.work / f"{name}.rows.json"
    spec_path.write_text(json.dumps(spec))
    timeout = max(ctx.left() - reserve, 10)
    with open(ctx.work / f"{name}.log", "wb") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "gpu_check.speed_child", str(spec_path), str(rows_path)],
                                  cwd=ctx.work, env=ctx.env(), stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout)
            problem = f"exit status {proc.returncode}" if proc.returncode else None
        except subprocess.TimeoutExpired:
            problem = f"stopped at its {timeout:.0f} s limit"
    rows = json.loads(rows_path.read_text())["rows"] if rows_path.is_file() else []
    if problem:
        tail = (ctx.work / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
        rows.append({"check": f"{spec['model']} {spec['phase']} process", "status": FAIL, "value": problem,
                     "detail": tail[0][:300] if tail else "", "data": {}})
    return rows
