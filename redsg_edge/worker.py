"""The bookkeeping every background worker of the daemon shares: one thread, a stop flag, a
heartbeat.

The reply worker (``reply.ReplyWorker``) and the speech-to-text worker
(``stt.TranscriptWorker``) each run their loop in one daemon thread. The daemon's watchdog
reads :attr:`WorkerThread.heartbeat` (it pings systemd only while every worker's heartbeat is
fresh) and the status file reports :attr:`WorkerThread.alive`. A subclass implements
:meth:`WorkerThread._run` (the loop: it calls :meth:`beat` at least every second or so while
idle or busy and returns once :attr:`stopping` is true) and, when its loop can block, overrides
:meth:`WorkerThread._wake` to unblock it.

Pure bookkeeping: no I/O; the clock is injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WorkerThread"]

_W = TypeVar("_W", bound="WorkerThread")


class WorkerThread:
    """One daemon thread running :meth:`_run`, with a stop flag and a heartbeat.

    ``name``: the thread's name (shown by ``py-spy``, ``top -H`` and in tracebacks);
    ``clock``: seconds, monotonic (``time.monotonic``; tests inject their own). A worker starts
    once: a second :meth:`start` raises RuntimeError, and a stopped worker is not restarted.
    """

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._thread_name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = clock()

    # ----------------------------------------------------------------- for the daemon
    @property
    def heartbeat(self) -> float:
        """``clock()`` time (s) of the worker loop's latest sign of life (watchdog input)."""
        return self._heartbeat

    @property
    def alive(self) -> bool:
        """True while the thread runs (False before :meth:`start` and after it ended)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: the loop should end, new work is refused."""
        return self._stop.is_set()

    def start(self: _W) -> _W:
        """Start the thread; returns the worker. Raises RuntimeError when already started."""
        if self._thread is not None:
            raise RuntimeError(f"worker {self._thread_name!r} already started")
        self.beat()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the loop to end and wait up to ``timeout`` seconds for the thread. True when it
        ended (or never started)."""
        self._stop.set()
        self._wake()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ----------------------------------------------------------------- for subclasses
    def beat(self) -> float:
        """Record a sign of life now; returns ``clock()`` (s), so a loop reads the clock once."""
        now = self._heartbeat = self._clock()
        return now

    def _wake(self) -> None:
        """Unblock a loop waiting for work after the stop flag was set (default: nothing)."""

    def _run(self) -> None:
        """The worker loop, run in the thread."""
        raise NotImplementedError
