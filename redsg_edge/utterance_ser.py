"""Utterance SER: one label per utterance from its functionals, normalised to the voices heard.

A model trained on acted studio speech meets another microphone, room, language and speaking
style on the device. The functionals (:mod:`redsg_edge.functionals`) are level-free by
construction; what remains of the shift is removed by z-scoring them with the running mean and
variance of the utterances this device has heard (:class:`FeatureNorm`), started from the
training set's statistics weighted as ``PRIOR`` utterances (unsupervised feature normalisation;
cf. Schuller et al. 2010, "Cross-corpus acoustic emotion recognition", IEEE TAC 1(2), where
per-corpus normalisation was the largest single gain). On URDU, never trained on, this took the
4-class accuracy from 36–38 % (training statistics only) to 45–46 % (models/README.md).

``models/ser_utt_int8.tflite`` takes the clipped z-scores (``DIM``,) and returns 7 logits;
``models/ser_utt_int8.json`` carries the training mean and std, the prior weight, the clip and
the calibration temperature (``scripts/train_ser_utterance.py``). The model ends before its
softmax because an int8 probability output has steps of 1/256: the small probabilities vanish,
and temperature scaling, which works on their logarithms, can then not calibrate it (expected
calibration error 0.067 after scaling, against 0.042 for the same model's float output); its
sidecar says ``"output": "logits"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import CLASSES
from .calibration import Calibration, sidecar_path, softmax
from .functionals import DIM, FEATURES_VERSION, MIN_SAMPLES, utterance_functionals
from .litert import LiteRTClassifier, ModelError

#: Weight of the training statistics in the running normalisation, in utterances. A heavier
#: prior holds the studio statistics longer: on URDU 1 → 56.8 %, 10 → 55.8 %, 50 → 50.2 %
#: (ComParE functionals, models/README.md); 10 settles within a few minutes of talk.
PRIOR = 10.0
#: z-scores are clipped here before the int8 model: rare outliers would otherwise set its scale.
CLIP_Z = 8.0


class FeatureNorm:
    """Running mean and variance of functionals vectors (Welford's update), started from a prior.

    ``normalise(v, learn=True)``: v (DIM,) float; folds v into the statistics (unless ``learn``
    is False or the norm is ``frozen``), then returns (v − mean) / std, (DIM,) float32.
    ``count``: utterances folded in, the prior included. ``save(path)`` / ``load(path)``: an
    ``.npz`` of mean, m2 and count; ``load`` raises ValueError naming the file when it does not
    fit (another feature set).
    """

    def __init__(self, mean: np.ndarray, m2: np.ndarray, count: float) -> None:
        self.mean = np.asarray(mean, np.float64).copy()
        self.m2 = np.asarray(m2, np.float64).copy()
        self.count = float(count)
        self.frozen = False

    @classmethod
    def from_prior(cls, mean: np.ndarray, std: np.ndarray, prior: float) -> "FeatureNorm":
        """``prior`` pseudo-utterances at (mean, std), each (DIM,)."""
        std = np.asarray(std, np.float64)
        return cls(mean, std ** 2 * prior, prior)

    def update(self, v: np.ndarray) -> None:
        """Fold one vector (DIM,) into the statistics (a frozen norm ignores it)."""
        if self.frozen:
            return
        v = np.asarray(v, np.float64)
        self.count += 1
        d = v - self.mean
        self.mean += d / self.count
        self.m2 += d * (v - self.mean)

    def normalise(self, v: np.ndarray, learn: bool = True) -> np.ndarray:
        """(v − mean) / std after folding v in (when ``learn``); (DIM,) float32."""
        if learn:
            self.update(v)
        sd = np.sqrt(self.m2 / self.count + 1e-12)
        return ((np.asarray(v, np.float64) - self.mean) / sd).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics to ``path`` (.npz), atomically (a temporary file renamed)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mean=self.mean, m2=self.m2, count=self.count, features=FEATURES_VERSION)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureNorm":
        """Statistics saved by :meth:`save`. Raises ValueError naming the file when it is
        unreadable or holds another feature set."""
        try:
            with np.load(path) as z:
                mean, m2, count, feat = z["mean"], z["m2"], float(z["count"]), str(z["features"])
        except Exception as exc:
            raise ValueError(f"{path}: not a saved voice normalisation ({exc})") from None
        if feat != FEATURES_VERSION or mean.shape != (DIM,) or m2.shape != (DIM,) or count <= 0:
            raise ValueError(f"{path}: saved for features {feat!r} {mean.shape}, this model needs "
                             f"{FEATURES_VERSION!r} ({DIM},); delete it to start afresh")
        return cls(mean, m2, count)


class UtteranceSer:
    """The int8 utterance SER (see the module docstring).

    path: ``.tflite`` with input (DIM,) and 7 outputs, and its ``.json`` sidecar (mean, std,
    prior_utterances, clip_z, temperature, features, ``"output": "logits"``).
    ``predict(pcm, norm, learn=True)``: pcm (n,) int16 at 16 kHz, n ≥ ``MIN_SAMPLES`` (65 ms);
    returns (7,) float32 probabilities in CLASSES order, summing to 1. Raises ModelError naming
    the file when the model or its sidecar is missing or made for another feature set;
    ValueError for too short audio.
    """

    #: Shortest audio the functionals take, samples.
    min_samples = MIN_SAMPLES

    def __init__(self, path: str | os.PathLike, num_threads: int = 1) -> None:
        self.clf = LiteRTClassifier(path, (DIM,), len(CLASSES), num_threads)
        self.path = self.clf.path
        side = sidecar_path(self.path)
        try:
            meta = json.loads(side.read_text())
            self.mean = np.asarray(meta["mean"], np.float64)
            self.std = np.asarray(meta["std"], np.float64)
            self.prior = float(meta.get("prior_utterances", PRIOR))
            self.clip = float(meta.get("clip_z", CLIP_Z))
            #: Temperature only (no prior shift), applied to the logits.
            self.calibration = Calibration(float(meta.get("temperature", 1.0)))
            feat, output = meta["features"], meta.get("output")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{side}: the utterance SER's sidecar is missing or broken ({exc}); "
                             "it comes with the model (scripts/train_ser_utterance.py)") from None
        if feat != FEATURES_VERSION or self.mean.shape != (DIM,) or self.std.shape != (DIM,):
            raise ModelError(f"{self.path}: made for features {feat!r}, this version computes "
                             f"{FEATURES_VERSION!r} ({DIM} values); retrain it")
        if output != "logits":
            raise ModelError(f"{self.path}: its sidecar does not say it outputs logits (it "
                             "ends in a softmax, which int8 cannot calibrate); retrain it")

    def new_norm(self) -> FeatureNorm:
        """A fresh running normalisation at the training statistics."""
        return FeatureNorm.from_prior(self.mean, self.std, self.prior)

    def batch_norm(self, feats) -> FeatureNorm:
        """A frozen normalisation that has heard every functionals vector of ``feats``
        (iterable of (DIM,)), as ``analyze``'s calibration pass leaves it."""
        norm = self.new_norm()
        for f in feats:
            norm.update(f)
        norm.frozen = True
        return norm

    def predict(self, pcm: np.ndarray, norm: FeatureNorm, learn: bool = True) -> np.ndarray:
        """One utterance's probabilities (see the class docstring); ``norm`` learns from it
        unless ``learn`` is False or it is frozen."""
        return softmax(self.raw_logits(utterance_functionals(pcm), norm, learn),
                       self.calibration.temperature)

    def raw_probs(self, feats: np.ndarray, norm: FeatureNorm, learn: bool = True) -> np.ndarray:
        """The model's own probabilities for functionals ``feats`` (DIM,), before the
        temperature: (7,) float32 summing to 1."""
        return softmax(self.raw_logits(feats, norm, learn))

    def raw_logits(self, feats: np.ndarray, norm: FeatureNorm, learn: bool = True) -> np.ndarray:
        """The model's logits for functionals ``feats`` (DIM,): (7,) float32."""
        z = norm.normalise(feats, learn)
        return self.clf.predict(np.clip(z, -self.clip, self.clip))
