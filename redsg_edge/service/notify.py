"""sd_notify(3) and the systemd watchdog, with or without systemd-python.

What the daemon sends, and when, is described in ``service.daemon``; this module only delivers
``KEY=VALUE`` lines to ``$NOTIFY_SOCKET`` and reads ``$WATCHDOG_USEC``/``$WATCHDOG_PID``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_interval", "monotonic_usec"]

log = logging.getLogger("redsg_edge.service")


class Notifier:
    """sd_notify(3): ``KEY=VALUE`` lines as one datagram to ``$NOTIFY_SOCKET``; off without it.

    A path or abstract (``@``) address gets a non-blocking AF_UNIX datagram from here:
    systemd-python's ``notify`` blocks once a manager that stops reading (PID 1 busy at boot,
    re-executing itself) leaves 10 datagrams (``net.unix.max_dgram_qlen``) in the socket's
    queue, and a blocked send freezes the daemon's main loop and its SIGTERM handling until
    the manager reads again. Other addresses (vsock) need libsystemd: systemd-python's
    ``notify`` is used for them when installed. ``environ`` replaces ``os.environ`` (tests).
    Calls never raise: an unbound path, a stopped manager or a full queue returns False and is
    logged once per process. Thread-safe.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = environ if environ is not None else os.environ
        #: the ``$NOTIFY_SOCKET`` address, or None when notifications are off
        self.socket = env.get("NOTIFY_SOCKET") or None
        self._notify: Callable[[str], bool] | None = None
        if self.socket and not self.socket.startswith(("/", "@")):
            try:
                from systemd import daemon
                self._notify = daemon.notify
            except ImportError:
                pass
        self._warned = False
        self._lock = threading.Lock()
        #: the last 20 messages sent, for debugging
        self.sent: list[str] = []

    @property
    def enabled(self) -> bool:
        """True when ``$NOTIFY_SOCKET`` is set (started by systemd with ``Type=notify``)."""
        return self.socket is not None

    def __call__(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when sent, False when notifications
        are off or the send failed (logged once per process)."""
        if self.socket is None:
            return False
        msg = "\n".join(lines)
        try:
            with self._lock:
                ok = bool(self._notify(msg)) if self._notify else self._send(msg)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed (%s); further failures are not logged",
                            self.socket, exc)
            return False
        if ok:
            self.sent = (self.sent + [msg])[-20:]
        return ok

    def _send(self, msg: str) -> bool:
        addr = self.socket or ""
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        elif not addr.startswith("/"):
            return False  # vsock and other forms need libsystemd (systemd-python)
        # Non-blocking: with the queue full, BlockingIOError at once (logged once); the next
        # WATCHDOG=1 or STATUS= line goes out when the manager reads again.
        with socket.socket(socket.AF_UNIX,
                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
            s.sendto(msg.encode(), addr)
        return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``, given in µs), or None
    when systemd asked for none, the value is not an integer, or systemd asked another process
    (``$WATCHDOG_PID``). ``environ`` replaces ``os.environ``."""
    env = environ if environ is not None else os.environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return usec / 2e6


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs: the ``MONOTONIC_USEC=`` that must accompany ``RELOADING=1``
    (systemd ≥ 253, ``Type=notify-reload``)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
