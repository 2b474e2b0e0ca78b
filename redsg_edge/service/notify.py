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
    """sd_notify(3) through ``systemd.daemon.notify``; off without ``$NOTIFY_SOCKET``.

    ``environ`` replaces ``os.environ`` (tests). Calls never raise: systemd-python raises
    ``FileNotFoundError`` (not False) when the socket path is not bound, and a stopped manager
    gives ``ConnectionRefusedError``; both are logged once. Without systemd-python a plain
    AF_UNIX datagram is sent (abstract ``@`` names included; vsock addresses need libsystemd).
    Thread-safe.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = environ if environ is not None else os.environ
        #: the ``$NOTIFY_SOCKET`` address, or None when notifications are off
        self.socket = env.get("NOTIFY_SOCKET") or None
        try:
            from systemd import daemon
            self._notify: Callable[[str], bool] | None = daemon.notify
        except ImportError:
            self._notify = None
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
                ok = bool(self._notify(msg)) if self._notify else self._fallback(msg)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed (%s); further failures are not logged",
                            self.socket, exc)
            return False
        if ok:
            self.sent = (self.sent + [msg])[-20:]
        return ok

    def _fallback(self, msg: str) -> bool:
        addr = self.socket or ""
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        elif not addr.startswith("/"):
            return False  # vsock and other forms need libsystemd
        # Non-blocking: a manager that stops reading fills the socket's queue (~10 datagrams),
        # and a blocking sendto would then stall the main loop; BlockingIOError is logged once.
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
