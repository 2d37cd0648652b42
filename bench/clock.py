"""The benchmarks' timer: fastzhang's epoch clock (train/engine.clock), which waits for the device."""

from __future__ import annotations

import os
import time

import torch

from fastzhang.train.engine import clock


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (the epoch clock read and thrown away)."""
    clock(device)(0.0)


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of fn, the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    return clock(device)(start)


def environment(device: torch.device) -> dict:
    """What moves a number besides the code: the device, torch's threads, the machine's load."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
