"""Experiment tracking with Weights & Biases: an observer that never costs a run.

W&B starts in the mode the environment asks for (`WANDB_MODE`, W&B's own
convention: offline, dryrun or disabled are taken as they are). Otherwise it
tries online within a bounded wait, and when that is not possible (no
credentials, the server unreachable or slow) it logs offline under the same run
id, so a resumed run and a later `wandb sync` land in one W&B run; one warning
names the reason and the sync command. Once training runs, a failing W&B call
prints one warning and logging stops; training, checkpoints and the results
file never depend on W&B.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

from fastzhang import log
from fastzhang.config import ExperimentConfig
from fastzhang.errors import UsageError, one_line
from fastzhang.results import METRIC_SCALARS  # the run's summary in W&B: the results file's scalars

INIT_TIMEOUT_S = 20.0  # how long `wandb.init` may try online before the run goes offline
FINISH_TIMEOUT_S = 60.0  # how long the end of a run waits for uploads; the rest stays on disk for `wandb sync`
_OFFLINE_MODES = ("offline", "dryrun", "disabled")


def import_wandb():
    """The wandb module, or a UsageError naming the extra (refused before any work)."""
    try:
        import wandb
    except ImportError:
        raise UsageError("--use_wandb needs the wandb package: pip install 'fastzhang[wandb]'") from None
    return wandb


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


class Tracker:
    """One W&B run; every call is guarded, and the first failure ends logging with one warning."""

    def __init__(self, handle, run_id: str, label: str, warn: Callable[[str], None]):
        self.handle = handle  # None when W&B did not start, or once the run is finished
        self.run_id = run_id
        self.label = label
        self.warn = warn
        self.failed = False  # after a failure nothing more is logged; finish still closes what was logged

    def log(self, row: dict) -> None:
        if not self.failed:
            self._call("log", lambda h: h.log({k: v for k, v in row.items() if k != "epochs"}, step=row["epochs"]))

    def finish(self, exit_code: int, summary: dict | None = None) -> None:
        def end(handle) -> None:
            for key in METRIC_SCALARS if summary and not self.failed else ():
                if key in summary:
                    handle.summary[key] = summary[key]
            handle.finish(exit_code=exit_code)

        self._call("finish", end)
        self.handle = None

    def _call(self, what: str, fn) -> None:
        if self.handle is None:
            return
        try:
            fn(self.handle)
        except Exception as e:  # W&B is an observer: whatever it raises, training goes on
            if not self.failed:
                kept = _sync_hint(self.handle, self.run_id)
                self.warn(f"{self.label}: W&B {what} failed ({one_line(e, last=True)}); training continues without W&B "
                          "logging" + (f"; what was logged is kept: {kept}" if kept else ""))
            self.failed = True


def start(wandb, cfg: ExperimentConfig, run_id: str | None, *, say: Callable[[str], None] = log.info,
          warn: Callable[[str], None] = log.warn) -> Tracker:
    """A Tracker for this run: online if possible, else offline with one warning; never raises.

    `run_id` is the W&B run to continue (from the checkpoint), or None for a new one.
    W&B itself stays silent: `say` tells where the run logs, `warn` why it is not as asked.
    """
    run_id = run_id or new_run_id()
    label = cfg.experiment_id
    args = dict(project=os.environ.get("WANDB_PROJECT", "fastzhang"), id=run_id, resume="allow", name=label,
                config={**cfg.to_dict(), "lr": cfg.effective_lr},
                dir=os.environ.get("WANDB_DIR"))  # as it is now: W&B reads it once per process
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    try:
        wandb.setup(wandb.Settings(silent=True))  # also keeps wandb.login from looking up the account
        if mode in _OFFLINE_MODES:  # the user's choice, taken as it is
            handle = wandb.init(**args, settings=_settings(wandb))
            if not handle.disabled:
                say(f"{label}: W&B logs offline (WANDB_MODE={mode}); sync later with: {_sync_hint(handle, run_id)}")
            return Tracker(handle, run_id, label, warn)
        handle, reason = _start_online(wandb, args)
        if handle is not None:
            say(f"{label}: W&B run {handle.url}")
        else:
            handle = wandb.init(**args, mode="offline", settings=_settings(wandb))
            warn(f"{label}: W&B logs offline ({reason}); sync later with: {_sync_hint(handle, run_id)}")
    except Exception as e:
        warn(f"{label}: W&B could not start ({one_line(e, last=True)}); training continues without W&B logging")
        handle = None
    return Tracker(handle, run_id, label, warn)


def _start_online(wandb, args: dict):
    """(the online run, None), or (None, why it could not start)."""
    try:
        if not wandb.login(prompt=False, verify=False):  # W&B's own check; never prompts on a terminal
            return None, "no W&B API key: set WANDB_API_KEY or run `wandb login`"
        return wandb.init(**args, settings=_settings(wandb, online=True)), None
    except Exception as e:
        wandb.teardown()  # a failed attempt still holds the run id in W&B's service
        return None, f"W&B online unavailable: {one_line(e, last=True)}"


def _settings(wandb, *, online: bool = False):
    """W&B's own bounds: on init, on retrying a refused connection, on uploads at the end.

    A refused or unresolvable server is retried once (W&B's default retries for
    minutes); that also applies to the run's GraphQL calls (file upload URLs),
    while metrics go through W&B's file stream with its own retries, and whatever
    is not uploaded stays on disk for `wandb sync`.
    """
    bounds = dict(init_timeout=INIT_TIMEOUT_S, x_graphql_retry_max=1, x_graphql_retry_wait_min_seconds=0.5,
                  x_graphql_retry_wait_max_seconds=1.0) if online else {}
    # finish_timeout_raises: Tracker.finish says what was left behind
    return wandb.Settings(silent=True, finish_timeout=FINISH_TIMEOUT_S, finish_timeout_raises=True, **bounds)


def _sync_hint(handle, run_id: str) -> str:
    """`wandb sync` over every local folder of this W&B run (a resumed run has one per session)."""
    try:
        folder = Path(handle.settings.sync_dir).parent
    except Exception:
        return ""
    prefix = "offline-run" if handle.offline else "run"
    return f"wandb sync {folder}/{prefix}-*-{run_id}"
