"""The scorecard at the top of the report: how much of Table 1 is run, and how close it comes to the paper.

Only full runs count: the whole schedule (FULL_EPOCHS epochs trained) on all of CIFAR-10's
training set; a row that has only short or subset runs is listed apart.

A row is within tolerance when |ours − paper|, ours the mean over the row's seeds (tables.Group),
rounded to the paper's two decimals, is at most TOLERANCE points (test or train accuracy);
a row without a number (diverged runs) never is.
"""

from __future__ import annotations

import math

from fastzhang.report.paper import TABLE1, Table1Row
from fastzhang.report.tables import FinishedRun, table1_groups, table1_match, yes_no

TOLERANCE = {"train": 1.0, "test": 1.5}  # points of accuracy
FULL_EPOCHS = 100  # the paper's schedule (Appendix A), the config's default


def _row_text(row: Table1Row) -> str:
    return f"{row.label} (random crop {yes_no(row.random_crop)}, weight decay {yes_no(row.weight_decay)})"


def scorecard_section(runs: list[FinishedRun]) -> list[str]:
    counted = [(row, g) for row, g in table1_groups([r for r in runs if r.epochs >= FULL_EPOCHS]) if g is not None]
    deltas = {(row, which): round(mean - getattr(row, f"paper_{which}"), 2)
              for row, g in counted for which in TOLERANCE
              if not math.isnan(mean := g.stat(f"final_{which}_acc").mean)}
    ok = {(row, which) for (row, which), d in deltas.items() if abs(d) <= TOLERANCE[which]}
    largest = max(deltas.items(), key=lambda item: abs(item[1]), default=None)  # the first of equals
    of_run = f" of {len(counted)}"
    done = {row for row, _ in counted}
    apart = [(row, table1_match(row, runs, any_subset=True)) for row in TABLE1 if row not in done]
    return [
        "## Scorecard", "",
        f"- Table 1 rows with a full run ({FULL_EPOCHS} epochs on all of CIFAR-10): {len(counted)} of "
        f"{len(TABLE1)}" + (", judged on the mean over their seeds:" if counted else ""),
        *[f"  - {_row_text(row)}: n = {group.n}" for row, group in counted],
        f"- test accuracy within {TOLERANCE['test']:g} points of the paper: "
        f"{sum(which == 'test' for _, which in ok)}{of_run}",
        f"- train accuracy within {TOLERANCE['train']:g} point{'s' * (TOLERANCE['train'] != 1)} of the paper: "
        f"{sum(which == 'train' for _, which in ok)}{of_run}",
        f"- both: {sum((row, 'test') in ok and (row, 'train') in ok for row in done)}{of_run}",
        "- largest deviation from the paper: " + ("none yet" if largest is None else
                                                  f"{largest[1]:+.2f} points, {largest[0][1]} accuracy of "
                                                  f"{_row_text(largest[0][0])}"),
        *([f"- not counted, only short or subset runs so far ({sum(g is not None for _, g in apart)} rows):"]
          if any(g for _, g in apart) else []),
        *[f"  - {_row_text(row)}: {g.who()} ({_short(g.runs[0])})" for row, g in apart if g], "",
    ]


def _short(run: FinishedRun) -> str:
    subset = run.cfg.train_subset
    return ", ".join([f"{run.epochs} of {FULL_EPOCHS} epochs"] * (run.epochs < FULL_EPOCHS)
                     + [f"first {subset} images"] * bool(subset))
