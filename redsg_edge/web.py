"""The live tuning page: a small HTTP + WebSocket server inside the daemon (issue 19).

``GET /`` serves one static page (``redsg_edge/web_static/tuning.html``: plain JavaScript and canvas,
no framework); ``GET /ws`` upgrades to a WebSocket that pushes JSON messages:

- ``{"type": "hello", "modalities": [{"name", "label", "colour"}...], "classes": [...],
  "class_colours": {class: "#rrggbb"}, "fusion": {...}, "history": [...], "max_rate_hz"}``
  once, on connect; ``history`` holds the recent transitions and replies (records as below) so
  a page opened late still lists them;
- ``{"type": "update", "t", <modality>: {class: p} | null ..., "fused": {...}, "emotion"}``:
  ``fusion.FusedUpdate.to_json()``, down-sampled to at most ``max_rate_hz`` per second of event
  time ``t``;
- ``{"type": "transition", ...}`` and ``{"type": "reply", ...}``: ``events.Transition`` and
  ``events.Reply`` records, every one;
- ``{"type": "snapshot", "stats": {...}, "fusion": {...}}`` every ``snapshot_s`` seconds:
  :func:`status_summary` of the ``status_fn()`` dict (fps, drops, latency) and the ``[fusion]``
  values in force.

Library: ``websockets`` (sync server, threads, no dependencies of its own; it also answers the
plain HTTP GET of the page through ``process_request``). The daemon is thread-based, so no event
loop is added.

Cost with nobody watching: the bus subscriber returns after one O(1) check (no client) for
``update`` events; transitions and replies (a few a minute) are kept in a bounded deque for the
``hello`` history. The listening thread blocks in ``select`` without a timeout; no snapshot is
taken. Measured in README ("Live tuning page").

Security: bound to 127.0.0.1 by default (reach it with ``ssh -L 8787:127.0.0.1:8787
pi@device``). Read-only: the page cannot change anything. On a loopback address the ``Host``
header must name a loopback host and a WebSocket's ``Origin`` must match it (refuses DNS
rebinding and other sites' pages).
"""

from __future__ import annotations

import http
import ipaddress
import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from . import CLASSES
from .errors import ConfigError, DeviceError
from .modalities import FACE, MODALITIES
from .timeline import CLASS_COLORS

log = logging.getLogger(__name__)

__all__ = ["TuningServer", "start_web", "status_summary", "Pacer", "UpdateThrottle",
           "modality_table", "PAGE"]

#: The page, package data (pyproject's ``[tool.setuptools.package-data]``).
PAGE = ("redsg_edge", "web_static/tuning.html")
#: Transitions and replies remembered for a page that connects later.
HISTORY = 50
#: Messages queued per client at most; a client that falls further behind loses the oldest.
CLIENT_QUEUE = 256
#: Seconds a page has to answer the WebSocket closing handshake (RFC 6455 §7.1.1) when the
#: server stops. websockets waits 10 s by default, and ``close`` waits for every page, so one
#: stalled browser over a slow SSH tunnel would hold a SIGTERM past systemd's stop budget (3 s).
CLOSE_TIMEOUT_S = 1.0


class UpdateThrottle:
    """Down-sampling of ``update`` events by their own time ``t`` (seconds): lets one through
    when at least ``1 / max_rate_hz`` seconds passed since the last one let through, or when
    ``t`` went backwards (a new run). Pure: no clock, no I/O."""

    def __init__(self, max_rate_hz: float) -> None:
        if not max_rate_hz > 0:
            raise ValueError(f"max_rate_hz must be > 0, got {max_rate_hz}")
        self.period = 1.0 / max_rate_hz
        self.last: float | None = None

    def admit(self, t: float) -> bool:
        """Whether the update at ``t`` is sent (and, if so, remember ``t``)."""
        if self.last is None or t < self.last or t - self.last >= self.period - 1e-9:
            self.last = t
            return True
        return False


