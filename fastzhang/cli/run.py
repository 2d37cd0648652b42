"""`fastzhang run`: one experiment from a recipe and/or flags.

Flags mirror the config fields (dashes for underscores) and override the
recipe. Only flags the user actually gave are passed on, so a recipe's value is
never replaced by a flag's default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastzhang.config import ExperimentConfig
from fastzhang.data.choices import DATASETS, RANDOMIZATIONS
from fastzhang.models.registry import MODELS

# flag -> (config field, argparse type, help); {names} in a help are filled by _listed()
_VALUE_FLAGS = (
    ("--model", "model", str, "{models}"),
    ("--dataset", "dataset", str, "{datasets} (synthetic: a small generated set for tests)"),
    ("--randomization", "randomization", str, "{randomizations}"),
    ("--corrupt-prob", "corrupt_prob", float, "label corruption level p for 'partial'"),
    ("--weight-decay", "weight_decay", float, "L2 weight decay (paper default: none)"),
    ("--epochs", "epochs", int, "epochs to train (default 100)"),
    ("--batch-size", "batch_size", int, "batch size (default 128)"),
    ("--lr", "lr", float, "initial learning rate (default: {default_lrs})"),
    ("--lr-decay", "lr_decay", float, "learning-rate factor after every epoch (default 0.95)"),
    ("--momentum", "momentum", float, "SGD momentum (default 0.9)"),
    ("--seed", "seed", int, "seed for data randomization, order, crops and init"),
    ("--train-subset", "train_subset", int, "train on a fixed subset of k images"),
    ("--stop-at-train-acc", "stop_at_train_acc", float, "stop once train accuracy (%%) reaches this"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--data-dir", "data_dir", str, "CIFAR-10 folder (default $FASTZHANG_DATA, then ./data)"),
    ("--amp", "amp", str, "bf16 autocast: auto | on | off"),
    ("--compile", "compile", str, "torch.compile: auto | on | off"),
    ("--cuda-graphs", "cuda_graphs", str, "capture the training step: auto | on | off"),
    ("--channels-last", "channels_last", str, "channels_last memory format: auto | on | off"),
    ("--loader", "loader", str, "auto | torch | triton | dali (auto: triton on CUDA when it can run, else torch)"),
    ("--checkpoint-every-steps", "checkpoint_every_steps", int, "also checkpoint every N steps"),
)


def add_experiment_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML recipe (flags override its values)")
    listed = _listed()
    for flag, dest, kind, text in _VALUE_FLAGS:
        p.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=text.format(**listed))
    p.add_argument("--random-crop", dest="random_crop", action="store_true", default=argparse.SUPPRESS,
                   help="random 28x28 crops for training (default: center crop)")
    p.add_argument("--no-random-crop", dest="random_crop", action="store_false", default=argparse.SUPPRESS)
    p.add_argument("--use_wandb", "--use-wandb", dest="use_wandb", action="store_true",
                   default=argparse.SUPPRESS, help="log to Weights & Biases (needs fastzhang[wandb])")


def _listed() -> dict[str, str]:
    """The names the help lists, read from their owners when the parser is built."""
    by_lr: dict[float, list[str]] = {}
    for name, entry in MODELS.items():
        by_lr.setdefault(entry.default_lr, []).append(name)
    return {
        "models": " | ".join(MODELS),
        "datasets": " | ".join(DATASETS),
        "randomizations": " | ".join(RANDOMIZATIONS),
        "default_lrs": "; ".join(f"{lr:g} for {', '.join(names)}" for lr, names in by_lr.items()),
    }


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """The output folders, the same for run, batch, status and clean."""
    p.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"),
                   help="folder with checkpoints and lock files (default: ./checkpoints)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="folder with results files (default: ./results)")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train one experiment (resumes, skips if completed)",
                       description="Train one experiment. Resumes from its checkpoint; skips it if completed.")
    add_experiment_flags(p)
    add_output_flags(p)
    p.add_argument("--force", action="store_true", help="train again from epoch 1 (keeps old results)")
    p.add_argument("--resume-from", type=Path, help="resume from this checkpoint file (same configuration)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    fields = set(ExperimentConfig.__dataclass_fields__)
    given = {k: v for k, v in vars(args).items() if k in fields}
    if args.config is not None:
        return ExperimentConfig.from_yaml(args.config, overrides=given)
    return ExperimentConfig.from_mapping(given, source="flags")


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # a bad recipe or flag is refused before torch is even imported
    from fastzhang.experiment import Interrupted, RunOptions, run_experiment

    opts = RunOptions(checkpoint_dir=args.checkpoint_dir, results_dir=args.results_dir, force=args.force,
                      resume_from=args.resume_from, quiet=args.quiet)
    try:
        outcome = run_experiment(cfg, opts)
    except Interrupted as e:
        print(f"fastzhang: {e}", flush=True)
        return e.exit_code
    if outcome.status == "already_completed":
        print(completion_block(outcome, args, opts))
    else:
        m = outcome.results["metrics"]
        print(f"fastzhang: {outcome.experiment_id} completed: best test accuracy {m['best_test_acc']:.2f}%, "
              f"final {m['final_test_acc']:.2f}% after {outcome.results['total_epochs']} epochs; "
              f"results in {outcome.results_path}")
    return 0


def completion_block(outcome, args, opts) -> str:
    path = _shown(outcome.results_path)
    from fastzhang.checkpoint import latest_path  # names files without importing torch

    ckpt = _shown(latest_path(opts.checkpoint_dir, outcome.experiment_id))
    recipe = str(args.config) if args.config else "<recipe>"
    r = outcome.results
    m = r.get("metrics", {})
    bar = "=" * 44
    return "\n".join([
        bar, "⚠️  EXPERIMENT ALREADY COMPLETED", bar,
        f"Results file: {path}", "",
        "To re-run this experiment, either:",
        f"  1. Add --force flag: ./run_experiment.sh --config {recipe} --force",
        f"  2. Delete the results file: {path}",
        f"  3. Delete the checkpoint: {ckpt}",
        bar, "", "Previous Results:",
        f"  Best test accuracy: {_pct(m.get('best_test_acc'))}",
        f"  Final test accuracy: {_pct(m.get('final_test_acc'))}",
        f"  Total epochs: {r.get('total_epochs')}",
        f"  Completed: {r.get('timestamp')}",
    ])


def _pct(value) -> str:
    return f"{value:.2f}%" if isinstance(value, (int, float)) else "n/a"


def _shown(path: Path) -> str:
    """Paths as the user's examples show them: ./results/... when relative."""
    text = str(path)
    return text if path.is_absolute() or text.startswith(".") else f"./{text}"
