"""The committed int8 models on real, held-out data; the MFCC front end; bad model files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from python_speech_features import mfcc

from redsg_edge.datasets import load_fer2013
from redsg_edge.features import (NFFT, NUM_CEPSTRA, NUM_FILTERS, SAMPLE_RATE, WINLEN_S,
                                 WINSTEP_S, _dither, _floor_rms, mfcc_features, num_frames)
from redsg_edge.litert import LiteRTClassifier, ModelError
from redsg_edge.speech import SerModel
from redsg_edge.vision import FerModel

from .conftest import ACTOR_24, FER_MODEL, SER_MODEL


def test_models_are_small_int8():
    for path, limit in ((FER_MODEL, 2_000_000), (SER_MODEL, 1_000_000)):
        clf = LiteRTClassifier(path, (None, None) if path == SER_MODEL else (48, 48, 1), 7)
        assert clf.quantized and clf.input_dtype == np.int8
        assert path.stat().st_size <= limit


def test_fer_outputs_probability_distributions():
    # Accuracy: tests/test_goldens.py (every PrivateTest and CK+48 image, tight floors).
    x, y, _ = load_fer2013("test", limit_per_class=3)
    fer = FerModel(FER_MODEL)
    probs = np.stack([fer.predict(im) for im in x])
    assert probs.shape == (21, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs >= 0).all() and len(set(probs.argmax(1))) >= 3  # not one class for all


def test_mfcc_matches_python_speech_features():
    pcm, sr = sf.read(ACTOR_24 / "03-01-05-02-01-01-24.flac", dtype="int16")
    assert sr == SAMPLE_RATE
    w = pcm[8000:8000 + 40000]
    ours = mfcc_features(w)
    x = w.astype(np.float32) / 32768.0
    ref = mfcc(x + _dither(len(x)) * np.float32(_floor_rms(x)), samplerate=SAMPLE_RATE,
               winlen=WINLEN_S, winstep=WINSTEP_S, numcep=NUM_CEPSTRA, nfilt=NUM_FILTERS, nfft=NFFT,
               preemph=0.97, ceplifter=22, appendEnergy=True)
    assert ours.shape == ref.shape == (num_frames(40000), 20)
    np.testing.assert_allclose(ours, ref - ref.mean(0), rtol=1e-4, atol=1e-4)
    # The noise floor sits 30 dB under the loud frames: their energy barely changes.
    plain = mfcc(x, samplerate=SAMPLE_RATE, winlen=WINLEN_S, winstep=WINSTEP_S,
                 numcep=NUM_CEPSTRA, nfilt=NUM_FILTERS, nfft=NFFT, preemph=0.97, ceplifter=22,
                 appendEnergy=True)
    loud = plain[:, 0] > np.percentile(plain[:, 0], 90)
    assert np.abs((plain - ref)[loud, 0]).max() < 0.05  # natural log: 5 % (after pre-emphasis)


def test_speech_features_run_without_scipy():
    # features.py computes python_speech_features' MFCC on numpy so that the daemon never loads
    # scipy (12 MB resident); scipy stays for bench's Theil-Sen slope, imported there.
    code = textwrap.dedent(f"""
        import sys
        import soundfile as sf
        import redsg_edge.pipeline
        from redsg_edge.features import ser_windows
        from redsg_edge.functionals import utterance_functionals
        pcm, _ = sf.read({str(ACTOR_24 / "03-01-05-02-01-01-24.flac")!r}, dtype="int16")
        assert ser_windows(pcm, 40000, 8000).shape[1:] == (249, 20)
        assert utterance_functionals(pcm).ndim == 1
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "python_speech_features")))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_mfcc_rejects_wrong_rate_and_shape():
    with pytest.raises(ValueError, match="16000 Hz"):
        mfcc_features(np.zeros(48000, np.int16), 48000)
    with pytest.raises(ValueError, match="mono"):
        mfcc_features(np.zeros((100, 2), np.int16))


def test_corrupt_model_names_the_file(tmp_path):
    bad = tmp_path / "fer_int8.tflite"
    bad.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    with pytest.raises(ModelError, match=str(bad)):
        FerModel(bad)
    with pytest.raises(ModelError, match="not found"):
        FerModel(tmp_path / "missing.tflite")


def test_wrong_shaped_model_names_the_file():
    with pytest.raises(ModelError, match=rf"{SER_MODEL}.*input shape"):
        FerModel(SER_MODEL)
    with pytest.raises(ModelError, match=rf"{FER_MODEL}.*speech.window_s"):
        SerModel(FER_MODEL, 2.5)
    with pytest.raises(ModelError, match="speech.window_s = 3.0"):
        SerModel(SER_MODEL, 3.0)
