"""The report: Table 1 side by side with the paper, Figure 1 a/b/c and the demo, from results files.

`build_report(results_dir, out_dir)` reads every results file (a damaged one is
listed, never fatal), writes `report.md` and its PNG figures into `out_dir`, and
returns the path of `report.md`. It works with any subset of the experiments.
"""

from __future__ import annotations

from pathlib import Path

from fastzhang.atomicio import atomic_write
from fastzhang.report import figures, tables

REPORT_NAME = "report.md"


def build_report(results_dir: str | Path, out_dir: str | Path) -> Path:
    from fastzhang.results import scan

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    entries = scan(results_dir)
    runs, damaged = tables.load_runs(entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = tables.demo_runs(runs)
    completed = sum(r.completed for r in runs)
    lines = [
        "# fastzhang report: Zhang et al. 2017 on CIFAR-10", "",
        f"From `{results_dir}`: {len(entries)} results files, {completed} completed runs, "
        f"{len(damaged)} damaged or unreadable.", "",
    ]
    if demo:
        lines += tables.demo_section(demo, figures.demo_figure(demo, out_dir))
    else:
        (out_dir / figures.DEMO).unlink(missing_ok=True)
    lines += tables.table1_section(runs)
    lines += figures.figure1a_section(runs, out_dir)
    lines += figures.figure1bc_section(runs, out_dir)
    lines += tables.unfinished_section(runs)
    lines += tables.damaged_section(damaged)
    path = out_dir / REPORT_NAME
    text = "\n".join(lines).rstrip("\n") + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), what="report")
    return path
