"""Temperature scaling, prior shift and ECE (redsg_edge.calibration), and that FerModel applies
its sidecar."""

from __future__ import annotations

import json

import numpy as np
import pytest

from redsg_edge.calibration import (Calibration, expected_calibration_error, fit_temperature,
                                    load_calibration, prior_shift_bias,
                                    sidecar_path, temperature_scale)
from redsg_edge.errors import ModelError


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 4.0])
def test_temperature_scale_keeps_argmax_and_moves_entropy(t):
    rng = np.random.default_rng(0)
    p = _softmax(rng.normal(0, 2, (200, 7)))
    q = temperature_scale(p, t)
    assert q.dtype == np.float32 and np.allclose(q.sum(1), 1, atol=1e-5)
    assert (q.argmax(1) == p.argmax(1)).all()
    ent = lambda x: -(x * np.log(np.maximum(x, 1e-12))).sum(1).mean()  # noqa: E731
    if t == 1.0:
        assert np.allclose(q, p, atol=1e-6)
    else:
        assert (ent(q) > ent(p)) == (t > 1)


def test_temperature_scale_matches_scaling_the_logits():
    z = np.array([[2.0, 0.5, -1.0, 0.0, 0.3, -0.2, 1.0]])
    assert np.allclose(temperature_scale(_softmax(z), 2.5), _softmax(z / 2.5), atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_scale_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        temperature_scale(np.full(7, 1 / 7), bad)


@pytest.mark.parametrize("true_t", [0.6, 1.0, 2.0, 3.5])
def test_fit_temperature_recovers_a_planted_temperature(true_t):
    # Labels drawn from softmax(z / T): the model's softmax(z) is miscalibrated by exactly T.
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (20000, 7))
    truth = _softmax(z / true_t)
    labels = np.array([rng.choice(7, p=row) for row in truth])
    t = fit_temperature(_softmax(z), labels)
    assert t == pytest.approx(true_t, rel=0.06)
    before = expected_calibration_error(_softmax(z), labels)
    after = expected_calibration_error(temperature_scale(_softmax(z), t), labels)
    assert after < 0.02
    if true_t != 1.0:
        assert after < before


def test_ece_of_known_cases():
    # Always 90 % sure and right 90 % of the time: calibrated. Always 90 % sure, always wrong: 0.9.
    p = np.tile([0.9, 0.1 / 6, 0.1 / 6, 0.1 / 6, 0.1 / 6, 0.1 / 6, 0.1 / 6], (100, 1))
    right = np.zeros(100, int)
    right[:10] = 1
    assert expected_calibration_error(p, right) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(p, np.ones(100, int)) == pytest.approx(0.9)


def test_fit_temperature_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        fit_temperature(np.full((3, 7), 1 / 7), np.zeros(2, int))


def test_load_calibration_temperature(tmp_path):
    model = tmp_path / "m.tflite"
    assert sidecar_path(model) == tmp_path / "m.json"
    assert load_calibration(model).temperature == 1.0
    sidecar_path(model).write_text(json.dumps({"temperature": 1.7}))
    assert load_calibration(model).temperature == 1.7
    for bad in ("{not json", json.dumps({"temperature": -2}), json.dumps({"temperature": "hot"}),
                json.dumps([1, 2])):
        sidecar_path(model).write_text(bad)
        with pytest.raises(ModelError, match="m.json"):
            load_calibration(model)


# (train prior, strength, posterior, expected shifted posterior). Saerens et al. 2002: a
# posterior equal to the training prior carries no evidence, so the full shift (s = 1) makes it
# uniform; s = 0 and a uniform training prior change nothing; s = 0.5 goes half way in log space.
SHIFTS = [
    ([0.8, 0.2], 1.0, [0.8, 0.2], [0.5, 0.5]),
    ([0.8, 0.2], 0.0, [0.8, 0.2], [0.8, 0.2]),
    ([0.5, 0.5], 1.0, [0.9, 0.1], [0.9, 0.1]),
    ([0.8, 0.2], 0.5, [0.8, 0.2], [2 / 3, 1 / 3]),
    ([0.6, 0.3, 0.1], 1.0, [0.2, 0.3, 0.5], [1 / 19, 3 / 19, 15 / 19]),  # ∝ posterior / prior
]


@pytest.mark.parametrize("prior, s, post, want", SHIFTS)
def test_prior_shift_table(prior, s, post, want):
    b = prior_shift_bias(prior, s)
    assert b.shape == (len(prior),) and abs(b.mean()) < 1e-12
    q = temperature_scale(np.array(post), 1.0, b)
    assert q.dtype == np.float32 and np.allclose(q, want, atol=1e-6)
    assert np.allclose(Calibration(1.0, b).apply(np.array(post)), want, atol=1e-6)


def test_prior_shift_follows_the_temperature():
    b = prior_shift_bias([0.7, 0.2, 0.1], 0.7)
    p = np.array([0.5, 0.3, 0.2])
    want = _softmax(np.log(p) / 0.8 + b)
    assert np.allclose(temperature_scale(p, 0.8, b), want, atol=1e-6)


@pytest.mark.parametrize("prior, s", [([1.0], 1.0), ([0.5, 0.0, 0.5], 1.0), ([0.5, -0.5], 1.0),
                                      ([0.5, float("nan")], 1.0), ([0.5, 0.5], -0.1),
                                      ([0.5, 0.5], float("inf"))])
def test_prior_shift_rejects_bad_input(prior, s):
    with pytest.raises(ValueError):
        prior_shift_bias(prior, s)


