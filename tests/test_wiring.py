"""The daemon's wiring, end to end: ``redsg-edge run`` as a subprocess on real media.

Every check is on an outcome a user or systemd sees: the NOTIFY_SOCKET stream, the status file,
the event log, the WAV files the voice writes and the requests at a loopback chat server; never
on log lines. Two long-lived daemons, each in degraded mode (one device missing):

- ``face_daemon``: the Pexels clip as the camera, its first frame 3 s late; the microphone file
  is missing (face-only). A loopback chat server answers; the voice writes WAV files.
- ``voice_daemon``: a RAVDESS utterance (angry) as the microphone, its first block 3 s late;
  the camera file is missing (voice-only). The chat server's reply is long, so the device
  speaks for several seconds.

The late first frame / audio block let the tests see on the notify stream itself that READY=1
waits for them. Media with a late start are remuxed from the shared clips into the test's
temporary directory with PyAV (timestamps shifted, samples and frames unchanged).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from redsg_edge.bench.chat_server import ChatServer
from redsg_edge.bench.notify import NotifyListener

from .conftest import DETECTOR, FER_MODEL, PEXELS, SER_MODEL, model_sections

REPO = Path(__file__).resolve().parent.parent
UTTERANCE = PEXELS.parent.parent / "ravdess" / "Actor_24" / "03-01-05-01-01-01-24.flac"  # angry
LATE_S = 3.0  # first frame / first audio block this long after the capture starts
START_TIMEOUT = 180.0  # model and voice loading on a busy 2-core box
WAITING = "STATUS=waiting for the first frame and audio block"
SHORT_REPLY = "I can see that change. I am right here with you."
LONG_REPLY = ("I can hear that you are upset, and that is completely fine. Take a slow breath "
              "with me, in through the nose and out through the mouth. We can sit here quietly "
              "for a while, there is no hurry at all. When you feel ready, you can tell me what "
              "happened, or we can simply wait together until it passes.")

pytestmark = pytest.mark.skipif(
    not (PEXELS.is_file() and UTTERANCE.is_file() and DETECTOR.is_file()),
    reason="../shared clips, RAVDESS or the detector model missing")


# --------------------------------------------------------------------------------- media

def late_video(src: Path, dst: Path, late_s: float) -> Path:
    """``src``'s video stream remuxed into Matroska with every timestamp ``late_s`` later."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="matroska") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        shift = int(round(late_s / ist.time_base))
        for pkt in inp.demux(ist):
            if pkt.dts is None:
                continue
            pkt.pts = None if pkt.pts is None else pkt.pts + shift
            pkt.dts += shift
            pkt.stream = ost
            out.mux(pkt)
    return dst


def late_audio(src: Path, dst: Path, late_s: float, rate: int = 16000) -> Path:
    """``src``'s samples as 16 kHz PCM in Matroska, the first sample at ``late_s``."""
    import av

    pcm, sr = sf.read(src, dtype="int16")
    assert sr == rate
    with av.open(str(dst), "w", format="matroska") as out:
        st = out.add_stream("pcm_s16le", rate=rate)
        st.layout = "mono"
        t0, n = int(round(late_s * rate)), 1600
        for k in range(0, len(pcm), n):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[k:k + n])[None, :],
                                            format="s16", layout="mono")
            fr.sample_rate, fr.pts, fr.time_base = rate, t0 + k, Fraction(1, rate)
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return dst


# -------------------------------------------------------------------------------- daemon

def config_text(work: Path, *, camera: Path, microphone: Path, chat_url: str,
                fusion: str = "", reply: str = "", models: tuple[Path, Path] | None = None) -> str:
    fer, ser = models or (FER_MODEL, SER_MODEL)
    return f"""
[camera]
source = "file"
file = "{camera}"

[microphone]
source = "file"
file = "{microphone}"

{model_sections(fer, ser)}
[fusion]
{fusion}

[reply]
enabled = true
{reply}

[reply.chat]
enabled = true
base_url = "{chat_url}"
model = "test-model"

[voice]
sink = "wav"
wav_dir = "{work / 'replies'}"
mic_gate_tail_s = 0.5

[service]
allow_degraded = true
status_interval_s = 0.5
status_file = "{work / 'status.json'}"
event_log = "{work / 'events.jsonl'}"
"""


