"""The stages of the GPU check, their time limits, and the settings read from the environment.

Limits are seconds of wall time. On the GPU they are the predictions of bench/NOTES.md
("GPU check: predictions") with room, and the synthetic stages A-F share BUDGET_S:
each gets its own limit or what is left of the budget, whichever is less. G (real data)
has its own budget. The dry run's limits keep it under 3 minutes on a 2-core CPU.
This module is the parent's: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DRY_ENV = "FASTZHANG_GPU_DRY_RUN"
OUT_ENV = "GPU_CHECK_OUT"
DATA_ENV = "GPU_CHECK_DATA"
WHEELS_ENV = "GPU_CHECK_WHEELS"
TABLE1_ENV = "GPU_CHECK_TABLE1_S"

BUDGET_S = 360  # A-F on one H200: the 6 minutes
DRY_BUDGET_S = 170  # the 3 minutes, with room for the install
TABLE1_S = 480  # G's default: as many Table 1 rows as fit


@dataclass(frozen=True)
class Stage:
    key: str
    module: str  # gpu_check.<module> has run(ctx, report)
    title: str
    limit_s: int
    dry_limit_s: int


STAGES = (
    Stage("A", "environment", "environment, switches and loader that auto picks", 20, 20),
    Stage("B", "preprocessing", "Triton preprocessing against the torch reference", 30, 30),
    Stage("C", "correctness", "fast path: CUDA graphs, compile+AMP, layout toggle, fallbacks", 95, 75),
    Stage("D", "resume", "SIGKILL after a mid-epoch checkpoint, resume, against uninterrupted", 50, 45),
    Stage("E", "speed", "images/s per switch, first step cold/warm, host lead, eval vs train", 150, 35),
    Stage("F", "packing", "1, 2, 4 runs sharing the GPU (fastzhang batch --runs-per-gpu)", 45, 35),
    Stage("G", "table1", "Table 1 rows on the real data, against the paper", TABLE1_S, 60),
)


@dataclass(frozen=True)
class Settings:
    dry: bool
    out: Path
    data: Path | None
    wheels: Path
    table1_s: int

    @property
    def budget_s(self) -> int:
        return DRY_BUDGET_S if self.dry else BUDGET_S


def read_settings(environ: dict) -> Settings:
    """The check's settings; ValueError (one line naming the variable) for a bad value."""
    dry = environ.get(DRY_ENV, "0")
    if dry not in ("0", "1", ""):
        raise ValueError(f"{DRY_ENV} must be 1 (dry run on the CPU) or 0, got {dry!r}")
    data = environ.get(DATA_ENV) or None
    if data is not None and not Path(data).is_dir():
        raise ValueError(f"{DATA_ENV}={data}: no such folder (it should hold CIFAR-10, as --data-dir does)")
    table1 = environ.get(TABLE1_ENV, str(TABLE1_S))
    if not table1.isdigit() or int(table1) < 60:
        raise ValueError(f"{TABLE1_ENV} must be a whole number of seconds >= 60, got {table1!r}")
    out = Path(environ.get(OUT_ENV) or REPO / "bench" / "out" / "gpu")
    wheels = Path(environ.get(WHEELS_ENV) or REPO / "bench" / "wheels")
    return Settings(dry == "1", out.resolve(), Path(data).resolve() if data else None, wheels.resolve(),
                    int(table1))


def stages_for(settings: Settings) -> tuple[Stage, ...]:
    return STAGES if settings.data is not None else STAGES[:-1]


def limit_for(stage: Stage, settings: Settings, budget_left: float) -> float:
    if stage.key == "G":
        return stage.dry_limit_s if settings.dry else settings.table1_s
    own = stage.dry_limit_s if settings.dry else stage.limit_s
    return min(own, budget_left)
