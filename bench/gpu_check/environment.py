"""Stage A: what this machine is, and what `auto` makes of it.

torch and its CUDA / cuDNN, the device, Triton and whether the kernel can run, DALI,
where fastzhang and the carried packages were imported from (the scratch install, not
the checkout), and the switches (train/fastpath.resolve_speed) and loader
(train/loaders.resolve_loader) that `auto` picks for every model on this device.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path

from gpu_check.context import FAIL, INFO, PASS, SKIP, verdict


def run(ctx, report) -> None:
    import torch

    device = torch.device(ctx.device)
    report.attempt("torch", _torch)
    report.attempt("device", _device, device, ctx.dry)
    report.attempt("fastzhang", _fastzhang, ctx.scratch)
    report.attempt("carried packages", _carried, ctx.scratch)
    report.attempt("triton", _triton, device)
    report.attempt("DALI", _dali)
    report.attempt("loader auto", _loader, device, ctx.dry)
    report.attempt("switches auto", _switches, device)


def torch_floor() -> tuple[int, int]:
    """The lowest torch fastzhang accepts, from its installed metadata (pyproject.toml's pin)."""
    for requirement in importlib.metadata.requires("fastzhang") or ():
        found = re.match(r"torch\s*[^;]*>=\s*(\d+)\.(\d+)", requirement)
        if found:
            return int(found[1]), int(found[2])
    raise LookupError("fastzhang's metadata names no torch floor")


def _torch():
    import torch

    have = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    floor = torch_floor()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    value = f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {cudnn})"
    return verdict(have >= floor), value, f"fastzhang needs torch >= {floor[0]}.{floor[1]}", {
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn}


def _device(device, dry: bool):
    import torch

    if device.type != "cuda":
        status = INFO if dry else FAIL
        return status, "cpu", "dry run: no GPU needed" if dry else "no CUDA device", {"cpus": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(device)
    value = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs"
    return PASS, value, f"{torch.cuda.device_count()} visible", {
        "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": [p.major, p.minor],
        "sms": p.multi_processor_count}


def _fastzhang(scratch: Path):
    import fastzhang
    import fastzhang.kernels

    where = [Path(m.__file__).resolve() for m in (fastzhang, fastzhang.kernels)]
    inside = all(scratch in path.parents for path in where)
    return verdict(inside), str(where[0].parent), "installed copy, kernels as fastzhang.kernels" if inside else \
        f"not the scratch install {scratch}: {[str(p) for p in where]}", {"version": fastzhang.__version__}


def _carried(scratch: Path):
    from gpu_check.wheels import IMPORT_NAMES, RUNTIME

    parts = []
    for name in RUNTIME:
        module = importlib.import_module(IMPORT_NAMES[name])
        origin = "wheel folder" if scratch in Path(module.__file__).resolve().parents else "this Python"
        parts.append(f"{name} {importlib.metadata.version(name)} ({origin})")
    return PASS, "; ".join(parts), "", {}


def _triton(device):
    try:
        import triton
    except ImportError:
        return SKIP, "not installed", "the loader falls back to torch", {}
    from fastzhang.kernels.preprocess_triton import unavailable

    why = unavailable(device) or f"the kernel can run on {device}"
    return INFO, f"triton {triton.__version__}", why, {"version": triton.__version__}


def _dali():
    from fastzhang.data import dali

    present = dali.available()
    return INFO, "present" if present else "absent", "" if present else dali.INSTALL_HINT, {"present": present}


def _loader(device, dry: bool):
    from fastzhang.train.loaders import resolve_loader

    picked = resolve_loader("auto", device)
    try:
        import triton  # noqa: F401

        expected = "triton" if device.type == "cuda" else "torch"
    except ImportError:
        expected = "torch"
    return verdict(picked == expected), picked, f"expected {expected} on {device}", {"loader": picked}


def _switches(device):
    from fastzhang.config import SPEED_SWITCHES, ExperimentConfig
    from fastzhang.models.registry import MODELS
    from fastzhang.train.fastpath import resolve_speed

    picks = {}
    for model in MODELS:
        speed = resolve_speed(ExperimentConfig.from_mapping({"model": model}), device)
        picks[model] = [name for name in SPEED_SWITCHES if getattr(speed, name)]
    cuda = device.type == "cuda"
    ok = not cuda or all({"amp", "compile", "cuda_graphs"} <= set(on) for on in picks.values())
    value = "; ".join(f"{m}: {'+'.join(on) or 'fp32 eager'}" for m, on in picks.items())
    return verdict(ok), value, "CUDA: amp, compile and graphs on, channels_last for conv models" if cuda else \
        "CPU: bf16 where native, no compile, no graphs", {"switches": picks}
