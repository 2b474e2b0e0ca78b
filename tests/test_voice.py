"""Piper voice (real synthesis with the default joe voice) and the audio sinks."""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from redsg_edge.cli import say_main
from redsg_edge.config import Config, StyleConfig, VoiceConfig
from redsg_edge.errors import EX_SOFTWARE
from redsg_edge.voice import (NullSink, SounddeviceSink, Voice, VoiceError, WavSink,
                              default_voice_paths, make_sink, resample_pcm)

from .helpers import shared_voice
from .helpers.models import REPO

TEXT = "I am here with you."


@pytest.fixture(scope="module")
def voice():
    return shared_voice()


def synth(voice, text=TEXT, style=None, **kw) -> tuple[np.ndarray, list[np.ndarray]]:
    chunks = []
    for pcm, rate in voice.synthesize(text, style, **kw):
        assert rate == voice.sample_rate == 22050
        assert pcm.dtype == np.int16 and pcm.ndim == 1
        chunks.append(pcm)
    return np.concatenate(chunks), chunks


def test_default_voice_speaks(voice):
    assert voice.model_path.name == "en_US-joe-medium.onnx"
    pcm, chunks = synth(voice)
    assert len(chunks) == 1  # one sentence, one chunk
    dur = len(pcm) / voice.sample_rate
    assert 0.6 < dur < 3.0
    assert np.abs(pcm).max() > 10000  # Piper peak-normalises
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500


def test_without_noise_the_same_text_is_the_same_audio(voice):
    a = np.concatenate([p for p, _ in voice.synthesize(TEXT, noise=False)])
    b = np.concatenate([p for p, _ in voice.synthesize(TEXT, noise=False)])
    c = np.concatenate([p for p, _ in voice.synthesize(TEXT)])
    assert np.array_equal(a, b)
    assert len(c) != len(a) or not np.array_equal(a, c)  # VITS samples noise by default


def test_speech_resampled_for_a_48k_speaker(voice):
    # What SounddeviceSink does for an output that refuses 22,050 Hz: the same speech at 48 kHz.
    pcm, _ = synth(voice)
    out = resample_pcm(pcm, 22050, 48000)
    assert out.dtype == np.int16 and len(out) == round(len(pcm) * 48000 / 22050)
    # the spectrum below 8 kHz unchanged: the same band energies, within 0.5 dB
    def bands(x, rate):
        spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
        f = np.fft.rfftfreq(len(x), 1 / rate)
        return np.array([spec[(f >= lo) & (f < lo + 500)].sum() for lo in range(0, 8000, 500)])
    ratio_db = 10 * np.log10(bands(out, 48000) / bands(pcm, 22050) * (22050 / 48000) ** 2)
    assert np.abs(ratio_db).max() < 0.5, ratio_db.round(2)


def test_memory_arena_follows_config(voice):
    import onnxruntime as ort
    from piper import SynthesisConfig

    from redsg_edge.config import VoiceConfig
    from redsg_edge.memory import SHRINK_KEY, ShrinkingSession
    # The shared (default) voice runs with onnxruntime's CPU arena, emptied after every run;
    # memory_arena = true keeps it between runs (a plain session, no run options).
    s = voice._piper.session
    assert isinstance(s, ShrinkingSession)
    assert s.get_session_options().enable_cpu_mem_arena is True
    assert s.run_options.get_run_config_entry(SHRINK_KEY) == "cpu:0"
    kept = Voice.from_config(VoiceConfig(memory_arena=True))
    assert isinstance(kept._piper.session, ort.InferenceSession)
    assert kept._piper.session.get_session_options().enable_cpu_mem_arena is True
    # Emptying the arena changes no sample: with Piper's noise off the two sessions give the
    # same audio, to the length (Piper samples its noise, so with it on they would differ).
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    ids = voice._piper.phonemes_to_ids(voice._piper.phonemize(TEXT)[0])
    for _ in range(2):  # the second run starts from an emptied arena
        a = voice._piper.phoneme_ids_to_audio(ids, quiet)
        b = kept._piper.phoneme_ids_to_audio(ids, quiet)
        assert len(a) == len(b) > 0.6 * voice.sample_rate
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_style_length_volume_and_pauses(voice):
    base, _ = synth(voice, style=StyleConfig())
    slow, _ = synth(voice, style=StyleConfig(length_scale=1.6))
    quiet, _ = synth(voice, style=StyleConfig(volume=0.3))
    assert len(slow) / len(base) > 1.3
    assert np.abs(quiet).max() == pytest.approx(0.3 * np.abs(base).max(), rel=0.15)
    # two sentences: pause chunk of sentence_pause_s between them
    _, chunks = synth(voice, "Hello there. I am here.", StyleConfig(sentence_pause_s=0.5))
    assert len(chunks) == 3 and not chunks[1].any()
    assert len(chunks[1]) == round(0.5 * voice.sample_rate)
    # pause_before: a leading pause for a caller feeding sentences one at a time
    _, chunks = synth(voice, "Hello.", StyleConfig(sentence_pause_s=0.25), pause_before=True)
    assert len(chunks) == 2 and not chunks[0].any() and len(chunks[0]) == round(0.25 * 22050)


