"""Signals for a main loop that sleeps: SIGTERM, SIGINT, SIGHUP and SIGUSR1 as a queue.

The Python-level handlers do nothing; the C-level handler writes each signal number to a
socket (``signal.set_wakeup_fd``) and the main loop reads them in :meth:`SignalWaiter.wait`, so
every action runs outside signal context (no lock is ever taken inside a handler) and a sleep
ends as soon as a signal arrives.
"""

from __future__ import annotations

import select
import signal
import socket
import time
from typing import Any

__all__ = ["SignalWaiter", "HANDLED"]

#: the signals :class:`SignalWaiter` catches
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class SignalWaiter:
    """Catches :data:`HANDLED` between :meth:`install` and :meth:`restore`.

    Not installed (e.g. outside the main thread), :meth:`wait` only sleeps.
    """

    def __init__(self) -> None:
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    def install(self) -> None:
        """Start catching the signals. Raises ValueError outside the main thread (Python
        allows signal handlers only there); nothing is changed then."""
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        try:
            self._old_wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        except ValueError:
            r.close()
            w.close()
            raise
        self._wake_r, self._wake_w = r, w
        for sig in HANDLED:
            self._old_handlers[sig] = signal.signal(sig, lambda *_: None)

    def restore(self) -> None:
        """Put back the previous handlers and wakeup fd; close the socket pair."""
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        if self._wake_r is not None:
            signal.set_wakeup_fd(self._old_wakeup)
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None

    def wait(self, timeout: float) -> list[int]:
        """Sleep up to ``timeout`` s (≤ 0: just poll); return the signal numbers that arrived,
        in order (empty on timeout)."""
        if self._wake_r is None:  # no signal handling (not the main thread)
            time.sleep(max(0.0, timeout))
            return []
        try:
            ready, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
            ready = [self._wake_r]
        if not ready:
            return []
        try:
            data = self._wake_r.recv(512)
        except BlockingIOError:
            return []
        return list(data)
