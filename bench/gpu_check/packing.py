"""Stage F: K runs sharing the GPU through `fastzhang batch --runs-per-gpu K`, against one run.

K = 1, 2, 4 copies of one synthetic-data recipe (different seeds) start together;
each run's training images/s comes from its results file (the median over its epochs
after the first, which captures the graphs), and the aggregate is their sum. The batch's
wall time (process start, data, capture, evaluation and checkpoints included) is
reported beside it. Inception without compile: four cold compiles at once would measure
the compiler. The dry run packs mlp1 runs on the CPU with --max-parallel K.
"""

from __future__ import annotations

import statistics
import time

from gpu_check import fz
from gpu_check.context import FAIL, INFO

PACKS = {"gpu": (1, 2, 4), "dry": (1, 2)}
RECIPES = {
    "gpu": 'model: inception\ndataset: synthetic\nepochs: 8\nbatch_size: 128\ncompile: "off"\nseed: {seed}\n',
    "dry": "model: mlp1\ndataset: synthetic\nepochs: 3\nbatch_size: 32\ntrain_subset: 256\ndevice: cpu\nseed: {seed}\n",
}


def run(ctx, report) -> None:
    kind = "dry" if ctx.dry else "gpu"
    alone = None
    for k in PACKS[kind]:
        try:
            rates, wall, images = _batch(ctx, k, RECIPES[kind])
        except AssertionError as e:
            report.add(f"{k} run(s) at once", FAIL, "the batch failed", str(e))
            continue
        total = sum(rates)
        alone = alone or total
        report.add(f"{k} run(s) at once", INFO, f"{total:,.0f} img/s in all ({total / alone:.2f}x one run)",
                   f"per run {', '.join(f'{r:,.0f}' for r in rates)} img/s; the batch took {wall:.1f} s wall "
                   f"({images / wall:,.0f} img/s counting start-up)", images_per_s=round(total, 1),
                   ratio=round(total / alone, 3), per_run=[round(r, 1) for r in rates], wall_s=round(wall, 2))


def _batch(ctx, k: int, recipe: str) -> tuple[list[float], float, int]:
    """(each run's median training images/s after its first epoch, the batch's wall seconds, images trained)."""
    from fastzhang import results

    folder = ctx.work / f"k{k}"
    recipes = folder / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    for seed in range(k):
        (recipes / f"seed{seed}.yaml").write_text(recipe.format(seed=seed))
    pack = ["--max-parallel", str(k)] if ctx.dry else ["--runs-per-gpu", str(k)]
    start = time.monotonic()
    fz.finish(fz.start(ctx, ["batch", str(recipes), "--quiet", *pack], folder, "batch"), ctx.left() - 5)
    wall = time.monotonic() - start
    entries = results.scan(folder / "results")
    if len(entries) != k or any(e.problem for e in entries):
        raise AssertionError(f"expected {k} results files, found {[(e.path.name, e.problem) for e in entries]}")
    rates = [statistics.median(e.payload["metrics"]["images_per_second"][1:]) for e in entries]
    images = sum(e.payload["throughput"]["mean_images_per_second"] * e.payload["throughput"]["train_seconds"]
                 for e in entries)
    return rates, wall, round(images)
