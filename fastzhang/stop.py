"""Stop signals for `run` and `batch`: the first SIGINT / SIGTERM asks to stop, a second insists.

A run checks `flag.signum` between steps, checkpoints and exits 130 / 143; a second signal
interrupts it at once (KeyboardInterrupt), except during a checkpoint write, which finishes
first. A batch starts no more runs and passes each signal on to the running ones.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class StopFlag:
    signum: int | None = None  # the first signal received
    count: int = 0
    since: float = 0.0  # time.monotonic() of the first signal
    writing: bool = False  # a checkpoint is being written: a second signal waits for it
    insisted: bool = False

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Checkpoint writes finish before a second signal stops the run: a KeyboardInterrupt raised inside
        torch.save's writer callbacks comes out as an unrelated RuntimeError (and a traceback)."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.insisted:
            raise KeyboardInterrupt


@contextmanager
def stop_signals(*, on_signal: Callable[[int], None] | None = None,
                 interrupt_on_second: bool = False) -> Iterator[StopFlag]:
    """Handle SIGTERM / SIGINT while inside (the previous handlers come back on exit): `on_signal(signum)` for
    every signal (a batch passes each on), KeyboardInterrupt on a second one if `interrupt_on_second` (a run).
    Outside the main thread (a Ray worker's task thread) no signal reaches Python: the flag stays unset."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        first = flag.signum is None
        if first:
            flag.signum, flag.since = signum, time.monotonic()
        flag.count += 1
        if on_signal is not None:
            on_signal(signum)
        if not first and interrupt_on_second:
            if flag.writing:
                flag.insisted = True
            else:
                raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