def test_missing_voice_names_file_and_key(tmp_path):
    with pytest.raises(VoiceError) as ei:
        Voice(tmp_path / "nope.onnx")
    assert ei.value.key == "voice.model"
    assert "voice.model" in str(ei.value) and "nope.onnx" in str(ei.value)
    onnx, _ = default_voice_paths()
    lone = tmp_path / "lone.onnx"
    lone.symlink_to(onnx)  # model without its .onnx.json
    with pytest.raises(VoiceError, match=r"voice\.model: .*lone\.onnx\.json not found"):
        Voice(lone)


def test_corrupt_voice_names_file_and_key(tmp_path):
    onnx, cfg_json = default_voice_paths()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model" * 100)
    shutil.copy(cfg_json, tmp_path / "bad.onnx.json")
    with pytest.raises(VoiceError, match=r"voice\.model: cannot load Piper voice .*bad\.onnx"):
        Voice(bad)
    good = tmp_path / "good.onnx"
    good.symlink_to(onnx)
    (tmp_path / "good.onnx.json").write_text("{ not json")
    with pytest.raises(VoiceError, match=r"voice\.model: .*good\.onnx\.json is not a Piper voice config"):
        Voice(good)


def test_wav_sink_one_file_per_utterance(voice, tmp_path):
    sink = WavSink(tmp_path / "out")
    pcm, _ = synth(voice)
    sink.write(pcm[:5000], 22050)
    assert sink.first_sample_t is not None
    t1 = sink.first_sample_t
    sink.write(pcm[5000:], 22050)
    assert sink.drain() is True
    sink.write(pcm, 22050)
    assert sink.first_sample_t > t1  # reset for the new utterance
    sink.close()
    assert len(sink.paths) == 2
    back, rate = sf.read(sink.paths[0], dtype="int16")
    assert rate == 22050 and np.array_equal(back, pcm)
    assert sf.info(str(sink.paths[0])).subtype == "PCM_16"


def test_null_sink_counts():
    sink = NullSink()
    sink.write(np.ones(100, np.int16), 22050)
    sink.write(np.ones(50, np.int16), 22050)
    assert sink.drain() and sink.samples == 150 and sink.utterances == 1 and sink.first_sample_t


def test_sounddevice_sink_missing_device_is_a_clear_error():
    with pytest.raises(VoiceError) as ei:
        SounddeviceSink("no-such-speaker-xyz")
    assert ei.value.key in ("voice.device", "voice.sink")
    assert "no-such-speaker-xyz" in str(ei.value) or ei.value.key == "voice.sink"


def test_make_sink(tmp_path):
    assert isinstance(make_sink(VoiceConfig(sink="null")), NullSink)
    s = make_sink(VoiceConfig(sink="wav", wav_dir=tmp_path / "w"))
    assert isinstance(s, WavSink) and (tmp_path / "w").is_dir()


def test_say_main_writes_speech(tmp_path, capsys):
    cfg = Config()
    cfg.voice.sink = "wav"
    cfg.voice.wav_dir = tmp_path / "say"
    assert say_main(cfg, "Testing the speaker. One, two, three.") == 0
    files = list((tmp_path / "say").glob("*.wav"))
    assert len(files) == 1
    pcm, rate = sf.read(files[0], dtype="int16")
    assert 1.0 < len(pcm) / rate < 6.0 and np.abs(pcm).max() > 3000
    assert "said" in capsys.readouterr().out
    cfg.voice.model = tmp_path / "missing.onnx"
    assert say_main(cfg, "Hi.") == EX_SOFTWARE  # a model file, as `run` and `check` say
    assert "voice.model" in capsys.readouterr().err


class FakeSounddevice:
    """Stands in for PortAudio (no sound card here): a blocking OutputStream that takes as long
    as the audio lasts, recording what was written. Exercises SounddeviceSink's threading."""

    class PortAudioError(Exception):
        pass

    def __init__(self, rates=(22050, 48000)):
        self.rates = rates
        self.streams = []

    def query_devices(self, device=None, kind=None):
        if device not in (None, "speaker"):
            raise ValueError(f"No output device matching {device!r}")
        return {"name": "speaker", "default_samplerate": 48000.0, "max_output_channels": 2}

    def check_output_settings(self, device=None, samplerate=None, channels=None, dtype=None):
        if samplerate not in self.rates:
            raise self.PortAudioError("Invalid sample rate")

    def OutputStream(self, samplerate, channels, dtype, device, latency):
        fake = self

        class Stream:
            def __init__(self):
                self.samplerate, self.active, self.written, self.starts = samplerate, False, [], 0
                fake.streams.append(self)

            def start(self):
                self.active, self.starts = True, self.starts + 1

            def write(self, block):
                assert self.active and block.dtype == np.int16
                time.sleep(len(block) / self.samplerate)
                self.written.append(block.copy())

            def stop(self):
                self.active = False

            def abort(self):
                self.active = False

            def close(self):
                pass
        return Stream()


