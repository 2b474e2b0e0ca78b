"""Reliability weighting in fusion (issue 14, item 5), table-driven."""

from __future__ import annotations

import math

import numpy as np
import pytest

from redsg_edge import CLASSES
from redsg_edge.config import FusionConfig
from redsg_edge.fusion import Evidence, Fusion, confidence_of, face_reliability
from redsg_edge.perception import face_evidence
from redsg_edge.vision import Face, FaceResult

from .conftest import make_config


def pk(name: str, p: float = 0.8) -> np.ndarray:
    v = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1))
    v[CLASSES.index(name)] = p
    return v


@pytest.mark.parametrize("height,full,expected", [
    (96.0, 48.0, 1.0),    # larger than FER's input: full
    (48.0, 48.0, 1.0),
    (24.0, 48.0, 0.5),    # half size: half the weight
    (0.0, 48.0, 0.0),
    (10.0, 0.0, 1.0),     # the term switched off
])
def test_face_reliability_table(height, full, expected):
    assert face_reliability(height, full) == pytest.approx(expected)


# (face reliability, voice reliability, voice age s,
#  expected face weight factor, expected voice weight factor) relative to prior×conf×fresh
WEIGHT_TABLE = [
    ("all terms neutral: the tuned formula", 1.0, 1.0, 0.0, 1.0, 1.0),
    ("a small face counts less", 0.5, 1.0, 0.0, 0.5, 1.0),
    ("uncertain speech counts less", 1.0, 0.6, 0.0, 1.0, 0.6),
    ("both at once multiply", 0.5, 0.9, 1.0, 0.5, 0.9),
    ("stale voice: nobody speaking, the face counts fully", 1.0, 1.0, 3.5, 1.0, None),
]


@pytest.mark.parametrize("name,rf,rv,voice_age,want_face,want_voice", WEIGHT_TABLE,
                         ids=[r[0] for r in WEIGHT_TABLE])
def test_weight_table(name, rf, rv, voice_age, want_face, want_voice):
    cfg = FusionConfig(face_weight=1.0, voice_weight=0.4, max_age_s=3.0,
                      talking_face_neutral=1.0)  # the talking-face factor: test_fusion
    f = Fusion(cfg)
    t = 10.0
    f.update(t - voice_age, Evidence("voice", t - voice_age, pk("sad", 0.7), rv))
    upd = f.update(t, Evidence("face", t, pk("happy", 0.8), rf))
    face = upd.evidence["face"]
    base_face = 1.0 * confidence_of(face.probs) * 1.0
    assert face.weight == pytest.approx(base_face * want_face)
    assert face.reliability == rf
    if want_voice is None:
        assert "voice" not in upd.evidence
    else:
        v = upd.evidence["voice"]
        fresh = 1 - voice_age / 3.0
        assert v.weight == pytest.approx(0.4 * confidence_of(v.probs) * fresh * want_voice)


# (talking_face_neutral, voice_weight, face, voice or None) → fused leading class
BEHAVIOUR_TABLE = [
    ("a light voice: a talking neutral face outweighs it", 1.0, 0.2, "neutral", "sad",
     "neutral"),
    ("a talking face's neutral discounted: a confident voice moves it", 0.2, 0.5, "neutral",
     "sad", "sad"),
    ("the shipped setting: a confident voice moves a neutral talking face", 0.0, 0.5, "neutral",
     "sad", "sad"),
    ("the shipped setting: a clear face wins over silence", 0.0, 0.5, "happy", None, "happy"),
    ("a clear face wins over silence", 0.2, 0.5, "happy", None, "happy"),
]


@pytest.mark.parametrize("name,talking_neutral,voice_weight,face,voice,want", BEHAVIOUR_TABLE,
                         ids=[r[0] for r in BEHAVIOUR_TABLE])
def test_behaviour_table(name, talking_neutral, voice_weight, face, voice, want):
    cfg = FusionConfig(voice_weight=voice_weight, talking_face_neutral=talking_neutral,
                       smoothing_tau_s=0.0)
    f = Fusion(cfg)
    upd = None
    for k in range(30):  # 2 s: face at 15 fps, voice every 0.5 s
        t = k / 15
        if voice is not None and k % 7 == 0:
            f.update(t, Evidence("voice", t, pk(voice, 0.9), 0.95))
        upd = f.update(t, Evidence("face", t, pk(face, 0.7)))
    assert CLASSES[int(np.argmax(upd.probs))] == want


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_reliability_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="reliability"):
        Evidence("face", 0.0, pk("happy"), bad)


def test_face_evidence_takes_reliability_from_the_box_height():
    cfg = make_config()
    small = FaceResult(Face((0, 0, 20, 24), 0.9, np.zeros((6, 2), np.float32)), pk("happy"))
    big = FaceResult(Face((0, 0, 100, 120), 0.9, np.zeros((6, 2), np.float32)), pk("happy"))
    assert face_evidence(1.0, small, cfg).reliability == pytest.approx(0.5)
    assert face_evidence(1.0, big, cfg).reliability == 1.0
    assert face_evidence(1.0, None, cfg) is None
