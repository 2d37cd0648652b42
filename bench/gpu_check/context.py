"""What a stage process is told (Context) and how it reports (Report: rows, saved after each one).

A row is one check: its name, a status, a short value for the summary table, a detail
line, and the numbers behind it (`data`). Status PASS / FAIL / SKIP (could not run here,
with the reason) / INFO (a fact or a measurement with no verdict). Standard library only:
the parent reads these files too.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"


@dataclass(frozen=True)
class Context:
    key: str  # the stage
    repo: str
    out: str
    dry: bool
    data: str | None  # GPU_CHECK_DATA
    deadline: float  # time.time() at which the stage's limit ends
    pythonpath: str  # the scratch install, then bench/
    extra_env: dict = field(default_factory=dict)  # compiler caches, the Triton interpreter

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    @property
    def scratch(self) -> Path:
        """Where fastzhang and the carried packages were installed."""
        return Path(self.pythonpath.split(os.pathsep)[0]).resolve()

    @property
    def work(self) -> Path:
        path = Path(self.out) / "work" / self.key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def left(self) -> float:
        return self.deadline - time.time()

    def env(self, **extra: str) -> dict:
        """The environment of a process this stage starts (a `fastzhang` run, a measuring child)."""
        env = {**os.environ, **self.extra_env, "PYTHONPATH": self.pythonpath, **extra}
        if self.dry:  # bitwise comparisons on the CPU need one thread count; 2 cores are shared
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Context:
        return cls(**json.loads(Path(path).read_text()))


def write_json(path: Path, obj) -> None:
    """Whole or not at all: the parent may read the file while a stage is killed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


class Report:
    """The rows of one stage, rewritten to `path` after every row."""

    def __init__(self, path: Path, key: str):
        self.path, self.key, self.rows = Path(path), key, []
        self.last = time.monotonic()

    def add(self, check: str, status: str, value: str = "", detail: str = "", seconds: float | None = None,
            **data) -> None:
        """One row; `seconds`, what the check took, defaults to the time since the previous row."""
        now = time.monotonic()
        seconds = now - self.last if seconds is None else seconds
        self.rows.append({"check": check, "status": status, "value": value, "detail": detail, "data": data,
                          "seconds": round(seconds, 2)})
        self.last = now
        write_json(self.path, {"stage": self.key, "rows": self.rows})
        print(f"[{self.key}] {status:4} {check}: {value}" + (f" ({detail})" if detail else ""), flush=True)

    def attempt(self, check: str, fn, *args, **kwargs) -> None:
        """Run one check, `fn(...) -> (status, value, detail, data)`; an exception is its FAIL row."""
        try:
            status, value, detail, data = fn(*args, **kwargs)
        except Exception as e:  # one broken check must not hide the others
            traceback.print_exc()
            self.add(check, FAIL, "error", error_line(e))
            return
        self.add(check, status, value, detail, **data)


def error_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL
