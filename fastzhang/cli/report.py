"""`fastzhang report`: Table 1 and Figure 1 (Markdown + PNG) from the results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastzhang.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="Table 1 and Figure 1 from the results files",
                       description="Write report.md (Table 1 beside the paper's numbers, Figure 1a/b/c, "
                                   "the demo) and its PNG figures from the results files.")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS/report)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from fastzhang.report import build_report

    if not args.results.is_dir():
        raise UsageError(f"results folder {args.results} does not exist (run some experiments first)")
    out = args.out if args.out is not None else args.results / "report"
    path = build_report(args.results, out)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"Report written to {path}" + (f" (figures: {', '.join(pngs)})" if pngs else ""))
    return 0
