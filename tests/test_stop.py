"""fastzhang.stop: the first SIGINT / SIGTERM asks, a second insists (after a checkpoint write).

Real signals sent to this process; the end-to-end behaviour (exit 130 / 143, exact
resumption, batches passing signals on) is in test_faults_signals.py,
test_batch_local.py and test_run_all_recipes.py.
"""

from __future__ import annotations

import signal
import threading

import pytest

from fastzhang.stop import stop_signals


def test_first_signal_asks_second_interrupts_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals(interrupt_on_second=True) as flag:
        signal.raise_signal(signal.SIGTERM)
        assert (flag.signum, flag.count) == (signal.SIGTERM, 1)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert flag.signum == signal.SIGTERM and flag.count == 2  # the first one is the one reported
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_signal_during_a_checkpoint_write_acts_after_it():
    written = []
    with stop_signals(interrupt_on_second=True) as flag:
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            with flag.holding():
                signal.raise_signal(signal.SIGINT)  # noted, not raised: the write goes on
                written.append("checkpoint")
    assert written == ["checkpoint"] and flag.insisted


def test_batch_mode_passes_every_signal_on_and_never_raises():
    passed = []
    with stop_signals(on_signal=passed.append) as flag:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        with flag.holding():
            signal.raise_signal(signal.SIGTERM)
    assert passed == [signal.SIGINT, signal.SIGTERM, signal.SIGTERM]
    assert (flag.signum, flag.count, flag.insisted) == (signal.SIGINT, 3, False)
    assert flag.since > 0


def test_outside_the_main_thread_no_handler_is_installed():
    seen = {}

    def worker():  # e.g. a Ray task thread: Python may not install handlers there
        with stop_signals(interrupt_on_second=True) as flag:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["flag"] = flag

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["handler"] is before and seen["flag"].signum is None
