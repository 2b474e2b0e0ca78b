"""The speech path: Silero VAD on real speech and real noise, the segmenter as a table, the
perception step's invariances, level independence, and live vs replay evidence."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import soundfile as sf

from redsg_edge.config import ConfigError, SpeechConfig, parse_config
from redsg_edge.litert import ModelError
from redsg_edge.calibration import load_calibration, temperature_scale
from redsg_edge.speech import SNR_FULL_DB, SNR_NONE_DB, SerModel, SpeechPerception, snr_weight
from redsg_edge.utterance_ser import UtteranceSer
from redsg_edge.vad import CHUNK, CHUNK_S, InputGain, NoiseFloor, Segmenter, SileroVad, Utterance

from .conftest import ACTOR_24, FER_MODEL, SER_MODEL, UTT_MODEL, VAD_MODEL, SINGLE_FACE, make_config
from .helpers import pcm16

SAD = ACTOR_24 / "03-01-04-02-01-01-24.flac"    # sad, strong
ANGRY = ACTOR_24 / "03-01-05-02-01-01-24.flac"  # angry, strong


def room_noise() -> np.ndarray:
    """The real room noise of the single-face clip (no speech), 16 kHz int16."""
    import av
    with av.open(str(SINGLE_FACE)) as c:
        r = av.AudioResampler(format="s16", layout="mono", rate=16000)
        return np.concatenate([o.to_ndarray().reshape(-1)
                               for f in c.decode(c.streams.audio[0]) for o in r.resample(f)])


@pytest.fixture(scope="module")
def vad():
    return SileroVad(VAD_MODEL)


@pytest.fixture(scope="module")
def ser():
    return SerModel(SER_MODEL, 2.5)


# ------------------------------------------------------------------------------ the VAD itself

@pytest.mark.parametrize("gain_db", [0.0, -20.0])
def test_vad_finds_real_speech_at_any_level(vad, gain_db):
    vad.reset()
    p = vad.probs(pcm16(SAD, gain_db))
    # RAVDESS files are ~1 s of near-silence, ~2 s of speech, ~1 s of near-silence.
    assert (p >= 0.5).mean() >= 0.3
    assert (p[:8] < 0.5).all()  # the quiet lead-in (first 0.25 s) is not speech


@pytest.mark.parametrize("what", ["digital silence", "white noise -30 dBFS", "white noise -15 dBFS",
                                  "room noise", "room noise +20 dB"])
def test_vad_rejects_real_silence_and_noise(vad, what):
    rng = np.random.default_rng(1)
    n = 16000 * 3
    x = {"digital silence": lambda: np.zeros(n, np.int16),
         "white noise -30 dBFS": lambda: (rng.standard_normal(n) * 32768 * 10 ** -1.5),
         "white noise -15 dBFS": lambda: (rng.standard_normal(n) * 32768 * 10 ** -0.75),
         "room noise": lambda: room_noise(),
         "room noise +20 dB": lambda: room_noise().astype(np.float32) * 10}[what]()
    vad.reset()
    p = vad.probs(np.clip(x, -32768, 32767).astype(np.int16))
    assert len(p) > 50 and (p >= 0.5).sum() == 0


def tone_chunk(dbfs: float) -> np.ndarray:
    """One VAD chunk of a 440 Hz sine whose RMS is ``dbfs``; -inf is digital silence."""
    if dbfs == -np.inf:
        return np.zeros(CHUNK, np.int16)
    t = np.arange(CHUNK) / 16000
    return np.round(np.sqrt(2) * 10 ** (dbfs / 20) * 32768 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


# (max gain dB, chunk levels dBFS in order, gain in dB expected for the last chunk)
@pytest.mark.parametrize("max_db,levels,want_db", [
    (0.0, [-70.0], 0.0),                   # off: unity gain, whatever the level
    (40.0, [-56.0], 30.0),                 # quiet speech lifted to the -26 dBFS target
    (40.0, [-86.0], 40.0),                 # ... by max_gain_db at most
    (40.0, [-20.0], 0.0),                  # never attenuates loud audio
    (40.0, [-46.0] + [-80.0] * 31, 20.0 + 6.0 * 31 * 0.032),  # a pause: falls 6 dB/s from the speech
    (40.0, [-46.0, -50.0], 20.0 + 6.0 * 0.032),  # a quieter chunk after speech: the speech's gain
    (40.0, [-np.inf, -np.inf], 40.0),      # digital silence: gain is harmless
])
def test_input_gain_tracks_the_loud_level(max_db, levels, want_db):
    g = InputGain(max_db)
    for db in levels:
        got = g.gain(tone_chunk(db))
    assert 20 * np.log10(got) == pytest.approx(want_db, abs=0.05)


def test_input_gain_refuses_a_negative_maximum():
    with pytest.raises(ValueError, match=">= 0 dB"):
        InputGain(-1.0)


def test_input_gain_hears_speech_40_db_quieter(vad, ser):
    """A far or insensitive microphone: without the input gain Silero misses most of the speech of
    a file 40 dB quieter; with it, the utterance is found as at the recorded level."""
    spans = {}
    for gain_db, max_db in ((0.0, 0.0), (-40.0, 0.0), (-40.0, 40.0)):
        outs, _ = run_step(ser, vad, pcm16(ANGRY, gain_db), 1600, SpeechConfig(vad_gain_max_db=max_db))
        spans[gain_db, max_db] = [(o.start_s, o.end_s) for o in outs if o.kind == "utterance"]

    def speech(key) -> float:
        return sum(e - s for s, e in spans[key])
    assert speech((0.0, 0.0)) > 1.5
    assert speech((-40.0, 0.0)) < 0.5 * speech((0.0, 0.0))
    assert abs(speech((-40.0, 40.0)) - speech((0.0, 0.0))) < 0.3


@pytest.mark.parametrize("what", ["white noise -60 dBFS", "room noise", "room noise -30 dB"])
def test_input_gain_does_not_make_speech_of_quiet_noise(vad, ser, what):
    """The default input gain lifts quiet noise by up to 40 dB: Silero must still hear no speech."""
    rng = np.random.default_rng(2)
    x = {"white noise -60 dBFS": lambda: rng.standard_normal(16000 * 4) * 32768 * 1e-3,
         "room noise": room_noise,
         "room noise -30 dB": lambda: room_noise().astype(np.float32) * 10 ** -1.5}[what]()
    outs, step = run_step(ser, vad, np.round(x).astype(np.int16), 1600, SpeechConfig())
    assert SpeechConfig().vad_gain_max_db == 40.0
    assert step.ticks >= len(x) // 8000 - 1 and not [o for o in outs if o.kind == "utterance"]


def test_vad_chunk_size_is_checked(vad):
    with pytest.raises(ValueError, match="512 samples"):
        vad.chunk_prob(np.zeros(480, np.int16))


def test_vad_model_problems_name_the_file_and_the_fix(tmp_path):
    from redsg_edge.voice import default_voice_paths
    missing = tmp_path / "silero_vad_16k_op15.onnx"
    with pytest.raises(ModelError, match=f"{missing} does not exist.*fetch-models") as e:
        SileroVad(missing)
    assert e.value.exit_code == 70
    missing.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match=f"{missing} does not load.*fetch-models"):
        SileroVad(missing)
    piper_voice, _ = default_voice_paths()  # a real ONNX model, but not a VAD
    with pytest.raises(ModelError,
                       match=r"has inputs \['input', 'input_lengths', 'scales'\], not Silero"):
        SileroVad(piper_voice)


def test_vad_reset_makes_a_stream_independent_of_what_came_before(vad):
    speech, other = pcm16(SAD), pcm16(ANGRY)
    vad.reset()
    fresh = vad.probs(speech)
    vad.probs(other)  # another stream's state and context, then a reset
    vad.reset()
    assert np.array_equal(vad.probs(speech), fresh)
    # without the reset the recurrent state carries over: the first chunks differ
    vad.probs(other)
    assert not np.array_equal(vad.probs(speech)[:4], fresh[:4])


# ------------------------------------------------------------------------------ the segmenter

# threshold 0.5 (continue at >= 0.35), min 2 chunks, hangover 2 chunks, max 8 chunks
H, L, M = 0.9, 0.1, 0.4  # high, low, between the two thresholds
SEGMENTER_TABLE = [
    ("silence", [L] * 6, [], False),
    ("one utterance ended by the hangover", [L, H, H, H, L, L, L], [(1, 4, 5)], False),
    ("a burst shorter than min_chunks is dropped", [L, H, L, L, L], [], False),
    ("a dip shorter than the hangover stays inside", [H, H, L, H, H, L, L],
     [(0, 5, 6)], False),
    ("hysteresis: between the thresholds continues speech", [H, M, M, M, L, L], [(0, 4, 5)],
     False),
    ("between the thresholds does not start speech", [M, M, M, L, L], [], False),
    ("cut at max_chunks, speech goes on", [H] * 10 + [L, L],
     [(0, 8, 7, True), (8, 10, 11)], False),
    ("end of stream flushes the utterance in progress", [L, H, H, H], [(1, 4, "flush")], True),
    ("end of stream drops a short burst", [L, L, H], [], True),
]


@pytest.mark.parametrize("name,probs,expected,flush", SEGMENTER_TABLE,
                         ids=[row[0] for row in SEGMENTER_TABLE])
def test_segmenter_table(name, probs, expected, flush):
    seg = Segmenter(0.5, min_chunks=2, hangover_chunks=2, max_chunks=8)
    got = []
    for i, p in enumerate(probs):
        u = seg.step(p)
        if u is not None:
            got.append((u.start, u.end, i, True) if u.split else (u.start, u.end, i))
    if flush:
        u = seg.flush()
        if u is not None:
            got.append((u.start, u.end, "flush"))
    assert got == [tuple(e) for e in expected]


def test_segmenter_rejects_bad_parameters():
    with pytest.raises(ValueError):
        Segmenter(0.0, 1, 1, 1)
    with pytest.raises(ValueError):
        Segmenter(0.5, 3, 1, 2)
    assert Utterance(0, 3) == Utterance(0, 3, False)


# ------------------------------------------------------------------------------ the step

def run_step(ser, vad, pcm, block, cfg=None, t0=0.0, utterance_model=None):
    step = SpeechPerception(ser, cfg or SpeechConfig(), vad, utterance_model)
    outs = []
    for i in range(0, len(pcm), block):
        outs += step.push(t0 + i / 16000, pcm[i:i + block])
    return outs + step.finish(), step


def summary(outs, t0=0.0):
    return [(round(o.t - t0, 9), o.kind, None if o.probs is None else o.probs.tobytes(),
             None if o.start_s is None else round(o.start_s - t0, 9)) for o in outs]


def test_step_output_does_not_depend_on_block_size(ser, vad):
    pcm = np.concatenate([pcm16(SAD), pcm16(ANGRY)])
    a, step = run_step(ser, vad, pcm, 1600)
    b, _ = run_step(ser, vad, pcm, 777, t0=5.0)
    assert summary(a) == summary(b, 5.0)
    utts = [o for o in a if o.kind == "utterance"]
    assert len(utts) >= 2 and step.utterances == len(utts)
    # clear speech: the VAD's mean probability over each utterance is high, and fusion gets it
    assert all(0.7 < u.reliability <= 1.0 for u in utts)
    assert all(u.fusion_input()[1].reliability == u.reliability for u in utts)
    # a tick every hop_s of audio, and evidence never from the future
    assert abs(step.ticks - len(pcm) / 8000) <= 1
    assert all(o.end_s <= o.t + 1e-9 for o in a if o.probs is not None)


def test_long_speech_gets_rolling_windows_and_is_cut_at_max_utterance(ser, vad):
    # Six utterances back to back with their quiet ends cut: continuous speech ~12 s.
    parts = [pcm16(p)[14000:-14000] for p in sorted(ACTOR_24.glob("03-01-0[3-5]-02-*.flac"))[:6]]
    pcm = np.concatenate(parts)
    cfg = SpeechConfig(max_utterance_s=4.0, hangover_s=1.0)
    outs, step = run_step(ser, vad, pcm, 1600, cfg)
    utts = [o for o in outs if o.kind == "utterance"]
    assert step.rolling >= 3 and any(o.kind == "rolling" for o in outs)
    assert any(u.split for u in utts)
    pad = 7 * CHUNK / 16000  # padding_s 0.2 in whole 32 ms chunks
    assert all(u.end_s - u.start_s <= 4.0 + 2 * pad + 1e-6 for u in utts)


def test_rolling_labels_start_after_rolling_after_s(ser, vad):
    parts = [pcm16(p)[14000:-14000] for p in sorted(ACTOR_24.glob("03-01-0[3-5]-02-*.flac"))[:6]]
    pcm = np.concatenate(parts)
    first, count = {}, {}
    for after in (1.0, 2.5):
        cfg = SpeechConfig(max_utterance_s=4.0, hangover_s=1.0, rolling_after_s=after)
        outs, step = run_step(ser, vad, pcm, 1600, cfg)
        first[after] = min(o.t for o in outs if o.kind == "rolling")
        count[after] = step.rolling
    # the same utterance's first rolling label, 1.5 s later to within one hop (0.5 s)
    assert 1.0 - 1e-6 <= first[2.5] - first[1.0] <= 2.0 + 1e-6, first
    assert count[2.5] < count[1.0]


def test_noise_floor_averages_the_power_of_non_speech_chunks():
    nf = NoiseFloor(tau_s=1.0)
    assert nf.db is None and nf.snr_db(-30.0) is None  # nothing heard yet
    nf.update(-20.0, speech=True)
    assert nf.db is None                                # speech never sets the floor
    for _ in range(10):
        nf.update(-50.0, speech=False)
    assert nf.db == pytest.approx(-50.0)
    nf.update(0.0, speech=True)
    assert nf.db == pytest.approx(-50.0)
    # speech at -30 dBFS mean power over a -50 dBFS floor: (P - N) / N = 99
    assert nf.snr_db(-30.0) == pytest.approx(10 * np.log10(99), abs=1e-6)
    # a step to -30 dBFS: after tau (1 s of chunks) the power has moved 1 - 1/e of the way
    for _ in range(round(1.0 / CHUNK_S)):
        nf.update(-30.0, speech=False)
    want = 10 * np.log10(1e-5 + (1 - np.exp(-round(1.0 / CHUNK_S) * CHUNK_S)) * (1e-3 - 1e-5))
    assert nf.db == pytest.approx(want, abs=0.05)


@pytest.mark.parametrize("snr,share", [(None, 0.0), (-5.0, 0.0), (SNR_NONE_DB, 0.0),
                                       ((SNR_NONE_DB + SNR_FULL_DB) / 2, 0.5),
                                       (SNR_FULL_DB, 1.0), (60.0, 1.0)])
def test_snr_weight_of_the_rolling_utterance_ser(snr, share):
    assert snr_weight(snr) == pytest.approx(share)


def test_rolling_labels_pool_the_utterance_ser_only_in_quiet(ser, vad):
    """``speech.rolling_utterance_weight`` on studio speech changes the rolling labels (the
    utterance SER pooled in); with white noise at 10 dB SNR (against the speech's power over
    the file) it changes nothing, and the floor the step measured in the pauses is the noise's
    own power to within 1 dB."""
    utt = UtteranceSer(UTT_MODEL)
    clean = np.concatenate([pcm16(SAD), pcm16(ANGRY)]).astype(np.float64)
    noise = np.random.default_rng(5).standard_normal(len(clean))
    noise *= np.sqrt(np.mean(clean ** 2) / 10.0)
    noisy = np.clip(np.round(clean + noise), -32768, 32767).astype(np.int16)
    rolling, floor = {}, {}
    for name, pcm in (("clean", clean.astype(np.int16)), ("noisy", noisy)):
        for w in (0.0, 0.3):
            outs, step = run_step(ser, vad, pcm, 1600, SpeechConfig(rolling_utterance_weight=w),
                                  utterance_model=utt)
            rolling[name, w] = [o.probs for o in outs if o.kind == "rolling"]
            floor[name] = step.noise.db
    assert len(rolling["clean", 0.0]) >= 4 and len(rolling["noisy", 0.0]) >= 4
    assert all(np.abs(a - b).max() > 1e-3 for a, b in zip(rolling["clean", 0.0], rolling["clean", 0.3]))
    assert all(np.array_equal(a, b) for a, b in zip(rolling["noisy", 0.0], rolling["noisy", 0.3]))
    assert floor["noisy"] == pytest.approx(10 * np.log10(np.mean((noise / 32768) ** 2)), abs=1.0)


def test_gated_audio_is_never_classified(ser, vad):
    """While the device speaks (gated audio) nothing reaches fusion: the utterance in progress is
    cut where the gate begins, then no ticks and no evidence until the gate opens."""
    sad, angry = pcm16(SAD), pcm16(ANGRY)
    gate = 16000 * 2  # mid-utterance: RAVDESS speech runs from about 0.8 s to 3 s
    step = SpeechPerception(ser, SpeechConfig(), vad)
    before = step.push(0.0, sad[:gate])
    cut = step.push(gate / 16000, sad[gate:], gated=True)
    assert [o.kind for o in cut] == ["utterance"]
    assert cut[0].end_s <= gate / 16000 and cut[0].t <= gate / 16000
    assert step.gated_samples == len(sad) - gate
    more = step.push(len(sad) / 16000, sad[gate:], gated=True)
    assert more == [] and not any(o.kind == "utterance" for o in before)
    after = step.push(2 * len(sad) / 16000 - gate / 16000, angry) + step.finish()
    utts = [o for o in after if o.kind == "utterance"]
    assert len(utts) == 1 and utts[0].start_s >= (2 * len(sad) - gate) / 16000
    assert any(o.probs is None for o in after)  # ticks again once the gate opened


def test_attenuated_file_gets_the_same_label_as_the_original(ser, vad):
    labels = {}
    for gain in (0.0, -20.0):
        outs, _ = run_step(ser, vad, pcm16(ANGRY, gain), 1600)
        utts = [o for o in outs if o.kind == "utterance"]
        assert len(utts) == 1
        labels[gain] = int(utts[0].probs.argmax())
    assert labels[0.0] == labels[-20.0]


# ------------------------------------------------------------------------------ config, model

def test_old_energy_vad_keys_are_rejected_with_the_replacement():
    with pytest.raises(ConfigError) as e:
        parse_config({"speech": {"vad_threshold_dbfs": -40.0, "min_voiced_fraction": 0.3}},
                     "c.toml")
    msg = str(e.value)
    assert "c.toml: speech" in msg and "vad_threshold_dbfs" in msg and "speech.vad_threshold" in msg
    assert "min_voiced_fraction" in msg and "min_utterance_s" in msg


@pytest.mark.parametrize("speech,key", [
    ({"vad_threshold": 1.5}, "speech.vad_threshold"),
    ({"hangover_s": 0.0}, "speech.hangover_s"),
    ({"vad_gain_max_db": -3.0}, "speech.vad_gain_max_db"),
    ({"padding_s": 0.6, "hangover_s": 0.5}, "padding_s (0.6) must not exceed hangover_s"),
    ({"min_utterance_s": 3.0, "max_utterance_s": 2.0}, "must not exceed max_utterance_s"),
])
def test_speech_keys_are_validated(speech, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
        parse_config({"speech": speech}, "c.toml")


def test_temperature_from_the_model_card(tmp_path, vad):
    model = tmp_path / "ser_int8.tflite"
    shutil.copy(SER_MODEL, model)
    assert load_calibration(model).temperature == 1.0
    plain = SerModel(model, 2.5)
    (tmp_path / "ser_int8.json").write_text(json.dumps({"temperature": 2.0, "other": 1}))
    hot = SerModel(model, 2.5)
    assert hot.calibration.temperature == 2.0
    w = pcm16(ANGRY)[16000:16000 + 40000]
    p, q = plain.predict(w), hot.predict(w)
    assert np.allclose(q, temperature_scale(p, 2.0), atol=1e-5)
    assert q.max() < p.max() and q.argmax() == p.argmax()
    for bad in ('{"temperature": 0}', '{"temperature": "hot"}', "not json"):
        (tmp_path / "ser_int8.json").write_text(bad)
        with pytest.raises(ModelError, match="ser_int8.json"):
            SerModel(model, 2.5)


def test_model_for_another_window_is_refused():
    with pytest.raises(ModelError, match="speech.window_s = 2.0"):
        SerModel(SER_MODEL, 2.0)
    with pytest.raises(ModelError, match=rf"{FER_MODEL}.*speech.window_s = 2.5"):
        SerModel(FER_MODEL, 2.5)


# ------------------------------------------------------------------------------ live == replay

def test_replay_and_the_live_loop_give_identical_speech_evidence(tmp_path):
    """The daemon's loop, fed by a paced file microphone, and replay of the same file must hand
    fusion the same voice evidence at the same media times."""
    from redsg_edge.pipeline import Pipeline
    from redsg_edge.replay import replay

    media = tmp_path / "two.wav"
    pcm = np.concatenate([pcm16(SAD), pcm16(ANGRY)])
    sf.write(str(media), pcm, 16000, subtype="PCM_16")
    duration = len(pcm) / 16000
    cfg = make_config(camera={"source": "none"},
                      microphone={"source": "file", "file": str(media), "block_ms": 100},
                      reply={"enabled": False})

    rep: list = []
    replay(cfg, None, media, on_evidence=lambda t, ev: rep.append((t, ev)))

    live: list = []
    done = threading.Event()

    def seen(t, ev):
        live.append((t, ev))
        if t - pipe.mic.clock_origin >= duration - 0.3:
            done.set()

    pipe = Pipeline(cfg, reply=False, on_evidence=seen)
    pipe.start()
    try:
        assert done.wait(duration + 20), "the live loop stopped producing speech ticks"
    finally:
        pipe.stop()
    t0 = pipe.mic.clock_origin
    # Live keeps running past the file's end (it loops); replay ends it with finish().
    n = sum(1 for t, _ in rep if t <= duration - 0.3 + 1e-9)

    def key(items, origin):
        return [(round(t - origin, 6), None if ev is None else
                 (round(ev.t - origin, 6), ev.probs.tobytes())) for t, ev in items]

    assert key(live[:n], t0) == key(rep[:n], 0.0)
    assert sum(ev is not None for _, ev in rep[:n]) >= 2  # both utterances reached fusion
