"""Table-driven tests of the pure fusion object (redsg_edge.fusion).

Each table row is a stream of ``(t, modality, probs)`` evidence and the transitions it must give,
as ``(from, to, t_lo, t_hi)``. Most rows switch smoothing off (``smoothing_tau_s = 0``) so that the
transition times follow from dwell, hysteresis and refractory alone and can be stated exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from unittest import mock

import numpy as np
import pytest

from redsg_edge import CLASSES
from redsg_edge.config import FusionConfig
from redsg_edge.events import Transition
from redsg_edge.fusion import Evidence, Fusion, confidence_of, talking_face_factor
from redsg_edge.modalities import MODALITIES, Modality, registered


def mix(**weights: float) -> np.ndarray:
    """A (7,) vector with the given class probabilities, the rest spread evenly over the others."""
    p = np.zeros(len(CLASSES))
    for name, w in weights.items():
        p[CLASSES.index(name)] = w
    rest = [i for i, c in enumerate(CLASSES) if c not in weights]
    p[rest] = (1.0 - sum(weights.values())) / len(rest)
    return p


def pk(name: str, p: float = 0.9) -> np.ndarray:
    return mix(**{name: p})


def hold(modality: str, probs, t0: float, t1: float, hz: float = 10.0) -> list:
    """Evidence every 1/hz s over [t0, t1) (times rounded to µs so the tables read exactly)."""
    n = int(round((t1 - t0) * hz))
    return [(round(t0 + i / hz, 6), modality, probs) for i in range(n)]


def merge(*streams) -> list:
    return sorted((e for s in streams for e in s), key=lambda e: e[0])


def cfg(**kw) -> FusionConfig:
    # The talking-face factor and the sustained lead off unless a test sets them: each rule has
    # its own tests below.
    base = dict(combiner="mean", smoothing_tau_s=0.0, min_dwell_s=1.0, refractory_s=4.0, enter_threshold=0.45,
                exit_threshold=0.30, max_age_s=3.0, talking_face_neutral=1.0, sustained_threshold=1.0)
    base.update(kw)
    return FusionConfig(**base)


def run(config: FusionConfig, stream, fusion: Fusion | None = None):
    """Feed the stream; rows are (t, modality, probs) or (t, modality, probs, evidence_t) or
    (t, None, None) for a bare clock tick. Returns the fusion, the updates and the transitions."""
    f = fusion or Fusion(config)
    updates, transitions = [], []
    for row in stream:
        t, m, p = row[:3]
        ev = None if m is None else Evidence(m, row[3] if len(row) > 3 else t, p)
        u = f.update(t, ev)
        updates.append(u)
        if u.transition is not None:
            transitions.append(u.transition)
    return f, updates, transitions


def assert_transitions(got: list[Transition], expected: list[tuple]) -> None:
    assert [(e.from_emotion, e.to_emotion) for e in got] == [(a, b) for a, b, _, _ in expected]
    for e, (_, _, lo, hi) in zip(got, expected):
        assert lo - 1e-6 <= e.t <= hi + 1e-6, (e, lo, hi)


SUSTAINED = cfg(sustained_threshold=0.35, sustained_dwell_s=3.0)

TABLE = {
    # A happy face for 0.5 s bursts, shorter than the 1 s dwell: no transition at all.
    "no flicker below dwell": (cfg(), merge(
        hold("face", pk("neutral"), 0, 2), hold("face", pk("happy"), 2, 2.5),
        hold("face", pk("neutral"), 2.5, 4), hold("face", pk("happy"), 4, 4.9),
        hold("face", pk("neutral"), 4.9, 8)), []),
    # Two candidates alternating every 0.4 s: each interruption restarts the dwell clock.
    "alternating candidates never dwell": (cfg(), merge(
        *[hold("face", pk("happy" if k % 2 else "sad"), 0.4 * k, 0.4 * (k + 1)) for k in range(20)]),
        []),
    # Held: exactly one transition, at candidate start + dwell.
    "one transition when held": (cfg(), merge(
        hold("face", pk("neutral"), 0, 3), hold("face", pk("happy"), 3, 10)),
        [("neutral", "happy", 4.0, 4.0)]),
    # With smoothing the onset is later, but still exactly one transition.
    "one transition when held, smoothed": (cfg(smoothing_tau_s=0.8), merge(
        hold("face", pk("neutral"), 0, 3, hz=15), hold("face", pk("happy"), 3, 10, hz=15)),
        [("neutral", "happy", 4.0, 5.0)]),
    # Second change ready at 5.0 s but the 4 s refractory period after 3.0 s holds it to 7.0 s.
    "refractory respected": (cfg(), merge(
        hold("face", pk("neutral"), 0, 2), hold("face", pk("happy"), 2, 4),
        hold("face", pk("sad"), 4, 12)),
        [("neutral", "happy", 3.0, 3.0), ("happy", "sad", 7.0, 7.0)]),
    "no refractory, no wait": (cfg(refractory_s=0.0), merge(
        hold("face", pk("neutral"), 0, 2), hold("face", pk("happy"), 2, 4),
        hold("face", pk("sad"), 4, 12)),
        [("neutral", "happy", 3.0, 3.0), ("happy", "sad", 5.0, 5.0)]),
    # Hysteresis: happy dips to 0.35 (between exit 0.30 and enter 0.45) while sad leads at 0.5:
    # happy is kept; no switch.
    "hysteresis: dip above exit keeps current": (cfg(), merge(
        hold("face", pk("neutral"), 0, 1), hold("face", pk("happy"), 1, 6),
        hold("face", mix(happy=0.35, sad=0.5), 6, 10), hold("face", pk("happy"), 10, 12)),
        [("neutral", "happy", 2.0, 2.0)]),
    # ... whereas a drop below exit with a clear leader does switch (after dwell).
    "hysteresis: drop below exit switches": (cfg(), merge(
        hold("face", pk("neutral"), 0, 1), hold("face", pk("happy"), 1, 6),
        hold("face", mix(happy=0.2, sad=0.6), 6, 10)),
        [("neutral", "happy", 2.0, 2.0), ("happy", "sad", 7.0, 7.0)]),
    # The current emotion falls below exit but no class reaches enter: nothing to switch to.
    "hysteresis: no candidate above enter": (cfg(), merge(
        hold("face", pk("neutral"), 0, 2),
        hold("face", mix(happy=0.40, sad=0.35, neutral=0.10), 2, 8)), []),
    # Staleness: one happy face at t=0, then sad speech from 3.5 s. The face is 3.5 s old
    # (> max_age 3 s) and is ignored, so voice alone decides.
    "stale face ignored": (cfg(), merge(
        [(0.0, "face", pk("happy"))], hold("voice", pk("sad"), 3.5, 8, hz=2)),
        [("neutral", "sad", 4.5, 4.5)]),
    # A face that stopped reporting at 1 s; voice-only sad from 5 s (face 4 s old by then).
    "face stops, voice takes over": (cfg(), merge(
        hold("face", pk("happy"), 0, 1.1), hold("voice", pk("sad"), 5, 9, hz=2)),
        [("neutral", "happy", 1.0, 1.0), ("happy", "sad", 6.0, 6.0)]),
    "voice only": (cfg(), hold("voice", pk("sad"), 0, 5, hz=2), [("neutral", "sad", 1.0, 1.0)]),
    "face only": (cfg(), hold("face", pk("angry"), 0, 5, hz=15), [("neutral", "angry", 1.0, 1.0)]),
    # Bare clock ticks: evidence is sample-and-hold until max_age_s, so a held happy face leads
    # to one transition; once it is stale (3 s) nothing more happens.
    "clock ticks without evidence": (cfg(), merge(
        hold("face", pk("happy"), 0, 0.5), [(float(t), None, None) for t in np.arange(0.5, 10, 0.5)]),
        [("neutral", "happy", 1.0, 1.0)]),
    # Sustained lead (threshold 0.35, 3 s): sad at 0.40 never reaches enter (0.45), but led for
    # 3 s it fires; at 0.30 it never does; with the threshold at enter the rule is off.
    "sustained lead fires after its dwell": (SUSTAINED, merge(
        hold("face", pk("neutral"), 0, 2), hold("face", mix(sad=0.40), 2, 8)),
        [("neutral", "sad", 5.0, 5.0)]),
    "sustained lead below its threshold": (SUSTAINED, merge(
        hold("face", pk("neutral"), 0, 2), hold("face", mix(sad=0.30), 2, 8)), []),
    "sustained lead off at the enter threshold": (cfg(sustained_threshold=0.45), merge(
        hold("face", pk("neutral"), 0, 2), hold("face", mix(sad=0.40), 2, 8)), []),
    # A neutral reading at 3.5-3.7 s interrupts the lead: its clock restarts at 3.7 s.
    "sustained lead restarts when interrupted": (SUSTAINED, merge(
        hold("face", pk("neutral"), 0, 2), hold("face", mix(sad=0.40), 2, 3.5),
        hold("face", pk("neutral"), 3.5, 3.7), hold("face", mix(sad=0.40), 3.7, 9)),
        [("neutral", "sad", 6.7, 6.7)]),
    # A weak lead from 2 s turns strong at 3 s: the short dwell counts from 3 s, not from 2 s.
    "strong dwell counts from the strong lead": (SUSTAINED, merge(
        hold("face", pk("neutral"), 0, 2), hold("face", mix(sad=0.40), 2, 3),
        hold("face", pk("sad"), 3, 8)),
        [("neutral", "sad", 4.0, 4.0)]),
    # A weak lead never fires sooner than a strong one: the longer of the two dwells.
    "sustained lead waits at least min_dwell_s": (cfg(sustained_threshold=0.35,
                                                      sustained_dwell_s=3.0, min_dwell_s=4.0),
        merge(hold("face", pk("neutral"), 0, 2), hold("face", mix(sad=0.40), 2, 8)),
        [("neutral", "sad", 6.0, 6.0)]),
    # A confident face outweighs an unsure voice (entropy confidence): stays happy.
    "confident face beats unsure voice": (cfg(), merge(
        hold("face", pk("happy", 0.95), 0, 8, hz=15),
        hold("voice", mix(sad=0.3, neutral=0.2, angry=0.2), 0, 8, hz=2)),
        [("neutral", "happy", 1.0, 1.0)]),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_transition_table(name):
    config, stream, expected = TABLE[name]
    _, updates, transitions = run(config, stream)
    assert_transitions(transitions, expected)
    # Transitions come only from the state machine: the emotion of every update changes only
    # at a transition.
    emotions = [u.emotion for u in updates]
    changes = [updates[i].t for i in range(1, len(updates)) if emotions[i] != emotions[i - 1]]
    if emotions and emotions[0] != "neutral":
        changes.insert(0, updates[0].t)
    assert changes == [e.t for e in transitions]


def test_stale_face_absent_from_update():
    _, updates, _ = run(cfg(), merge(hold("face", pk("happy"), 0, 1.1),
                                     hold("voice", pk("sad"), 5, 6, hz=2)))
    by_t = {u.t: u for u in updates}
    assert set(by_t[1.0].evidence) == {"face"}
    assert set(by_t[5.0].evidence) == {"voice"}  # face last seen at 1.0, 4 s old
    rec = by_t[5.0].to_json()
    assert rec["face"] is None and rec["voice"]["sad"] == pytest.approx(0.9, abs=1e-6)


def test_all_stale_holds_state():
    f, _, tr = run(cfg(), hold("face", pk("happy"), 0, 2))
    assert [e.to_emotion for e in tr] == ["happy"]
    f.update(2.5, Evidence("face", 2.5, pk("sad")))  # a candidate starts ...
    assert f.state.candidate == "sad"
    u = f.update(6.0)                                  # ... then all evidence is stale
    assert u.raw is None and u.evidence == {} and u.transition is None
    assert u.emotion == "happy" and f.state.candidate is None
    assert u.probs == pytest.approx(f.state.probs)     # smoothed vector held, not reset


def test_weights_confidence_times_freshness():
    c = cfg(face_weight=1.0, voice_weight=0.5, max_age_s=3.0)
    f = Fusion(c)
    face, voice = pk("happy", 0.8), pk("sad", 0.6)
    f.update(0.0, Evidence("voice", 0.0, voice))
    u = f.update(1.5, Evidence("face", 1.5, face))
    wf = 1.0 * confidence_of(face.astype(np.float32)) * 1.0
    wv = 0.5 * confidence_of(voice.astype(np.float32)) * 0.5  # 1.5 s old of 3 s → freshness 0.5
    assert u.evidence["face"].weight == pytest.approx(wf, rel=1e-5)
    assert u.evidence["voice"].weight == pytest.approx(wv, rel=1e-5)
    assert u.evidence["voice"].age_s == pytest.approx(1.5)
    assert u.raw == pytest.approx((wf * face + wv * voice) / (wf + wv), abs=1e-5)


def test_confidence_measures():
    uniform = np.full(7, 1 / 7, np.float32)
    onehot = np.eye(7, dtype=np.float32)[3]
    assert confidence_of(uniform, "entropy") == pytest.approx(0.0, abs=1e-6)
    assert confidence_of(onehot, "entropy") == pytest.approx(1.0, abs=1e-6)
    assert confidence_of(uniform, "max_prob") == pytest.approx(1 / 7)
    assert confidence_of(uniform, "none") == 1.0
    with pytest.raises(ValueError):
        confidence_of(uniform, "bogus")


def test_uninformative_modality_is_ignored():
    """A uniform voice output has zero entropy confidence: fused = face exactly."""
    f = Fusion(cfg())
    f.update(0.0, Evidence("voice", 0.0, np.full(7, 1 / 7)))
    u = f.update(0.1, Evidence("face", 0.1, pk("happy")))
    assert u.evidence["voice"].weight == pytest.approx(0.0, abs=1e-6)
    assert u.raw == pytest.approx(pk("happy"), abs=1e-6)


def test_smoothing_is_dt_aware():
    """For a held input, the smoothed value depends on elapsed time, not on the update schedule."""
    c = cfg(smoothing_tau_s=0.8, min_dwell_s=60.0)
    rng = np.random.default_rng(3)
    regular = [0.0] + list(np.round(np.arange(1, 31) / 15.0, 6))           # 15 Hz to 2.0 s
    gaps = rng.uniform(0.01, 0.4, size=200)
    irregular = [0.0] + [t for t in np.cumsum(gaps) if t < 2.0] + [2.0]
    results = []
    for times in (regular, irregular):
        f = Fusion(c)
        f.update(0.0, Evidence("face", 0.0, pk("neutral")))
        for t in times[1:]:
            u = f.update(t, Evidence("face", t, pk("happy")))
        results.append(u.probs)
    assert results[0] == pytest.approx(results[1], abs=1e-5)
    # and it is the first-order response: happy = 0.9 - (0.9 - 1/60) * exp(-2/0.8)
    hi, lo = 0.9, 0.1 / 6
    assert results[0][CLASSES.index("happy")] == pytest.approx(hi - (hi - lo) * math.exp(-2 / 0.8),
                                                               abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_irregular_timing_one_transition(seed):
    """Face frames with random gaps (jitter, drops) and voice windows interleaved."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.02, 0.3, size=200))
    times = times[times < 12.0]
    stream = [(round(float(t), 6), "face", pk("neutral" if t < 4 else "sad")) for t in times]
    stream += hold("voice", pk("neutral", 0.7), 0, 4, hz=2) + hold("voice", pk("sad", 0.7), 4, 12, hz=2)
    _, _, transitions = run(cfg(), merge(stream))
    # candidate from the first update at/after 4.0 s; fires on the first update ≥ 1 s later
    assert_transitions(transitions, [("neutral", "sad", 5.0, 5.0 + 0.3)])


