"""The daemon's own subscribers to ``Pipeline.bus`` (``events.EventBus``): event log and journal.

Both run in the publishing thread (a fusion worker for transitions, the reply worker for
replies, the transcript worker for utterances) and return quickly: the event log is one
unbuffered ``os.write`` per record, a journal line one datagram. ``subscribe_all`` wires them::

    pipeline.bus.subscribe(event_log, types=EventLogSubscriber.TYPES, name="event-log")
    pipeline.bus.subscribe(journal_subscriber, types=JOURNAL_TYPES, name="journal")
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..eventlog import EventLog

__all__ = ["EventLogSubscriber", "journal_subscriber", "JOURNAL_TYPES", "subscribe_all"]

log = logging.getLogger("redsg_edge.service")

#: the event types :func:`journal_subscriber` logs
JOURNAL_TYPES = ("transition", "reply")


class EventLogSubscriber:
    """Appends transition, reply and utterance events to ``service.event_log`` (JSON lines).

    Each line is ``event.to_json()`` plus ``"wall_time"`` (ISO 8601 UTC, ms). The file is
    ``eventlog.EventLog``: a record is whole or absent, and a full disk is reported by it (once
    per outage) and never raises. :meth:`set_path` switches files on reload; ``None`` turns the
    log off. Thread-safe.
    """

    #: the event types written
    TYPES = ("transition", "reply", "utterance")

    def __init__(self, path: Path | None = None) -> None:
        self._log: EventLog | None = None
        self._path: Path | None = None
        self._lock = threading.Lock()
        self.set_path(path)

    @property
    def path(self) -> Path | None:
        """The file written, or None when the event log is off."""
        return self._path

    def set_path(self, path: Path | None) -> None:
        """Write to ``path`` from now on (None: stop writing); the same path again is a no-op.
        A file that cannot be opened is logged at ERROR and leaves the log off; never raises."""
        if path == self._path and (path is None or self._log is not None):
            return
        with self._lock:
            old, self._log = self._log, None
            if old is not None:
                old.close()
            self._path = path
            if path is not None:
                try:
                    self._log = EventLog(path)
                except OSError as exc:
                    log.error("cannot open service.event_log %s: %s", path, exc)

    def close(self) -> None:
        """Close the file (the path is kept: :meth:`set_path` with it reopens)."""
        with self._lock:
            old, self._log = self._log, None
        if old is not None:
            old.close()

    def __call__(self, event: Any) -> None:
        """Write ``event`` (an ``events`` event of :attr:`TYPES`). A record that is not
        JSON-serialisable is logged and skipped (a bug, not a disk problem)."""
        with self._lock:
            if self._log is None:
                return
            rec = {**event.to_json(),
                   "wall_time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
            try:
                self._log.write(rec)
            except (TypeError, ValueError) as exc:
                log.warning("event log: record not written: %s", exc)


def journal_subscriber(event: Any) -> None:
    """One structured INFO line per ``events.Transition`` (``REDSG_EVENT=transition``,
    ``EMOTION_FROM``, ``EMOTION_TO``, ``CONFIDENCE`` with 3 decimals) and per ``events.Reply``
    (``REDSG_EVENT=reply``, ``EMOTION_FROM``, ``EMOTION_TO``, ``REPLY_SOURCE``,
    ``REPLY_CAUSE``, ``LATENCY_MS``: ``Reply.first_audio_s`` in whole ms, absent when nothing
    was spoken). Other types are ignored. The fields reach journald through
    ``journal.make_journal_handler``; on stderr only the message shows."""
    if event.type == "transition":
        log.info("transition %s → %s (confidence %.2f)", event.from_emotion, event.to_emotion,
                 event.confidence, extra={"redsg_event": "transition", "fields": {
                     "EMOTION_FROM": event.from_emotion, "EMOTION_TO": event.to_emotion,
                     "CONFIDENCE": f"{event.confidence:.3f}"}})
    elif event.type == "reply":
        first = event.first_audio_s
        fields = {"EMOTION_FROM": event.transition.from_emotion,
                  "EMOTION_TO": event.transition.to_emotion,
                  "REPLY_SOURCE": event.source, "REPLY_CAUSE": event.cause,
                  "LATENCY_MS": None if first is None else int(round(first * 1000))}
        log.info("reply latency: first audio %s after the transition (%s)",
                 "n/a" if first is None else f"{first * 1000:.0f} ms", event.source,
                 extra={"redsg_event": "reply", "fields": fields})


def subscribe_all(bus: Any, event_log: EventLogSubscriber) -> list[Callable[[], None]]:
    """Subscribe ``event_log`` (name ``"event-log"``) and :func:`journal_subscriber` (name
    ``"journal"``) to ``bus`` (an ``events.EventBus``); returns their unsubscribe functions."""
    return [bus.subscribe(event_log, types=EventLogSubscriber.TYPES, name="event-log"),
            bus.subscribe(journal_subscriber, types=JOURNAL_TYPES, name="journal")]
