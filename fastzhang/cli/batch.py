"""`fastzhang batch`: many experiments at once, on this machine's GPUs/cores or on a Ray cluster.

Every recipe is loaded first (a bad one refuses the batch with exit 2); recipes
that define the same experiment run once; completed experiments are skipped
unless --force. Exit status: 0 nothing failed, 1 some run failed, 130 / 143
stopped by SIGINT / SIGTERM (the runs checkpoint first). recipes/run_all_recipes.sh
is a wrapper over this command.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fastzhang.cli.run import add_output_flags
from fastzhang.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "batch", help="run many recipes: a local process pool or a Ray cluster",
        description="Run every recipe given (files, or folders searched recursively) as its own experiment. "
                    "Completed experiments are skipped; interrupted ones resume from their checkpoints.",
    )
    p.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE_OR_FOLDER")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: processes on this machine (default); ray: tasks on a Ray cluster")
    p.add_argument("--address", help="Ray cluster to join (auto, or HOST:PORT); default: RAY_ADDRESS, "
                                     "a cluster started on this machine with `ray start`, else a local instance")
    p.add_argument("--seeds", metavar="SEEDS", help="run every recipe once per seed: a range (0-4), a list (0,3,7) "
                                                     "or both (0-2,9); a seed other than 0 is part of the ID")
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="K", help="runs sharing one GPU (default 1)")
    p.add_argument("--max-parallel", type=int, metavar="N",
                   help="most runs at once (default: GPUs x K; on a machine without GPUs, 1)")
    add_output_flags(p)
    p.add_argument("--data-dir", help="CIFAR-10 folder for every recipe (overrides theirs)")
    p.add_argument("--use_wandb", "--use-wandb", dest="use_wandb", action="store_true",
                   help="every run logs to Weights & Biases (needs fastzhang[wandb])")
    p.add_argument("--force", action="store_true", help="train every experiment again from epoch 1")
    p.add_argument("--quiet", action="store_true", help="only failures and the summary")
    p.add_argument("--dry-run", action="store_true",
                   help="say what each recipe would do (run, resume at epoch k, skip, busy, fail: a device or "
                        "data folder this machine lacks) and how long it would take; run nothing, write nothing; "
                        "exit 1 if some run would fail")
    p.add_argument("--title", default="batch", help="what the summary calls this batch (default: batch; "
                                                    "run_all_recipes.sh says 'category NAME')")
    p.set_defaults(func=_batch)


def _batch(args: argparse.Namespace) -> int:
    from fastzhang.batch.plan import BatchOptions, check_limits, collect
    from fastzhang.log import info

    if args.address is not None and args.backend != "ray":
        raise UsageError("--address applies to --backend ray only")
    check_limits(args.runs_per_gpu, args.max_parallel)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    overrides: dict[str, object] = {}  # config fields set for every recipe, passed on to each run
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.use_wandb:
        overrides["use_wandb"] = True
    tasks, notes = collect(args.recipes, overrides, seeds)
    if not args.quiet:
        for note in notes:
            info(note)
    opts = BatchOptions(checkpoint_dir=args.checkpoint_dir, results_dir=args.results_dir, force=args.force,
                        quiet=args.quiet)
    if args.dry_run:
        return _dry_run(tasks, opts, args)
    if args.backend == "ray":
        from fastzhang.batch.ray_backend import import_ray, run_ray

        import_ray()  # refuse before anything starts when the extra is missing
        report = run_ray(tasks, opts, address=args.address, runs_per_gpu=args.runs_per_gpu,
                         max_parallel=args.max_parallel)
    else:
        from fastzhang.batch.local import run_local

        report = run_local(tasks, opts, runs_per_gpu=args.runs_per_gpu, max_parallel=args.max_parallel)
    print(report.summary(args.title), flush=True)
    return report.exit_code()


def parse_seeds(text: str) -> list[int]:
    """--seeds: '0-4' -> [0, 1, 2, 3, 4], '0,3,7' -> [0, 3, 7], in the order given; anything else a UsageError."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or int(m[2] or m[1]) < int(m[1]):
            raise UsageError(f"--seeds must be seeds >= 0 as a range (0-4) or a list (0,3,7); got {text!r}")
        seeds += range(int(m[1]), int(m[2] or m[1]) + 1)
    if len(set(seeds)) < len(seeds):
        raise UsageError(f"--seeds names a seed twice; got {text!r}")
    return seeds


def _dry_run(tasks, opts, args: argparse.Namespace) -> int:
    """One line per experiment: what `batch` would do with it now, and the time it would take.
    Exit 1 when some run would be refused (a device or data folder this machine lacks)."""
    from fastzhang.batch import estimate
    from fastzhang.batch.local import capacity, visible_gpus

    gpus = visible_gpus() if args.backend == "local" else []
    at_once = capacity(gpus, args.runs_per_gpu, args.max_parallel)
    clock = estimate.EpochClock(gpus_visible=bool(gpus))
    clock.add_results(opts.results_dir)
    plan, notes = [], []
    for intent in estimate.intents(tasks, opts):
        why, note = estimate.refusal(intent.task, bool(gpus) if args.backend == "local" else None) \
            if intent.action in (estimate.RUN, estimate.RESUME) else (None, None)
        plan.append(estimate.Intent(intent.task, estimate.FAIL, why=why) if why else intent)
        notes += [note] if note and note not in notes else []  # once per data set and folder
    clock.add_intents(plan)
    print(f"batch --dry-run: {len(plan)} experiment(s); nothing is run or written")
    for note in notes:
        print(f"note: {note}")
    said = set()
    for intent in plan:
        per_epoch = clock.epoch_seconds(intent.task)
        cost = "" if not intent.epochs_left else (
            f", about {estimate.duration(intent.epochs_left * per_epoch)}" if per_epoch else ", no epoch time yet")
        line = "would fail: as above" if intent.why and intent.why in said else intent.describe()
        said.add(intent.why)
        print(f"  {intent.task.label}: {line}{cost}")
    seconds, unknown = clock.seconds_left(plan, at_once)
    print(f"estimate: {estimate.time_left_text(seconds, unknown)} with up to {at_once} run(s) at once")
    failing = sum(intent.action == estimate.FAIL for intent in plan)
    if failing:
        print(f"{failing} run(s) would fail")
    return 1 if failing else 0
