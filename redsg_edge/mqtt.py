"""MQTT publisher with Home Assistant discovery: a subscriber of the event bus (issue 19).

:class:`MqttPublisher` subscribes to an ``events.EventBus`` and publishes, for one device (topics
and payloads in ``redsg_edge.mqtt_payloads``):

- the state (emotion, confidence, each modality's top class, person present), retained, on
  change and at most ``[mqtt] state_max_hz`` times a second;
- each transition and each reply as an event, QoS 1;
- availability: ``online`` on every connect, ``offline`` on a clean stop and, through the
  broker's last will, when the process dies or the network goes;
- Home Assistant discovery configs (retained) on every connect and when Home Assistant
  announces itself on ``<discovery_prefix>/status``;

and hands commands from ``<base>/cmd/<name>`` (say, mute, reload) to an ``on_command(name,
arg)`` callback after validating them.

Network work happens in paho-mqtt's own thread (``loop_start``); bus subscribers only build a
small dict and hand it to paho, so the pipeline is never held up by the network. paho
reconnects with exponential backoff (``reconnect_min_s`` doubling to ``reconnect_max_s``) and
keeps QoS 1 messages until the broker acknowledges them, re-sending them after a reconnect; at
most ``queue_size`` are held. A newer event that finds the queue full is dropped and counted
(``stats["events_dropped"]``); the ones already queued keep their order. State is not queued:
the latest is published again on connect.

Never images or audio; reply text only when ``publish_reply_text``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

try:  # the optional extra `mqtt`; start_mqtt says how to install it when [mqtt] is enabled
    import paho.mqtt.client as paho
except ImportError:  # pragma: no cover - exercised only without the extra
    paho = None  # type: ignore[assignment]

from .config import Config, MqttConfig
from .errors import ConfigError
from .mqtt_payloads import (CommandError, Topics, discovery_configs, parse_command,
                            reply_payload, state_key, state_payload, transition_payload)

log = logging.getLogger(__name__)

__all__ = ["MqttPublisher", "start_mqtt", "route_commands", "probe_broker", "read_password",
           "resolve_device_id"]

#: Name of the systemd credential (LoadCredential=mqtt_password:/etc/redsg-edge/mqtt_password).
CREDENTIAL_NAME = "mqtt_password"

OnCommand = Callable[[str, str], None]


def resolve_device_id(cfg: MqttConfig) -> str:
    """``cfg.device_id``, or this machine's host name made topic-safe (characters outside
    ``[A-Za-z0-9_-]`` become ``_``, at most 64)."""
    if cfg.device_id:
        return cfg.device_id
    host = socket.gethostname().split(".")[0] or "device"
    return "".join(c if c.isalnum() and c.isascii() or c in "_-" else "_" for c in host)[:64]


def read_password(cfg: MqttConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password: ``$CREDENTIALS_DIRECTORY/mqtt_password`` (systemd
    ``LoadCredential=``) when present and non-empty, else the file ``cfg.password_file``; None
    when no username is configured or neither exists. Surrounding whitespace is stripped.

    Raises ConfigError (exit 78) when ``password_file`` is set but cannot be read or is empty:
    a daemon that would connect anonymously by mistake is worse than one that stops.
    """
    if cfg.username is None:
        return None
    environ = os.environ if environ is None else environ
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        try:
            pw = (Path(cred_dir) / CREDENTIAL_NAME).read_text(encoding="utf-8").strip()
            if pw:
                return pw
        except OSError:
            pass
    if cfg.password_file is None:
        return None
    try:
        pw = Path(cfg.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"mqtt.password_file: cannot read {cfg.password_file}: {exc} (put the "
                           f"broker password in it, readable by the daemon's user)"]) from None
    if not pw:
        raise ConfigError([f"mqtt.password_file: {cfg.password_file} is empty (put the broker "
                           f"password in it)"])
    return pw


def _client(cfg: MqttConfig, client_id: str, password: str | None) -> "paho.Client":
    """A paho client with TLS and credentials set, not connected. Raises ConfigError when
    paho-mqtt is not installed or the CA file cannot be used."""
    if paho is None:
        raise ConfigError(["mqtt.enabled: the MQTT publisher needs paho-mqtt, which is not "
                           "installed: pip install 'redsg-edge[mqtt]' (or set mqtt.enabled = "
                           "false)"])
    c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=paho.MQTTv311, clean_session=True)
    if cfg.tls:
        try:
            c.tls_set(ca_certs=None if cfg.ca_file is None else str(cfg.ca_file))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError([f"mqtt.ca_file: cannot use {cfg.ca_file} as the CA: {exc}"]) \
                from None
    if cfg.username is not None:
        c.username_pw_set(cfg.username, password)
    return c


