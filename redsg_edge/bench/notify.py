"""A stand-in for systemd's ``NOTIFY_SOCKET``, used by the coldstart and daemon benches and by
the service tests (``from redsg_edge.bench.notify import NotifyListener``)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path


class NotifyListener:
    """A bound AF_UNIX datagram socket that records every sd_notify message.

    A reader thread receives each datagram as it arrives and stores it with its
    ``time.monotonic()`` arrival time, as systemd does. It keeps reading for the daemon's whole
    life: an unread datagram socket fills after ~10 messages (``net.unix.max_dgram_qlen``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))
                self._cond.notify_all()

    def snapshot(self, since: float = 0.0) -> list[tuple[float, str]]:
        """(arrival time, message) pairs that arrived at or after ``since``."""
        with self._cond:
            return [m for m in self.messages if m[0] >= since]

    def times(self, line: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """Arrival times of the messages holding ``line``, within [since, until]."""
        return [t for t, m in self.snapshot(since) if t <= until and line in m.split("\n")]

    def wait_for(self, line: str, timeout: float, since: float = 0.0,
                 proc: subprocess.Popen | None = None) -> float | None:
        """Arrival time of the first message at or after ``since`` holding ``line``; None on
        timeout or when ``proc`` exits first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (hits := self.times(line, since)):
                left = deadline - time.monotonic()
                if left <= 0 or (proc is not None and proc.poll() is not None):
                    return None
                self._cond.wait(min(0.1, left))
            return hits[0]

    def require(self, line: str, timeout: float, since: float = 0.0,
                proc: subprocess.Popen | None = None) -> float:
        """:meth:`wait_for` that raises AssertionError (for tests) instead of returning None."""
        t = self.wait_for(line, timeout, since, proc)
        if t is None:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode} before {line!r}")
            raise AssertionError(f"no {line!r} within {timeout} s; got {self.snapshot(since)[-5:]}")
        return t

    def close(self) -> None:
        """Stop the reader thread (within ~0.1 s) and close the socket; messages stay readable."""
        self._stop.set()
        self._thread.join(1)
        self.sock.close()
