"""Each experiment's own log, `{checkpoint-dir}/{id}.log`: what its runs said, appended across resumptions,
with or without --quiet or a terminal (`fastzhang batch` sends each run's stdout and stderr there too).

Only the holder of the experiment's lock writes it. The log is for people: a failed
write costs one warning, never the run (the checkpoints are what count).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from fastzhang.log import info, warn

_STAMP = "%Y-%m-%d %H:%M:%S"
_STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def printed(text: str) -> str:
    """The lines of a log a run printed itself (batch sends them there), without RunLog's own lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not _STAMPED.match(line))


class RunLog:
    """say(text): a line in the log (time-stamped) and, unless quiet, on stderr."""

    def __init__(self, path: Path, *, quiet: bool):
        self.path, self.quiet = Path(path), quiet
        self.broken = False
        # `fastzhang batch` sends a run's stderr into this very file: what goes to stderr is in the log already
        try:
            self.stderr_is_log = os.path.samestat(os.fstat(sys.stderr.fileno()), os.stat(self.path))
        except (OSError, ValueError, AttributeError):  # no such file yet, or a stream without a descriptor
            self.stderr_is_log = False

    def say(self, text: str) -> None:
        if not self.quiet:
            info(text)
            if self.stderr_is_log:
                return
        self.write(text)

    def warning(self, text: str) -> None:
        """A warning: on stderr even when quiet, and in the log."""
        warn(text)
        if not self.stderr_is_log:
            self.write(f"warning: {text}")

    def write(self, text: str) -> None:
        """Only into the log (what the terminal already shows another way, e.g. a warning)."""
        if self.broken:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime(_STAMP)} {text}\n")
        except OSError as e:
            self.broken = True
            warn(f"cannot write the log {self.path} ({e.strerror or e}); the run goes on without it")


# What a run says: the wording lives here, experiment.py and cli/run.py read it.


def describe(cfg) -> str:
    """The resolved configuration in one clause: what is about to be trained."""
    labels = f"partial, p={cfg.corrupt_prob:g}" if cfg.randomization == "partial" else cfg.randomization
    data = cfg.dataset if cfg.randomization == "none" else f"{cfg.dataset} ({labels})"
    extras = [f"weight decay {cfg.weight_decay:g}"] if cfg.weight_decay else []
    extras += ["random crops"] if cfg.random_crop else []
    extras += [f"data seed {cfg.data_seed}"] if cfg.data_seed is not None else []
    extras += [f"first {cfg.train_subset} images"] if cfg.train_subset else []
    extras += [f"stop at {cfg.stop_at_train_acc:g}% train accuracy"] if cfg.stop_at_train_acc else []
    extras += [f"early stopping after {cfg.early_stop_patience} epochs without a better test accuracy, "
               f"not before epoch {cfg.early_stop_min_epochs}"] if cfg.early_stop_patience else []
    return ", ".join([f"{cfg.model} on {data}", f"lr {cfg.effective_lr:g}", f"{_count(cfg.epochs, 'epoch')}",
                      f"batch {cfg.batch_size}", f"seed {cfg.seed}", *extras])


def epoch_line(experiment_id: str, row: dict, epochs: int, seconds_per_epoch: float) -> str:
    """One finished epoch: its training and test seconds and their sum, and the time the remaining
    epochs should take at this session's wall-clock pace so far (`seconds_per_epoch`)."""
    left = epochs - row["epochs"]
    eta = f", ~{duration(left * seconds_per_epoch)} left" if left > 0 else ""
    train, test = row["epoch_seconds"], row["eval_seconds"]
    return (f"{experiment_id} epoch {row['epochs']}/{epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% "
            f"| train {train:.1f}s ({row['images_per_second']:.0f} img/s) + test {test:.1f}s = "
            f"{train + test:.1f}s{eta}")


def completed_line(payload: dict, results_path) -> str:
    """How a finished run is summarised: how it ended (epochs, or the rule that stopped it), train and
    test accuracy, best test epoch, the results file."""
    from fastzhang.results import how_it_ended  # orjson: only once a run has finished

    metrics = payload["metrics"]
    ended = how_it_ended(payload) if payload["stopped_early"] else _count(payload["total_epochs"], "epoch")
    best_epoch = metrics.get("best_epoch")
    at = f" (epoch {best_epoch})" if best_epoch else ""
    return (f"{payload['experiment_id']} completed: {ended}; final train accuracy "
            f"{pct(metrics.get('final_train_acc'))}, test {pct(metrics.get('final_test_acc'))}; "
            f"best test {pct(metrics.get('best_test_acc'))}{at}; results in {results_path}")


def readable_time(stamp) -> str:
    """A results file's timestamp as people read it: 20261203_164602 -> 2026-12-03 16:46:02."""
    import datetime as dt

    try:
        return dt.datetime.strptime(stamp, "%Y%m%d_%H%M%S").strftime(_STAMP)
    except (TypeError, ValueError):  # an ISO 8601 stamp (older files) reads well as it is
        return str(stamp)


def pct(value) -> str:
    return f"{value:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def duration(seconds: float) -> str:
    """4 s, 3m 20s, 2h 05m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
