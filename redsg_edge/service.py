"""systemd plumbing for the daemon: sd_notify, watchdog, signals, status file, logging, reload.

``run_service(cfg_path)`` is ``redsg-edge run``. It runs the same way under systemd and in a
terminal; outside systemd (no ``$NOTIFY_SOCKET``) notifications are simply off.

Lifecycle and what systemd sees (``Type=notify``):

1. ``STATUS=`` + ``EXTEND_TIMEOUT_USEC=`` every ``service.status_interval_s`` while the devices
   open and the models load (in a loader thread; the main thread keeps talking to systemd and
   still answers SIGTERM), bounded by ``service.start_timeout_s``.
2. ``READY=1`` once ``Pipeline.ready()``: the first frame and the first audio block arrived.
3. ``STATUS=`` one line (emotion, modalities, fps, last transition) every
   ``service.status_interval_s``; ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` only while every
   worker heartbeat is younger than ``service.heartbeat_timeout_s`` — a dead or stuck worker means
   no pings, and systemd restarts the unit (``WatchdogSec=``, ``Restart=on-failure``); its
   SIGABRT makes faulthandler write every thread's stack to stderr (the journal) first.
4. SIGHUP: ``RELOADING=1`` + ``MONOTONIC_USEC=``, re-read and validate the file, apply what can
   change live (``Pipeline.reconfigure``), log the keys that need a restart; a broken file keeps
   the running config and logs each error line; then ``READY=1``.
5. SIGUSR1: every thread's Python stack to the log.
6. SIGTERM/SIGINT: ``STOPPING=1``, stop the workers (≤ 2 s), exit 0.

Exit codes (sysexits.h): 0 clean stop; 78 bad config at start (``file: section.key: message``
lines on stderr); 69 a camera, microphone or audio output missing, or no first frame/audio within
``service.start_timeout_s``; 70 a model file missing or unloadable (the message names the file);
1 anything unexpected (a bug; the traceback is logged).

Logging: when stderr is connected to the journal (``$JOURNAL_STREAM`` equals stderr's
``st_dev:st_ino``) records go through ``systemd.journal.JournalHandler`` with structured fields
(``REDSG_EVENT``, ``EMOTION_FROM``, ``EMOTION_TO``, ``CONFIDENCE``, ``LATENCY_MS``, ...) taken from
a record's ``extra={"redsg_event": ..., "fields": {...}}`` (see :func:`journal_fields`); otherwise
plain lines on stderr. systemd-python is imported lazily and optional: without it, journal lines
carry a ``<N>`` syslog priority prefix and notifications use a small datagram-socket fallback.

Status file: JSON written atomically (temporary file + ``os.replace``, mode 0644) at the first of
(:func:`status_path`): ``service.status_file``; ``$RUNTIME_DIRECTORY/status.json`` (systemd's
``RuntimeDirectory=``); ``/run/redsg-edge/status.json`` when that directory is writable;
``$XDG_RUNTIME_DIR/redsg-edge/status.json``; ``<tmpdir>/redsg-edge-<uid>/status.json``.
``redsg-edge status`` (:func:`status_main`) reads it.

Debug hook: ``REDSG_DEBUG_HANG=vision`` (or ``speech``; ``vision:3`` = after 3 s) makes that
worker block forever inside its processing step, so its heartbeat goes stale and the watchdog
pings stop. Tests use it; never set it in production.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import re
import select
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .assets import replacing
from .config import Config, load_config
from .errors import (EX_CONFIG, EX_FAILURE, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE, ConfigError,
                     exit_code_for)

log = logging.getLogger("redsg_edge.service")

STOP_TIMEOUT_S = 2.0  # pipeline.stop budget; systemd's "exit within 3 s" leaves ~1 s for teardown
SYSLOG_IDENTIFIER = "redsg-edge"
STATUS_FILE_NAME = "status.json"

__all__ = ["run_service", "exit_process", "status_main", "status_path", "status_candidates", "read_status",
           "journal_fields", "make_journal_handler", "setup_logging", "Notifier", "status_line",
           "EX_CONFIG", "EX_SOFTWARE", "EX_UNAVAILABLE"]


# ===================================================================================== logging

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
    attributes give ``{}``.
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
    ``st_dev:st_ino`` of it), so a re-directed stderr (``2>file``) is not mistaken for it."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


_OUR_HANDLER = "_redsg_handler"


def setup_logging(level: str = "INFO", environ: Mapping[str, str] | None = None) -> str:
    """Configure the root logger once; returns ``"journal"``, ``"journal-stream"`` or ``"stderr"``.

    Calling it again only changes the level (reload)."""
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
    setattr(handler, _OUR_HANDLER, kind)
    from .redact import install as install_secret_filter
    install_secret_filter(handler)
    for h in list(root.handlers):  # e.g. a basicConfig from an importing script
        root.removeHandler(h)
    root.addHandler(handler)
    logging.captureWarnings(True)
    from .reply import quiet_http_loggers
    quiet_http_loggers(level=max(logging.WARNING, root.level))
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return kind


# ================================================================================== sd_notify

class Notifier:
    """sd_notify(3) through ``systemd.daemon.notify``; off without ``$NOTIFY_SOCKET``.

    Calls never raise: systemd-python raises ``FileNotFoundError`` (not False) when the socket
    path is not bound, and a stopped manager gives ``ConnectionRefusedError``; both are logged once.
    Without systemd-python a plain AF_UNIX datagram is sent (abstract ``@`` names included).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = environ if environ is not None else os.environ
        self.socket = env.get("NOTIFY_SOCKET") or None
        try:
            from systemd import daemon
            self._notify: Callable[[str], bool] | None = daemon.notify
        except ImportError:
            self._notify = None
        self._warned = False
        self._lock = threading.Lock()
        self.sent: list[str] = []  # last messages, for debugging (bounded)

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    def __call__(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when sent."""
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
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when systemd
    asked for none or asked another process (``$WATCHDOG_PID``)."""
    env = environ if environ is not None else os.environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return usec / 2e6


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# ================================================================================ status file

def _runtime_directory(environ: Mapping[str, str]) -> Path | None:
    value = environ.get("RUNTIME_DIRECTORY", "")
    return Path(value.split(":")[0]) if value else None


def status_candidates(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where a status file may be, in the order :func:`status_path` chooses them (without the
    config's ``service.status_file``)."""
    env = environ if environ is not None else os.environ
    out = []
    rd = _runtime_directory(env)
    if rd is not None:
        out.append(rd / STATUS_FILE_NAME)
    out.append(Path("/run/redsg-edge") / STATUS_FILE_NAME)
    if env.get("XDG_RUNTIME_DIR"):
        out.append(Path(env["XDG_RUNTIME_DIR"]) / "redsg-edge" / STATUS_FILE_NAME)
    out.append(Path(tempfile.gettempdir()) / f"redsg-edge-{os.getuid()}" / STATUS_FILE_NAME)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def status_path(configured: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The status file the daemon writes: ``service.status_file`` when set, else
    ``$RUNTIME_DIRECTORY/status.json``, else ``/run/redsg-edge/status.json`` when that directory
    exists and is writable, else ``$XDG_RUNTIME_DIR/redsg-edge/status.json``, else
    ``<tmpdir>/redsg-edge-<uid>/status.json``."""
    if configured is not None:
        return Path(configured)
    env = environ if environ is not None else os.environ
    rd = _runtime_directory(env)
    if rd is not None:
        return rd / STATUS_FILE_NAME
    run = Path("/run/redsg-edge")
    if run.is_dir() and os.access(run, os.W_OK | os.X_OK):
        return run / STATUS_FILE_NAME
    if env.get("XDG_RUNTIME_DIR") and os.access(env["XDG_RUNTIME_DIR"], os.W_OK | os.X_OK):
        return Path(env["XDG_RUNTIME_DIR"]) / "redsg-edge" / STATUS_FILE_NAME
    return Path(tempfile.gettempdir()) / f"redsg-edge-{os.getuid()}" / STATUS_FILE_NAME


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` so readers see the old or the new file, never half of one (same-directory
    temporary file, then ``os.replace``). Mode 0644: ``redsg-edge status`` runs as another user.
    Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, "w", durable=False) as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")


def read_status(path: Path | None = None, environ: Mapping[str, str] | None = None
                ) -> tuple[Path | None, dict | None]:
    """(path, parsed status) of ``path``, or of the most recently updated candidate
    (:func:`status_candidates`); (None, None) when there is none. Unreadable JSON gives
    (path, None)."""
    if path is not None:
        paths = [Path(path)]
    else:
        paths = [p for p in status_candidates(environ) if p.is_file()]
        paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for p in paths:
        try:
            return p, json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return p, None
    return None, None


# ======================================================================== status, one line

def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def status_line(st: dict, now: float | None = None, stale: list[str] | None = None) -> str:
    """The ``STATUS=`` text: ``happy | face on, voice on | 14.8 fps | last neutral->happy 0.62,
    12s ago`` (``now``: time.monotonic() for the age); stalled workers first when any."""
    mods = st.get("modalities", {})
    parts = [str(st.get("emotion", "?")),
             ", ".join(f"{k} {v}" for k, v in mods.items()),
             f"{float(st.get('fps') or 0.0):.1f} fps"]
    tr = st.get("last_transition")
    if tr:
        ago = "" if now is None else f", {_age(now - float(tr['t']))} ago"
        parts.append(f"last {tr['from']}->{tr['to']} {float(tr['confidence']):.2f}{ago}")
    else:
        parts.append("no transition yet")
    line = " | ".join(parts)
    if stale:
        line = f"STALLED {', '.join(stale)} | {line}"
    return line


# ==================================================================================== daemon

def _load(path: Path) -> tuple[Config, str | None]:
    """load_config plus the sha256 of the bytes read (None if the file vanished meanwhile)."""
    import hashlib

    cfg = load_config(path)
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        digest = None
    return cfg, digest


class _LoadResult:
    def __init__(self) -> None:
        self.pipeline: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def _install_debug_hang(pipeline: Any, spec: str, release: threading.Event) -> None:
    """REDSG_DEBUG_HANG=worker[:delay_s]: that worker blocks inside its step (see module doc)."""
    name, _, delay = spec.partition(":")
    target = {"vision": getattr(pipeline, "vision", None),
              "speech": getattr(pipeline, "speech", None)}.get(name.strip())
    if target is None:
        log.warning("REDSG_DEBUG_HANG=%s: no such active worker (vision, speech)", spec)
        return
    original = target.process
    hang_at = time.monotonic() + (float(delay) if delay else 0.0)

    def process(*args, **kwargs):
        if time.monotonic() >= hang_at:
            log.warning("REDSG_DEBUG_HANG: %s worker hangs now", name)
            release.wait()  # set on shutdown, so SIGTERM still stops quickly
        return original(*args, **kwargs)

    target.process = process
    log.warning("REDSG_DEBUG_HANG=%s: the %s worker will stop beating (debug only)", spec, name)


class _Service:
    def __init__(self, cfg_path: Path, reply: bool, environ: Mapping[str, str]) -> None:
        self.cfg_path = Path(cfg_path)
        self.reply = reply
        self.env = environ
        self.notify = Notifier(environ)
        self.cfg: Config | None = None
        self.cfg_digest: str | None = None  # sha256 of the file text in use (a bad reload keeps it)
        self.restart_pending: list[str] = []  # changed keys that only a restart applies
        self.pipeline: Any = None
        self.state = "starting"
        self._phases: list[str] = ["starting"]  # every phase so far, in order; see `phase`
        self.status_file: Path | None = None
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.watchdog_s = watchdog_interval(environ)
        self.last_ping: float | None = None
        self.stale: list[str] = []
        self._event_log: Any = None
        self._event_log_path: Path | None = None
        self._elock = threading.Lock()
        self._hang_release = threading.Event()
        self._status_warned = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    # ------------------------------------------------------------------ signals
    def _install_signals(self) -> None:
        # Handlers do nothing; the C-level handler writes the signal number to the wakeup socket
        # and the main loop acts on it outside signal context (no locks taken in a handler).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            self._old_handlers[sig] = signal.signal(sig, lambda *_: None)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_wakeup)
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def _wait_signals(self, timeout: float) -> list[int]:
        """Sleep up to ``timeout`` s; return the signals that arrived (in order)."""
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

    # ------------------------------------------------------------------ helpers
    def _write_status(self, **extra: Any) -> None:
        if self.status_file is None:
            return
        now = time.monotonic()
        pipe: dict | None = None
        beats: dict[str, float] = {}
        if self.pipeline is not None:
            try:
                pipe = self.pipeline.status()
                beats = {k: round(now - v, 3) for k, v in self.pipeline.heartbeats().items()}
            except Exception:  # a status must never take the daemon down
                log.debug("pipeline.status() failed", exc_info=True)
        tr = (pipe or {}).get("last_transition")
        data = {
            "state": self.state,
            "phase": self.phase,
            "pid": os.getpid(),
            "version": __version__,
            "config": str(self.cfg_path.resolve()),
            "config_sha256": self.cfg_digest,
            "restart_pending": self.restart_pending,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "updated_at_unix": round(time.time(), 3),
            "started_at": datetime.fromtimestamp(self.started_wall, timezone.utc)
                                  .isoformat(timespec="seconds"),
            "uptime_s": round(now - self.started, 1),
            "status_interval_s": self.cfg.service.status_interval_s if self.cfg else 2.0,
            "status_line": status_line(pipe, now, self.stale) if pipe else self.phase,
            "watchdog": {"enabled": self.watchdog_s is not None,
                         "interval_s": self.watchdog_s,
                         "last_ping_age_s": (None if self.last_ping is None
                                             else round(now - self.last_ping, 3)),
                         "stale_workers": self.stale},
            "heartbeat_age_s": beats,
            "last_transition_age_s": round(now - float(tr["t"]), 1) if tr else None,
            "pipeline": pipe,
        }
        data.update(extra)
        try:
            write_json_atomic(self.status_file, data)
        except OSError as exc:
            if not self._status_warned:
                self._status_warned = True
                log.warning("cannot write status file %s: %s", self.status_file, exc)

    def _set_event_log(self, path: Path | None) -> None:
        from .pipeline import EventLog

        if path == self._event_log_path and (path is None or self._event_log is not None):
            return
        with self._elock:
            old, self._event_log = self._event_log, None
            if old is not None:
                old.close()
            self._event_log_path = path
            if path is not None:
                try:
                    self._event_log = EventLog(path)
                except OSError as exc:
                    log.error("cannot open service.event_log %s: %s", path, exc)

    def _on_record(self, rec: dict) -> None:
        """Pipeline callback (worker threads): event log, and a structured line per reply."""
        with self._elock:
            if self._event_log is not None:
                try:  # a full disk is reported once per outage by EventLog; it never raises
                    self._event_log.write({**rec, "wall_time": datetime.now(timezone.utc)
                                           .isoformat(timespec="milliseconds")})
                except (TypeError, ValueError) as exc:
                    log.warning("event log: record not written: %s", exc)
        if rec.get("type") == "reply":
            lat = rec.get("latency_s") or {}
            first = lat.get("first_sample") if lat.get("first_sample") is not None \
                else lat.get("first_pcm")
            fields = {"EMOTION_FROM": rec.get("from"), "EMOTION_TO": rec.get("to"),
                      "REPLY_SOURCE": rec.get("source"), "REPLY_CAUSE": rec.get("cause"),
                      "LATENCY_MS": None if first is None else int(round(first * 1000))}
            log.info("reply latency: first audio %s after the transition (%s)",
                     "n/a" if first is None else f"{first * 1000:.0f} ms", rec.get("source"),
                     extra={"redsg_event": "reply", "fields": fields})

    @property
    def phase(self) -> str:
        """The latest phase ("loading models", "ready", "failed: ..."): the last of `_phases`."""
        return self._phases[-1]

    @phase.setter
    def phase(self, msg: str) -> None:
        # The loader thread appends its phases too (its progress callback is _phases.append); the
        # main thread sends each as STATUS= (list.append is atomic, so none is lost even when two
        # come between its polls).
        self._phases.append(msg)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        kind = setup_logging("INFO", self.env)
        try:
            self._install_signals()
        except ValueError:  # not the main thread (embedding); run without signal handling
            log.warning("not in the main thread: signals are not handled")
            return self._run_checked(kind)
        try:
            return self._run_checked(kind)
        finally:
            self._restore_signals()

    def _run_checked(self, kind: str) -> int:
        try:
            self.cfg, self.cfg_digest = _load(self.cfg_path)
        except ConfigError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr, flush=True)
            self.notify(f"STATUS=bad config: {exc.lines[0][:200]}")
            return EX_CONFIG
        cfg = self.cfg
        setup_logging(cfg.service.log_level, self.env)
        self.status_file = status_path(cfg.service.status_file, self.env)
        self._set_event_log(cfg.service.event_log)
        log.info("redsg-edge %s starting (pid %d, config %s, log %s, status %s, watchdog %s)",
                 __version__, os.getpid(), self.cfg_path, kind, self.status_file,
                 f"{self.watchdog_s:.1f} s" if self.watchdog_s else "off")
        try:
            return self._lifecycle()
        except Exception as exc:  # a bug: say so, and let systemd restart us
            log.exception("fatal error")
            self._finish(EX_FAILURE, f"{type(exc).__name__}: {exc}")
            return EX_FAILURE
        finally:
            self._hang_release.set()
            with self._elock:
                if self._event_log is not None:
                    self._event_log.close()
                    self._event_log = None

    def _finish(self, code: int, error: str | None = None) -> None:
        self.state = "stopped"
        self.phase = "stopped" if code == 0 else f"failed: {error}"
        self._write_status(exit_code=code, error=error)

    def _loader(self, res: _LoadResult) -> None:
        from .pipeline import Pipeline
        try:
            res.pipeline = Pipeline(self.cfg, reply=self.reply, on_record=self._on_record,
                                    progress=self._phases.append)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            res.error = exc
        finally:
            res.done.set()

    def _lifecycle(self) -> int:
        assert self.cfg is not None
        deadline = self.started + self.cfg.service.start_timeout_s
        self.phase = "opening devices"
        res = _LoadResult()
        loader = threading.Thread(target=self._loader, args=(res,), name="loader", daemon=True)
        loader.start()
        pending: list[int] = []
        started = False
        next_tick = 0.0
        sent = 0  # start-up phases already sent as STATUS=
        # ---------------------------------------------------------------- start-up
        while True:
            now = time.monotonic()
            if res.done.is_set() and not started:
                if res.error is not None:
                    code = exit_code_for(res.error)
                    log.error("cannot start: %s", res.error)
                    if not _is_known_error(res.error):
                        log.error("%s", "".join(traceback.format_exception(res.error)).rstrip())
                    self.notify(f"STATUS=failed: {str(res.error)[:200]}")
                    self._finish(code, str(res.error))
                    return code
                self.pipeline = res.pipeline
                for note in self.pipeline.notes:
                    log.warning("%s", note)
                self.phase = "waiting for the first frame and audio block"
                self.pipeline.start()
                hang = self.env.get("REDSG_DEBUG_HANG")
                if hang:
                    _install_debug_hang(self.pipeline, hang, self._hang_release)
                started = True
            if started and self.pipeline.ready():
                break
            if now >= deadline:
                what = (f"no first frame/audio block within service.start_timeout_s = "
                        f"{self.cfg.service.start_timeout_s:g} s" if started else
                        f"models not loaded within service.start_timeout_s = "
                        f"{self.cfg.service.start_timeout_s:g} s")
                log.error("cannot start: %s (%s)", what, self.phase)
                self.notify(f"STATUS=failed: {what}")
                if self.pipeline is not None:
                    self.pipeline.stop(STOP_TIMEOUT_S)
                self._finish(EX_UNAVAILABLE, what)
                return EX_UNAVAILABLE
            if now >= next_tick or sent < len(self._phases):
                # The loader makes progress by construction, bounded by the deadline; systemd's
                # own start timeout is extended to our deadline, a little at a time. Each new
                # phase is sent at once: a short one would otherwise fall between two ticks.
                phases = list(self._phases)  # the loader may append while we send
                for phase in phases[sent:-1]:
                    self.notify(f"STATUS={phase}")
                sent = len(phases)
                msgs = [f"STATUS={phases[-1]}",
                        f"EXTEND_TIMEOUT_USEC={int((deadline - now + 5.0) * 1e6)}"]
                if self.watchdog_s is not None:
                    msgs.append("WATCHDOG=1")
                    self.last_ping = now
                self.notify(*msgs)
                self._write_status()
                next_tick = now + min(self.cfg.service.status_interval_s,
                                      self.watchdog_s or 1e9, 5.0)
            for sig in self._wait_signals(0.05 if res.done.is_set() else 0.2):
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("%s during start-up: stopping", signal.Signals(sig).name)
                    self.state = "stopping"
                    self.notify("STOPPING=1", "STATUS=stopping")
                    if self.pipeline is not None:
                        self.pipeline.stop(STOP_TIMEOUT_S)
                    self._finish(EX_OK)
                    return EX_OK  # a loader still running is a daemon thread: it dies with us
                if sig == signal.SIGUSR1:
                    self._dump_stacks()
                elif sig == signal.SIGHUP:
                    pending.append(sig)  # applied once running
        # ---------------------------------------------------------------- running
        self.state = self.phase = "ready"
        log.info("ready in %.1f s: %s", time.monotonic() - self.started,
                 ", ".join(f"{k} {v}" for k, v in self.pipeline.modalities.items()))
        st = self.pipeline.status()
        # The status file first: whoever acts on READY=1 (systemd, `redsg-edge status`, the
        # tests) must find it already saying "ready".
        self._write_status()
        self.notify("READY=1", f"STATUS={status_line(st, time.monotonic())}")
        next_status = time.monotonic() + self.cfg.service.status_interval_s
        next_ping = time.monotonic()
        if pending:
            self._reload()
        while True:
            now = time.monotonic()
            if self.watchdog_s is not None and now >= next_ping:
                self._watchdog(now)
                next_ping = now + self.watchdog_s
            if now >= next_status:
                self._status_tick(now)
                next_status = now + self.cfg.service.status_interval_s
            wake = min(next_status, next_ping if self.watchdog_s is not None else next_status)
            for sig in self._wait_signals(wake - time.monotonic()):
                if sig in (signal.SIGTERM, signal.SIGINT):
                    return self._stop(signal.Signals(sig).name)
                if sig == signal.SIGHUP:
                    self._reload()
                elif sig == signal.SIGUSR1:
                    self._dump_stacks()

    def _stale_workers(self, now: float) -> list[str]:
        limit = self.cfg.service.heartbeat_timeout_s
        return sorted(f"{name} {now - t:.0f}s" for name, t in self.pipeline.heartbeats().items()
                      if now - t > limit)

    def _watchdog(self, now: float) -> None:
        stale = self._stale_workers(now)
        if stale and not self.stale:
            log.error("worker heartbeat older than service.heartbeat_timeout_s = %g s: %s; "
                      "watchdog pings stop, systemd will restart the service",
                      self.cfg.service.heartbeat_timeout_s, ", ".join(stale))
        elif self.stale and not stale:
            log.warning("all workers beating again; watchdog pings resume")
        self.stale = stale
        if not stale:
            self.notify("WATCHDOG=1")
            self.last_ping = now

    def _status_tick(self, now: float) -> None:
        if self.watchdog_s is None:  # no watchdog: still report stalls in STATUS and the file
            stale = self._stale_workers(now)
            if stale and not self.stale:
                log.error("worker heartbeat older than service.heartbeat_timeout_s = %g s: %s",
                          self.cfg.service.heartbeat_timeout_s, ", ".join(stale))
            self.stale = stale
        self.notify(f"STATUS={status_line(self.pipeline.status(), now, self.stale)}")
        self._write_status()

    def _reload(self) -> None:
        from .pipeline import changed_keys, is_live_key

        self.state = "reloading"
        self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}",
                    "STATUS=reloading config")
        self._write_status()
        log.info("SIGHUP: reloading %s", self.cfg_path)
        try:
            new, digest = _load(self.cfg_path)
        except ConfigError as exc:
            for line in exc.lines:
                log.error("reload rejected: %s", line)
            log.error("reload failed: keeping the running configuration")
        else:
            changed = changed_keys(self.pipeline.cfg, new)
            try:
                restart = self.pipeline.reconfigure(new)
            except Exception:
                log.exception("reload failed while applying; keeping the running configuration")
            else:
                self.cfg, self.cfg_digest = new, digest
                setup_logging(new.service.log_level, self.env)
                self._set_event_log(new.service.event_log)
                live = [k for k in changed if is_live_key(k)]
                log.info("reloaded: %s", f"applied {', '.join(live)}" if live else
                         "no live change")
                if restart:
                    log.warning("changed keys that take effect only after a restart "
                                "(systemctl restart redsg-edge): %s", ", ".join(restart))
                # Compared with the config the process started with, so a second reload still
                # shows what a restart would change (`redsg-edge status`).
                self.restart_pending = restart
        self.state = "ready"
        self._write_status()  # before READY=1, as at start-up
        self.notify("READY=1",
                    f"STATUS={status_line(self.pipeline.status(), time.monotonic(), self.stale)}")

    def _dump_stacks(self) -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        frames = sys._current_frames()
        log.warning("SIGUSR1: stacks of %d threads follow", len(frames))
        for ident, frame in frames.items():
            stack = "".join(traceback.format_stack(frame)).rstrip()
            log.warning("thread %r (%d):\n%s", names.get(ident, "?"), ident, stack,
                        extra={"redsg_event": "stack_dump",
                               "fields": {"DUMP_THREAD": names.get(ident, "?")}})

    def _stop(self, why: str) -> int:
        t0 = time.monotonic()
        self.state = self.phase = "stopping"
        self.notify("STOPPING=1", "STATUS=stopping")
        log.info("%s: stopping", why)
        self._write_status()
        self._hang_release.set()
        self.pipeline.stop(STOP_TIMEOUT_S)
        log.info("stopped in %.2f s", time.monotonic() - t0)
        self._finish(EX_OK)
        return EX_OK


def _is_known_error(exc: BaseException) -> bool:
    from .capture import DeviceError
    from .litert import ModelError
    try:
        from .voice import VoiceError
        known: tuple = (DeviceError, ModelError, VoiceError)
    except ImportError:  # pragma: no cover
        known = (DeviceError, ModelError)
    return isinstance(exc, known)


def exit_process(code: int) -> NoReturn:
    """End the process now with ``code``: flush logging and stdio, then ``os._exit``.

    For ``redsg-edge run`` after :func:`run_service` returned: the workers are stopped and every
    file is closed by then, but the interpreter's own finalisation (tearing down MediaPipe,
    onnxruntime, LiteRT, SciPy) takes 2-6 s on a small board, past the 3 s systemd and users
    expect after SIGTERM.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_service(cfg_path: Path, *, reply: bool = True,
                environ: Mapping[str, str] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code.

    cfg_path: the config.toml. reply: run the reply path (chat + voice) when the config enables
    it. environ: replaces ``os.environ`` for ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
    ``JOURNAL_STREAM``, ``RUNTIME_DIRECTORY`` and ``REDSG_DEBUG_HANG`` (tests).
    Returns 0 after a clean stop, 78 (bad config; its lines printed to stderr), 69 (a device
    missing, or no first frame/audio within ``service.start_timeout_s``), 70 (a model that
    cannot be loaded; the message names the file) or 1 (an unexpected error, logged with its
    traceback). Does not raise.
    """
    # Before mediapipe is imported: silences its TensorFlow "cpu_feature_guard" INFO lines on fd 2.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A watchdog kill is SIGABRT: every thread's Python stack then reaches the journal via fd 2.
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)
    return _Service(Path(cfg_path), reply, environ if environ is not None else os.environ).run()


# ============================================================================ redsg-edge status

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user (DynamicUser=)
        return True
    except OSError:
        return False
    return True


def assess(status: dict, now_unix: float | None = None) -> tuple[str, str]:
    """(health, explanation) of a status file: ``running``, ``stale`` (the writer stopped
    updating it: hung, or killed without cleaning up), ``dead`` (its pid is gone) or ``stopped``."""
    now_unix = time.time() if now_unix is None else now_unix
    age = now_unix - float(status.get("updated_at_unix") or 0.0)
    interval = float(status.get("status_interval_s") or 2.0)
    pid = int(status.get("pid") or 0)
    if status.get("state") == "stopped":
        code = status.get("exit_code")
        return "stopped", f"not running: stopped {_age(age)} ago (exit code {code})"
    if pid and not _pid_alive(pid):
        return "dead", f"not running: process {pid} is gone (last update {_age(age)} ago)"
    if age > max(3 * interval, 10.0):
        return "stale", (f"status file is stale: last update {_age(age)} ago, expected every "
                         f"{interval:g} s (daemon hung or status writes failing)")
    return "running", f"running (pid {pid})"


def format_status(status: dict, path: Path, now_unix: float | None = None) -> str:
    """The human-readable text ``redsg-edge status`` prints."""
    health, why = assess(status, now_unix)
    p = status.get("pipeline") or {}
    lines = [f"redsg-edge {status.get('version', '?')}: {status.get('state', '?')} — {why}",
             f"  status file {path}, updated {status.get('updated_at', '?')}",
             f"  config      {status.get('config', '?')}",
             f"  uptime      {_age(status.get('uptime_s'))}"]
    if status.get("error"):
        lines.append(f"  error       {status['error']}")
    if status.get("restart_pending"):
        lines.append(f"  restart     needed to apply {', '.join(status['restart_pending'])} "
                     "(sudo systemctl restart redsg-edge)")
    if status.get("state") in ("starting", "stopping") and status.get("phase"):
        lines.append(f"  phase       {status['phase']}")
    if p:
        probs = p.get("probs") or {}
        emo = p.get("emotion", "?")
        lines.append(f"  emotion     {emo}" + (f" ({probs[emo]:.2f})" if emo in probs else ""))
        mods = p.get("modalities") or {}
        fr, au = p.get("frames") or {}, p.get("audio") or {}
        lines.append(f"  face        {mods.get('face', '?')}: {p.get('fps', 0):.1f} fps, "
                     f"{fr.get('captured', 0)} frames captured, {fr.get('dropped', 0)} dropped, "
                     f"{fr.get('classified', 0)} classified, {fr.get('with_face', 0)} with a face")
        lines.append(f"  voice       {mods.get('voice', '?')}: {au.get('windows', 0)} windows, "
                     f"{au.get('voiced_windows', 0)} voiced, {au.get('gated_windows', 0)} gated "
                     f"while speaking, {au.get('overruns', 0)} overruns, "
                     f"{au.get('dropped', 0)} samples dropped")
        tr = p.get("last_transition")
        if tr:
            lines.append(f"  transition  {tr['from']} -> {tr['to']} ({tr['confidence']:.2f}), "
                         f"{_age(status.get('last_transition_age_s'))} ago")
        else:
            lines.append("  transition  none yet")
        rp = p.get("last_reply")
        if rp:
            lat = (rp.get("latency_s") or {})
            first = lat.get("first_sample") or lat.get("first_pcm")
            lines.append(f"  last reply  {rp.get('source')}"
                         + (f" ({rp['cause']})" if rp.get("cause") else "")
                         + (f", first audio {first * 1000:.0f} ms" if first else "")
                         + f": {rp.get('text')!r}")
        else:
            lines.append("  last reply  none yet")
        for note in p.get("notes") or []:
            lines.append(f"  note        {note}")
    wd = status.get("watchdog") or {}
    beats = status.get("heartbeat_age_s") or {}
    if beats:
        lines.append("  workers     " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(beats.items()))
                     + (f"; STALLED: {', '.join(wd['stale_workers'])}"
                        if wd.get("stale_workers") else ""))
    ping = wd.get("last_ping_age_s")
    lines.append("  watchdog    " + (f"every {wd['interval_s']:.1f} s, last ping "
                                      + ("never" if ping is None else f"{ping:.1f} s ago")
                                      if wd.get("enabled") else "off (not under systemd)"))
    return "\n".join(lines)


def status_main(json_out: bool = False, path: Path | None = None,
                environ: Mapping[str, str] | None = None) -> int:
    """``redsg-edge status [--json] [--file PATH]``: print the daemon's status file.

    Finds the file (``path``, else the newest of :func:`status_candidates`), prints it for humans
    or as JSON (the file plus ``"health"``/``"health_detail"``/``"status_file"``). Returns 0 when
    the daemon runs and the file is fresh, 1 when the file is stale or its process is gone, 3
    (LSB "not running") when there is no file or the daemon stopped, 4 when the file is unreadable.
    """
    found, status = read_status(path, environ)
    if found is None:
        where = [str(path)] if path else [str(p) for p in status_candidates(environ)]
        msg = ("redsg-edge is not running: no status file (looked in " + ", ".join(where) + ")")
        if json_out:
            print(json.dumps({"health": "not_running", "health_detail": msg}))
        else:
            print(msg)
        return 3
    if status is None:
        msg = f"{found}: status file is not readable JSON"
        print(json.dumps({"health": "unknown", "health_detail": msg}) if json_out else msg)
        return 4
    health, why = assess(status)
    if json_out:
        print(json.dumps({**status, "health": health, "health_detail": why,
                          "status_file": str(found)}, indent=1, default=str))
    else:
        print(format_status(status, found))
    return {"running": 0, "stale": 1, "dead": 1, "stopped": 3}[health]


def _main(argv: list[str] | None = None) -> int:
    """``python -m redsg_edge.service [run] --config PATH [--no-reply]`` or ``status [--json]``
    (for tests and the installer before cli.py wires ``redsg-edge``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m redsg_edge.service")
    sub = ap.add_subparsers(dest="cmd")
    run = sub.add_parser("run")
    run.add_argument("--config", type=Path, default=Path("config.toml"))
    run.add_argument("--no-reply", action="store_true")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    st.add_argument("--file", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "status":
        return status_main(args.json, args.file)
    if args.cmd != "run":
        ap.error("choose run or status")
    exit_process(run_service(args.config, reply=not args.no_reply))


if __name__ == "__main__":
    sys.exit(_main())
