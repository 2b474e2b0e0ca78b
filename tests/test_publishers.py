"""The daemon with its publishers on: the real `redsg-edge run` (Pexels clip as the camera, a
loopback chat server, Piper into WAV files) publishing to a real Mosquitto on 127.0.0.1 and
serving the tuning page. The MQTT and page details are tested in test_mqtt.py and
test_web.py; here: that the daemon wires them, that a `say` command reaches the real reply
worker and is spoken, and that killing the daemon turns the device offline (last will)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request


from redsg_edge.bench.chat_server import ChatServer

from .test_mqtt import Listener, _free_port, broker  # noqa: F401 - broker is a fixture
from .test_wiring import Daemon, _ready, config_text
from .conftest import PEXELS

BASE = "redsg-edge/kitchen-1"


def test_the_daemon_publishes_to_mqtt_serves_the_page_and_speaks_a_say_command(tmp_path, broker):
    web_port = _free_port()
    with ChatServer(reply="I am here with you.") as chat:
        text = config_text(tmp_path, camera=PEXELS, microphone=tmp_path / "no-mic.wav",
                           chat_url=chat.base_url, reply="cooldown_s = 600.0")
        text += (f'\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
                 f'device_id = "kitchen-1"\nreconnect_max_s = 1\n'
                 f'\n[web]\nenabled = true\nport = {web_port}\n')
        listener = Listener(broker.port)
        d = Daemon(tmp_path, text)
        try:
            _ready(d)
            assert listener.wait(lambda: any(p == "online" for p, _r in
                                             listener.on(f"{BASE}/availability")), 20), d.log_tail()
            assert listener.wait(lambda: listener.on(f"{BASE}/event/transition"), 30), d.log_tail()
            tr = json.loads(listener.on(f"{BASE}/event/transition")[0][0])
            logged = d.wait_events("transition", 1, 10)[0]
            assert tr["event_type"] == logged["to"]
            assert any(t.startswith("homeassistant/sensor/kitchen-1/") for t, _p, _r in
                       listener.msgs)  # discovery (retained; live delivery clears the flag)
            d.wait_events("reply", 1, 60)  # the transition's reply is done: the worker is free
            wavs = set((tmp_path / "replies").glob("*.wav"))
            listener.client.publish(f"{BASE}/cmd/say", "The kettle has boiled.", qos=1)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and set((tmp_path / "replies").glob("*.wav")) == wavs:
                time.sleep(0.1)
            new = set((tmp_path / "replies").glob("*.wav")) - wavs
            assert new, "the say command was not spoken:\n" + d.log_tail()
            page = urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=5).read()
            assert b"<canvas" in page or b"<html" in page.lower()
            # The status file is rewritten every service.status_interval_s (0.5 s): the
            # transition, its reply and the say command can all come between two writes.
            deadline = time.monotonic() + 5
            st = d.status()
            while time.monotonic() < deadline and (
                    st["publishers"]["mqtt"]["events_published"] < 1
                    or st["publishers"]["mqtt"]["commands"] < 1):
                time.sleep(0.1)
                st = d.status()
            assert st["publishers"]["mqtt"]["connected"] is True
            assert st["publishers"]["mqtt"]["events_published"] >= 1, st["publishers"]
            assert st["publishers"]["mqtt"]["commands"] >= 1, st["publishers"]
            assert st["publishers"]["web"] is not None
            d.proc.send_signal(signal.SIGKILL)  # no goodbye: only the last will can tell
            d.proc.wait(10)
            assert listener.wait(lambda: listener.on(f"{BASE}/availability")[-1][0] == "offline",
                                 20), listener.on(f"{BASE}/availability")
        finally:
            d.close()
            listener.close()
