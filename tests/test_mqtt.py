"""The MQTT publisher against a real Mosquitto broker (Debian package ``mosquitto``), started on
127.0.0.1 and a free port for each test and stopped after: Home Assistant discovery, retained
state, one event per transition of the Pexels replay, a broker outage (every queued transition
delivered after the restart, or counted as dropped when the queue overflows), commands, and the
last will when the publishing process is killed."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

paho = pytest.importorskip("paho.mqtt.client", reason="pip install 'redsg-edge[mqtt]'")

from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.config import ConfigError, parse_config  # noqa: E402
from redsg_edge.events import EventBus, Reply, Transition  # noqa: E402
from redsg_edge.modalities import MODALITIES  # noqa: E402
from redsg_edge.mqtt import (MqttPublisher, probe_broker, read_password,  # noqa: E402
                             route_commands, start_mqtt)
from redsg_edge.mqtt_payloads import CommandError, parse_command  # noqa: E402

from .conftest import PEXELS, REPO, make_config  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.access(p, os.X_OK)), None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None,
                                  reason="mosquitto not installed (apt-get install mosquitto)")

# ------------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process on 127.0.0.1:``port`` with its own config and persistence folder
    under ``root``; :meth:`kill` (SIGKILL) and :meth:`start` again keep the port."""

    def __init__(self, root: Path, extra: str = "", anonymous: bool = True) -> None:
        self.root = root
        self.port = _free_port()
        (root / "db").mkdir(parents=True, exist_ok=True)
        self.conf = root / "mosquitto.conf"
        # Persistence with a save after every change: a subscriber's session (and the QoS 1
        # messages queued for it) survives a SIGKILL, as it would on a broker with a disk.
        # user: Mosquitto started by root drops to the user "mosquitto", which cannot write here.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n"
                             f"allow_anonymous {'true' if anonymous else 'false'}\n"
                             f"user {getpass.getuser()}\n"
                             f"persistence true\npersistence_location {root / 'db'}/\n"
                             f"autosave_on_changes true\nautosave_interval 1\n{extra}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.root / 'mosquitto.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not open its port within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Listener:
    """A test client subscribed to ``topic_filter`` (QoS 1) that records every message as
    ``(topic, payload str, retain)``; resubscribes after a reconnect."""

    def __init__(self, port: int, topic_filter: str = "#", client_id: str | None = None,
                 clean: bool = True) -> None:
        self.msgs: list[tuple[str, str, bool]] = []
        self.arrivals: list[tuple[str, float]] = []  # (topic, monotonic s)
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.filter = topic_filter
        c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                        client_id=client_id or f"listener-{uuid.uuid4().hex[:8]}",
                        clean_session=clean)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(self.filter, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 1)
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        assert self.subscribed.wait(10), "the test client did not get its subscription"
        self.client = c

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.msgs.append((msg.topic, msg.payload.decode("utf-8"), bool(msg.retain)))
            self.arrivals.append((msg.topic, time.monotonic()))
            self.cond.notify_all()

    def on(self, topic: str) -> list[tuple[str, bool]]:
        with self.cond:
            return [(p, r) for t, p, r in self.msgs if t == topic]

    def wait(self, pred, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _mqtt_cfg(port: int, **kw):
    return parse_config({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": port,
                                  "device_id": "test-dev", "reconnect_max_s": 1, **kw}},
                        "<test>").mqtt


