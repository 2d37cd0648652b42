"""Stage G (with GPU_CHECK_DATA): Table 1 rows on the real CIFAR-10, as many as fit, against the paper.

The recipes of recipes/table1/ run one after another with `fastzhang run --config R
--data-dir GPU_CHECK_DATA`, the Inception baseline (no crop, no weight decay) first,
then the paper's order. A row starts only if the last one's wall time says it fits in
what is left of the stage's limit (GPU_CHECK_TABLE1_S); a run cut by the limit
checkpoints and is reported as not finished. The dry run trains the MLP 1x512 row for
one epoch of 256 images on the CPU, to check the plumbing.
"""

from __future__ import annotations

import time

from gpu_check import fz
from gpu_check.context import FAIL, INFO, SKIP

DRY_ARGS = ["--epochs", "1", "--batch-size", "32", "--train-subset", "256", "--device", "cpu"]


def run(ctx, report) -> None:
    from fastzhang.report.paper import TABLE1

    recipes = _recipes(ctx)
    rows = sorted(TABLE1, key=lambda r: (r.model, r.randomization, r.random_crop, r.weight_decay)
                  != ("inception", "none", False, False))  # a stable sort: the baseline first, then the paper's order
    if ctx.dry:  # one epoch of Inception's evaluation alone takes a minute on the CPU
        report.add("Inception and the other rows", SKIP, "not run", f"dry run: {len(rows) - 1} rows only on the GPU")
        rows = [r for r in rows if r.model == "mlp1"][:1]
    last_wall = None
    for index, row in enumerate(rows):
        name = f"{row.label} (crop {'yes' if row.random_crop else 'no'}, wd {'yes' if row.weight_decay else 'no'})"
        recipe = recipes.get((row.model, row.randomization, row.random_crop, row.weight_decay))
        if recipe is None:
            report.add(name, FAIL, "no recipe", "recipes/table1/ has no recipe for this row")
            continue
        if last_wall is not None and ctx.left() < 1.1 * last_wall + 5:
            report.add(name, SKIP, "no time left", f"the last row took {last_wall:.0f} s, {ctx.left():.0f} s left")
            continue
        start = time.monotonic()
        report.attempt(name, _row, ctx, row, recipe, index)
        last_wall = time.monotonic() - start


def _recipes(ctx) -> dict:
    """(model, randomization, random crop, weight decay > 0) -> recipe file in recipes/table1/."""
    from pathlib import Path

    from fastzhang.config import ExperimentConfig

    found = {}
    for path in sorted((Path(ctx.repo) / "recipes" / "table1").glob("*.yaml")):
        cfg = ExperimentConfig.from_yaml(path)
        found[(cfg.model, cfg.randomization, cfg.random_crop, cfg.weight_decay > 0)] = path
    return found


def _row(ctx, row, recipe, index: int):
    folder = ctx.work / f"row{index:02d}"
    args = ["run", "--config", str(recipe), "--data-dir", ctx.data, "--quiet", *(DRY_ARGS if ctx.dry else [])]
    proc = fz.start(ctx, args, folder, "run")
    try:
        fz.finish(proc, ctx.left() - 5)
    except AssertionError as e:
        return FAIL if "exited" in str(e) else SKIP, "not finished", str(e), {}
    results = fz.results_of(folder)
    m = results["metrics"]
    value = (f"train {m['final_train_acc']:.2f}% (paper {row.train}), test {m['final_test_acc']:.2f}% "
             f"(paper {row.test}, {m['final_test_acc'] - row.paper_test:+.2f})")
    seconds = results["throughput"]["train_seconds"]
    return INFO, value, f"{results['total_epochs']} epochs, {seconds:.0f} s training; {results['execution']}", {
        "train_acc": m["final_train_acc"], "test_acc": m["final_test_acc"], "paper_train": row.paper_train,
        "paper_test": row.paper_test, "epochs": results["total_epochs"], "train_seconds": seconds}
