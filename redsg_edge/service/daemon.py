"""The daemon's lifecycle under systemd (``Type=notify``) or in a terminal: ``redsg-edge run``.

``run_service(cfg_path)`` runs the same way under systemd and in a terminal; outside systemd
(no ``$NOTIFY_SOCKET``) notifications are simply off. What systemd sees:

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

Right after the ``Pipeline`` is built its bus gets the daemon's subscribers
(``subscribers.subscribe_all``: the event log and the journal lines); the status file
(``status``) is written on every ``STATUS=`` tick.

Exit codes come from ``errors.exit_code_for`` (sysexits.h): 0 clean stop; 78 bad config at
start (``file: section.key: message`` lines on stderr); 69 a camera, microphone or audio output
missing, or no first frame/audio within ``service.start_timeout_s``; 70 a model file missing or
unloadable (the message names the file); 1 anything unexpected (a bug; the traceback is
logged).

Debug hook: ``REDSG_DEBUG_HANG=vision`` (or ``speech``; ``vision:3`` = after 3 s) makes that
worker block forever inside its processing step, so its heartbeat goes stale and the watchdog
pings stop. Tests use it; never set it in production.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..config import Config, load_config
from ..errors import EX_CONFIG, EX_FAILURE, EX_OK, EX_UNAVAILABLE, ConfigError, exit_code_for
from .journal import setup_logging
from .notify import Notifier, monotonic_usec, watchdog_interval
from .signals import SignalWaiter
from .status import status_document, status_line, status_path, write_json_atomic
from .publishers import Publishers
from .subscribers import EventLogSubscriber, subscribe_all

__all__ = ["run_service", "exit_process", "STOP_TIMEOUT_S"]

log = logging.getLogger("redsg_edge.service")

#: ``Pipeline.stop`` budget (s); systemd's "exit within 3 s" leaves ~1 s for teardown
STOP_TIMEOUT_S = 2.0


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
        self.publishers: Publishers | None = None
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
    """One run of the daemon: config, notifier, pipeline, subscribers and the status file.

    ``cfg_path`` the config.toml; ``reply`` run the reply path when the config enables it;
    ``environ`` the environment to read (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
    ``JOURNAL_STREAM``, ``RUNTIME_DIRECTORY``, ``REDSG_DEBUG_HANG``). :meth:`run` once.
    """

    def __init__(self, cfg_path: Path, reply: bool, environ: Mapping[str, str]) -> None:
        self.cfg_path = Path(cfg_path)
        self.reply = reply
        self.env = environ
        self.notify = Notifier(environ)
        self.cfg: Config | None = None
        self.cfg_digest: str | None = None  # sha256 of the file text in use (a bad reload keeps it)
        self.restart_pending: list[str] = []  # changed keys that only a restart applies
        self.pipeline: Any = None
        self.publishers: Publishers | None = None  # MQTT and the tuning page, when enabled
        self.state = "starting"
        self._phases: list[str] = ["starting"]  # every phase so far, in order; see `phase`
        self.status_file: Path | None = None
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.watchdog_s = watchdog_interval(environ)
        self.last_ping: float | None = None
        self.stale: list[str] = []
        self.event_log = EventLogSubscriber()
        self._signals = SignalWaiter()
        self._hang_release = threading.Event()
        self._status_warned = False

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
                beats = self.pipeline.heartbeats()
            except Exception:  # a status must never take the daemon down
                log.debug("pipeline.status() failed", exc_info=True)
        data = status_document(
            state=self.state, phase=self.phase, config=self.cfg_path,
            config_sha256=self.cfg_digest, restart_pending=self.restart_pending,
            started_wall=self.started_wall, started=self.started,
            status_interval_s=self.cfg.service.status_interval_s if self.cfg else 2.0,
            watchdog_s=self.watchdog_s, last_ping=self.last_ping, stale=self.stale,
            pipeline=pipe, heartbeats=beats, now=now)
        if self.publishers is not None:
            data["publishers"] = self.publishers.stats()
        data.update(extra)
        try:
            write_json_atomic(self.status_file, data)
        except OSError as exc:
            if not self._status_warned:
                self._status_warned = True
                log.warning("cannot write status file %s: %s", self.status_file, exc)

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
            self._signals.install()
        except ValueError:  # not the main thread (embedding); run without signal handling
            log.warning("not in the main thread: signals are not handled")
            return self._run_checked(kind)
        try:
            return self._run_checked(kind)
        finally:
            self._signals.restore()

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
        self.event_log.set_path(cfg.service.event_log)
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
            self.event_log.close()

    def _finish(self, code: int, error: str | None = None) -> None:
        self.state = "stopped"
        self.phase = "stopped" if code == 0 else f"failed: {error}"
        self._write_status(exit_code=code, error=error)

    def _loader(self, res: _LoadResult) -> None:
        from ..pipeline import Pipeline
        try:
            pipeline = Pipeline(self.cfg, reply=self.reply, progress=self._phases.append)
            # Before start(): no transition or reply can be published unseen.
            subscribe_all(pipeline.bus, self.event_log)
            try:
                res.publishers = Publishers.start(self.cfg, pipeline, lambda: self.cfg)
            except BaseException:
                pipeline.stop(STOP_TIMEOUT_S)
                raise
            res.pipeline = pipeline
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
                    if code == EX_FAILURE:  # a bug: its traceback helps
                        log.error("%s", "".join(traceback.format_exception(res.error)).rstrip())
                    self.notify(f"STATUS=failed: {str(res.error)[:200]}")
                    self._finish(code, str(res.error))
                    return code
                self.pipeline, self.publishers = res.pipeline, res.publishers
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
                    self._stop_pipeline()
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
            for sig in self._signals.wait(0.05 if res.done.is_set() else 0.2):
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("%s during start-up: stopping", signal.Signals(sig).name)
                    self.state = "stopping"
                    self.notify("STOPPING=1", "STATUS=stopping")
                    if self.pipeline is not None:
                        self._stop_pipeline()
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
            for sig in self._signals.wait(wake - time.monotonic()):
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
        from ..pipeline import changed_keys, is_live_key

        self.state = "reloading"
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
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
                self.event_log.set_path(new.service.event_log)
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

    def _stop_pipeline(self) -> None:
        """Stop the pipeline, then the publishers (they send what the pipeline's last events
        queued, and MQTT says ``offline``)."""
        self.pipeline.stop(STOP_TIMEOUT_S)
        if self.publishers is not None:
            self.publishers.close(timeout_s=0.5)

    def _stop(self, why: str) -> int:
        t0 = time.monotonic()
        self.state = self.phase = "stopping"
        self.notify("STOPPING=1", "STATUS=stopping")
        log.info("%s: stopping", why)
        self._write_status()
        self._hang_release.set()
        self._stop_pipeline()
        log.info("stopped in %.2f s", time.monotonic() - t0)
        self._finish(EX_OK)
        return EX_OK


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
    # A watchdog kill is SIGABRT: every thread's Python stack then reaches the journal via fd 2.
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)
    return _Service(Path(cfg_path), reply, environ if environ is not None else os.environ).run()
