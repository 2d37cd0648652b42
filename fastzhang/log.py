"""Messages for humans on stderr; stdout stays for tables and results."""

import sys


def warn(message: str) -> None:
    print(f"fastzhang: warning: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    print(f"fastzhang: {message}", file=sys.stderr, flush=True)
