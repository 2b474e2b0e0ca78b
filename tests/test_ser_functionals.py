"""The pieces of the issue-15 SER representation experiments that a runtime would adopt: the lean
openSMILE extractor gives the package's own numbers on real speech, level normalisation makes
the functionals independent of the gain, and the running feature normalisation is causal and
ends at the stream's own statistics. The openSMILE tests need the ``ser-research`` extra and are
skipped without it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# loud_rms: what the research script's level_normalised uses
from redsg_edge.features import loud_rms, pcm_to_float

from .conftest import ACTOR_24

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import ser_functionals as sfx  # noqa: E402
from ser_representations import running_norm  # noqa: E402

ANGRY = ACTOR_24 / "03-01-05-02-01-01-24.flac"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    x, sr = sf.read(ANGRY, dtype="float32")
    assert sr == 16_000
    return x


def test_lean_smile_gives_the_packages_compare_functionals(speech):
    opensmile = pytest.importorskip("opensmile")
    ref = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                          feature_level=opensmile.FeatureLevel.Functionals)
    want = ref.process_signal(speech, 16_000).to_numpy()[0]
    got = sfx.lean_smile("compare")(speech)
    assert got.shape == (6373,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_level_normalised_functionals_do_not_depend_on_the_gain(speech):
    pytest.importorskip("opensmile")
    f = sfx.level_normalised(sfx.lean_smile("egemaps"))
    quiet = np.round(speech * 0.1 * 32767) / 32767  # −20 dB, int16 samples as a microphone gives
    a, b = f(speech), f(quiet.astype(np.float32))
    raw = sfx.lean_smile("egemaps")
    c, d = raw(speech), raw(quiet.astype(np.float32))
    # the raw loudness functionals move by the gain; the level-normalised ones stay within
    # int16 rounding
    assert np.median(np.abs(a - b) / (np.abs(a) + 1e-3)) < 0.01
    assert np.median(np.abs(c - d) / (np.abs(c) + 1e-3)) > 5 * np.median(np.abs(a - b) / (np.abs(a) + 1e-3))


def test_loud_rms_measures_the_loud_frames():
    x = np.zeros(16_000, np.float32)
    x[:8000] = 0.1 * np.sign(np.sin(np.arange(8000)))  # half a second of a ±0.1 square-ish wave
    assert loud_rms(x) == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("x, dtype, want", [
    (np.array([-32768, 0, 16384, 32767], np.int16), np.float32, [-1.0, 0.0, 0.5, 32767 / 32768]),
    (np.array([-32768, 8192], np.int16), np.float64, [-1.0, 0.25]),
    (np.array([0.25, -2.0], np.float64), np.float32, [0.25, -2.0]),  # floats are only cast
])
def test_pcm_to_float_scales_int16_by_full_scale(x, dtype, want):
    y = pcm_to_float(x, dtype)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.array(want, dtype))


def test_running_norm_is_causal_and_ends_at_the_stream_statistics():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, (300, 4))
    order = np.random.default_rng(7).permutation(len(X))
    Z = running_norm(X, np.zeros(4), np.ones(4), prior=0.0, seed=7)
    last = order[-1]
    np.testing.assert_allclose(Z[last], (X[last] - X.mean(0)) / X.std(0), rtol=1e-6)
    # changing an utterance heard later changes nothing heard before it
    X2 = X.copy()
    X2[order[200]] += 100.0
    Z2 = running_norm(X2, np.zeros(4), np.ones(4), prior=0.0, seed=7)
    np.testing.assert_array_equal(Z2[order[:200]], Z[order[:200]])
    assert not np.allclose(Z2[order[200:]], Z[order[200:]])
    # a prior holds the early statistics at the training ones
    Zp = running_norm(X, np.full(4, 5.0), np.full(4, 9.0), prior=1e9, seed=7)
    np.testing.assert_allclose(Zp, (X - 5.0) / 3.0, atol=1e-3)
