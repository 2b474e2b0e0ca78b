"""Secrets never reach a log line: a registry of secret strings and a handler filter.

``register(secret)`` adds a string (the chat API key, when ``ReplyWorker`` reads one);
``scrub(text)`` replaces every registered secret with ``[redacted]``; ``SecretFilter`` does
that to each record a logging handler emits (message, arguments, traceback), whatever logger
made it: the SDK, the HTTP client, a traceback that quotes a server's reply. The daemon's
``setup_logging`` and the CLI put it on their handlers. Standard library only (imported by
the CLI before anything heavy).
"""

from __future__ import annotations

import logging
import threading

REDACTED = "[redacted]"
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()

#: Shorter strings are not treated as secrets: replacing them would mangle ordinary text.
MIN_SECRET_LEN = 8


def register(secret: str | None) -> None:
    """Remember ``secret`` (stripped; ignored when shorter than ``MIN_SECRET_LEN``)."""
    global _secrets
    secret = (secret or "").strip()
    if len(secret) >= MIN_SECRET_LEN:
        with _lock:
            _secrets = _secrets | {secret}


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class SecretFilter(logging.Filter):
    """A handler filter: the record's final message and traceback, scrubbed. Never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace every registered secret in the record's message and arguments by ``[redacted]``;
        always keeps the record (returns True)."""
        if not _secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        clean = scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install(handler: logging.Handler) -> None:
    """Add one ``SecretFilter`` to ``handler`` (idempotent)."""
    if not any(isinstance(f, SecretFilter) for f in handler.filters):
        handler.addFilter(SecretFilter())