def test_sounddevice_sink_plays_in_real_time_and_drains(monkeypatch):
    fake = FakeSounddevice()
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    sink = SounddeviceSink("speaker", 22050)
    a = (np.arange(11025) % 100).astype(np.int16)  # 0.5 s
    t0 = time.monotonic()
    sink.write(a, 22050)
    sink.write(a, 22050)
    assert time.monotonic() - t0 < 0.1          # write only queues
    assert sink.drain(0.2) is False              # still playing
    assert sink.drain(5.0) is True
    assert 0.9 < time.monotonic() - t0 < 2.0     # took as long as the audio
    assert sink.first_sample_t is not None and sink.first_sample_t - t0 < 0.2
    assert np.array_equal(np.concatenate(fake.streams[0].written), np.concatenate([a, a]))
    assert not fake.streams[0].active            # stopped between utterances
    sink.write(a, 22050)                         # a new utterance restarts the stream
    time.sleep(0.15)
    t1 = time.monotonic()
    sink.close()                                 # cuts it short
    assert time.monotonic() - t1 < 0.5
    assert fake.streams[0].starts == 2
    assert sum(len(b) for b in fake.streams[0].written) < 3 * len(a)  # the rest was dropped


def test_sounddevice_sink_resamples_for_a_device_without_22050(monkeypatch):
    fake = FakeSounddevice(rates=(48000,))
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    sink = SounddeviceSink(None, 22050)
    assert sink.rate == 48000
    sink.write(np.zeros(2205, np.int16), 22050)  # 0.1 s
    assert sink.drain(5.0)
    assert sum(len(b) for b in fake.streams[0].written) == 4800
    sink.close()
    with pytest.raises(VoiceError, match=r"voice\.device: no audio output device 'usb'"):
        SounddeviceSink("usb", 22050)


def test_int8_voice_is_smaller_and_says_the_same_words(tmp_path, capsys):
    # scripts/quantize_voice.py on the real default voice, then the real Piper speaks three
    # sentences with it and the real Moonshine reads them back (--check).
    moonshine = REPO / "models" / "moonshine-tiny-en-encoder.ort"
    if not moonshine.is_file():
        msg = f"{moonshine} missing: run `redsg-edge fetch-models --download-missing --mirror ...`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    sys.path.insert(0, str(REPO / "scripts"))
    import quantize_voice
    assert quantize_voice.main(["--out", str(tmp_path), "--check", "--max-wer", "0.1"]) == 0
    dest = tmp_path / "en_US-joe-medium-int8.onnx"
    out = capsys.readouterr().out
    assert "word error rate" in out and f'voice.model = "{dest}"' in out, out
    src_mb = default_voice_paths()[0].stat().st_size / 1e6
    assert dest.stat().st_size / 1e6 < 0.36 * src_mb  # 21.8 of 63.2 MB
    shipped = REPO / "models" / dest.name  # what `redsg-edge fetch-models` derives
    if shipped.is_file():
        assert dest.read_bytes() == shipped.read_bytes()
    assert (tmp_path / "en_US-joe-medium-int8.onnx.json").is_file()
    # the daemon loads it through voice.model like any voice
    v = Voice.from_config(VoiceConfig(model=dest))
    pcm = np.concatenate([p for p, _ in v.synthesize("Hello there.")])
    assert v.sample_rate == 22050 and 0.4 < len(pcm) / 22050 < 3 and np.abs(pcm).max() > 3000
    # a voice without its .onnx.json is refused before anything is written
    lone = tmp_path / "lone.onnx"
    shutil.copyfile(dest, lone)
    assert quantize_voice.main(["--voice", str(lone), "--out", str(tmp_path / "o")]) == 2
    assert "lone.onnx.json: not found" in capsys.readouterr().err
    assert not (tmp_path / "o" / "lone-int8.onnx").exists()


def test_voice_quality_compares_per_sentence_with_a_bootstrap_interval():
    # scripts/voice_quality.py's statistics on known scores: (sentences, takes, 4)
    sys.path.insert(0, str(REPO / "scripts"))
    import voice_quality
    rng = np.random.default_rng(1)
    base = rng.normal(3.0, 0.3, (21, 3, 4))
    mean, lo, hi = voice_quality.compare(base, base.copy())
    assert np.all(mean == 0) and np.all(lo == 0) and np.all(hi == 0)
    shifted = base + np.array([0.0, 0.1, -0.2, 0.05])
    mean, lo, hi = voice_quality.compare(base, shifted)
    assert np.allclose(mean, [0.0, 0.1, -0.2, 0.05]) and np.allclose(lo, mean) and np.allclose(hi, mean)
    noisy = base + rng.normal(0, 0.1, base.shape)
    mean, lo, hi = voice_quality.compare(base, noisy)
    assert np.all(lo < mean) and np.all(mean < hi) and np.all(hi - lo < 0.15)
    assert np.all(lo < 0) and np.all(hi > 0)  # noise alone: no difference claimed
