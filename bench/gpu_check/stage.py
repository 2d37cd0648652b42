"""One stage in its own process: `python -m gpu_check.stage CONTEXT.json`.

Runs `gpu_check.<module>.run(ctx, report)`; rows land in stages/<key>.json as they are
written. An exception that escapes the stage becomes a FAIL row and exit status 1.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

from gpu_check.context import FAIL, Context, Report, error_line
from gpu_check.plan import STAGES


def main(argv: list[str]) -> int:
    ctx = Context.load(Path(argv[0]))
    stage = next(s for s in STAGES if s.key == ctx.key)
    report = Report(stage_file(Path(ctx.out), ctx.key), ctx.key)
    try:
        importlib.import_module(f"gpu_check.{stage.module}").run(ctx, report)
    except Exception as e:
        traceback.print_exc()
        report.add("stage", FAIL, "crashed", error_line(e))
        return 1
    return 0


def stage_file(out: Path, key: str) -> Path:
    folder = out / "stages"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.json"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