def status_summary(st: dict | None) -> dict:
    """The figures the page shows, from a ``Pipeline.status()``-shaped dict (missing keys give
    None): ``fps`` (classified frames per second), ``frames_dropped`` (frames the ring dropped),
    ``audio_dropped`` (samples), ``audio_overruns``, ``first_audio_ms`` (last reply, transition
    to first audio, milliseconds), ``reply_source``, ``lag_s`` (replay: seconds behind real
    time), ``uptime_s``, ``emotion`` and ``modalities`` (name → "on"/"off"). Pure."""
    st = st or {}
    frames, audio = st.get("frames") or {}, st.get("audio") or {}
    reply = st.get("last_reply") or {}
    lat = reply.get("latency_s") or {}
    first = lat.get("first_sample") if lat.get("first_sample") is not None \
        else lat.get("first_pcm")
    return {"fps": st.get("fps"), "frames_dropped": frames.get("dropped"),
            "audio_dropped": audio.get("dropped"), "audio_overruns": audio.get("overruns"),
            "first_audio_ms": None if first is None else round(first * 1000.0),
            "reply_source": reply.get("source"), "lag_s": st.get("lag_s"),
            "uptime_s": st.get("uptime_s"), "emotion": st.get("emotion"),
            "modalities": st.get("modalities")}


def _hex_colour(colour: str) -> str:
    """A Matplotlib colour name (``"tab:blue"``) as ``#rrggbb`` for the browser."""
    if colour.startswith("#"):
        return colour
    try:  # imported only when the page is on: matplotlib is heavy for a daemon
        from matplotlib.colors import to_hex
        return to_hex(colour)
    except (ImportError, ValueError):
        return "#888888"


def modality_table() -> list[dict]:
    """``[{"name", "label", "colour": "#rrggbb"}]`` for each entry of
    ``modalities.MODALITIES``, in table order."""
    return [{"name": m.name, "label": m.label, "colour": _hex_colour(m.colour)}
            for m in MODALITIES.values()]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(netloc: str) -> str:
    """``host`` of ``host:port`` / ``[v6]:port``."""
    return urlsplit("//" + netloc).hostname or ""


@dataclass
class _Client:
    """One connected page: its outgoing queue and what it lost to a full queue."""
    out: queue.Queue
    lost: int = 0


