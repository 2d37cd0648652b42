"""Errors that reach the user as one line and an exit code (docs/architecture.md lists the codes).

The CLI catches `FastZhangError`, prints `fastzhang: error: <message>` and exits with the
class's code, so every layer can fail loudly without knowing about the command line.
"""


class FastZhangError(Exception):
    exit_code = 1


class UsageError(FastZhangError):
    """Bad input: a config, recipe, data folder or checkpoint that does not fit."""

    exit_code = 2


class ConfigMismatch(UsageError):
    """A checkpoint of another configuration; `what` names the fields (`run` adds commands that work)."""

    def __init__(self, what: str, fields: list[str]):
        super().__init__(f"{what}; use --force to start over, or pick the matching checkpoint")
        self.what, self.fields = what, fields


class DataError(UsageError):
    """The data set is missing, unreadable or not what it claims to be."""


class LockHeld(FastZhangError):
    exit_code = 3


class CheckpointError(FastZhangError):
    """No checkpoint that passes verification is available."""

    exit_code = 4


class WriteError(FastZhangError):
    """Writing a checkpoint or results file failed; the previous files are intact."""

    exit_code = 5


def one_line(error: BaseException, limit: int | None = 200, *, last: bool = False) -> str:
    """'Type: first line of the message' (cut at `limit`): an exception as a warning or results field.

    last=True: the message's last line alone, a wrapping library's root cause (W&B's "while retrying: ...").
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if last:
        return (lines[-1].removeprefix("while retrying: ") if lines else type(error).__name__)[:limit]
    first = (lines or [""])[0][:limit]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def did_you_mean(word: str, known) -> str:
    """' (did you mean X?)' for the closest of `known` to a misspelled `word`, else ''."""
    import difflib

    names = {str(k).lower(): str(k) for k in known}  # case-insensitive: MLP1 is mlp1
    close = difflib.get_close_matches(str(word).lower(), list(names), n=1, cutoff=0.6)
    return f" (did you mean {names[close[0]]}?)" if close else ""