def test_out_of_order_time_and_evidence():
    f = Fusion(cfg())
    f.update(1.0, Evidence("face", 1.0, pk("happy")))
    u = f.update(0.5, Evidence("face", 0.4, pk("sad")))  # older evidence, earlier clock
    assert u.t == 1.0  # time never runs backwards
    assert u.evidence["face"].probs == pytest.approx(pk("happy"), abs=1e-6)  # stale copy ignored


def test_reconfigure_keeps_state():
    c = cfg()
    stream = merge(hold("face", pk("neutral"), 0, 2), hold("face", pk("happy"), 2, 4))
    f, _, tr = run(c, stream)
    assert_transitions(tr, [("neutral", "happy", 3.0, 3.0)])
    before = f.state
    f.reconfigure(cfg(min_dwell_s=0.5, refractory_s=2.0))
    after = f.state
    assert (after.emotion, after.since_t, after.last_transition_t, after.transitions) == \
        (before.emotion, before.since_t, before.last_transition_t, before.transitions) == \
        ("happy", 3.0, 3.0, 1)
    assert after.probs == pytest.approx(before.probs)
    assert f.config.min_dwell_s == 0.5
    # New parameters apply from the next update: dwell 0.5 s, refractory 2 s after the old 3.0 s.
    _, _, tr2 = run(c, hold("face", pk("sad"), 4, 8), fusion=f)
    assert_transitions(tr2, [("happy", "sad", 5.0, 5.0)])  # max(4.0 + 0.5, 3.0 + 2.0)
    assert tr2[0].previous_duration_s == pytest.approx(2.0)


