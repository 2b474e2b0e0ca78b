"""The capture thread: pumps one source into its ring, counts errors and reopens a failing device.

It dispatches on the source's declared kind (:mod:`redsg_edge.capture.sources`): a
:class:`PullSource` is read in a loop; a :class:`PushSource` is attached to the ring once and
then only watched.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .rings import SAMPLE_RATE, AudioRing, FrameRing
from .sources import PullSource, PushSource

log = logging.getLogger(__name__)

__all__ = ["CaptureThread"]


class CaptureThread:
    """Pumps a live source into its ring on a daemon thread.

    ``source``: a camera (into a :class:`FrameRing`) or a microphone (into an :class:`AudioRing`),
    either a :class:`PullSource` (read here in a loop) or a :class:`PushSource` (attached to the
    ring on :meth:`start`; its callback writes and this thread only watches it). ``heartbeat``:
    ``time.monotonic()`` of the newest frame or block (stale = capture is stuck). Read errors are
    counted in ``errors`` (``last_error`` keeps the message); after ``reopen_after`` consecutive
    errors the source is closed and reopened, with back-off. ``ended`` is set when a non-looping
    source reaches its end. :meth:`stop` returns within ``timeout`` (1 s) unless a driver call
    is blocked. Raises TypeError when ``source`` is neither a PullSource nor a PushSource.
    """

    def __init__(self, source: PullSource | PushSource, ring: FrameRing | AudioRing,
                 name: str | None = None, reopen_after: int = 10) -> None:
        # A push source may also offer read() for use without a ring; push wins.
        if isinstance(source, PushSource):
            self._push = True
        elif isinstance(source, PullSource):
            self._push = False
        else:
            raise TypeError(f"{type(source).__name__} is neither a PullSource nor a PushSource "
                            "(redsg_edge.capture.sources): subclass the one that fits")
        self.source, self.ring = source, ring
        self.name = name or f"capture {source.name}"
        self.reopen_after = reopen_after
        self.heartbeat = time.monotonic()
        self.items = 0
        self.errors = 0
        self.reopens = 0
        self.last_error: str | None = None
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> CaptureThread:
        """Attach a push source to the ring and start the thread; returns self."""
        if self._push:
            self.source.attach(self.ring)  # type: ignore[union-attr, arg-type]
        self._thread.start()
        return self

    def _error(self, exc: BaseException, consecutive: int) -> int:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        consecutive += 1
        if consecutive == 1 or consecutive % 50 == 0:
            log.warning("%s: %s (%d consecutive)", self.name, self.last_error, consecutive)
        if consecutive >= self.reopen_after and consecutive % self.reopen_after == 0:
            self.reopens += 1
            try:
                self.source.close()
                self.source.open()
                log.info("%s: reopened", self.name)
            except Exception as exc2:  # noqa: BLE001
                self.last_error = f"reopen failed: {exc2}"
        self._stop.wait(min(0.05 * consecutive, 1.0))
        return consecutive

    def _run(self) -> None:
        if self._push:
            self._watch(self.source)  # type: ignore[arg-type]
        else:
            self._pump(self.source)  # type: ignore[arg-type]

    def _watch(self, src: PushSource) -> None:
        """Push source: the callback writes; here only the heartbeat and stream failures."""
        consecutive = 0
        while not self._stop.wait(0.2):
            if src.last_callback:
                self.heartbeat = max(self.heartbeat, src.last_callback)
                self.items = src.blocks
            if not src.active:
                consecutive = self._error(OSError(f"{src.name}: stream stopped"), consecutive)
                if src.active:
                    consecutive = 0

    def _pump(self, src: PullSource) -> None:
        """Pull source: read, write into the ring, until the end or :meth:`stop`."""
        is_audio = isinstance(self.ring, AudioRing)
        consecutive = 0
        while not self._stop.is_set():
            try:
                item = src.read()
            except Exception as exc:  # noqa: BLE001 - counted, the thread keeps going
                if self._stop.is_set():
                    break
                consecutive = self._error(exc, consecutive)
                continue
            if item is None:
                if not self._stop.is_set():
                    self.ended.set()
                break
            consecutive = 0
            t, data = item
            if is_audio:
                self.ring.write(data, t + (data.shape[0] - 1) / SAMPLE_RATE)  # type: ignore[call-arg]
            else:
                self.ring.put(data, t)  # type: ignore[union-attr]
            self.items += 1
            self.heartbeat = time.monotonic()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop pumping and close the source; True when the thread ended within ``timeout`` s.

        A push source is closed even when the thread did not end (its stream must stop); a pull
        source blocked in a driver call is left open rather than closed under that call.
        """
        self._stop.set()
        self.source.interrupt()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive or self._push:
            self.source.close()
        return not alive

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """``{"source": name, "items", "errors", "reopens", "last_error": str | None,
        "heartbeat_age_s": s since the newest item}`` plus the ring's :meth:`stats` counters."""
        return {"source": self.source.name, "items": self.items, "errors": self.errors,
                "reopens": self.reopens, "last_error": self.last_error,
                "heartbeat_age_s": round(time.monotonic() - self.heartbeat, 3),
                **self.ring.stats()}
