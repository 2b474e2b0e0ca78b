"""Logging for the daemon: journald with structured fields under systemd, plain stderr otherwise.

When stderr is connected to the journal (``$JOURNAL_STREAM`` equals stderr's ``st_dev:st_ino``)
records go through ``systemd.journal.JournalHandler`` with structured fields (``REDSG_EVENT``,
``EMOTION_FROM``, ``EMOTION_TO``, ``CONFIDENCE``, ``LATENCY_MS``, ...) taken from a record's
``extra={"redsg_event": ..., "fields": {...}}`` (see :func:`journal_fields`); otherwise plain
lines on stderr. systemd-python is imported lazily and optional: without it, journal lines carry
a ``<N>`` syslog priority prefix so journald still sets the priority.

Every handler installed here carries ``redact.SecretFilter``, so no secret reaches a log line.

The handler that writes (journald or stderr) runs in its own thread behind a bounded queue
(:class:`BackgroundHandler`, the standard library's ``QueueHandler`` / ``QueueListener``): a
stalled journald, or a stderr pipe nobody reads, blocks that thread only, never the capture,
inference or reply threads that log, so the watchdog keeps seeing them work.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SYSLOG_IDENTIFIER", "BackgroundHandler", "journal_fields", "make_journal_handler",
           "stderr_is_journal", "setup_logging"]

#: ``SYSLOG_IDENTIFIER=`` of every journal entry (what ``journalctl -t`` selects on).
SYSLOG_IDENTIFIER = "redsg-edge"

_FIELD_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")  # journald: no leading "_" (trusted fields)


def _field_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """Structured journal fields of a log record.

    ``extra={"redsg_event": "transition", "fields": {"EMOTION_FROM": "neutral", ...}}`` becomes
    ``{"REDSG_EVENT": "transition", "EMOTION_FROM": "neutral", ...}``: names are upper-cased,
    names journald would reject (not ``[A-Z0-9_]``, a leading ``_``, > 64 chars) and None values are
    dropped, values become strings (floats with 6 significant digits). Records without those
    attributes give ``{}``. Never raises.
    """
    out: dict[str, str] = {}
    event = getattr(record, "redsg_event", None)
    if event:
        out["REDSG_EVENT"] = str(event)
    fields = getattr(record, "fields", None)
    if isinstance(fields, Mapping):
        for key, value in fields.items():
            name = str(key).upper()
            if value is not None and _FIELD_NAME.match(name):
                out[name] = _field_value(value)
    return out


_SYSLOG_PRIORITY = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                    (logging.ERROR, 3), (logging.CRITICAL, 2))


def _priority(levelno: int) -> int:
    for level, pri in _SYSLOG_PRIORITY:
        if levelno <= level:
            return pri
    return 1


def make_journal_handler(sender: Callable[..., Any] | None = None) -> logging.Handler:
    """A ``systemd.journal.JournalHandler`` that sends only well-formed fields.

    The stock handler copies every LogRecord attribute into the entry (``msg``, ``args``, our
    ``fields`` dict as text...); this one sends MESSAGE, PRIORITY, LOGGER, THREAD_NAME, CODE_*,
    SYSLOG_IDENTIFIER and :func:`journal_fields`. ``sender`` replaces ``systemd.journal.send``
    (tests observe the final call with it). Raises ImportError without systemd-python.
    """
    from systemd import journal

    class _Handler(journal.JournalHandler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                msg = self.format(record)
                fields = dict(self._extra)
                fields.update(journal_fields(record))
                self.send(msg, PRIORITY=str(self.map_priority(record.levelno)),
                          LOGGER=record.name, THREAD_NAME=record.threadName,
                          CODE_FILE=record.pathname, CODE_LINE=record.lineno,
                          CODE_FUNC=record.funcName, **fields)
            except Exception:
                self.handleError(record)

    kwargs = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
    return _Handler(sender_function=sender, **kwargs) if sender else _Handler(**kwargs)


class _PrefixFormatter(logging.Formatter):
    """Journal stream without systemd-python: ``<N>`` lets journald set the priority."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_priority(record.levelno)}>{super().format(record)}"


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when fd 2 is the stream systemd connected to the journal (``$JOURNAL_STREAM`` is
    ``st_dev:st_ino`` of it), so a re-directed stderr (``2>file``) is not mistaken for it.
    ``environ`` replaces ``os.environ``. Never raises (a closed fd 2 gives False)."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class BackgroundHandler(logging.handlers.QueueHandler):
    """Log records go into a bounded queue; a ``QueueListener`` thread hands them to ``target``.

    ``target``: the handler that writes (journald, stderr); ``maxsize``: records held while it
    is stalled. A full queue drops the new record rather than block the thread that logs; the
    count is in :attr:`dropped`, and once the queued records are written a warning says how many
    were lost. :meth:`flush` waits up to ``flush_timeout_s`` for the queue to drain, so a
    stalled journal cannot hold up ``logging.shutdown`` for longer; :meth:`close` (called by
    ``logging.shutdown``) drains, stops the thread and closes ``target``.
    """

    def __init__(self, target: logging.Handler, maxsize: int = 10_000,
                 flush_timeout_s: float = 2.0) -> None:
        super().__init__(queue.Queue(maxsize))
        self.target = target
        self.dropped = 0
        self._reported = 0
        self._count_lock = threading.Lock()  # several threads may find the queue full at once
        self._flush_timeout_s = flush_timeout_s
        self._listener: logging.handlers.QueueListener | None = logging.handlers.QueueListener(
            self.queue, _DropReporter(self))
        self._listener.start()

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue ``record`` without waiting; count it as dropped when the queue is full."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1

    def flush(self) -> None:
        """Wait until every queued record is written, at most ``flush_timeout_s`` seconds."""
        q = self.queue  # a queue.Queue: the listener calls task_done() after each record
        with q.all_tasks_done:  # type: ignore[attr-defined]
            q.all_tasks_done.wait_for(lambda: not q.unfinished_tasks,  # type: ignore[attr-defined]
                                      self._flush_timeout_s)
        self.target.flush()

    def close(self) -> None:
        """Drain (bounded by ``flush_timeout_s``), stop the writer thread, close ``target``."""
        listener, self._listener = self._listener, None
        if listener is not None:
            self.flush()
            if not self.queue.unfinished_tasks:  # type: ignore[attr-defined]
                listener.stop()  # joins the thread; skipped while the target is stalled
            self.target.close()
        super().close()


