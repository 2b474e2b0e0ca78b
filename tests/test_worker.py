"""worker.WorkerThread: the thread/stop/heartbeat bookkeeping the reply and speech-to-text
workers share."""

from __future__ import annotations

import threading
import time

import pytest

from redsg_edge.worker import WorkerThread


class Ticker(WorkerThread):
    """Beats every 10 ms until stopped; waits on an Event that _wake sets."""

    def __init__(self) -> None:
        super().__init__("ticker")
        self.woken = threading.Event()
        self.beats = 0

    def _wake(self) -> None:
        self.woken.set()

    def _run(self) -> None:
        while not self.stopping:
            self.beat()
            self.beats += 1
            self.woken.wait(0.01)


def test_start_beat_stop():
    w = Ticker()
    assert not w.alive and not w.stopping
    assert w.stop(0.1)  # never started: nothing to wait for
    w = Ticker()
    before = w.heartbeat
    assert w.start() is w
    assert w.alive
    with pytest.raises(RuntimeError, match="ticker"):
        w.start()
    deadline = time.monotonic() + 5
    while w.beats < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.beats >= 3 and w.heartbeat > before
    assert w.stop(2.0) and w.woken.is_set() and w.stopping and not w.alive


def test_a_hung_loop_is_reported():
    release = threading.Event()

    class Hung(WorkerThread):
        def _run(self) -> None:
            release.wait(10)

    w = Hung("hung").start()
    t0 = w.heartbeat
    assert not w.stop(0.05)  # the loop ignores the stop flag: stop says so
    assert w.alive and w.heartbeat == t0
    release.set()
    assert w.stop(2.0) and not w.alive