class TuningServer:
    """The page server: subscribes to ``bus`` and serves the page on ``host:port``.

    ``status_fn()`` returns a ``Pipeline.status()``-shaped dict (see :func:`status_summary`),
    called only while a page is connected, every ``snapshot_s`` seconds; ``fusion_fn()`` the
    ``[fusion]`` values in force (a dict, or a pydantic model); ``max_rate_hz`` caps the
    ``update`` messages (per second of event time). ``port`` 0 takes a free port
    (:attr:`port` tells which). Call :meth:`start`, then :meth:`close`.
    """

    def __init__(self, bus, status_fn: Callable[[], dict | None],
                 fusion_fn: Callable[[], Any], host: str = "127.0.0.1", port: int = 8787,
                 *, max_rate_hz: float = 5.0, snapshot_s: float = 1.0) -> None:
        self.bus = bus
        self.status_fn = status_fn
        self.fusion_fn = fusion_fn
        self.host = host
        self.port = port
        self.snapshot_s = snapshot_s
        self.throttle = UpdateThrottle(max_rate_hz)
        self.max_rate_hz = max_rate_hz
        self.history: deque = deque(maxlen=HISTORY)
        #: clients, replaced (never mutated) so the bus thread reads it without a lock
        self._clients: tuple[_Client, ...] = ()
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._page = resources.files(PAGE[0]).joinpath(PAGE[1]).read_bytes()
        self._modalities = modality_table()

    # ------------------------------------------------------------------ bus side
    def on_event(self, event) -> None:
        """The bus subscriber. With no page connected: one check, nothing else, for updates;
        transitions and replies go to the bounded history. Never blocks."""
        kind = event.type
        if kind == "update":
            clients = self._clients
            if not clients or not self.throttle.admit(event.t):
                return
            self._broadcast(clients, event.to_json())
        else:  # transition, reply: rare
            self.history.append(event)
            clients = self._clients
            if clients:
                self._broadcast(clients, event.to_json())

    def _broadcast(self, clients: Iterable[_Client], record: dict) -> None:
        msg = json.dumps(record, allow_nan=False, default=_jsonable)
        for c in clients:
            while True:
                try:
                    c.out.put_nowait(msg)
                    break
                except queue.Full:  # a stuck page loses its oldest message, not the daemon
                    try:
                        c.out.get_nowait()
                        c.lost += 1
                    except queue.Empty:
                        pass

    # ------------------------------------------------------------------ HTTP side
    def _process_request(self, connection, request):
        """Serve the page, refuse foreign hosts/origins, let ``/ws`` through to the handshake."""
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        host = _host_name(request.headers.get("Host", ""))
        if _is_loopback(self.host) and not _is_loopback(host):
            return connection.respond(http.HTTPStatus.FORBIDDEN,
                                      "Host must be localhost or 127.0.0.1 (use an SSH tunnel)\n")
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "foreign Origin\n")
            return None
        if path in ("/", "/index.html"):
            headers = Headers([("Content-Type", "text/html; charset=utf-8"),
                               ("Content-Length", str(len(self._page))),
                               ("Cache-Control", "no-store"),
                               ("Content-Security-Policy",
                                "default-src 'self'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; connect-src 'self'")])
            return Response(200, "OK", headers, self._page)
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found: the page is at /\n")

    def _handler(self, connection) -> None:
        """One thread per connected page: hello, then queued events and periodic snapshots."""
        from websockets.exceptions import ConnectionClosed

        client = _Client(queue.Queue(maxsize=CLIENT_QUEUE))
        with self._lock:
            self._clients = self._clients + (client,)
            self.throttle.last = None
        log.info("tuning page connected from %s", connection.remote_address)
        try:
            connection.send(json.dumps(self._hello(), default=_jsonable))
            next_snap = 0.0
            while True:
                now = time.monotonic()
                if now >= next_snap:
                    connection.send(json.dumps(self._snapshot(client), default=_jsonable))
                    next_snap = now + self.snapshot_s
                try:
                    msg = client.out.get(timeout=max(0.0, next_snap - time.monotonic()))
                except queue.Empty:
                    continue
                if msg is None:  # close()
                    return
                connection.send(msg)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._clients = tuple(c for c in self._clients if c is not client)
            log.info("tuning page disconnected")

    def _hello(self) -> dict:
        return {"type": "hello", "modalities": self._modalities, "classes": list(CLASSES),
                "class_colours": CLASS_COLORS,
                "fusion": self._fusion(), "max_rate_hz": self.max_rate_hz,
                "history": [e.to_json() for e in list(self.history)]}

    def _fusion(self) -> dict:
        values = self.fusion_fn()
        return values.model_dump() if hasattr(values, "model_dump") else dict(values)

    def _snapshot(self, client: _Client) -> dict:
        try:
            stats = status_summary(self.status_fn())
        except Exception:  # noqa: BLE001 - a failing status never takes the page down
            log.exception("tuning page: status_fn failed")
            stats = status_summary(None)
        stats["page_lost"] = client.lost
        return {"type": "snapshot", "stats": stats, "fusion": self._fusion(),
                "bus_errors": dict(getattr(self.bus, "errors", {}) or {})}

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """``http://host:port/`` (the bound port)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def clients(self) -> int:
        """Pages connected now."""
        return len(self._clients)

    def start(self) -> "TuningServer":
        """Bind, subscribe to the bus and serve in a daemon thread. Raises DeviceError when
        the address cannot be bound (in use, not an address of this machine), ConfigError when
        the ``web`` extra (websockets) is not installed."""
        try:
            from websockets.sync.server import serve
        except ImportError:
            raise ConfigError(["[web] enabled = true needs the websockets package: install the "
                               "web extra (pip install 'redsg-edge[web]'; scripts/install.sh "
                               "does) or set [web] enabled = false"]) from None

        try:
            self._server = serve(self._handler, self.host, self.port,
                                 process_request=self._process_request,
                                 server_header="redsg-edge", max_size=4096,
                                 close_timeout=CLOSE_TIMEOUT_S,
                                 logger=logging.getLogger("redsg_edge.web.ws"))
        except OSError as exc:
            raise DeviceError(f"tuning page: cannot listen on {self.host}:{self.port} "
                              f"({exc.strerror or exc}); set [web] port to a free port or "
                              "[web] enabled = false") from None
        self.port = self._server.socket.getsockname()[1]
        self._unsubscribe = self.bus.subscribe(self.on_event,
                                               types=("update", "transition", "reply"),
                                               name="tuning page")
        self._thread = threading.Thread(target=self._server.serve_forever, name="web",
                                        daemon=True)
        self._thread.start()
        log.info("tuning page on %s", self.url)
        return self

    def close(self) -> None:
        """Unsubscribe, close the pages' connections and the listening socket. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for c in self._clients:
            try:
                c.out.put_nowait(None)
            except queue.Full:
                c.out.get_nowait()
                c.out.put_nowait(None)
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


