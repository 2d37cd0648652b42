"""`fastzhang run`: one experiment from a recipe and/or flags.

Flags mirror the config fields (dashes for underscores) and override the
recipe. Only flags the user actually gave are passed on, so a recipe's value is
never replaced by a flag's default.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fastzhang import runlog
from fastzhang.config import ExperimentConfig, choices
from fastzhang.data.choices import DATASETS, RANDOMIZATIONS
from fastzhang.errors import ConfigMismatch, UsageError
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
    ("--seed", "seed", int, "seed for init, batch order, crops; and the data's unless --data-seed (default 0)"),
    ("--data-seed", "data_seed", int, "seed for the data's randomization: labels, pixels, noise (default: --seed)"),
    ("--train-subset", "train_subset", int, "train on a fixed subset of k images"),
    ("--stop-at-train-acc", "stop_at_train_acc", float, "stop once train accuracy (%%) reaches this"),
    ("--early-stop-patience", "early_stop_patience", int,
     "stop once the best test accuracy is this many epochs old (default: no early stopping)"),
    ("--early-stop-min-epochs", "early_stop_min_epochs", int,
     "early stopping ends no run before this epoch (default 0)"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--data-dir", "data_dir", str, "CIFAR-10 / CIFAR-100 folder (default $FASTZHANG_DATA, then ./data)"),
    ("--amp", "amp", str, "bf16 autocast: auto | on | off"),
    ("--compile", "compile", str, "torch.compile: auto | on | off (auto: for a run long enough to repay it, the "
     "whole model on CUDA, AlexNet's LRN kernels alone on a CPU; the first line says what and why; on: the whole "
     "model)"),
    ("--cuda-graphs", "cuda_graphs", str, "capture the training step: auto | on | off"),
    ("--channels-last", "channels_last", str, "channels_last memory format: auto | on | off"),
    ("--loader", "loader", str, "auto | torch | triton | dali (auto: triton on CUDA when it can run, else torch)"),
    ("--checkpoint-every-steps", "checkpoint_every_steps", int, "also checkpoint every N steps"),
    ("--snapshot-every", "snapshot_every", int,
     "also keep checkpoints/ID_epochEEE.pth every N epochs and at the last (for --resume-from)"),
)


def add_experiment_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="RECIPE", help="YAML recipe (flags override its values)")
    listed = _listed()
    named = choices()  # the usage shows the names; config.py checks them (and suggests the closest)
    for flag, dest, kind, text in _VALUE_FLAGS:
        names = named.get(dest)
        p.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=text.format(**listed),
                       metavar="{" + ",".join(names) + "}" if names else None)
    p.add_argument("--random-crop", dest="random_crop", action="store_true", default=argparse.SUPPRESS,
                   help="random 28x28 crops for training (default: center crop)")
    p.add_argument("--no-random-crop", dest="random_crop", action="store_false", default=argparse.SUPPRESS,
                   help="center crops (overrides a recipe's random_crop: true)")
    p.add_argument("--use_wandb", "--use-wandb", dest="use_wandb", action="store_true",
                   default=argparse.SUPPRESS, help="log to Weights & Biases (needs fastzhang[wandb])")


EXAMPLES = """examples:
  fastzhang run --config recipes/demo/mlp1_random_labels.yaml
  fastzhang run --model mlp1 --randomization partial --corrupt-prob 0.2 --epochs 20
  fastzhang run --resume-from checkpoints/ID_checkpoint.pth      # continue that experiment
  fastzhang run --resume-from checkpoints/ID_checkpoint.pth --epochs 200   # extend it to 200 epochs
  fastzhang run --config recipes/table1/mlp1_baseline.yaml --force   # train it again from epoch 1

Progress: per-epoch lines on stderr (a progress bar on a terminal) and in
CHECKPOINT_DIR/ID.log; `fastzhang status [ID]` shows every experiment."""


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
                       description="Train one experiment, given by a recipe (--config) and/or flags (--model at\n"
                                   "least). Resumes from its checkpoint; skips it if completed.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_flags(p)
    add_output_flags(p)
    p.add_argument("--force", action="store_true", help="train again from epoch 1 (keeps old results)")
    p.add_argument("--resume-from", type=Path, metavar="CHECKPOINT",
                   help="continue from this checkpoint file (a completed experiment's snapshot too); alone it "
                        "continues the experiment stored there; with --epochs N above its own, it extends it; "
                        "other flags given must match it")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or per-epoch lines on the terminal (the log file still gets them)")
    p.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> tuple[ExperimentConfig, dict | None]:
    """The run's config and the --resume-from checkpoint's payload, read once: with no recipe, the
    checkpoint's settings under the flags given are the config (check_resumable compares them)."""
    fields = set(ExperimentConfig.__dataclass_fields__)
    given = {k: v for k, v in vars(args).items() if k in fields}
    payload = None
    if args.resume_from is not None:
        from fastzhang.experiment import read_resume_file, resume_settings

        payload = read_resume_file(args.resume_from)
    if args.config is not None:
        return ExperimentConfig.from_yaml(args.config, overrides=given), payload
    if payload is not None:
        return ExperimentConfig.from_mapping({**resume_settings(payload, args.resume_from), **given},
                                             source=f"{args.resume_from} and flags"), payload
    if "model" not in given:
        raise UsageError("run needs --config RECIPE or --model NAME (or --resume-from CHECKPOINT), "
                         "e.g. fastzhang run --config recipes/demo/mlp1_true_labels.yaml; see fastzhang run --help")
    return ExperimentConfig.from_mapping(given, source="flags"), None