def test_reconfigure_copies_config():
    c = cfg()
    f = Fusion(c)
    c.min_dwell_s = 9.0  # the caller's object changing later must not leak in
    assert f.config.min_dwell_s == 1.0


def test_transition_event_json():
    _, _, tr = run(cfg(), merge(hold("face", pk("happy"), 0, 2), hold("voice", pk("happy", 0.6), 0, 2, hz=2)))
    (e,) = tr
    rec = json.loads(json.dumps(e.to_json()))
    assert set(rec) == {"type", "t", "from", "to", "confidence", "previous_duration_s", "evidence"}
    assert (rec["type"], rec["from"], rec["to"], rec["t"]) == ("transition", "neutral", "happy", 1.0)
    assert rec["previous_duration_s"] == pytest.approx(1.0)
    assert rec["confidence"] > 0.45
    assert set(rec["evidence"]) == {"face", "voice"}
    assert set(rec["evidence"]["face"]) == {"probs", "age_s", "weight"}
    assert set(rec["evidence"]["face"]["probs"]) == set(CLASSES)


def test_update_json_and_shapes():
    f = Fusion(cfg())
    u0 = f.update(0.0)
    assert u0.raw is None and u0.emotion == "neutral"
    assert u0.probs.shape == (7,) and u0.probs.dtype == np.float32
    assert u0.probs == pytest.approx(np.full(7, 1 / 7))
    u = f.update(0.1, Evidence("face", 0.1, pk("happy")))
    rec = json.loads(json.dumps(u.to_json()))
    assert set(rec) == {"type", "t", "face", "voice", "fused", "emotion"}
    assert rec["type"] == "update" and rec["voice"] is None
    assert sum(rec["fused"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("bad", [np.ones(6) / 6, -pk("happy"), np.zeros(7), [np.nan] * 7])
def test_evidence_validation(bad):
    with pytest.raises(ValueError):
        Evidence("face", 0.0, bad)


def test_evidence_normalised_and_readonly():
    e = Evidence("voice", 1, np.arange(1, 8))
    assert e.probs.dtype == np.float32 and e.probs.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        e.probs[0] = 1.0
    with pytest.raises(ValueError):
        Evidence("gesture", 0.0, pk("happy"))
    with pytest.raises(ValueError):
        Fusion(cfg(), initial="bored")


@pytest.mark.parametrize("combiner, face, voice, expected_top", [
    # Sum rule: the face's confident happy (0.7) outweighs voice's mild neutral (0.4).
    ("mean", mix(happy=0.7, neutral=0.25), mix(neutral=0.4, happy=0.01), "happy"),
    # Product rule: voice all but rules happy out (0.01), so neutral, which both allow, wins.
    ("product", mix(happy=0.7, neutral=0.25), mix(neutral=0.4, happy=0.01), "neutral"),
    # Both rules agree when the modalities agree.
    ("mean", pk("fear", 0.7), pk("fear", 0.6), "fear"),
    ("product", pk("fear", 0.7), pk("fear", 0.6), "fear"),
])
def test_combiner_rules(combiner, face, voice, expected_top):
    c = cfg(combiner=combiner, confidence="none", voice_weight=1.0)
    f = Fusion(c)
    f.update(0.0, Evidence("face", 0.0, face))
    u = f.update(0.0, Evidence("voice", 0.0, voice))
    assert CLASSES[int(np.argmax(u.raw))] == expected_top
    assert math.isclose(float(u.raw.sum()), 1.0, rel_tol=1e-5)
    if combiner == "product":
        g = np.sqrt(face * voice)
        np.testing.assert_allclose(u.raw, g / g.sum(), rtol=1e-5)
    else:
        np.testing.assert_allclose(u.raw, (face + voice) / 2, rtol=1e-5)


def test_product_rule_survives_a_zero_probability():
    f = Fusion(cfg(combiner="product", confidence="none", voice_weight=1.0))
    f.update(0.0, Evidence("face", 0.0, np.eye(len(CLASSES))[3]))
    u = f.update(0.0, Evidence("voice", 0.0, np.eye(len(CLASSES))[4]))
    assert np.all(np.isfinite(u.raw)) and math.isclose(float(u.raw.sum()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("combiner, weight, uniform, expected", [
    # One reading, weight 1 (confidence "none"): w0 = 0 leaves it as it is.
    ("mean", 1.0, 0.0, pk("fear", 0.7)),
    ("product", 1.0, 0.0, pk("fear", 0.7)),
    # Mean rule: a mixture with the uniform vector in proportion w / (w + w0).
    ("mean", 1.0, 1.0, (pk("fear", 0.7) + 1 / 7) / 2),
    ("mean", 0.25, 0.75, 0.25 * pk("fear", 0.7) + 0.75 / 7),
    # Product rule: the reading tempered by w / (w + w0), renormalised.
    ("product", 1.0, 1.0, np.sqrt(pk("fear", 0.7)) / np.sqrt(pk("fear", 0.7)).sum()),
    ("product", 0.25, 0.75, pk("fear", 0.7) ** 0.25 / (pk("fear", 0.7) ** 0.25).sum()),
])
def test_uniform_prior_flattens_weak_evidence(combiner, weight, uniform, expected):
    f = Fusion(cfg(combiner=combiner, confidence="none", face_weight=weight,
                   uniform_weight=uniform))
    u = f.update(0.0, Evidence("face", 0.0, pk("fear", 0.7)))
    np.testing.assert_allclose(u.raw, expected, rtol=1e-5)


def test_uniform_prior_lets_strong_evidence_through_and_holds_on_weak():
    """The same fear reading, 1 s at a time: at weight 1 against a prior of 0.2 it enters (0.45);
    faded to a tenth (a voice heard 5.4 s ago with max_age 6 s) the same reading stays under
    the threshold, where without the prior it would decide as firmly as a fresh one."""
    c = cfg(combiner="product", confidence="none", uniform_weight=0.2, min_dwell_s=0.0)
    _, ups, tr = run(c, hold("face", pk("fear", 0.7), 0.0, 1.0))
    assert [e.to_emotion for e in tr] == ["fear"] and ups[0].raw.max() >= 0.45
    weak = cfg(combiner="product", confidence="none", uniform_weight=0.2, min_dwell_s=0.0,
               face_weight=0.1)
    _, ups, tr = run(weak, hold("face", pk("fear", 0.7), 0.0, 1.0))
    assert tr == [] and ups[-1].raw.max() < 0.45
    _, _, tr = run(cfg(combiner="product", confidence="none", min_dwell_s=0.0, face_weight=0.1),
                   hold("face", pk("fear", 0.7), 0.0, 1.0))
    assert [e.to_emotion for e in tr] == ["fear"]


# ------------------------------------------------------------------ reliability, a talking face

@pytest.mark.parametrize("reliability, expected_share", [
    (1.0, 0.5), (0.5, 1 / 3), (0.0, 0.0),
])
def test_reliability_scales_the_weight(reliability, expected_share):
    """Same model output, equal priors: the voice's share of the total weight follows its
    reliability (1 → half, 0.5 → a third, 0 → none)."""
    f = Fusion(cfg(combiner="product", confidence="none", voice_weight=1.0))
    f.update(0.0, Evidence("face", 0.0, pk("happy", 0.7)))
    u = f.update(0.0, Evidence("voice", 0.0, pk("sad", 0.7), reliability=reliability))
    w = {m: e.weight for m, e in u.evidence.items()}
    assert w["voice"] / (w["face"] + w["voice"]) == pytest.approx(expected_share, abs=1e-6)
    assert u.evidence["voice"].reliability == reliability


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan")])
def test_reliability_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match="reliability"):
        Evidence("voice", 0.0, pk("sad"), reliability=bad)


NEUTRAL_TALKER = mix(neutral=0.7, sad=0.12)  # how FER reads a sad person who is speaking
SAD_VOICE = mix(sad=0.7, neutral=0.1)

# (talking_face_neutral, voice present, face probs, expected fused top class, why)
TALKING_FACE = [
    (1.0, True, NEUTRAL_TALKER, "neutral", "off: the face's neutral outvotes the voice"),
    (0.2, True, NEUTRAL_TALKER, "sad", "on: a neutral talking face is weak evidence"),
    (0.0, True, NEUTRAL_TALKER, "sad", "shipped: only the non-neutral share of a talking face"),
    (0.0, False, NEUTRAL_TALKER, "neutral", "silence: a neutral face is the person's expression"),
    (0.0, True, mix(happy=0.7, neutral=0.2), "happy", "an expressive talking face keeps its weight"),
]


@pytest.mark.parametrize("k, speaking, face, top, why", TALKING_FACE,
                         ids=[row[-1] for row in TALKING_FACE])
def test_talking_face_neutral(k, speaking, face, top, why):
    c = cfg(combiner="product", voice_weight=0.5, talking_face_neutral=k)
    f = Fusion(c)
    if speaking:
        f.update(0.0, Evidence("voice", 0.0, SAD_VOICE))
    u = f.update(0.1, Evidence("face", 0.1, face))
    assert CLASSES[int(np.argmax(u.raw))] == top, why
    used = u.evidence["face"]
    np.testing.assert_allclose(used.probs, face, rtol=1e-5)  # the face's output is never altered
    factor = 1.0 - (1.0 - k) * face[CLASSES.index("neutral")] if speaking else 1.0
    assert used.weight == pytest.approx(confidence_of(face, "entropy") * factor, rel=1e-6)


# (neutral probability, talking_face_neutral, weight factor)
TALKING_FACTOR = [(0.8, 0.0, 0.2), (0.1, 0.0, 0.9), (0.8, 1.0, 1.0), (0.5, 0.2, 0.6),
                  (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (1.0, 0.35, 0.35)]


@pytest.mark.parametrize("p_neutral, k, want", TALKING_FACTOR)
def test_talking_face_factor_table(p_neutral, k, want):
    assert talking_face_factor(p_neutral, k) == pytest.approx(want)


def test_talking_face_stops_when_the_voice_goes_stale():
    c = cfg(combiner="product", voice_weight=0.5, talking_face_neutral=0.2, max_age_s=2.0)
    f = Fusion(c)
    f.update(0.0, Evidence("voice", 0.0, SAD_VOICE))
    conf = confidence_of(NEUTRAL_TALKER, "entropy")
    talking = f.update(1.9, Evidence("face", 1.9, NEUTRAL_TALKER))
    assert "voice" in talking.evidence
    assert talking.evidence["face"].weight == pytest.approx(conf * (1 - 0.8 * 0.7), rel=1e-5)
    u = f.update(2.0, Evidence("face", 2.0, NEUTRAL_TALKER))
    assert "voice" not in u.evidence
    assert u.evidence["face"].weight == pytest.approx(conf, rel=1e-6)


def test_the_talking_rule_is_a_field_of_the_modality_table():
    """Which modality yields its neutral share to which is ``Modality.neutral_yields_to``, not
    a name in fusion: a registered third modality that yields to the voice is discounted like
    the face, and the face with the field cleared is not."""
    c = cfg(combiner="product", voice_weight=0.5, talking_face_neutral=0.2)
    conf = confidence_of(NEUTRAL_TALKER, "entropy")
    with registered(Modality("gaze", "gaze", "camera", default_weight=1.0,
                             neutral_yields_to="voice")):
        f = Fusion(c)
        f.update(0.0, Evidence("voice", 0.0, SAD_VOICE))
        u = f.update(0.5, Evidence("gaze", 0.5, NEUTRAL_TALKER))
        assert u.evidence["gaze"].weight == pytest.approx(conf * (1 - 0.8 * 0.7), rel=1e-5)
    assert MODALITIES["face"].neutral_yields_to == "voice"
    plain = dataclasses.replace(MODALITIES["face"], neutral_yields_to=None)
    with mock.patch.dict(MODALITIES, {"face": plain}):
        f = Fusion(c)
        f.update(0.0, Evidence("voice", 0.0, SAD_VOICE))
        u = f.update(0.5, Evidence("face", 0.5, NEUTRAL_TALKER))
        assert u.evidence["face"].weight == pytest.approx(conf, rel=1e-6)


def test_shipped_product_rule_uses_prior_confidence_and_freshness():
    """The shipped defaults (product rule, face 1.0, voice 0.5, entropy confidence, a talking
    face counted by its non-neutral share): the raw fused vector is the weighted geometric mean
    with weight = prior x confidence x freshness (x the talking-face factor)."""
    c = FusionConfig()
    assert (c.combiner, c.face_weight, c.voice_weight, c.confidence,
            c.talking_face_neutral, c.max_age_s) == ("product", 1.0, 0.5, "entropy", 0.0, 6.0)
    face, voice = mix(happy=0.6, neutral=0.3), mix(sad=0.9)
    f = Fusion(c)
    f.update(0.0, Evidence("voice", 0.0, voice))
    u = f.update(1.0, Evidence("face", 1.0, face))
    w_face = 1.0 * confidence_of(face, "entropy") * 1.0 * (1 - face[CLASSES.index("neutral")])
    w_voice = 0.5 * confidence_of(voice, "entropy") * (1 - 1.0 / c.max_age_s)
    assert u.evidence["voice"].weight == pytest.approx(w_voice, rel=1e-6)
    assert u.evidence["face"].weight == pytest.approx(w_face, rel=1e-6)
    logp = (w_face * np.log(face) + w_voice * np.log(voice)) / (w_face + w_voice)
    expected = np.exp(logp - logp.max())
    np.testing.assert_allclose(u.raw, expected / expected.sum(), rtol=1e-4)
    # The voice, sure of sad, moves a speaking face only 0.6 sure of happy; with the
    # talking-face factor off and the face's prior alone it would not.
    assert CLASSES[int(np.argmax(u.raw))] == "sad"
    off = Fusion(c.model_copy(update={"talking_face_neutral": 1.0, "voice_weight": 0.2}))
    off.update(0.0, Evidence("voice", 0.0, voice))
    assert CLASSES[int(np.argmax(off.update(1.0, Evidence("face", 1.0, face)).raw))] == "happy"


# ------------------------------------------------------------- details the mutation run found
# (scripts/mutation.sh; docs/testing.md lists the mutants left alive and why)

def test_json_records_round_as_documented():
    f = Fusion(cfg(min_dwell_s=0.0, refractory_s=0.0, confidence="max_prob"))
    f.update(0.11111, Evidence("face", 0.11111, pk("happy", 0.3)))
    u = f.update(1.987654321, Evidence("face", 1.987654321, pk("sad", 0.912345678)))
    rec = u.to_json()
    assert rec["t"] == 1.9877 and rec["emotion"] == "sad"
    assert rec["face"]["sad"] == round(float(u.evidence["face"].probs[CLASSES.index("sad")]), 6)
    face = u.transition.to_json()["evidence"]["face"]
    assert face["age_s"] == 0.0 and face["weight"] == round(float(u.evidence["face"].weight), 6)
    assert face["probs"]["sad"] == round(float(u.evidence["face"].probs[CLASSES.index("sad")]), 6)
    tr = u.transition.to_json()
    assert tr["t"] == 1.9877 and tr["confidence"] == round(u.transition.confidence, 6)
    assert tr["previous_duration_s"] == 1.8765  # 1.876544321 s
    g = Fusion(cfg())
    g.update(0.0, Evidence("face", 0.0, pk("happy")))
    aged = g.update(0.123456789)
    rec = aged.evidence["face"].to_json()
    assert rec["age_s"] == 0.1235 and rec["weight"] == round(aged.evidence["face"].weight, 6)
    assert rec["weight"] != aged.evidence["face"].weight  # rounded, not the raw float


def test_used_evidence_fields():
    c = cfg(max_age_s=2.0)
    f = Fusion(c)
    p = pk("fear", 0.6)
    f.update(1.0, Evidence("voice", 1.0, p))
    u = f.update(1.5)
    ue = u.evidence["voice"]
    assert (ue.modality, ue.t, ue.age_s) == ("voice", 1.0, 0.5)
    assert ue.confidence == pytest.approx(confidence_of(p, "entropy"))
    assert ue.freshness == pytest.approx(0.75)
    assert ue.weight == pytest.approx(c.voice_weight * ue.confidence * 0.75)
    assert u.raw.dtype == np.float32 and u.probs.dtype == np.float32


def test_evidence_exactly_max_age_old_is_not_used():
    f = Fusion(cfg(max_age_s=3.0))
    f.update(0.0, Evidence("face", 0.0, pk("happy")))
    u = f.update(3.0)
    assert u.evidence == {} and u.raw is None


def test_evidence_with_the_same_time_replaces_the_stored_one():
    f = Fusion(cfg(confidence="none"))
    f.update(1.0, Evidence("face", 1.0, pk("happy")))
    u = f.update(1.0, Evidence("face", 1.0, pk("sad")))
    assert CLASSES[int(np.argmax(u.raw))] == "sad"


def test_state_snapshot_counts_updates_and_transitions():
    f = Fusion(cfg(min_dwell_s=0.0, refractory_s=0.0, smoothing_tau_s=0.0))
    assert f.state.to_json() == {"t": None, "emotion": "neutral", "since_t": None, "probs": None,
                                 "candidate": None, "candidate_since": None,
                                 "last_transition_t": None, "updates": 0, "transitions": 0}
    f.update(0.0, Evidence("face", 0.0, pk("neutral")))
    f.update(1.0, Evidence("face", 1.0, pk("happy")))
    f.update(2.0, Evidence("face", 2.0, pk("sad")))
    st = f.state.to_json()
    assert st["updates"] == 3 and st["transitions"] == 2 and st["emotion"] == "sad"
    assert st["t"] == 2.0 and st["since_t"] == 2.0 and st["last_transition_t"] == 2.0
    assert st["candidate"] is None and st["candidate_since"] is None
    assert st["probs"]["sad"] == pytest.approx(0.9, abs=1e-6)
    g = Fusion(cfg(min_dwell_s=5.0))
    g.update(0.0, Evidence("face", 0.0, pk("happy")))
    g.update(0.5, Evidence("face", 0.5, pk("happy")))
    st = g.state.to_json()
    assert (st["candidate"], st["candidate_since"], st["transitions"]) == ("happy", 0.0, 0)


def test_thresholds_are_inclusive():
    """enter_threshold is reached AT the threshold; the current emotion is kept AT exit."""
    c = cfg(min_dwell_s=0.0, refractory_s=0.0, confidence="none", enter_threshold=0.5,
            exit_threshold=0.25)
    f = Fusion(c)
    half = np.full(7, 0.0625)  # binary fractions: every sum below is exact
    half[CLASSES.index("happy")], half[CLASSES.index("neutral")] = 0.5, 0.25
    half[CLASSES.index("fear")] = 0.0
    assert half.sum() == 1.0
    f.update(0.0, Evidence("face", 0.0, half))
    # happy is at enter (0.5) but neutral is AT exit (0.25): kept, no transition yet
    assert f.emotion == "neutral"
    below = half.copy()
    below[CLASSES.index("neutral")] = 0.125
    below[CLASSES.index("sad")] += 0.125
    u = f.update(0.1, Evidence("face", 0.1, below))
    assert u.transition is not None and u.transition.to_emotion == "happy"


def test_sustained_threshold_and_dwell_are_inclusive():
    """A lead exactly AT sustained_threshold counts, and fires exactly sustained_dwell_s (less
    the float slack) after it began."""
    c = cfg(min_dwell_s=0.0, refractory_s=0.0, confidence="none", enter_threshold=0.75,
            exit_threshold=0.25, sustained_threshold=0.5, sustained_dwell_s=2.0)
    at = np.full(7, 0.0625)  # binary fractions: every sum is exact
    at[CLASSES.index("happy")], at[CLASSES.index("neutral")] = 0.5, 0.125
    at[CLASSES.index("fear")] = 0.0625 + 0.0625
    assert at.sum() == 1.0
    f = Fusion(c)
    f.update(0.0, Evidence("face", 0.0, at))
    edge = 2.0 - 1e-9
    assert f.update(1.9, Evidence("face", 1.9, at)).transition is None
    u = f.update(edge, Evidence("face", edge, at))
    assert u.transition is not None and u.transition.to_emotion == "happy"


def test_error_messages_name_the_problem():
    with pytest.raises(ValueError, match=r"face evidence: expected 7 probabilities in CLASSES "
                                         r"order, got shape \(6,\)"):
        Evidence("face", 0.0, np.full(6, 1 / 6))
    bad = pk("happy")
    bad[0] = -0.1
    with pytest.raises(ValueError, match="voice evidence: probabilities must be finite and "
                                         "non-negative"):
        Evidence("voice", 0.0, bad)
    with pytest.raises(ValueError, match="face evidence: probabilities sum to 0"):
        Evidence("face", 0.0, np.zeros(7))
    with pytest.raises(ValueError, match=r"unknown modality 'ears' \(expected one of "):
        Evidence("ears", 0.0, pk("happy"))
    with pytest.raises(ValueError, match="face evidence: time must be finite, got nan"):
        Evidence("face", float("nan"), pk("happy"))
    with pytest.raises(ValueError, match="unknown confidence method 'vibes'"):
        confidence_of(pk("happy"), "vibes")
    with pytest.raises(ValueError, match="initial emotion 'calm' is not one of"):
        Fusion(cfg(), initial="calm")
    with pytest.raises(ValueError, match="update time must be finite, got inf"):
        Fusion(cfg()).update(float("inf"))


def test_evidence_normalises_its_inputs():
    ev = Evidence("face", 1, pk("happy").reshape(1, 7) * 2)
    assert type(ev.t) is float and ev.t == 1.0
    assert ev.probs.shape == (7,) and float(ev.probs.sum()) == pytest.approx(1.0)


def test_dwell_and_refractory_boundaries_include_the_float_slack():
    # A dwell or refractory time that falls short of its setting only by float rounding
    # (at most 1e-9 s) counts as reached: the comparison is inclusive at the slack's edge.
    c = cfg(min_dwell_s=1.0, refractory_s=2.0, confidence="none")
    edge = 1.0 - 1e-9
    f = Fusion(c)
    f.update(0.0, Evidence("face", 0.0, pk("happy")))
    assert f.update(edge, Evidence("face", edge, pk("happy"))).transition is not None
    f.update(edge + 0.5, Evidence("face", edge + 0.5, pk("sad")))
    t = edge + (2.0 - 1e-9)  # refractory_s after the first transition, less the slack
    assert f.update(t, Evidence("face", t, pk("sad"))).transition is not None