class Daemon:
    """``python -m redsg_edge run`` with a NOTIFY_SOCKET listener; its files in ``work``."""

    def __init__(self, work: Path, cfg_text: str, args: tuple[str, ...] = ()) -> None:
        self.work = work
        self.cfg = work / "config.toml"
        self.cfg.write_text(cfg_text, encoding="utf-8")
        self.listener = NotifyListener(work / "notify.sock")
        self._log = (work / "daemon.log").open("wb")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.listener.path), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "redsg_edge", "run", "--config",
                                      str(self.cfg), *args], env=env, cwd=work,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log_tail(self) -> str:
        return (self.work / "daemon.log").read_text(errors="replace")[-3000:]

    def status(self) -> dict:
        return json.loads((self.work / "status.json").read_text())

    def events(self, kind: str | None = None) -> list[dict]:
        path = self.work / "events.jsonl"
        if not path.is_file():
            return []
        recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return [r for r in recs if kind is None or r.get("type") == kind]

    def wait_events(self, kind: str, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.events(kind)
            if len(recs) >= count:
                return recs
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n" + self.log_tail()
            assert time.monotonic() < deadline, (f"{len(recs)} {kind} record(s) within {timeout} s, "
                                                 f"expected {count}; log tail:\n" + self.log_tail())
            time.sleep(0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self.listener.close()


def _ready(d: Daemon) -> Daemon:
    d.ready_at = d.listener.require("READY=1", START_TIMEOUT, proc=d.proc)
    return d


@pytest.fixture(scope="module")
def chat():
    with ChatServer(reply=SHORT_REPLY) as srv:
        yield srv


@pytest.fixture(scope="module")
def face_daemon(tmp_path_factory, chat):
    work = tmp_path_factory.mktemp("face")
    camera = late_video(PEXELS, work / "pexels_late.mkv", LATE_S)
    d = Daemon(work, config_text(work, camera=camera, microphone=work / "no-mic.wav",
                                 chat_url=chat.base_url, reply="cooldown_s = 2.0"))
    try:
        yield _ready(d)
    finally:
        d.close()


@pytest.fixture(scope="module")
def voice_chat():
    with ChatServer(reply=LONG_REPLY) as srv:
        yield srv


@pytest.fixture(scope="module")
def voice_daemon(tmp_path_factory, voice_chat):
    work = tmp_path_factory.mktemp("voice")
    mic = late_audio(UTTERANCE, work / "angry_late.mka", LATE_S)
    d = Daemon(work, config_text(work, camera=work / "no-camera.mp4", microphone=mic,
                                 chat_url=voice_chat.base_url, reply="cooldown_s = 600.0"))
    d.samples = []  # (time.monotonic() of each status write, its fused probabilities)
    stop = threading.Event()

    def poll() -> None:  # from the start: the reply may come before the test that needs these
        offset = time.time() - time.monotonic()
        while not stop.wait(0.1):
            try:
                st = d.status()
            except (OSError, ValueError):  # not written yet
                continue
            t = st["updated_at_unix"] - offset
            if not d.samples or d.samples[-1][0] != t:
                d.samples.append((t, json.dumps((st.get("pipeline") or {}).get("probs"),
                                                sort_keys=True)))

    poller = threading.Thread(target=poll, name="status-poller", daemon=True)
    poller.start()
    try:
        yield _ready(d)
    finally:
        stop.set()
        poller.join(2)
        d.close()


def ready_waited_for_media(d: Daemon) -> None:
    """READY=1 came only after the late first frame / audio block: the daemon said it was
    waiting for them, for about LATE_S, before READY (checked on the notify stream)."""
    msgs = d.listener.snapshot()
    ready_i = next(i for i, (_, m) in enumerate(msgs) if "READY=1" in m.split("\n"))
    waiting = [t for t, m in msgs[:ready_i] if WAITING in m.split("\n")]
    assert waiting, f"READY=1 without waiting for the first frame and audio block: {msgs[:ready_i]}"
    assert msgs[ready_i][0] - waiting[0] >= LATE_S - 0.5, (
        f"READY=1 {msgs[ready_i][0] - waiting[0]:.2f} s after capture started; the first "
        f"{'frame' if 'face' in d.work.name else 'audio block'} comes {LATE_S} s later")


# -------------------------------------------------------------------------- face daemon

def test_ready_waits_for_the_late_first_frame(face_daemon):
    ready_waited_for_media(face_daemon)


def assert_degraded(d: Daemon, face: str, voice: str, missing: str, file: str) -> dict:
    """READY=1 and the status file say which modality runs; the notes name the missing device
    and its file. Returns the status."""
    ready_msg = next(m for t, m in d.listener.snapshot() if "READY=1" in m.split("\n"))
    assert f"face {face}, voice {voice}" in ready_msg
    st = d.status()
    assert st["pipeline"]["modalities"] == {"face": face, "voice": voice}
    notes = " ".join(st["pipeline"]["notes"])
    assert f"{missing} unavailable" in notes and file in notes
    return st


def test_degraded_face_only_runs_and_says_so(face_daemon):
    d = face_daemon
    st = assert_degraded(d, "on", "off", "microphone", "no-mic.wav")
    before = st["pipeline"]["frames"]["with_face"]
    deadline = time.monotonic() + 10
    while d.status()["pipeline"]["frames"]["with_face"] <= before:  # it runs on the face
        assert time.monotonic() < deadline, "no new frame with a face in 10 s"
        time.sleep(0.2)


def test_transition_leads_to_a_spoken_chat_reply(face_daemon, chat):
    d = face_daemon
    (reply, *_) = d.wait_events("reply", 1, 90)
    transitions = d.events("transition")
    answered = [tr for tr in transitions if abs(tr["t"] - reply["t"]) < 1e-3
                and (tr["from"], tr["to"]) == (reply["from"], reply["to"])]
    assert answered, (reply, transitions)
    tr = answered[0]
    # The chat server got the prompt for exactly that transition.
    prompts = [r["body"]["messages"][-1]["content"] for r in chat.requests
               if r["path"].endswith("/chat/completions")]
    assert any(f"Now: {tr['from']} -> {tr['to']} (confidence {tr['confidence']:.2f}" in p
               for p in prompts), prompts
    assert reply["source"] == "chat" and reply["text"] == SHORT_REPLY
    # ... and its answer was spoken: a WAV of that length, with sound in it.
    wavs = sorted((d.work / "replies").glob("*.wav"))
    assert wavs
    pcm, rate = sf.read(wavs[0], dtype="int16")
    assert abs(len(pcm) / rate - reply["audio_s"]) < 0.05 and reply["audio_s"] > 1.5
    assert np.abs(pcm).max() > 1000


def test_sighup_new_threshold_changes_the_transitions(face_daemon):
    d = face_daemon
    # The clip (looped) moves through several emotions: transitions keep coming ...
    d.wait_events("transition", 2, 90)
    text = d.cfg.read_text()
    # enter_threshold 1.0 and the sustained lead off (at 1.0 too): no lead can fire.
    d.cfg.write_text(text.replace(
        "[fusion]\n", "[fusion]\nenter_threshold = 1.0\nsustained_threshold = 1.0\n", 1))
    since = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    t_ready = d.listener.require("READY=1", 15, d.listener.require("RELOADING=1", 15, since))
    n_before = len(d.events("transition"))
    # ... and none with enter_threshold = 1.0, over one more full loop of the same media.
    loop_s = 19.7 + LATE_S
    time.sleep(loop_s + 1.0)
    late = [tr for tr in d.events("transition") if tr["t"] > t_ready + 0.1]
    assert d.proc.poll() is None
    assert not late, f"transitions after the reload to enter_threshold = 1.0: {late}"
    assert n_before >= 2


# ------------------------------------------------------------------------- voice daemon

def test_ready_waits_for_the_late_first_audio_block(voice_daemon):
    ready_waited_for_media(voice_daemon)


def test_degraded_voice_only_runs_and_says_so(voice_daemon):
    assert_degraded(voice_daemon, "off", "on", "camera", "no-camera.mp4")


def test_no_voice_evidence_while_the_device_speaks(voice_daemon, voice_chat):
    """Voice-only, the fused state moves only with SER evidence. While the device speaks its
    (long) reply, the microphone is gated: the fused probabilities stay put, though they moved
    with the same looping utterance before."""
    d = voice_daemon
    reply = d.wait_events("reply", 1, 120)[0]
    ts = reply["timestamps"]
    gate_end = max(ts["done"], ts["first_sample"] + reply["audio_s"]) + 0.5  # + mic_gate_tail_s
    time.sleep(max(0.0, gate_end + 3.0 - time.monotonic()))
    samples = list(d.samples)
    assert reply["source"] == "chat" and reply["audio_s"] > 8.0, reply
    start = reply["timestamps"]["first_sample"]
    # One SER window may have been classified just before the gate opened; after that, none.
    inside = {p for t, p in samples if start + 0.6 <= t <= gate_end - 0.3}
    outside = {p for t, p in samples if t < start - 0.1 or t > gate_end + 0.6}
    assert len(outside) >= 2, "the utterance moved the fused state outside the reply"
    assert len([t for t, _ in samples if start + 0.6 <= t <= gate_end - 0.3]) >= 10
    assert len(inside) == 1, (f"the fused state changed {len(inside) - 1} times while the device "
                              f"spoke ({reply['audio_s']:.1f} s): SER evidence was not gated")


# ------------------------------------------------------------------------------- exit codes

def test_corrupt_model_exits_70_from_run(tmp_path, chat):
    bad = tmp_path / "fer_int8.tflite"
    bad.write_bytes(b"TFL3" + bytes(range(256)) * 16)
    d = Daemon(tmp_path, config_text(tmp_path, camera=PEXELS, microphone=UTTERANCE,
                                     chat_url=chat.base_url, models=(bad, SER_MODEL)))
    try:
        rc = d.proc.wait(120)
    finally:
        d.close()
    assert rc == 70, d.log_tail()
    assert str(bad) in d.log_tail()
    assert not d.listener.times("READY=1")
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["state"] == "stopped" and st["exit_code"] == 70 and str(bad) in st["error"]
