"""Calibration of a classifier's probabilities: temperature scaling, prior shift and expected
calibration error.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides
the logits by one scalar T fitted on held-out data by minimising the negative log-likelihood; it
changes no argmax, only how sure the output claims to be. Late fusion weighs each modality by
its confidence, so an over-confident model would outvote a better calibrated one: both models
are calibrated before they are fused.

A classifier trained on an unbalanced corpus also carries that corpus's class prior in its
outputs (FER2013: happy 25 %, disgust 1.5 % of the training faces), which costs recall on the
rare classes wherever the people seen are distributed otherwise. The *prior shift* (Saerens et
al., "Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation
14(1), 2002; as post-hoc logit adjustment, Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021) multiplies the calibrated posterior by ``(1/π)^s``: ``s = 1`` moves it
to a uniform prior, ``0 < s < 1`` part of the way.

The fitted T of a model ``NAME.tflite`` lives beside it in ``NAME.json`` (``{"temperature": T,
"prior_shift": {"train_prior": [...], "strength": s}, ...}``, written by the script that
fitted it, also on the model card). No file means T = 1 and no shift. Pure numpy; no I/O
except :func:`load_calibration`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

__all__ = ["temperature_scale", "softmax", "fit_temperature", "expected_calibration_error",
           "prior_shift_bias", "Calibration", "load_calibration",
           "sidecar_path"]

_P_MIN = 1e-7  # int8 outputs are often exactly 0; log(0) would make T meaningless


def temperature_scale(probs: np.ndarray, temperature: float,
                      log_bias: np.ndarray | None = None) -> np.ndarray:
    """Softmax outputs re-scaled as if their logits were divided by ``temperature``, then
    shifted by ``log_bias``: ``softmax(log p / T + b)``.

    probs: (..., K) non-negative, summing to 1 along the last axis (a softmax output; its log is
    the logits up to a constant per row). temperature: > 0; 1 with no bias returns ``probs``
    unchanged, > 1 softens, < 1 sharpens. log_bias: (K,) added after the temperature (a prior
    shift, :func:`prior_shift_bias`), or None. Returns (..., K) float32 summing to 1.
    Raises ValueError for a non-positive or non-finite temperature.
    """
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 and log_bias is None:
        return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)
    z = np.log(np.maximum(p, _P_MIN))
    if log_bias is not None:
        z = z + temperature * np.asarray(log_bias, dtype=np.float64)  # softmax divides by T
    return softmax(z, temperature)


def prior_shift_bias(train_prior, strength: float) -> np.ndarray:
    """The log-space bias that moves a posterior from the training prior towards a uniform one.

    train_prior: (K,) class frequencies of the training data (positive; normalised here).
    strength: s ≥ 0; 0 = no shift, 1 = the full shift to a uniform prior (Saerens et al. 2002).
    Returns (K,) float64 ``−s·log π``, centred to mean 0 (a constant changes no softmax).
    Raises ValueError for a prior that is not K > 1 positive finite numbers or a negative or
    non-finite strength.
    """
    pi = np.asarray(train_prior, dtype=np.float64).reshape(-1)
    if pi.size < 2 or not np.all(np.isfinite(pi)) or np.any(pi <= 0):
        raise ValueError(f"train_prior must be at least 2 positive numbers, got {pi.tolist()}")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"prior shift strength must be a number ≥ 0, got {strength}")
    b = -strength * np.log(pi / pi.sum())
    return b - b.mean()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) along the last axis: (..., K) float → (..., K) float32
    summing to 1. Raises ValueError for a non-positive or non-finite temperature."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    q = temperature_scale(probs, temperature).astype(np.float64)
    return float(-np.mean(np.log(np.maximum(q[np.arange(len(labels)), labels], 1e-12))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, lo: float = 0.05,
                    hi: float = 20.0) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    probs: (N, K) softmax outputs on held-out data (never the data reported on); labels: (N,)
    int class indices. NLL is convex in 1/T for fixed logits, so a golden-section search over
    log T in [lo, hi] finds the optimum to 1e-4 relative. Returns T rounded to 4 digits.
    Raises ValueError on empty or mismatched inputs.
    """
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) == 0 or len(probs) != len(labels):
        raise ValueError(f"need (N, K) probs and (N,) labels, got {probs.shape} and {labels.shape}")
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(probs, labels, math.exp(c)), _nll(probs, labels, math.exp(d))
    while b - a > 1e-4:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(probs, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(probs, labels, math.exp(d))
    return round(math.exp((a + b) / 2), 4)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017, eq. 3): the mean over
    ``bins`` equal-width confidence bins of |accuracy − mean confidence|, weighted by the bin's
    share of samples. probs: (N, K); labels: (N,) int. Returns a fraction in 0..1."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(float((pred[m] == labels[m]).mean()) - float(conf[m].mean()))
    return float(ece)


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``models/NAME.tflite`` → ``models/NAME.json``, where the model's calibration is kept."""
    return Path(model_path).with_suffix(".json")


@dataclass(frozen=True, eq=False)
class Calibration:
    """A model's output calibration: ``temperature`` (> 0) and an optional prior-shift
    ``log_bias`` ((K,) float64, :func:`prior_shift_bias`) of ``strength`` (0 = none)."""

    temperature: float = 1.0
    log_bias: np.ndarray | None = None
    strength: float = 0.0

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """probs: (..., K) softmax outputs → (..., K) float32 calibrated, summing to 1."""
        return temperature_scale(probs, self.temperature, self.log_bias)


def load_calibration(model_path: str | os.PathLike, num_classes: int | None = None,
                     strength: float | None = None) -> Calibration:
    """The calibration fitted for ``model_path`` from its sidecar JSON (``"temperature"``, and
    ``"prior_shift": {"train_prior": [num_classes numbers], "strength": s}`` if present);
    ``Calibration()`` (T 1, no shift) when there is no sidecar. ``num_classes`` None skips the
    class-count check. ``strength`` (≥ 0) replaces the sidecar's s (0 = no shift; the owner's
    ``vision.fer_prior_shift``); None keeps it.

    Raises ModelError naming the file when the sidecar exists but is not JSON, its temperature is
    not a positive number, or its prior shift is malformed or has the wrong number of classes;
    and when ``strength`` > 0 is asked of a model without a sidecar training prior.
    """
    path = sidecar_path(model_path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        t = float(doc.get("temperature", 1.0))
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature {t} is not a positive number")
        shift = doc.get("prior_shift")
        bias, s = None, 0.0
        if shift is not None and strength != 0:
            s = float(shift["strength"]) if strength is None else strength
            bias = prior_shift_bias(shift["train_prior"], s)
            if num_classes is not None and bias.shape != (num_classes,):
                raise ValueError(f"prior_shift.train_prior has {bias.size} classes, the model "
                                 f"{num_classes}")
    except (ValueError, TypeError, AttributeError, KeyError, OSError) as exc:
        raise ModelError(f"{path}: unreadable calibration ({exc}); fix or delete the file "
                         f"(without it the model runs uncalibrated)") from None
    if strength and shift is None:
        raise ModelError(f"{path}: no training class prior (\"prior_shift\") for a prior shift "
                         f"of strength {strength}; write it with scripts/calibrate_fer.py, or "
                         "set the strength (vision.fer_prior_shift) to 0 or leave it unset")
    return Calibration(t, bias, s)

