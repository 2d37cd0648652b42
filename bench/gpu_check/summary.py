"""The check's one summary: summary.json (everything) and summary.md (a table per stage)."""

from __future__ import annotations

from pathlib import Path

from gpu_check.context import FAIL, write_json


def stage_status(rows: list[dict], rc: int | None, timed_out: bool) -> str:
    if timed_out or rc != 0 or not rows or any(r["status"] == FAIL for r in rows):
        return FAIL
    return "PASS"


def write(out: Path, summary: dict) -> None:
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown(summary))


def markdown(summary: dict) -> str:
    mode = "dry run on the CPU (plumbing only, tiny sizes)" if summary["dry_run"] else "GPU run"
    lines = [f"# GPU check: {'PASS' if summary['ok'] else 'FAIL'}", "",
             f"{summary['started']}, {mode}, {summary['wall_s']:.0f} s in all "
             f"(stages A-F: {summary['synthetic_s']:.0f} s of a {summary['budget_s']} s budget).", "",
             _table(["stage", "status", "seconds", "limit", "what"],
                    [[s["stage"], s["status"], f"{s['seconds']:.1f}", f"{s['limit_s']:.0f}", s["title"]]
                     for s in summary["stages"]])]
    for s in summary["stages"]:
        lines += ["", f"## {s['stage']}: {s['title']} ({s['status']}, {s['seconds']:.1f} s)", ""]
        if s.get("problem"):
            lines += [f"**{s['problem']}** (log: {s['log']})", ""]
        lines.append(_table(["check", "status", "value", "detail", "s"],
                            [[r["check"], r["status"], r["value"], r["detail"], r.get("seconds", "")]
                             for r in s["rows"]]))
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
