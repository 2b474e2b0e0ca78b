"""The JSON-lines event log: whole records or none, also on a full disk (docs/reliability.md).

Used by the daemon's event-log subscriber and by ``replay --out``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("redsg_edge.eventlog")

__all__ = ["EventLog"]


class EventLog:
    """JSON-lines writer (one object per line) for replay output and the daemon's event log.

    Every record is whole or absent: a record is written with unbuffered ``os.write`` calls and,
    when one fails (a full disk: ENOSPC, a file size limit, an I/O error), the file is truncated
    back to where the record began, so no line is ever cut mid-JSON. A failed write never
    raises: ``write`` returns False, one WARNING names the first failure of an outage, and the
    first write that works again logs, at INFO, how many records the outage lost. ``close``
    never raises either (nothing is buffered).

    ``append``: add to an existing file (the daemon), or start it empty (replay ``--out``).
    Raises OSError only from the constructor (the file cannot be created or opened).
    """

    def __init__(self, path: Path | None, append: bool = True) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()
        #: records lost over the whole run, and in the current outage (None when writing works)
        self.lost_total = 0
        self._outage: dict | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            self._fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)

    @property
    def failing(self) -> bool:
        """True while writes fail (since the last failed write)."""
        return self._outage is not None

    def write(self, rec: dict) -> bool:
        """Append ``rec`` as one line; True when it was written. Raises TypeError/ValueError for
        a record that is not JSON-serialisable (a bug in the caller, not a disk problem)."""
        if self._fd is None:
            return False
        data = (_dumps(rec) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return False
            start = None
            try:
                start = os.lseek(self._fd, 0, os.SEEK_END)
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                if start is not None:
                    try:  # drop the part of the record that did fit
                        os.ftruncate(self._fd, start)
                    except OSError:
                        pass
                self.lost_total += 1
                if self._outage is None:
                    self._outage = {"since": time.monotonic(), "lost": 0}
                    log.warning("cannot write to the event log %s (%s); records are dropped "
                                "until it can be written again (the daemon keeps running)",
                                self.path, exc.strerror or exc)
                self._outage["lost"] += 1
                return False
            if self._outage is not None:
                o, self._outage = self._outage, None
                log.info("event log %s is written again after %.0f s; %d record(s) were lost",
                         self.path, time.monotonic() - o["since"], o["lost"])
            return True

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _dumps(rec: dict) -> str:
    """Compact, strict JSON (NaN and infinities become null: they are not JSON)."""
    try:
        return json.dumps(rec, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(rec), separators=(",", ":"), allow_nan=False)


