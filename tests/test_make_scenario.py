"""scripts/make_scenario.py end to end on the real data: one short scenario, real detector."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from redsg_edge import CLASSES
from redsg_edge.datasets import DATA_ROOT

ROOT = Path(__file__).resolve().parent.parent
DETECTOR = DATA_ROOT.parent / "models" / "blaze_face_short_range.tflite"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA_ROOT / "fer2013.zip").is_file() or not DETECTOR.is_file(),
                       reason="shared data or detector model not present"),
]

_spec = importlib.util.spec_from_file_location("make_scenario", ROOT / "scripts" / "make_scenario.py")
ms = importlib.util.module_from_spec(_spec)
sys.modules["make_scenario"] = ms  # dataclasses look their module up
_spec.loader.exec_module(ms)


def test_compose_one(tmp_path):
    argv = ["--out", str(tmp_path), "--count", "1", "--seed", "7", "--min-segments", "3",
            "--max-segments", "3", "--min-seg-s", "6", "--max-seg-s", "6"]
    assert ms.main(argv) == 0
    truth = json.loads((tmp_path / "scenario_000.json").read_text())
    segs = truth["segments"]
    assert len(segs) == 3 and truth["fps"] == 15
    assert truth["speaker"] in ("Actor_23", "Actor_24")
    assert segs[0]["start"] == 0 and segs[-1]["end"] == pytest.approx(18.0)
    for a, b in zip(segs, segs[1:]):
        assert a["end"] == b["start"] and a["label"] != b["label"]
    for s in segs:
        assert s["label"] in CLASSES
        assert s["voice_sources"], s  # every 6 s segment holds at least one utterance
        assert all(v.split("/")[0] == truth["speaker"] for v in s["voice_sources"])
        for u in s["utterances"]:
            assert s["start"] <= u["start"] < u["end"] <= s["end"] + 1e-6
        if s["face_dataset"] == "fer2013":
            assert s["face_source"].startswith(f"test/{s['label']}/PrivateTest_")
    # the real detector found the face in (nearly) every decoded frame
    fd = truth["face_detection"]
    assert fd["frames"] == 270 and fd["rate"] >= 0.9
    assert len(fd["per_segment"]) == 3 and min(fd["per_segment"]) >= 0.8
    # media: 640x480 H.264 at 15 fps, 270 frames; 16 kHz mono WAV of the same length
    with av.open(str(tmp_path / "scenario_000.mp4")) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.width, v.height) == ("h264", 640, 480)
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    assert len(frames) == 270
    assert np.abs(frames[1].astype(int) - frames[0].astype(int)).mean() > 0.5  # not a frozen still
    audio, sr = sf.read(tmp_path / "scenario_000.wav")
    assert sr == 16000 and audio.ndim == 1 and len(audio) == 18 * 16000
    assert np.abs(audio).max() > 0.05
    # deterministic: the same seed gives the same plan
    again = tmp_path / "again"
    assert ms.main(argv[:1] + [str(again)] + argv[2:] + ["--no-verify"]) == 0
    truth2 = json.loads((again / "scenario_000.json").read_text())
    assert truth2["segments"] == segs
    assert np.array_equal(sf.read(again / "scenario_000.wav")[0], audio)


def test_tune_fusion_caches_the_evidence_of_a_scenario(tmp_path):
    """The models run once per scenario and model pair; a second grid reads the same evidence."""
    argv = ["--out", str(tmp_path), "--count", "1", "--seed", "3", "--min-segments", "3",
            "--max-segments", "3", "--min-seg-s", "6", "--max-seg-s", "6", "--no-verify"]
    assert ms.main(argv) == 0
    spec = importlib.util.spec_from_file_location("tune_fusion", ROOT / "scripts" / "tune_fusion.py")
    tf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tf)
    from redsg_edge.config import Config
    cfg = Config()
    cfg.vision.detector_model = DETECTOR
    meta, cache = tmp_path / "scenario_000.json", tmp_path / "cache"
    first = tf.scenario_evidence(cfg, meta, cache)
    assert len(list(cache.glob("scenario_000-*.npz"))) == 1
    again = tf.scenario_evidence(cfg, meta, cache)
    assert len(first) == len(again) > 100
    for (t1, e1), (t2, e2) in zip(first, again):
        assert t1 == t2 and (e1 is None) == (e2 is None)
        if e1 is not None:
            assert (e1.modality, e1.t) == (e2.modality, e2.t)
            np.testing.assert_allclose(e1.probs, e2.probs, rtol=1e-6)  # Evidence renormalises
    assert {e.modality for _, e in first if e is not None} == {"face", "voice"}


@pytest.mark.parametrize("kind", ["talking", "silent", "noisy"])
def test_scenario_kinds(tmp_path, kind):
    """(b) neutral faces under an emotional voice, (c) no speech, (d) speech 20 dB quieter at
    10 dB SNR: what each kind claims, measured on the written media."""
    argv = ["--out", str(tmp_path), "--count", "1", "--seed", "7", "--min-segments", "3",
            "--max-segments", "3", "--min-seg-s", "6", "--max-seg-s", "6", "--no-verify",
            "--kind", kind, "--x264-preset", "ultrafast"]
    assert ms.main(argv) == 0
    truth = json.loads((tmp_path / "scenario_000.json").read_text())
    assert truth["kind"] == kind
    audio, _ = sf.read(tmp_path / "scenario_000.wav")
    segs = truth["segments"]
    speech = np.zeros(len(audio), bool)
    for s in segs:
        for u in s["utterances"]:
            speech[int(u["start"] * 16000):int(u["end"] * 16000)] = True
    if kind == "talking":
        assert all(s["face_source"].startswith("test/neutral/") for s in segs)
        assert len({s["face_source"] for s in segs}) == 3
        assert {s["label"] for s in segs} != {"neutral"} and all(s["utterances"] for s in segs)
    elif kind == "silent":
        assert not speech.any() and all(s["voice_sources"] == [] for s in segs)
        assert np.sqrt(np.mean(audio ** 2)) < 10 ** (-60 / 20)  # the −65 dBFS floor only
    else:
        assert truth["snr_db"] == 10.0 and truth["speech_level_dbfs"] == -40.0
        # The noise floor measured in the gaps against the speech: 10 dB below it, within 1.5 dB
        # (the speech RMS includes the noise inside utterances, which adds ~0.4 dB).
        noise_rms = np.sqrt(np.mean(audio[~speech] ** 2))
        speech_rms = np.sqrt(np.mean(audio[speech] ** 2))
        assert 20 * np.log10(speech_rms / noise_rms) == pytest.approx(10.4, abs=1.5)
