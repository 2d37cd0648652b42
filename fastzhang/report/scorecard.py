"""The scorecard at the top of the report: how much of Table 1 is run, and how close it comes to the paper.

Only full runs count: the whole schedule (FULL_EPOCHS epochs trained) on all of CIFAR-10's
training set; a row that has only short or subset runs is listed apart.

A row is within tolerance when |ours − paper|, ours the mean over the row's seeds (tables.Group),
rounded to the paper's two decimals, is at most TEST_TOLERANCE points on test accuracy
(TRAIN_TOLERANCE on train accuracy); a row without a number (diverged runs) never is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastzhang.report.paper import TABLE1, Table1Row
from fastzhang.report.tables import FinishedRun, Group, table1_groups, table1_match, yes_no

TEST_TOLERANCE = 1.5  # points of test accuracy
TRAIN_TOLERANCE = 1.0  # points of train accuracy
FULL_EPOCHS = 100  # the paper's schedule (Appendix A), the config's default


def full_runs(runs: list[FinishedRun]) -> list[FinishedRun]:
    return [r for r in runs if r.epochs >= FULL_EPOCHS]


@dataclass(frozen=True)
class Scorecard:
    rows: int  # Table 1 rows
    counted: list[tuple[Table1Row, Group]]  # the rows with a full run, and their seeds
    test_within: int
    train_within: int
    both_within: int
    largest: tuple[float, str, Table1Row] | None  # (ours − paper, "train" | "test", row), largest |deviation|


def _delta(ours: float, paper: float) -> float | None:
    return None if math.isnan(ours) else round(ours - paper, 2)


def _within(delta: float | None, tolerance: float) -> bool:
    return delta is not None and abs(delta) <= tolerance


def scorecard(runs: list[FinishedRun]) -> Scorecard:
    test_within = train_within = both = 0
    largest = None
    counted = [(row, group) for row, group in table1_groups(full_runs(runs)) if group is not None]
    for row, group in counted:
        d_train = _delta(group.stat("final_train_acc").mean, row.paper_train)
        d_test = _delta(group.stat("final_test_acc").mean, row.paper_test)
        ok_test, ok_train = _within(d_test, TEST_TOLERANCE), _within(d_train, TRAIN_TOLERANCE)
        test_within, train_within, both = test_within + ok_test, train_within + ok_train, both + (ok_test and ok_train)
        for delta, which in ((d_train, "train"), (d_test, "test")):
            if delta is not None and (largest is None or abs(delta) > abs(largest[0])):
                largest = (delta, which, row)
    return Scorecard(len(TABLE1), counted, test_within, train_within, both, largest)


def _row_text(row: Table1Row) -> str:
    return f"{row.label} (random crop {yes_no(row.random_crop)}, weight decay {yes_no(row.weight_decay)})"


def scorecard_section(runs: list[FinishedRun]) -> list[str]:
    card = scorecard(runs)
    if card.largest is None:
        largest = "none yet"
    else:
        delta, which, row = card.largest
        largest = f"{delta:+.2f} points, {which} accuracy of {_row_text(row)}"
    of_run = f" of {len(card.counted)}"
    done = {row for row, _ in card.counted}
    apart = [(row, table1_match(row, runs, any_subset=True)) for row in TABLE1 if row not in done]
    apart = [f"  - {_row_text(row)}: {group.who()} ({_short(group.runs[0])})" for row, group in apart if group]
    return [
        "## Scorecard", "",
        f"- Table 1 rows with a full run ({FULL_EPOCHS} epochs on all of CIFAR-10): {len(card.counted)} of "
        f"{card.rows}" + (", judged on the mean over their seeds:" if card.counted else ""),
        *[f"  - {_row_text(row)}: n = {group.n}" for row, group in card.counted],
        f"- test accuracy within {TEST_TOLERANCE:g} points of the paper: {card.test_within}{of_run}",
        f"- train accuracy within {TRAIN_TOLERANCE:g} point{'s' if TRAIN_TOLERANCE != 1 else ''} of the paper: "
        f"{card.train_within}{of_run}",
        f"- both: {card.both_within}{of_run}",
        f"- largest deviation from the paper: {largest}",
        *([f"- not counted, only short or subset runs so far ({len(apart)} rows):", *apart] if apart else []), "",
    ]


def _short(run: FinishedRun) -> str:
    subset = run.cfg.train_subset
    return ", ".join([f"{run.epochs} of {FULL_EPOCHS} epochs"] * (run.epochs < FULL_EPOCHS)
                     + [f"first {subset} images"] * bool(subset))