def test_load_calibration(tmp_path):
    model = tmp_path / "m.tflite"
    assert load_calibration(model, 3).log_bias is None
    doc = {"temperature": 0.9, "prior_shift": {"train_prior": [0.6, 0.3, 0.1], "strength": 0.5}}
    sidecar_path(model).write_text(json.dumps(doc))
    cal = load_calibration(model, 3)
    assert cal.temperature == 0.9
    assert np.allclose(cal.log_bias, prior_shift_bias([0.6, 0.3, 0.1], 0.5))
    for shift in ({"train_prior": [0.5, 0.5], "strength": 0.5},  # 2 classes, the model has 3
                  {"train_prior": [0.6, 0.3, 0.1]}, {"strength": 1.0},
                  {"train_prior": [0.6, 0.3, 0.1], "strength": -1}, [0.6, 0.3, 0.1]):
        sidecar_path(model).write_text(json.dumps({"temperature": 0.9, "prior_shift": shift}))
        with pytest.raises(ModelError, match="m.json"):
            load_calibration(model, 3)


def test_strength_overrides_the_sidecar(tmp_path):
    model = tmp_path / "m.tflite"
    prior = [0.6, 0.3, 0.1]
    sidecar_path(model).write_text(json.dumps(
        {"temperature": 0.9, "prior_shift": {"train_prior": prior, "strength": 0.5}}))
    assert np.allclose(load_calibration(model, 3, 1.2).log_bias, prior_shift_bias(prior, 1.2))
    off = load_calibration(model, 3, 0.0)
    assert off.temperature == 0.9 and off.log_bias is None
    # A shift asked of a model whose sidecar holds no training prior names the file and the key.
    sidecar_path(model).write_text(json.dumps({"temperature": 0.9}))
    assert load_calibration(model, 3, 0.0).log_bias is None
    with pytest.raises(ModelError, match=r"m\.json.*vision\.fer_prior_shift"):
        load_calibration(model, 3, 0.7)
    sidecar_path(model).unlink()
    with pytest.raises(ModelError, match="no training class prior"):
        load_calibration(model, 3, 0.7)


def test_fer_model_follows_vision_fer_prior_shift():
    from redsg_edge.config import Config
    from redsg_edge.datasets import load_fer2013
    from redsg_edge.vision import FerModel

    vision = Config().vision
    assert vision.fer_prior_shift is None  # the sidecar's strength by default
    shipped = FerModel.from_config(vision)
    off = FerModel.from_config(vision.model_copy(update={"fer_prior_shift": 0.0}))
    assert off.calibration.log_bias is None
    assert off.calibration.temperature == shipped.calibration.temperature
    x, _y, _ = load_fer2013("test", limit_per_class=3)
    p_off = np.stack([off.predict(c) for c in x])
    p_on = np.stack([shipped.predict(c) for c in x])
    # The shift lifts disgust, the class FER2013 is shortest of, on every face.
    assert (p_on[:, 1] > p_off[:, 1]).all()


def test_fer_model_applies_its_shipped_calibration(tmp_path):
    from redsg_edge.config import Config
    from redsg_edge.datasets import load_fer2013
    from redsg_edge.vision import FerModel

    shipped = Config().vision.fer_model
    fer = FerModel(shipped)
    cal = load_calibration(shipped, 7)
    assert fer.calibration.temperature == cal.temperature != 1.0
    # The shift raises the classes FER2013 is short of (disgust: 1.5 % of its training faces)
    # and lowers the common ones (happy: 25 %).
    assert cal.log_bias is not None and cal.log_bias.argmax() == 1 and cal.log_bias.argmin() == 3
    raw = tmp_path / "fer.tflite"
    raw.write_bytes(shipped.read_bytes())  # no sidecar beside the copy: uncalibrated
    plain = FerModel(raw)
    assert plain.calibration.temperature == 1.0 and plain.calibration.log_bias is None
    x, _y, _ = load_fer2013("test", limit_per_class=2)
    for crop in x:
        assert np.allclose(fer.predict(crop), cal.apply(plain.predict(crop)), atol=1e-5)


def test_reload_applies_fer_prior_shift_or_refuses_whole(tmp_path):
    """SIGHUP's path (Pipeline.reconfigure → Perception.reconfigure) swaps the FER calibration
    live; a shift the model cannot take raises before anything changes."""
    import shutil

    from redsg_edge.config import Config
    from redsg_edge.perception import Perception

    cfg = Config()
    perception = Perception.load(cfg, face=True, voice=False)
    fer = perception.vision.fer
    shipped = fer.calibration
    off = cfg.model_copy(update={"vision": cfg.vision.model_copy(update={"fer_prior_shift": 0.0})})
    perception.reconfigure(off)
    assert fer.calibration is not shipped and fer.calibration.log_bias is None
    assert perception.cfg is off
    perception.reconfigure(cfg)
    assert np.allclose(fer.calibration.log_bias, shipped.log_bias)
    # A FER model without a sidecar cannot take a shift: refused, nothing changed.
    bare = tmp_path / "fer.tflite"
    shutil.copy(cfg.vision.fer_model, bare)
    vision = cfg.vision.model_copy(update={"fer_model": bare, "fer_prior_shift": 0.0})
    plain = cfg.model_copy(update={"vision": vision})
    p2 = Perception.load(plain, face=True, voice=False)
    before = p2.vision.fer.calibration
    ask = plain.model_copy(update={"vision": vision.model_copy(update={"fer_prior_shift": 0.7})})
    with pytest.raises(ModelError, match="vision.fer_prior_shift"):
        p2.reconfigure(ask)
    assert p2.vision.fer.calibration is before and p2.cfg is plain
    perception.close()
    p2.close()
