"""`fastzhang report`: the report (Markdown + PNG) and the tidy export (CSV) from the results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastzhang.errors import UsageError
from fastzhang.report.fit import FIT_THRESHOLD


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="Table 1, Figures 1 and 2, runs.csv from the results files",
                       description="Write report.md (a scorecard, Table 1 beside the paper's numbers, "
                                   "Figure 1a/b/c, Figure 2, the demo), its PNG figures and the tidy export "
                                   "(runs.csv, summary.csv) from the results files.")
    p.add_argument("--results-dir", "--results", dest="results", type=Path, default=Path("results"), metavar="DIR",
                   help="results folder (default: ./results)")
    p.add_argument("--out-dir", "--out", dest="out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: RESULTS_DIR/report)")
    p.add_argument("--fit-threshold", type=float, default=FIT_THRESHOLD, metavar="T",
                   help="Figure 1b counts a run as fitted at the first epoch whose train accuracy reaches T%% "
                        f"(default: {FIT_THRESHOLD:g})")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from fastzhang.report import build_report
    from fastzhang.report.export import RUNS_CSV, SUMMARY_CSV

    if not args.results.is_dir():
        raise UsageError(f"results folder {args.results} does not exist (run some experiments first)")
    if not 0 < args.fit_threshold <= 100:
        raise UsageError(f"--fit-threshold must be a train accuracy in (0, 100] percent; got {args.fit_threshold:g}")
    out = args.out if args.out is not None else args.results / "report"
    path = build_report(args.results, out, fit_threshold=args.fit_threshold)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"Report written to {path}" + (f" (figures: {', '.join(pngs)})" if pngs else "")
          + f"; tables: {RUNS_CSV}, {SUMMARY_CSV}")
    return 0
