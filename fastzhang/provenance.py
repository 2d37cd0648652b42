"""What a results file records about where it came from, beyond the requested settings.

The config keeps what was asked (`device: auto`, `data_dir: null`); these are what
was used: the processor or GPU model, the thread count, the data actually read and
the code's git commit when it runs from a checkout.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root when run from a checkout


def device_name(device) -> str:
    """The GPU's name for a CUDA device, else the CPU's model (Linux: /proc/cpuinfo)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def git_commit(root: Path = _CHECKOUT) -> str | None:
    """HEAD of the checkout this code runs from, with `+dirty` if tracked files differ; None if installed."""
    if not (root / ".git").exists():
        return None
    try:  # the full hash (no tag name: --exclude=*), +dirty as `git diff-index HEAD` sees it
        head = subprocess.run(["git", "-C", str(root), "describe", "--always", "--abbrev=40", "--dirty=+dirty",
                               "--exclude=*"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() if head.returncode == 0 else None


def provenance(device, data_source: str) -> dict:
    """The results' `execution` fields that say what this session actually used."""
    import torch

    return {"device_name": device_name(device), "threads": torch.get_num_threads(), "data_source": data_source,
            "git_commit": git_commit()}