class _DropReporter(logging.Handler):
    """The listener's handler: says how many records were dropped, then writes the record."""

    def __init__(self, owner: BackgroundHandler) -> None:
        super().__init__()
        self.owner = owner

    def handle(self, record: logging.LogRecord) -> bool:
        """Write ``record``; once the queue is empty, say how many newer ones were dropped
        (they came after everything that was queued)."""
        owner = self.owner
        done = owner.target.handle(record)
        lost = owner.dropped - owner._reported
        if lost > 0 and owner.queue.empty():
            owner._reported += lost
            owner.target.handle(logging.LogRecord(
                "redsg_edge.service.journal", logging.WARNING, __file__, 0,
                "%d log records dropped: the log writer was stalled", (lost,), None))
        return done

    def emit(self, record: logging.LogRecord) -> None:  # handle() writes through the target
        """Unused: :meth:`handle` passes each record to the owner's target."""


_OUR_HANDLER = "_redsg_handler"


def setup_logging(level: str = "INFO", environ: Mapping[str, str] | None = None) -> str:
    """Configure the root logger once; returns ``"journal"`` (systemd-python's handler),
    ``"journal-stream"`` (the journal without systemd-python: ``<N>`` prefixes) or ``"stderr"``.

    ``level``: a ``logging`` level name (``service.log_level``); ``environ`` replaces
    ``os.environ`` for ``$JOURNAL_STREAM``. Calling it again only changes the level (reload).
    Any other root handler (a script's ``basicConfig``) is removed. Raises ValueError for an
    unknown level name (the config validates it first).
    """
    root = logging.getLogger()
    root.setLevel(level)
    for h in root.handlers:
        if getattr(h, _OUR_HANDLER, None):
            return getattr(h, _OUR_HANDLER)
    kind = "stderr"
    handler: logging.Handler
    if stderr_is_journal(environ):
        try:
            handler = make_journal_handler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            kind = "journal"
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_PrefixFormatter("%(name)s: %(message)s"))
            kind = "journal-stream"
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from ..redact import install as install_secret_filter
    install_secret_filter(handler)
    background = BackgroundHandler(handler)
    install_secret_filter(background)  # secrets never wait in the queue either
    setattr(background, _OUR_HANDLER, kind)
    for h in list(root.handlers):  # e.g. a basicConfig from an importing script
        root.removeHandler(h)
    root.addHandler(background)
    logging.captureWarnings(True)
    from ..reply import quiet_http_loggers
    quiet_http_loggers(level=max(logging.WARNING, root.level))
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return kind
