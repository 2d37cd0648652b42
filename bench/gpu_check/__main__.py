"""`make gpu-check` (PYTHONPATH=bench python -m gpu_check): install, run every stage, write the summary.

Exit status: 0 every stage passed, 1 some stage failed, 2 nothing was run (a bad
setting, or no CUDA device outside a dry run). Standard library only: the stages
import torch and fastzhang in their own processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check.context import FAIL, PASS, Context
from gpu_check.install import InstallError, install
from gpu_check.plan import DRY_ENV, REPO, Settings, Stage, limit_for, read_settings, stages_for
from gpu_check.stage import stage_file
from gpu_check.summary import markdown, stage_status, write

CACHE_GROUP = {"C": "shared", "D": "shared", "F": "shared", "G": "E"}  # G trains what E compiled
KILL_GRACE_S = 10


def main() -> int:
    try:
        settings = read_settings(dict(os.environ))
    except ValueError as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    if not settings.dry:
        problem = cuda_problem()
        if problem:
            print(f"gpu-check: {problem}\ngpu-check: {DRY_ENV}=1 runs every stage's plumbing on the CPU instead.",
                  file=sys.stderr)
            return 2
    out = settings.out
    clean(out)
    started = time.time()
    stages = [install_stage(settings)]
    pythonpath = stages[0].pop("pythonpath")
    budget_end = started + settings.budget_s
    synthetic_s = None
    for stage in stages_for(settings):
        if stage.key == "G":  # real data: its own limit, outside the synthetic stages' budget
            synthetic_s = time.time() - started
        limit = limit_for(stage, settings, budget_end - time.time())
        stages.append(run_stage(stage, settings, pythonpath, limit))
    wall = time.time() - started
    summary = {
        "dry_run": settings.dry, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_s": round(wall, 1), "synthetic_s": round(synthetic_s or wall, 1), "budget_s": settings.budget_s,
        "ok": all(s["status"] != FAIL for s in stages), "stages": stages,
    }
    write(out, summary)
    print(markdown(summary))
    print(f"gpu-check: {'PASS' if summary['ok'] else 'FAIL'} in {wall:.0f} s; summary in {out}/summary.md")
    return 0 if summary["ok"] else 1


def cuda_problem() -> str | None:
    probe = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        return f"this Python cannot import torch: {(proc.stderr.strip().splitlines() or [''])[-1]}"
    version, cuda, available = proc.stdout.split()
    if available != "True":
        return f"no CUDA device is visible to PyTorch (torch {version}, built for CUDA {cuda})"
    return None


def clean(out: Path) -> None:
    """Empty what a run writes; pydeps/ (the scratch install) is kept for reuse."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "logs", "work", "cache"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("summary.json", "summary.md"):
        (out / name).unlink(missing_ok=True)
    (out / "logs").mkdir()


def install_stage(settings: Settings) -> dict:
    """The scratch install as the summary's first stage; its `pythonpath` is popped by the caller."""
    start = time.monotonic()
    record = {"stage": "install", "title": "fastzhang and missing packages into a scratch folder (pip --no-index)",
              "limit_s": 0, "log": ""}
    try:
        done = install(settings.out / "pydeps", settings.wheels)
    except InstallError as e:
        rows = [{"check": "pip install", "status": FAIL, "value": "failed", "detail": str(e), "data": {}}]
        return {**record, "status": FAIL, "seconds": round(time.monotonic() - start, 1), "rows": rows,
                "pythonpath": None}
    added = ", ".join(done.added) or "nothing (this Python has orjson and tqdm)"
    rows = [
        {"check": "fastzhang", "status": PASS, "value": str(done.path), "data": {},
         "detail": "reused (same sources and wheels)" if done.reused else "built from the checkout"},
        {"check": "from the wheel folder", "status": PASS, "value": added, "data": {},
         "detail": str(done.wheels) if done.wheels else "no wheel folder: built with this Python's setuptools"},
    ]
    return {**record, "status": PASS, "seconds": round(time.monotonic() - start, 1), "rows": rows,
            "pythonpath": os.pathsep.join([str(done.path), str(REPO / "bench")])}


def run_stage(stage: Stage, settings: Settings, pythonpath: str | None, limit: float) -> dict:
    """The stage's summary record; `pythonpath` None: the install failed, nothing can run."""
    out = settings.out
    record = {"stage": stage.key, "title": stage.title, "limit_s": round(limit),
              "log": str(out / "logs" / f"{stage.key}.log")}
    why = "the install failed" if pythonpath is None else "the time budget was spent" if limit < 5 else None
    if why:
        rows = [{"check": "stage", "status": FAIL, "value": "not run", "detail": why, "data": {}}]
        return {**record, "status": FAIL, "seconds": 0.0, "rows": rows, "problem": f"not run: {why}"}
    ctx = Context(stage.key, str(REPO), str(out), settings.dry, str(settings.data) if settings.data else None,
                  time.time() + limit, pythonpath, stage_env(stage, settings))
    ctx_path = out / "stages" / f"{stage.key}.context.json"
    stage_file(out, stage.key).unlink(missing_ok=True)
    ctx.save(ctx_path)
    start = time.monotonic()
    with open(record["log"], "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gpu_check.stage", str(ctx_path)], cwd=ctx.work,
                                env=ctx.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = not _wait(proc, limit)
    seconds = time.monotonic() - start
    path = stage_file(out, stage.key)
    rows = json_rows(path)
    status = stage_status(rows, proc.returncode, timed_out)
    problem = (f"stopped at its {limit:.0f} s limit" if timed_out else
               f"exit status {proc.returncode}" if proc.returncode else "no rows written" if not rows else None)
    print(f"gpu-check: stage {stage.key} {status} in {seconds:.1f} s" + (f" ({problem})" if problem else ""),
          flush=True)
    return {**record, "status": status, "seconds": round(seconds, 1), "rows": rows, "problem": problem}


def stage_env(stage: Stage, settings: Settings) -> dict:
    cache = settings.out / "cache" / CACHE_GROUP.get(stage.key, stage.key)
    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
    if settings.dry and stage.key == "B":
        env["TRITON_INTERPRET"] = "1"  # read when triton is first imported: the stage's own process
    return env


def _wait(proc: subprocess.Popen, limit: float) -> bool:
    """True if the stage ended by itself; else its process group is stopped (TERM, then KILL)."""
    try:
        proc.wait(timeout=limit)
        return True
    except subprocess.TimeoutExpired:
        pass
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    return False


def json_rows(path: Path) -> list[dict]:
    import json

    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return []


if __name__ == "__main__":
    sys.exit(main())
