"""Real `fastzhang` processes for the stages: start, kill after a mid-epoch checkpoint, read what they wrote.

The processes are tests/conftest.Fz (stdout and stderr to files in the run's folder),
started with the stage's environment: the scratch install on PYTHONPATH, the stage's
compiler caches. Each run keeps its checkpoints and results in its own folder.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from gpu_check.reuse import test_module

RESUMED = r"resuming after epoch (\d+)(?:, step (\d+))?"
STOP_GRACE_S = 15
RESUME_S = 15  # what a resumed short run needs after the kill: start-up, a warm compile, the rest, a comparison


def synthetic_run(ctx, model: str, *, epochs: int, batch: int, subset: int | None = None, **flags) -> list[str]:
    """`run` arguments for a synthetic-data experiment on the stage's device; flags as --name value."""
    args = ["run", "--model", model, "--dataset", "synthetic", "--epochs", str(epochs), "--batch-size", str(batch),
            "--device", ctx.device]
    if subset:
        args += ["--train-subset", str(subset)]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def start(ctx, args: list[str], folder: Path, name: str, **env: str):
    """A `python -m fastzhang ...` process in `folder`, with its checkpoints and results there."""
    folder.mkdir(parents=True, exist_ok=True)
    conftest = test_module("conftest")
    full = [*args, "--checkpoint-dir", folder / "checkpoints", "--results-dir", folder / "results"]
    return conftest.Fz(full, folder, name=name, env=ctx.env(**env))


def finish(fz, timeout: float) -> None:
    """Wait for a process; AssertionError with its stderr's end if it fails or overruns.

    One that overruns gets SIGTERM first (a run checkpoints, a batch passes it on to its
    runs, which live in sessions of their own), then SIGKILL.
    """
    try:
        code = fz.proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        fz.proc.send_signal(signal.SIGTERM)
        try:
            fz.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            fz.kill()
        raise AssertionError(f"{fz.out_path.stem} did not finish within {timeout:.0f} s") from None
    if code != 0:
        raise AssertionError(f"{fz.out_path.stem} exited {code}: {fz.stderr.strip()[-600:]}")


def kill_after_mid_epoch_checkpoint(fz, folder: Path, timeout: float) -> tuple[int, int]:
    """SIGKILL `fz` once a mid-epoch checkpoint exists; (epoch, step_in_epoch) that a resume must start from."""
    from fastzhang import checkpoint

    latest = _latest(folder)
    deadline, seen = time.monotonic() + max(timeout, 5.0), None
    while True:
        if fz.proc.poll() is not None:
            raise AssertionError(f"{fz.out_path.stem} ended (exit {fz.proc.returncode}) before a mid-epoch "
                                 f"checkpoint: {fz.stderr.strip()[-600:]}")
        if time.monotonic() > deadline:
            fz.kill()
            raise AssertionError(f"no mid-epoch checkpoint within {timeout:.0f} s")
        stamp = latest().stat().st_mtime_ns if latest() else None
        if stamp is not None and stamp != seen:
            seen = stamp
            payload, _, _ = checkpoint.inspect_latest(latest())
            if payload is not None and payload["step_in_epoch"] > 0:
                break
        time.sleep(0.02)
    fz.kill()
    payload, _, damage = checkpoint.inspect_latest(latest())
    if damage or payload is None:
        raise AssertionError(f"after the kill: {[str(d) for d in damage] or 'no checkpoint'}")
    return payload["epoch"], payload["step_in_epoch"]


def _latest(folder: Path):
    """A function giving the run's latest checkpoint once it exists (the experiment ID is not known ahead)."""
    def find() -> Path | None:
        found = [p for p in (folder / "checkpoints").glob("*_checkpoint.pth")]
        return found[0] if found else None
    return find


def resumed_from(stderr: str) -> tuple[int, int] | None:
    found = re.search(RESUMED, stderr)
    return (int(found[1]), int(found[2] or 0)) if found else None


def fallback_warnings(stderr: str, switch: str) -> int:
    """How many warnings say that `switch` failed (experiment.py's: "... {switch} failed (reason); ...")."""
    return len(re.findall(rf"fastzhang: warning: [^\n]*\b{switch} failed \(", stderr))


def results_of(folder: Path) -> dict:
    """The results payload of the finished run in `folder`."""
    from fastzhang import results

    [entry] = results.scan(folder / "results")
    if entry.problem is not None:
        raise AssertionError(f"results file {entry.path}: {entry.problem}")
    return entry.payload


def outputs(folder: Path) -> tuple[dict, dict]:
    """(final checkpoint payload, results payload) of the finished run in `folder`."""
    from fastzhang import checkpoint

    payload = results_of(folder)
    return checkpoint.load(checkpoint.latest_path(folder / "checkpoints", payload["experiment_id"])), payload
