"""One measuring process of stage E: `python -m gpu_check.speed_child SPEC.json ROWS.json`.

For one model, per mode (a set of speed switches): images/s of the training step
(bench/workloads.train_steps: the median of `rounds` rounds after one warm-up round)
and the first step's seconds (compile, graph warm-up and capture: cold or warm
depending on the compiler cache this process finds). Extras: `lead`, how far the host
runs ahead of the device at the end of a round (off and all); `epoch`, an epoch of
CIFAR-10's size as `fastzhang run` trains it, its training seconds (the engine's clock)
against its evaluation seconds. Rows go to ROWS.json as they are measured.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from clock import sync, timed
from gpu_check.context import FAIL, INFO, SKIP, Report, error_line

MODES = {
    "off": {},
    "amp": {"amp": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "cuda_graphs": {"cuda_graphs": True},
    "all": {"amp": True, "compile": True, "cuda_graphs": True, "channels_last": True},
}


def speed_for(mode: str, model: str, dry: bool):
    """(Speed, None), or (None, why the mode is not measured here)."""
    from fastzhang.models.registry import MODELS
    from fastzhang.train.fastpath import Speed

    on = dict(MODES[mode])
    if not MODELS[model].convolutional:
        on.pop("channels_last", None)  # as auto: an MLP only pays a copy for it
    if dry and mode in ("compile", "cuda_graphs"):
        return None, "dry run: no CUDA graphs on the CPU, no compile"
    if dry:
        on.pop("compile", None), on.pop("cuda_graphs", None)
    return Speed(**{name: name in on for name in ("amp", "compile", "cuda_graphs", "channels_last")}), None


def main(spec_path: str, rows_path: str) -> int:
    from fastzhang.data.batches import ResidentData
    from fastzhang.data.synthetic import make_synthetic

    spec = json.loads(Path(spec_path).read_text())
    rows = Report(Path(rows_path), "E")
    device = torch.device("cpu" if spec["dry"] else "cuda")
    resident = ResidentData.build(make_synthetic(512, 16), randomization="none", corrupt_prob=0.0, seed=0,
                                  train_subset=None, device=device)
    rates: dict[str, float] = {}
    for mode in spec["modes"]:
        try:
            _mode(spec, mode, resident, device, rates, rows)
        except Exception as e:
            rows.add(f"{spec['model']} {mode}", FAIL, "error", error_line(e))
        gc.collect()
    if "epoch" in spec["extras"]:
        try:
            _epoch(spec, device, rows)
        except Exception as e:
            rows.add(f"{spec['model']} epoch", FAIL, "error", error_line(e))
    return 0


def _mode(spec: dict, mode: str, resident, device, rates: dict, rows: Report) -> None:
    from workloads import train_steps

    model, label = spec["model"], f"{spec['model']} {mode}" + (" (warm cache)" if spec["phase"] == "warm" else "")
    speed, why = speed_for(mode, model, spec["dry"])
    if speed is None:
        rows.add(label, SKIP, "not measured", why)
        return
    torch.manual_seed(0)
    steps = train_steps(model, speed, resident, device, batch=spec["batch"], steps=spec["steps"])
    steps.round()  # warm-up round
    median = statistics.median(timed(steps.round, device) for _ in range(spec["rounds"]))
    rates[mode] = steps.images / median
    ratio = f" ({rates[mode] / rates['off']:.2f}x off)" if "off" in rates and mode != "off" else ""
    ran = dataclasses.asdict(steps.step.speed)
    detail = f"first step {steps.first_step_s:.2f} s; batch {steps.batch}; ran {_on(ran)}"
    status = FAIL if steps.fallbacks else INFO
    detail += f"; FELL BACK: {steps.fallbacks}" if steps.fallbacks else ""
    rows.add(label, status, f"{rates[mode]:,.0f} img/s{ratio}", detail, images_per_s=round(rates[mode], 1),
             first_step_s=round(steps.first_step_s, 3), switches=ran, phase=spec["phase"])
    if "lead" in spec["extras"] and mode in ("off", "all"):
        value, detail, data = _lead(steps, device)
        rows.add(f"{model} {mode}: host lead", INFO, value, detail, **data)


def _lead(steps, device) -> tuple:
    """How many steps the device still had queued when the host had issued a round's last one."""
    sync(device)
    start = time.perf_counter()
    steps.round()
    host = time.perf_counter() - start
    sync(device)
    total = time.perf_counter() - start
    per_step = total / (steps.images // steps.batch)
    ahead = (total - host) / per_step
    return (f"{ahead:.1f} steps ({1e3 * (total - host):.1f} ms) ahead",
            f"host issued {steps.images // steps.batch} steps in {1e3 * host:.1f} ms, the device ran them in "
            f"{1e3 * total:.1f} ms" + ("; the host keeps up: device-bound" if ahead > 1 else "; host-bound"),
            {"host_s": host, "device_s": total, "steps_ahead": round(ahead, 2)})


def _epoch(spec: dict, device, rows: Report) -> None:
    from fastzhang.data.synthetic import make_synthetic
    from workloads import fastzhang_epoch

    n, m = spec["epoch_images"]
    epoch, speed, run = fastzhang_epoch(spec["model"], make_synthetic(n, m), device)
    first = timed(epoch, device)
    total = timed(epoch, device)
    train = run.metrics["epoch_seconds"][-1]
    rows.add(f"{spec['model']} epoch: train vs eval", INFO,
             f"train {train:.2f} s, eval {total - train:.2f} s per epoch",
             f"{n:,} training + {m:,} test images; first epoch {first:.1f} s (compile, capture); {_on(speed)}",
             train_s=round(train, 4), eval_s=round(total - train, 4), first_epoch_s=round(first, 2))


def _on(speed) -> str:
    on = [k for k, v in (speed.items() if isinstance(speed, dict) else dataclasses.asdict(speed).items()) if v]
    return "+".join(on) or "fp32 eager"


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
