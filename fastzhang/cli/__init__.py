"""The `fastzhang` command: one subcommand per module in this package.

Each module exposes `add_parser(subparsers)`, which registers its subcommand and
sets `func(args) -> int` as the handler. Heavy imports (torch) happen inside the
handlers, so `fastzhang --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from fastzhang import __version__
from fastzhang.errors import FastZhangError, did_you_mean

SUBCOMMANDS = ("run", "status", "clean", "batch", "report", "models", "data")


class Parser(argparse.ArgumentParser):
    """Bad flags get one line and exit code 2, like every other bad input; `--epoch 3` is an error, not a
    silent `--epochs 3` (no abbreviations)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # A subcommand's parser knows its own flags: it names the closest one to a misspelled flag
        # (the top-level parser, which reports unknown flags otherwise, does not know them).
        namespace, extras = super().parse_known_args(args, namespace)
        for word in extras:
            flag = word.split("=", 1)[0]
            hint = did_you_mean(flag, self._option_string_actions) if flag.startswith("--") else ""
            if hint:
                self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fastzhang", description="Zhang et al. 2017 on CIFAR-10: train, resume, report."
    )
    parser.add_argument("--version", action="version", version=f"fastzhang {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"fastzhang.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; `argv` None means this process is the `fastzhang` program itself."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except FastZhangError as e:
        print(f"fastzhang: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        # A second SIGINT / SIGTERM during training (a checkpoint being written is finished
        # first), or Ctrl-C before training starts: at most unsaved steps are lost.
        print("fastzhang: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        code = 130
    if argv is None and code in (130, 143):
        # The process ends now, stopped by a signal; one more (the user pressing Ctrl-C
        # again) would only print a traceback from the interpreter's shutdown.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    return code
