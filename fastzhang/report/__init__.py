"""The report: a scorecard, Table 1 beside the paper, Figures 1 a/b/c and 2, the demo, from results files.

`build_report(results_dir, out_dir, fit_threshold=...)` reads every results file
(a damaged one is listed, never fatal), writes `report.md`, its PNG figures and
the tidy export (runs.csv, summary.csv) into `out_dir`, and returns the path of
`report.md`. It works with any subset of the experiments. `fit_threshold` is the
train accuracy (%) at which Figure 1b counts a run as fitted.
"""

from __future__ import annotations

from pathlib import Path

from fastzhang.atomicio import atomic_write
from fastzhang.log import warn
from fastzhang.report.fit import FIT_THRESHOLD

REPORT_NAME = "report.md"


def build_report(results_dir: str | Path, out_dir: str | Path, *,
                 fit_threshold: float = FIT_THRESHOLD) -> Path:
    from fastzhang.report import export, figures, scorecard, tables
    from fastzhang.results import scan

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    entries = scan(results_dir)
    runs, damaged = tables.load_runs(entries)
    for path, problem in damaged:  # listed in the report too; said here so a terminal user sees it
        warn(f"{path}: {problem}; left out of the report")
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = tables.demo_groups(runs)
    completed = sum(r.completed for r in runs)
    lines = [
        "# fastzhang report: Zhang et al. 2017 on CIFAR-10", "",
        f"From `{results_dir}`: {len(entries)} results files, {completed} completed runs, "
        f"{len(damaged)} damaged or unreadable. Every epoch of each experiment's newest completed run: "
        f"`{export.RUNS_CSV}`; one row per configuration, over its seeds: `{export.SUMMARY_CSV}`.", "",
        tables.STATISTICS, "",
        *scorecard.scorecard_section(runs),
    ]
    lines += tables.demo_section(demo, figures.demo_figure(demo, out_dir))  # none without a demo run
    lines += tables.table1_section(runs)
    lines += figures.figure1a_section(runs, out_dir)
    lines += figures.figure1bc_section(runs, out_dir, fit_threshold)
    lines += figures.figure2_section(runs, out_dir)
    lines += tables.cifar100_section(runs)
    lines += tables.unfinished_section(runs)
    lines += tables.damaged_section(damaged)
    export.write_csvs(runs, out_dir, fit_threshold)
    path = out_dir / REPORT_NAME
    text = "\n".join(lines).rstrip("\n") + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), what="report")
    return path