def _run(args: argparse.Namespace) -> int:
    cfg, payload = config_from_args(args)  # a bad recipe or flag is refused before torch is even imported
    from fastzhang.experiment import Interrupted, RunOptions, run_experiment

    opts = RunOptions(checkpoint_dir=args.checkpoint_dir, results_dir=args.results_dir, force=args.force,
                      resume_from=args.resume_from, resume_payload=payload, quiet=args.quiet)
    try:
        outcome = run_experiment(cfg, opts)
    except ConfigMismatch as e:
        if args.resume_from is None:
            raise
        stored = argparse.Namespace(**{**{k: v for k, v in vars(args).items() if k not in e.fields}, "config": None})
        raise UsageError(f"{e.what}; to continue it: {command_used(stored, None, resume=True)}; to train the "
                         f"requested settings from epoch 1: {command_used(args, cfg)}") from None
    except Interrupted as e:
        print(f"fastzhang: {e}; to resume: {command_used(args, cfg)}", file=sys.stderr, flush=True)
        return e.exit_code
    if outcome.status == "already_completed":
        print(completion_block(outcome, args, cfg))
    else:
        print("fastzhang: " + runlog.completed_line(outcome.results, outcome.results_path))
    return 0


def command_used(args: argparse.Namespace, cfg: ExperimentConfig | None, *extra: str, resume: bool = False) -> str:
    """The `fastzhang run` command that asks for this experiment again: its flags as given, without
    --resume-from unless `resume`; all of `cfg`'s settings when they came from a --resume-from checkpoint."""
    given = vars(args)
    words = ["fastzhang", "run"]
    if args.config is not None:
        words += ["--config", str(args.config)]
    if resume:
        words += ["--resume-from", str(args.resume_from)]
    elif args.config is None and args.resume_from is not None:
        default = ExperimentConfig()
        given = {dest: value for dest, value in cfg.to_dict().items()
                 if value != getattr(default, dest) or dest == "model"}
    words += [w for flag, dest, _, _ in _VALUE_FLAGS if dest in given for w in (flag, str(given[dest]))]
    if "random_crop" in given:
        words.append("--random-crop" if given["random_crop"] else "--no-random-crop")
    if given.get("use_wandb"):
        words.append("--use-wandb")
    return shlex.join(words + output_words(args) + list(extra))


def output_words(args: argparse.Namespace) -> list[str]:
    """--checkpoint-dir / --results-dir as given, when they are not the defaults."""
    words = []
    for flag, dest, default in (("--checkpoint-dir", "checkpoint_dir", "checkpoints"),
                                ("--results-dir", "results_dir", "results")):
        if Path(getattr(args, dest)) != Path(default):
            words += [flag, str(getattr(args, dest))]
    return words


def completion_block(outcome, args, cfg: ExperimentConfig) -> str:
    from fastzhang.results import how_it_ended  # orjson: not at every CLI start

    clean = shlex.join(["fastzhang", "clean", outcome.experiment_id, *output_words(args)])
    shown = str(outcome.results_path)  # as the user's examples show it: ./results/... when relative
    shown = shown if outcome.results_path.is_absolute() or shown.startswith(".") else f"./{shown}"
    r = outcome.results
    m = r.get("metrics", {})
    bar = "=" * 44
    return "\n".join([
        bar, "⚠️  EXPERIMENT ALREADY COMPLETED", bar,
        f"Results file: {shown}", "",
        # Deleting only the results file re-runs nothing: the final checkpoint rewrites it.
        "To re-run this experiment, either:",
        f"  1. Add --force flag (keeps the old results): {command_used(args, cfg, '--force')}",
        f"  2. Delete its checkpoints and results, and train it: {clean} && {command_used(args, cfg)}",
        bar, "", "Previous Results:",
        f"  Best test accuracy: {runlog.pct(m.get('best_test_acc'))}"
        + (f" (epoch {m['best_epoch']})" if m.get("best_epoch") else ""),
        f"  Final train accuracy: {runlog.pct(m.get('final_train_acc'))}",
        f"  Final test accuracy: {runlog.pct(m.get('final_test_acc'))}",
        f"  Total epochs: {r.get('total_epochs')}",
        f"  Ended: {how_it_ended(r)}",
        f"  Completed: {runlog.readable_time(r.get('timestamp'))}",
    ])