def _wait(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _replay_pexels(bus: EventBus, before_transition=None) -> list[dict]:
    """Replay the Pexels clip (real detector, FER, fusion) with its events on ``bus``; returns
    the replay's records. ``before_transition(tr)`` runs before each transition is published
    (the update that carries it comes first on the bus)."""
    from redsg_edge.replay import replay

    if before_transition is not None:
        def hook(upd):
            if upd.transition is not None:
                before_transition(upd.transition)
        bus.subscribe(hook, types=("update",), name="test.before_transition")
    return replay(make_config(), PEXELS, use_video_audio=False, bus=bus)


# ------------------------------------------------------------------------------- pure parts


def test_commands_are_validated_with_messages_that_name_the_fix():
    assert parse_command("say", "  Hello there.\n".encode()) == ("say", "Hello there.")
    assert parse_command("mute", b"30.0") == ("mute", "30")
    assert parse_command("mute", b"0") == ("mute", "0")
    assert parse_command("reload", b"reload") == ("reload", "")
    for name, payload, words in [("say", b"   ", "empty"), ("say", b"x" * 256, "at most 255"),
                                 ("say", b"hi\x07", "control"), ("say", b"\xff\xfe", "UTF-8"),
                                 ("mute", b"soon", "not a number"), ("mute", b"-1", "outside"),
                                 ("mute", b"nan", "outside"), ("mute", b"1441", "outside"),
                                 ("shutdown", b"", "say, mute, reload")]:
        with pytest.raises(CommandError, match=words):
            parse_command(name, payload)


def test_commands_route_to_say_mute_and_the_sighup_reload():
    got = []
    route = route_commands(say=lambda text: got.append(("say", text)),
                           mute=lambda s: got.append(("mute", s)))
    hups = []
    old = signal.signal(signal.SIGHUP, lambda *a: hups.append(1))
    try:
        route("say", "Hi.")
        route("mute", "15")
        route("mute", "0")
        route("reload", "")
        assert _wait(lambda: hups == [1], 2)  # the daemon's own reload path
    finally:
        signal.signal(signal.SIGHUP, old)
    assert got == [("say", "Hi."), ("mute", 900.0), ("mute", 0.0)]
    with pytest.raises(ValueError, match="unrouted"):
        route("dance", "")


def test_mqtt_config_is_off_by_default_and_strict():
    assert make_config().mqtt.enabled is False
    assert start_mqtt(make_config(), EventBus(), None) is None
    for bad, words in [({"topic_prefix": "a/+/b"}, "not a topic prefix"),
                       ({"device_id": "kitchen 1"}, "not a device id"),
                       ({"ca_file": "ca.pem"}, "tls = false"),
                       ({"password_file": "pw"}, "username is not"),
                       ({"port": 70000}, "mqtt.port"), ({"queue_size": 0}, "mqtt.queue_size"),
                       ({"reconnect_min_s": 9, "reconnect_max_s": 2}, "must not exceed"),
                       ({"state_max_hz": "2"}, "mqtt.state_max_hz")]:
        with pytest.raises(ConfigError, match=words):
            parse_config({"mqtt": bad}, "<test>")


def test_the_password_comes_from_the_credential_then_the_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = _mqtt_cfg(1883, username="dev", password_file=str(pw))
    assert read_password(cfg, environ={}) == "s3cret"
    cred = tmp_path / "cred"
    cred.mkdir()
    (cred / "mqtt_password").write_text("from-systemd")
    assert read_password(cfg, environ={"CREDENTIALS_DIRECTORY": str(cred)}) == "from-systemd"
    missing = _mqtt_cfg(1883, username="dev", password_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="mqtt.password_file: cannot read"):
        read_password(missing, environ={})
    pw.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        read_password(cfg, environ={})


def test_close_is_bounded_and_reports_what_was_left_when_no_broker_answers():
    port = _free_port()  # nothing listens there
    bus = EventBus()
    pub = MqttPublisher(_mqtt_cfg(port)).attach(bus)
    bus.publish(_transition(0))
    bus.publish(_transition(1))
    assert _wait(lambda: pub.stats["last_error"] is not None, 5)
    t0 = time.monotonic()
    pub.close(timeout_s=0.3)
    assert time.monotonic() - t0 < 0.3 + 1.5
    stats = pub.stats
    assert stats["last_error"] == f"cannot connect to 127.0.0.1:{port}"
    assert (stats["connected"], stats["connects"], stats["events_published"],
            stats["events_queued"], stats["events_delivered"]) == (False, 0, 2, 2, 0)


# ------------------------------------------------------------------------------- broker


@needs_broker
def test_discovery_state_and_one_event_per_transition_of_the_pexels_replay(broker):
    cfg = _mqtt_cfg(broker.port)
    listener = Listener(broker.port)
    bus = EventBus()
    pub = MqttPublisher(cfg).attach(bus)
    # When the publisher hands each state to paho: the rate limit is a property of the sender,
    # and the broker's delivery jitter (up to ~60 ms under CI load) would blur it at arrival.
    state_sent, publish = [], pub._publish

    def timed_publish(topic, payload, **kw):
        if topic == pub.topics.state:
            state_sent.append(time.monotonic())
        return publish(topic, payload, **kw)
    pub._publish = timed_publish
    try:
        assert _wait(lambda: pub.stats["connected"]), pub.stats
        t = pub.topics
        assert listener.wait(lambda: listener.on(t.availability) == [("online", False)])
        recs = _replay_pexels(bus)
        expected = [(r["from"], r["to"]) for r in recs if r["type"] == "transition"]
        assert len(expected) >= 2  # the clip's changes (neutral → sad → fear → happy)
        assert listener.wait(lambda: len(listener.on(t.transition)) >= len(expected))
        pub.close()
        assert listener.wait(lambda: listener.on(t.availability)[-1:] == [("offline", False)])
    finally:
        pub.close()
    got = [json.loads(p) for p, _r in listener.on(t.transition)]
    assert [(g["from"], g["to"]) for g in got] == expected  # one event per transition, in order
    assert all(g["event_type"] == g["to"] and g["event_type"] in CLASSES for g in got)
    assert got[-1]["person_present"] is True
    states = [json.loads(p) for p, _r in listener.on(t.state)]
    assert len(states) >= 2
    arrived = [a for tp, a in listener.arrivals if tp == t.state]
    assert len(state_sent) == pub.stats["states_published"] <= len(arrived)  # all delivered
    gaps = [b - a for a, b in zip(state_sent, state_sent[1:-1])]
    assert all(g >= 0.5 - 0.01 for g in gaps), gaps  # at most 2 Hz (close() sends the last)
    assert states[-1]["emotion"] == expected[-1][1]
    assert pub.stats["events_delivered"] == len(expected) and pub.stats["events_dropped"] == 0
    listener.close()

    # A client that connects afterwards gets what is retained: discovery, state, availability.
    late = Listener(broker.port)
    try:
        assert late.wait(lambda: len(late.on(t.state)) == 1 and late.on(t.availability)
                         and sum(1 for tp, _p, _r in late.msgs if tp.startswith("homeassistant/"))
                         == 8)
        state, retained = late.on(t.state)[0]
        assert retained
        state = json.loads(state)
        assert state["emotion"] == expected[-1][1]
        assert state["person_present"] is True
        assert set(state["modalities"]) == set(MODALITIES)
        assert state["modalities"]["face"]["top"] in CLASSES
        assert 0 < state["confidence"] <= 1
        assert late.on(t.availability) == [("offline", True)]
        configs = {tp: json.loads(p) for tp, p, r in late.msgs
                   if tp.startswith("homeassistant/") and r}
    finally:
        late.close()
    assert set(configs) == {f"homeassistant/{c}/test-dev/{o}/config" for c, o in [
        ("sensor", "emotion"), ("sensor", "confidence"), ("binary_sensor", "person"),
        ("event", "transition"), ("event", "reply"), ("text", "say"), ("number", "mute"),
        ("button", "reload")]}
    for conf in configs.values():  # what Home Assistant needs to build the entities
        assert conf["unique_id"].startswith("redsg_edge_test-dev_")
        assert conf["availability_topic"] == t.availability
        assert conf["device"]["identifiers"] == ["redsg_edge_test-dev"]
        assert ("state_topic" in conf) != ("command_topic" in conf)
    emotion = configs["homeassistant/sensor/test-dev/emotion/config"]
    assert emotion["state_topic"] == t.state and emotion["options"] == list(CLASSES)
    assert emotion["value_template"] == "{{ value_json.emotion }}"
    assert configs["homeassistant/event/test-dev/transition/config"]["event_types"] == \
        list(CLASSES)
    assert configs["homeassistant/binary_sensor/test-dev/person/config"]["device_class"] == \
        "occupancy"
    assert configs["homeassistant/text/test-dev/say/config"]["command_topic"] == \
        "redsg-edge/test-dev/cmd/say"


def _transition(i: int) -> Transition:
    a, b = CLASSES[i % 7], CLASSES[(i + 1) % 7]
    return Transition(t=float(i), from_emotion=a, to_emotion=b, confidence=0.7,
                      previous_duration_s=1.0,
                      evidence={"face": {"probs": {b: 0.7, a: 0.3}, "age_s": 0.0, "weight": 1.0}})


@needs_broker
@pytest.mark.parametrize("queue_size", [100, 1])
def test_broker_outage_delivers_every_queued_transition_or_counts_it_dropped(broker, queue_size):
    # The test's subscriber has a persistent session (clean_session=False) that the broker saves
    # to disk, so it is subscribed again the moment the broker is back, before the publisher.
    listener = Listener(broker.port, "redsg-edge/test-dev/event/#", client_id="outage-listener",
                        clean=False)
    assert _wait(lambda: (broker.root / "db" / "mosquitto.db").is_file())
    bus = EventBus()
    pub = MqttPublisher(_mqtt_cfg(broker.port, queue_size=queue_size)).attach(bus)
    try:
        assert _wait(lambda: pub.stats["connected"]), pub.stats
        listener.client.loop_stop()  # the listener is away too: its messages wait in its session
        listener.client.disconnect()

        killed = []

        def kill_at_first(tr):  # the broker dies mid-run, just before the first transition
            if not killed:
                broker.kill()
                killed.append(tr)

        recs = _replay_pexels(bus, before_transition=kill_at_first)
        n = sum(1 for r in recs if r["type"] == "transition")
        for i in range(5):  # more transitions during the outage
            bus.publish(_transition(i))
        n += 5
        assert not pub.stats["connected"]
        stats = pub.stats
        assert stats["events_dropped"] == (0 if queue_size >= n else n - queue_size)
        assert stats["events_published"] + stats["events_dropped"] == n

        broker.start()  # same port
        assert _wait(lambda: pub.stats["connected"], 15), pub.stats
        assert _wait(lambda: pub.queued_events == 0, 10), pub.stats
        listener = Listener(broker.port, "redsg-edge/test-dev/event/#",
                            client_id="outage-listener", clean=False)
        kept = n - stats["events_dropped"]
        topic = pub.topics.transition
        assert listener.wait(lambda: len(listener.on(topic)) >= kept, 10)
        time.sleep(0.3)  # nothing more arrives
        got = [json.loads(p) for p, _r in listener.on(topic)]
        assert len(got) == kept  # each queued transition exactly once
        assert got[0]["t"] == pytest.approx(killed[0].t, abs=1e-3)  # the oldest ones kept
        assert pub.stats["events_delivered"] == kept
        assert pub.stats["disconnects"] == 1 and pub.stats["connects"] == 2
    finally:
        pub.close()
        listener.close()


@needs_broker
def test_reply_events_carry_text_only_when_configured(broker):
    tr = _transition(3)
    reply = Reply(transition=tr, source="offline", cause="chat_disabled", text="I'm here.",
                  sentences=1, audio_s=1.2, latency_s={"first_pcm": 0.31, "first_sample": None})
    listener = Listener(broker.port, "redsg-edge/+/event/reply")
    try:
        for dev, with_text in (("quiet", False), ("chatty", True)):
            bus = EventBus()
            pub = MqttPublisher(_mqtt_cfg(broker.port, device_id=dev,
                                          publish_reply_text=with_text)).attach(bus)
            bus.publish(reply)
            pub.close()
        assert listener.wait(lambda: len(listener.msgs) == 2)
    finally:
        listener.close()
    quiet = json.loads(listener.on("redsg-edge/quiet/event/reply")[0][0])
    chatty = json.loads(listener.on("redsg-edge/chatty/event/reply")[0][0])
    assert "text" not in quiet and chatty["text"] == "I'm here."
    assert quiet["event_type"] == "offline" and quiet["first_audio_s"] == 0.31
    assert quiet["to"] == tr.to_emotion and quiet["latency_s"]["first_pcm"] == 0.31


@needs_broker
def test_a_say_command_is_spoken_into_the_wav_sink_and_bad_ones_never_stop_the_loop(
        broker, tmp_path):
    from redsg_edge.voice import Voice, WavSink

    voice = Voice()
    sink = WavSink(tmp_path / "replies")
    spoken = threading.Event()
    calls = []

    def on_command(name, arg):  # what the daemon's reply worker does with a say (issue 19)
        calls.append((name, arg))
        if name == "mute":
            raise RuntimeError("a handler bug")
        if name == "say":
            for pcm, rate in voice.synthesize(arg):
                sink.write(pcm, rate)
            sink.drain()
            spoken.set()

    base = "redsg-edge/test-dev/cmd/"
    c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    # A retained command left on the broker would run again on every connect: refused.
    c.publish(base + "say", b"Old news.", qos=1, retain=True).wait_for_publish(5)
    pub = MqttPublisher(_mqtt_cfg(broker.port), on_command).attach(EventBus())
    try:
        assert _wait(lambda: pub.stats["bad_commands"] == 1), pub.stats
        c.publish(base + "say", b"", qos=1, retain=True).wait_for_publish(5)  # clear it
        for topic, payload in [(base + "dance", b"now"), (base + "say", b""),
                               (base + "mute", b"forever"), (base + "mute", b"15"),
                               (base + "say", b"Hello from Home Assistant.")]:
            c.publish(topic, payload, qos=1).wait_for_publish(5)
        assert spoken.wait(60)
    finally:
        c.disconnect()
        c.loop_stop()
        pub.close()
    assert calls == [("mute", "15"), ("say", "Hello from Home Assistant.")]
    stats = pub.stats
    # refused: the retained one, the empty message that clears it, dance, "", forever
    assert stats["bad_commands"] == 5 and stats["commands"] == 2 and stats["command_errors"] == 1
    import soundfile as sf
    info = sf.info(str(sink.paths[0]))
    assert 1.0 < info.duration < 5.0 and info.samplerate == voice.sample_rate


_CHILD = """
import sys, time
from redsg_edge.config import parse_config
from redsg_edge.events import EventBus
from redsg_edge.mqtt import MqttPublisher
cfg = parse_config({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": int(sys.argv[1]),
                             "device_id": "doomed"}}).mqtt
pub = MqttPublisher(cfg).attach(EventBus())
while not pub.stats["connected"]:
    time.sleep(0.02)
print("connected", flush=True)
time.sleep(120)
"""


@needs_broker
def test_availability_goes_offline_through_the_last_will_when_the_process_is_killed(broker):
    listener = Listener(broker.port, "redsg-edge/doomed/availability")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(broker.port)],
                             stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"connected"
        assert listener.wait(lambda: listener.on("redsg-edge/doomed/availability")
                             == [("online", False)])
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert listener.wait(lambda: len(listener.on("redsg-edge/doomed/availability")) == 2)
        assert listener.on("redsg-edge/doomed/availability")[-1] == ("offline", False)
    finally:
        if child.poll() is None:
            child.kill()
        listener.close()