def _jsonable(value):
    """numpy scalars and arrays in records (``evidence``) as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def start_web(cfg, bus, status_fn: Callable[[], dict | None],
              fusion_fn: Callable[[], Any] | None = None) -> TuningServer | None:
    """Start the tuning page when ``cfg.web.enabled``; None when it is off.

    ``bus`` an ``events.EventBus``; ``status_fn`` e.g. ``pipeline.status``; ``fusion_fn`` the
    ``[fusion]`` values in force (default: ``cfg.fusion`` as it is now; pass
    ``lambda: service.cfg.fusion`` so a reload shows). Raises DeviceError (exit 69) when the
    port cannot be bound. The caller closes it (``server.close()``) on stop.
    """
    web = cfg.web
    if not web.enabled:
        return None
    return TuningServer(bus, status_fn, fusion_fn or (lambda: cfg.fusion), web.host, web.port,
                        max_rate_hz=web.max_rate_hz, snapshot_s=web.snapshot_s).start()


class Pacer:
    """A bus subscriber that holds the publisher back to real time: ``update`` at event time
    ``t`` returns no earlier than ``t - t_first`` seconds after the first one (``replay
    --serve``, so a person can watch). ``lag_s`` is how far behind real time the run is
    (seconds; 0 when processing keeps up). Uses ``time.monotonic`` and ``time.sleep``."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self.origin: tuple[float, float] | None = None  # (event t, monotonic)
        self.lag_s = 0.0
        self.updates = 0
        #: frames classified: face evidence with a capture time not seen before
        self.frames = 0
        self._face_t: float | None = None

    def __call__(self, event) -> None:
        """Sleep until ``event.t`` is due; count updates and classified frames."""
        now = time.monotonic()
        if self.origin is None:
            self.origin = (event.t, now)
        due = self.origin[1] + (event.t - self.origin[0]) / self.speed
        self.updates += 1
        face = getattr(event, "evidence", {}).get(FACE.name)
        if face is not None and face.t != self._face_t:
            self.frames += 1
            self._face_t = face.t
        if due > now:
            time.sleep(due - now)
            self.lag_s = 0.0
        else:
            self.lag_s = now - due

    def status(self) -> dict:
        """A ``status_summary`` input for a replay: frames classified (with a face) per second
        of wall time, ``lag_s``; drops do not exist in a replay (None)."""
        if self.origin is None:
            return {"fps": None, "lag_s": None}
        wall = max(1e-6, time.monotonic() - self.origin[1])
        return {"fps": round(self.frames / wall, 1), "lag_s": round(self.lag_s, 2),
                "uptime_s": round(wall, 1)}