class MqttPublisher:
    """Publishes one device's state and events to an MQTT broker (see the module doc).

    cfg: ``[mqtt]``. on_command: ``on_command(name, arg)`` for validated commands (``say``
    text, ``mute`` whole minutes as a string, ``reload`` ""); it runs in paho's network thread,
    so it must return quickly (queue the work); an exception in it is logged and counted, never
    fatal. password: the broker password (default: :func:`read_password`). device_id: default
    :func:`resolve_device_id`. device_name: the name Home Assistant shows.

    Raises ConfigError when the password file or the CA file cannot be used. Nothing is sent
    before :meth:`attach` (or :meth:`start`).
    """

    def __init__(self, cfg: MqttConfig, on_command: OnCommand | None = None, *,
                 password: str | None = None, device_id: str | None = None,
                 device_name: str | None = None) -> None:
        self.cfg = cfg
        self.device_id = device_id or resolve_device_id(cfg)
        self.topics = Topics.build(cfg.topic_prefix, self.device_id, cfg.discovery_prefix)
        self._discovery = discovery_configs(self.topics, self.device_id, cfg.discovery_prefix,
                                            device_name)
        self._on_command = on_command
        if password is None:
            password = read_password(cfg)
        self._client = _client(cfg, f"redsg-edge-{self.device_id}", password)
        c = self._client
        c.will_set(self.topics.availability, "offline", qos=1, retain=True)
        c.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        c.max_queued_messages_set(cfg.queue_size)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.message_callback_add(self.topics.command_filter, self._on_command_message)
        c.message_callback_add(self.topics.ha_status, self._on_ha_status)

        self._lock = threading.Lock()
        self._min_interval_s = 1.0 / cfg.state_max_hz
        self._state: dict | None = None      # the latest state worth publishing
        self._state_k: tuple | None = None
        self._state_dirty = False
        self._state_sent_at = -1e9           # monotonic s
        self._tracked: dict[int, bool] = {}  # mid → is an event, handed to paho, not acked
        self._acked_early: set[int] = set()  # acked before publish() returned its mid
        self._unsubscribe: list[Callable[[], None]] = []
        self._started = False
        self._failing = False
        self._stats: dict[str, Any] = {
            "broker": f"{cfg.host}:{cfg.port}", "device_id": self.device_id,
            "connected": False, "connects": 0, "disconnects": 0, "last_error": None,
            "states_published": 0, "events_published": 0, "events_delivered": 0,
            "events_dropped": 0, "commands": 0, "bad_commands": 0, "command_errors": 0}

    # ------------------------------------------------------------------ lifecycle

    def attach(self, bus: Any) -> "MqttPublisher":
        """Subscribe to ``bus`` (an ``events.EventBus``: updates, transitions, replies) and
        :meth:`start`. Returns self."""
        self._unsubscribe.append(bus.subscribe(self.on_update, types=("update",),
                                               name="mqtt.state"))
        self._unsubscribe.append(bus.subscribe(self.on_transition, types=("transition",),
                                               name="mqtt.transition"))
        self._unsubscribe.append(bus.subscribe(self.on_reply, types=("reply",),
                                               name="mqtt.reply"))
        self.start()
        return self

    def start(self) -> None:
        """Connect in the background (paho's thread) and keep reconnecting; returns at once.
        Events published before the first connect wait in the queue."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop: leave the bus, send the pending state, wait up to ``timeout_s`` seconds for
        queued events to be acknowledged (connecting first if need be), publish ``offline`` and
        disconnect (no last will then). Events still queued after ``timeout_s`` are lost and
        counted in ``stats["events_queued"]``. Returns within about ``timeout_s`` + 1 s, broker
        or not. Idempotent."""
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe.clear()
        if not self._started:
            return
        self._started = False
        self._flush_state(force=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.queued_events:  # (re)connecting included
            time.sleep(0.02)
        if self._stats["connected"]:
            # QoS 0: a full event queue must not keep "offline" out (the will is not sent after
            # a clean disconnect).
            info = self._client.publish(self.topics.availability, "offline", qos=0, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        # paho's thread may be in a reconnect wait (1 s steps) or a TCP connect to a host that
        # does not answer (connect_timeout, 5 s): do not let that hold up the daemon's stop.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(1.0)
        with self._lock:
            self._stats["connected"] = False

    @property
    def queued_events(self) -> int:
        """Events handed to paho and not yet acknowledged by the broker."""
        with self._lock:
            return sum(1 for ev in self._tracked.values() if ev)

    @property
    def stats(self) -> dict[str, Any]:
        """A copy of the counters for the status file: ``broker``, ``device_id``,
        ``connected``, ``connects``, ``disconnects``, ``last_error``, ``states_published``,
        ``events_published`` (handed to paho), ``events_delivered`` (acknowledged by the
        broker), ``events_queued``, ``events_dropped`` (queue full), ``commands``,
        ``bad_commands`` (refused), ``command_errors`` (the callback raised)."""
        with self._lock:
            out = dict(self._stats)
            out["events_queued"] = sum(1 for ev in self._tracked.values() if ev)
        return out

    # ------------------------------------------------------------------ bus subscribers

    def on_update(self, update: Any) -> None:
        """A ``fusion.FusedUpdate``: remember the state; publish it when it changed and the last
        state went out at least ``1 / state_max_hz`` seconds ago. A change that comes sooner is
        sent by the first update after the interval (or by :meth:`close`)."""
        state = state_payload(update, time.time())
        key = state_key(state)
        with self._lock:
            if key != self._state_k:
                self._state_k = key
                self._state = state
                self._state_dirty = True
        self._flush_state()

    def on_transition(self, tr: Any) -> None:
        """An ``events.Transition`` → ``<base>/event/transition``, QoS 1."""
        self._publish_event(self.topics.transition, transition_payload(tr, time.time()))

    def on_reply(self, reply: Any) -> None:
        """An ``events.Reply`` → ``<base>/event/reply``, QoS 1 (text only when configured)."""
        self._publish_event(self.topics.reply, reply_payload(reply, time.time(),
                                                             self.cfg.publish_reply_text))

    # ------------------------------------------------------------------ publishing

    def _flush_state(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._state_dirty or self._state is None:
                return
            if not force and now - self._state_sent_at < self._min_interval_s:
                return
            self._state_dirty = False
            self._state_sent_at = now
            payload = json.dumps(self._state)
        self._publish(self.topics.state, payload, qos=0, retain=True)
        with self._lock:
            self._stats["states_published"] += 1

    def _publish_event(self, topic: str, payload: dict) -> None:
        info = self._publish(topic, json.dumps(payload), qos=1, retain=False, event=True)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            with self._lock:
                self._stats["events_dropped"] += 1
                n = self._stats["events_dropped"]
            if n == 1 or n % 100 == 0:
                log.warning("mqtt: %d event(s) dropped so far: the queue of %d is full while "
                            "the broker %s:%d is away ([mqtt] queue_size)", n,
                            self.cfg.queue_size, self.cfg.host, self.cfg.port)

    def _publish(self, topic: str, payload: str, qos: int, retain: bool,
                 event: bool = False) -> "paho.MQTTMessageInfo":
        # Never called with self._lock held: paho calls on_publish holding its own mutex, which
        # publish() takes too.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            return info
        if qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS:
            return info  # not connected: a QoS 0 message is simply not sent
        with self._lock:
            if event:
                self._stats["events_published"] += 1
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
                if event:
                    self._stats["events_delivered"] += 1
            else:
                self._tracked[info.mid] = event
        return info

    # ------------------------------------------------------------------ paho callbacks
    # (paho's network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            with self._lock:
                self._stats["last_error"] = f"broker refused the connection: {reason_code}"
            log.error("mqtt: broker %s:%d refused the connection: %s (check [mqtt] username and "
                      "the password credential)", self.cfg.host, self.cfg.port, reason_code)
            return
        with self._lock:
            self._stats["connected"] = True
            self._stats["connects"] += 1
            self._stats["last_error"] = None
            self._failing = False
        log.info("mqtt: connected to %s:%d as %s", self.cfg.host, self.cfg.port, self.device_id)
        client.subscribe([(self.topics.command_filter, 1), (self.topics.ha_status, 1)])
        self._announce()

    def _announce(self) -> None:
        """Discovery configs, ``online`` and the latest state (all retained)."""
        if self.cfg.discovery:
            for topic, config in self._discovery:
                self._publish(topic, json.dumps(config), qos=0, retain=True)
        self._publish(self.topics.availability, "online", qos=0, retain=True)
        with self._lock:
            self._state_dirty = self._state is not None
        self._flush_state(force=True)

    def _on_connect_fail(self, client, userdata) -> None:
        with self._lock:
            first = not self._failing
            self._failing = True
            self._stats["last_error"] = f"cannot connect to {self.cfg.host}:{self.cfg.port}"
        if first:
            log.warning("mqtt: cannot connect to %s:%d; retrying with backoff up to %d s "
                        "(`redsg-edge check` names the cause)", self.cfg.host, self.cfg.port,
                        self.cfg.reconnect_max_s)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self._stats["connected"]
            self._stats["connected"] = False
            if was:
                self._stats["disconnects"] += 1
            # QoS 0 messages not yet written are gone with the connection; events stay queued.
            self._tracked = {m: ev for m, ev in self._tracked.items() if ev}
            self._acked_early.clear()
        if was and self._started:
            log.warning("mqtt: lost the broker %s:%d (%s); reconnecting", self.cfg.host,
                        self.cfg.port, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            ev = self._tracked.pop(mid, None)
            if ev is None:
                self._acked_early.add(mid)
            elif ev:
                self._stats["events_delivered"] += 1

    def _on_ha_status(self, client, userdata, msg) -> None:
        # Home Assistant's birth message: it restarted, so send discovery and state again.
        if msg.payload == b"online":
            self._announce()

    def _on_command_message(self, client, userdata, msg) -> None:
        name = msg.topic[len(self.topics.command_prefix):]
        try:
            if msg.retain:
                raise CommandError(f"{name}: a retained command is ignored (it would run again "
                                   f"on every connect); publish it without retain")
            name, arg = parse_command(name, msg.payload)
        except CommandError as exc:
            with self._lock:
                self._stats["bad_commands"] += 1
            log.warning("mqtt: command on %s refused: %s", msg.topic, exc)
            return
        with self._lock:
            self._stats["commands"] += 1
        log.info("mqtt: command %s%s", name, f" ({len(arg)} characters)" if name == "say"
                 else f" {arg}" if arg else "")
        if self._on_command is None:
            return
        try:
            self._on_command(name, arg)
        except Exception:  # noqa: BLE001 - a bad command handler must not stop the MQTT loop
            with self._lock:
                self._stats["command_errors"] += 1
            log.exception("mqtt: the %s command handler failed", name)


def probe_broker(cfg: MqttConfig, timeout_s: float = 5.0,
                 environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Connect to the broker once (TLS and credentials as configured), wait for its answer,
    disconnect. Returns ``(ok, detail)``: ``"host:port: connected (TLS, user alice)"`` or why
    not (refused, not authorised, TLS failure, no answer within ``timeout_s`` seconds).
    Raises ConfigError for an unreadable password or CA file. Publishes nothing."""
    where = f"{cfg.host}:{cfg.port}"
    pw = read_password(cfg, environ)
    c = _client(cfg, f"redsg-edge-check-{os.getpid()}", pw)
    c.connect_timeout = timeout_s
    answer: list = []
    c.on_connect = lambda client, u, f, rc, p: answer.append(rc)
    try:
        c.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout_s) + 1))
    except OSError as exc:  # refused, unresolvable, TLS handshake (ssl.SSLError), timeout
        return False, f"{where}: cannot connect: {exc}"
    deadline = time.monotonic() + timeout_s
    try:
        while not answer and time.monotonic() < deadline:
            if c.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS:
                break
    finally:
        c.disconnect()
    how = ", ".join(x for x in ("TLS" if cfg.tls else "",
                                f"user {cfg.username}" if cfg.username else "") if x)
    if not answer:
        return False, f"{where}: no MQTT answer within {timeout_s:g} s (is it an MQTT broker?)"
    if answer[0].is_failure:
        return False, f"{where}: broker refused the connection: {answer[0]}" + \
            (" (check mqtt.username and the password)" if cfg.username else "")
    return True, f"{where}: connected" + (f" ({how})" if how else "")


def route_commands(*, say: Callable[[str], None], mute: Callable[[float], None],
                   reload: Callable[[], None] | None = None) -> OnCommand:
    """An ``on_command`` for :func:`start_mqtt` that routes validated commands: ``say`` →
    ``say(text)``; ``mute`` → ``mute(seconds)`` (float, 0 = unmute now); ``reload`` →
    ``reload()``, by default SIGHUP to this process, so the daemon's main thread reloads
    config.toml exactly as for ``systemctl reload``. Each runs in paho's network thread: they
    must only queue or set a flag."""
    def send_sighup() -> None:
        os.kill(os.getpid(), signal.SIGHUP)

    do_reload = reload or send_sighup

    def on_command(name: str, arg: str) -> None:
        if name == "say":
            say(arg)
        elif name == "mute":
            mute(60.0 * float(arg))
        elif name == "reload":
            do_reload()
        else:  # parse_command lets only COMMANDS through
            raise ValueError(f"unrouted command {name!r}")
    return on_command


def start_mqtt(cfg: Config, bus: Any, on_command: OnCommand | None) -> MqttPublisher | None:
    """The daemon's entry point: None when ``[mqtt] enabled = false``, else a started
    :class:`MqttPublisher` attached to ``bus``. Raises ConfigError (exit 78) for an unusable
    password or CA file; an unreachable broker is not an error (it reconnects with backoff).
    Call ``.close()`` at shutdown and put ``.stats`` in the status file."""
    if not cfg.mqtt.enabled:
        return None
    return MqttPublisher(cfg.mqtt, on_command).attach(bus)