@needs_broker
def test_probe_reports_a_reachable_broker_and_a_missing_one(broker):
    ok, detail = probe_broker(_mqtt_cfg(broker.port), timeout_s=3)
    assert ok and detail == f"127.0.0.1:{broker.port}: connected"
    port = broker.port
    broker.kill()
    ok, detail = probe_broker(_mqtt_cfg(port), timeout_s=3)
    assert not ok and detail.startswith(f"127.0.0.1:{port}: cannot connect:")


def _tls_files(d: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 made with the openssl CLI."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=redsg-edge test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


@needs_broker
@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None,
                    reason="openssl or mosquitto_passwd missing "
                           "(apt-get install openssl mosquitto)")
def test_tls_and_a_password_from_the_credential_file(tmp_path):
    tls = _tls_files(tmp_path / "tls")
    users = tmp_path / "users"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(users), "kiosk", "right horse"],
                   check=True, capture_output=True)
    b = Broker(tmp_path / "broker", anonymous=False,
               extra=f"cafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n"
                     f"password_file {users}\n")
    b.start()
    try:
        pw = tmp_path / "mqtt_password"
        pw.write_text("right horse\n")
        cfg = _mqtt_cfg(b.port, tls=True, ca_file=str(tls["ca"]), username="kiosk",
                        password_file=str(pw))
        ok, detail = probe_broker(cfg, timeout_s=5)
        assert ok and detail == f"127.0.0.1:{b.port}: connected (TLS, user kiosk)"
        pub = MqttPublisher(cfg).attach(EventBus())
        try:
            assert _wait(lambda: pub.stats["connected"]), pub.stats
        finally:
            pub.close()

        pw.write_text("wrong horse\n")
        ok, detail = probe_broker(cfg, timeout_s=5)
        assert not ok and "refused" in detail and "Not authorized" in detail
        plain = _mqtt_cfg(b.port, username="kiosk", password_file=str(pw))
        ok, detail = probe_broker(plain, timeout_s=3)
        assert not ok  # a plain client on the TLS port gets no MQTT answer
        other_ca = _tls_files(tmp_path / "other")["ca"]
        ok, detail = probe_broker(_mqtt_cfg(b.port, tls=True, ca_file=str(other_ca)), 5)
        assert not ok and "CERTIFICATE_VERIFY_FAILED" in detail
    finally:
        b.stop()


@needs_broker
def test_check_reports_the_broker(broker, tmp_path, capsys):
    from redsg_edge.check import check_main

    from .conftest import write_config

    base = '[reply]\nenabled = false\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\n'
    p = write_config(tmp_path / "config.toml", base + f"port = {broker.port}\n")
    assert check_main(p, devices=False) == 0
    out = capsys.readouterr().out
    assert f"✔ MQTT broker: 127.0.0.1:{broker.port}: connected" in out.splitlines()

    p = write_config(tmp_path / "config.toml", base + f"port = {_free_port()}\n")
    assert check_main(p, devices=False) == 0  # the daemon would run and retry
    out = capsys.readouterr().out
    assert any(x.startswith("! MQTT broker: 127.0.0.1:") and "cannot connect" in x
               and "keeps retrying" in x for x in out.splitlines()), out

    p = write_config(tmp_path / "config.toml", base + f'port = {broker.port}\n'
                     f'username = "kiosk"\npassword_file = "{tmp_path / "nope"}"\n')
    assert check_main(p, devices=False) == 78
    out = capsys.readouterr().out
    assert any(x.startswith("✘ MQTT broker: mqtt.password_file: cannot read") for x in
               out.splitlines()), out
