"""The daemon under systemd: ``redsg-edge run`` and ``redsg-edge status``.

One concern per module:

- ``daemon``: the lifecycle (start-up, READY, watchdog, reload, stop) and exit codes
  (:func:`run_service`, :func:`exit_process`);
- ``notify``: sd_notify and the watchdog interval (:class:`Notifier`);
- ``signals``: SIGTERM/SIGINT/SIGHUP/SIGUSR1 as a queue the main loop waits on;
- ``status``: the status file and its keys, the ``STATUS=`` line, ``redsg-edge status``;
- ``subscribers``: the event log and the journal lines, subscribed to ``Pipeline.bus``;
- ``journal``: logging to journald with structured fields, or to stderr.

The names below are re-exported so callers import them from ``redsg_edge.service``.
"""

from __future__ import annotations

from .daemon import exit_process, run_service
from .journal import (BackgroundHandler, journal_fields, make_journal_handler, setup_logging,
                      stderr_is_journal)
from .notify import Notifier, watchdog_interval
from .status import (assess, format_status, read_status, status_candidates, status_line,
                     status_main, status_path, write_json_atomic)
from .subscribers import EventLogSubscriber, journal_subscriber

__all__ = ["run_service", "exit_process", "status_main", "status_path", "status_candidates",
           "read_status", "write_json_atomic", "assess", "format_status", "status_line",
           "BackgroundHandler", "journal_fields", "make_journal_handler", "setup_logging",
           "stderr_is_journal",
           "Notifier", "watchdog_interval", "EventLogSubscriber", "journal_subscriber"]
