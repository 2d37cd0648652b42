"""A `Run` as a checkpoint payload of plain dicts and tensors, and back.

The payload holds only tensors, numbers, strings, lists and dicts, so
`torch.load(weights_only=True)` reads it and a checkpoint is code-free data.
Data order and crop offsets are functions of (seed, epoch), so the payload
needs no loader state for resumption to be exact.
"""

from __future__ import annotations

import torch

from fastzhang.train.engine import METRIC_KEYS, Run

FORMAT = "fastzhang-checkpoint"
FORMAT_VERSION = 1
_EXECUTION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def to_payload(run: Run, cfg, data_fingerprint: str) -> dict:
    partial = run.partial
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "experiment_id": cfg.experiment_id,
        "config": cfg.to_dict(),
        "epoch": run.epoch,
        "step_in_epoch": run.step_in_epoch,
        "global_step": run.global_step,
        "model_state_dict": run.model.state_dict(),
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "best_test_acc": run.best_test_acc,
        "all_metrics": {k: list(v) for k, v in run.metrics.items()},
        "partial_epoch": {
            "loss_sum": partial["loss_sum"].detach().cpu(),
            "correct": partial["correct"].detach().cpu(),
            "seen": partial["seen"],
            "seconds": partial["seconds"],
        } if partial else {},
        "fit": {"epoch": run.fit_epoch, "step": run.fit_step},
        "rng_state": {"torch": torch.get_rng_state()},
        "data_fingerprint": data_fingerprint,
        "wandb_run_id": run.wandb_run_id,
    }


def restore(run: Run, payload: dict) -> None:
    """Load a verified payload into a freshly built `run` (same config)."""
    device = next(run.model.parameters()).device
    run.model.load_state_dict(payload["model_state_dict"])
    run.optimizer.load_state_dict(_optimizer_state_for(run.optimizer, payload["optimizer_state_dict"]))
    run.scheduler.load_state_dict(payload["scheduler_state_dict"])
    run.epoch = int(payload["epoch"])
    run.step_in_epoch = int(payload["step_in_epoch"])
    run.global_step = int(payload["global_step"])
    run.best_test_acc = float(payload["best_test_acc"])
    run.metrics = {k: list(payload["all_metrics"].get(k, [])) for k in METRIC_KEYS}
    partial = payload["partial_epoch"]
    run.partial = {
        "loss_sum": partial["loss_sum"].to(device),
        "correct": partial["correct"].to(device),
        "seen": int(partial["seen"]),
        "seconds": float(partial["seconds"]),
    } if partial else {}
    run.fit_epoch, run.fit_step = payload["fit"]["epoch"], payload["fit"]["step"]
    run.wandb_run_id = payload.get("wandb_run_id")
    torch.set_rng_state(payload["rng_state"]["torch"])


def _optimizer_state_for(optimizer: torch.optim.Optimizer, saved: dict) -> dict:
    """The saved optimizer state, fitted to the live optimizer's execution settings.

    A run may resume on another device or with other speed switches: the saved
    hyperparameters are kept, but how the step runs (fused, foreach, ...) is the
    live optimizer's, and lr keeps the live form. Under CUDA graphs that is a
    float32 tensor on the parameters' device (torch.load maps a saved tensor to
    the CPU, where fused SGD would read it once and the graph would freeze it).
    """
    groups = []
    for live, stored in zip(optimizer.param_groups, saved["param_groups"]):
        group = dict(stored)
        for key in _EXECUTION_KEYS:
            if key in live:
                group[key] = live[key]
        for key in ("lr", "initial_lr"):
            if key not in stored:
                continue
            if isinstance(live.get(key), torch.Tensor):
                group[key] = torch.tensor(float(stored[key]), dtype=live[key].dtype, device=live[key].device)
            elif isinstance(stored[key], torch.Tensor):
                group[key] = float(stored[key])
        groups.append(group)
    return {"state": saved["state"], "param_groups": groups}
