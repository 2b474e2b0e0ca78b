"""Calibration of a classifier's probabilities: temperature scaling and expected calibration error.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides
the logits by one scalar T fitted on held-out data by minimising the negative log-likelihood; it
changes no argmax, only how sure the output claims to be. Late fusion weighs each modality by
its confidence, so an over-confident model would outvote a better calibrated one: both models
are calibrated before they are fused.

The fitted T of a model ``NAME.tflite`` lives beside it in ``NAME.json`` (``{"temperature": T,
...}``, written by the training or evaluation script that fitted it, also on the model card).
No file means T = 1. Pure numpy; no I/O except :func:`load_temperature`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import ModelError

__all__ = ["temperature_scale", "softmax", "fit_temperature", "expected_calibration_error",
           "load_temperature", "sidecar_path"]

_P_MIN = 1e-7  # int8 outputs are often exactly 0; log(0) would make T meaningless


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax outputs re-scaled as if their logits were divided by ``temperature``.

    probs: (..., K) non-negative, summing to 1 along the last axis (a softmax output; its log is
    the logits up to a constant per row). temperature: > 0; 1 returns ``probs`` unchanged,
    > 1 softens, < 1 sharpens. Returns (..., K) float32 summing to 1.
    Raises ValueError for a non-positive or non-finite temperature.
    """
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)
    return softmax(np.log(np.maximum(p, _P_MIN)), temperature)


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


def load_temperature(model_path: str | os.PathLike) -> float:
    """The temperature fitted for ``model_path`` (from its sidecar JSON), 1.0 when there is none.

    Raises ModelError naming the file when the sidecar exists but is not JSON with a positive
    number under ``"temperature"``.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return 1.0
    try:
        t = json.loads(path.read_text(encoding="utf-8")).get("temperature", 1.0)
        t = float(t)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature {t} is not a positive number")
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        raise ModelError(f"{path}: unreadable calibration ({exc}); fix or delete the file "
                         f"(without it the model runs uncalibrated)") from None
    return t
