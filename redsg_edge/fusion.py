"""Late fusion of face and voice emotion evidence and the transition state machine (pure logic).

Nothing here reads a clock or does I/O: every call takes the time ``t`` (seconds; media time in
replay, ``time.monotonic()`` live), so replays are deterministic and the tests are table-driven.

Per update, in order:

1. **Late (decision-level) fusion.** Each modality's latest classification (an :class:`Evidence`,
   a (7,) probability vector in ``CLASSES`` order) is combined as a weighted average of
   posteriors, the usual "weighted average" combiner of classifier outputs (Kuncheva, *Combining
   Pattern Classifiers*, 2nd ed., Wiley 2014, ch. 5), or with ``combiner = "product"`` as
   their weighted geometric mean, renormalised (the product rule of Kittler et al., "On
   combining classifiers", *IEEE TPAMI* 20(3):226-239, 1998; probabilities floored at 1e-4). Late fusion of a face and a speech model
   is what Luna-Jiménez et al. (2021, "Multimodal emotion recognition on RAVDESS dataset using
   transfer learning", *Sensors* 21(22):7665, doi:10.3390/s21227665) used to reach 80.08 %
   on RAVDESS (subject-wise 5-fold CV, eight emotions), above either modality alone; it also
   lets each model be trained on its own corpus (FER2013, RAVDESS) and lets one modality drop
   out without retraining.
   The weight of modality m is ``prior_m × confidence_m × freshness_m × reliability_m``:

   - ``prior_m``: ``FusionConfig.face_weight`` / ``voice_weight`` (how much we trust each model).
   - ``confidence_m`` (``FusionConfig.confidence``): by default ``1 − H(p)/ln 7``, one minus the
     normalised Shannon entropy of the model's output. It is 0 for a uniform output and 1 for a
     one-hot one, and unlike the top probability (which never falls below 1/7) it uses the whole
     distribution, so a modality that says "I don't know" (SER on a noisy window that slipped
     past the VAD, FER on a blurred or half-turned face) hands the decision to the other one.
     ``max_prob`` and ``none`` are available for comparison.
   - ``freshness_m = 1 − age/max_age_s`` (0 at and beyond ``max_age_s``): evidence is a
     sample-and-hold of a signal that changes over seconds, and the two modalities report at very
     different rates (face ~15 Hz, voice ~2 Hz and only while someone speaks). A linear decay
     lets a modality that stopped reporting (face turned away, speaker silent) hand over
     smoothly instead of switching abruptly at ``max_age_s``. Evidence at or beyond
     ``max_age_s`` is ignored, so a missing or stale modality gives face-only or voice-only
     fusion automatically.
   - ``reliability_m`` (:attr:`Evidence.reliability`, from the producer): for the face
     :func:`face_reliability` of its height against ``face_full_size_px``; for the voice the
     VAD's mean speech probability over the audio classified.
   - *A talking face*: while the voice has fresh evidence (someone is speaking), the face's
     weight (``Modality.neutral_yields_to`` of the face names the voice) is multiplied by
     :func:`talking_face_factor`, ``1 − (1 − k)·p_neutral`` with ``k =
     talking_face_neutral``: the share of the face's probability that is *not* a neutral
     reading, with the neutral share counted at ``k``. Speaking sad or fearful faces read
     neutral 0.6–0.8 (measured in issue 14), so a neutral talking face is weak evidence and the
     voice leads, while an expressive one keeps nearly its full weight. The face's
     probabilities themselves are not changed: renormalising its non-neutral remainder would
     turn the faint second reading of a neutral face (often sad or happy) into a confident
     vote, and on the development scenarios it added spurious transitions. (Scaling the whole
     face while someone speaks would add nothing: with one modality the weights cancel, and
     with both it is the same as a larger ``voice_weight``.)
   - *A uniform prior* of weight ``uniform_weight`` (w₀) joins the combination as one more
     expert that says 1/7 for every class: the mean rule gives ``(Σ wₘpₘ + w₀/7)/(Σ wₘ + w₀)``,
     the product rule ``softmax(Σ wₘ log pₘ / (Σ wₘ + w₀))``, a temperature that flattens the
     fused vector while the evidence is weak in absolute terms. Without it the weights only
     count relative to each other, so a lone weak reading (a fading voice between two
     sentences, a face the FER model is unsure of) decides as firmly as a strong one. 0 = off.

2. **Exponential smoothing** of the fused vector with time constant ``smoothing_tau_s``:
   ``s ← s + α (x − s)`` with ``α = 1 − exp(−Δt/τ)``, the exact discretisation of a first-order
   low-pass for a sample-and-hold input. Because α depends on Δt, irregular update times (face
   frames interleaved with SER windows, dropped frames) smooth the same way per second of media.

3. **Transition state machine** on the smoothed vector (never on a raw argmax):

   - *hysteresis*: a candidate must be the top class and reach ``enter_threshold``; the current
     emotion is kept while it stays at or above ``exit_threshold`` or while it is the top class;
   - *minimum dwell*: the candidate must have led continuously for ``min_dwell_s``;
   - *sustained lead*: a candidate that stays the top class at or above ``sustained_threshold``
     (below ``enter_threshold``) for ``sustained_dwell_s`` (at least ``min_dwell_s``) fires
     too. A weak but steady lead is evidence as well: a mild expression that the FER model
     reads at 0.45-0.55 for seconds would otherwise never be named, and a two-level threshold
     keeps brief weak readings out by time rather than by level (the same trade a sequential
     test makes between a decision's delay and its errors; Wald, *Sequential Analysis*, Wiley
     1947). ``sustained_threshold`` at or above ``enter_threshold`` turns it off;
   - *refractory period*: no transition within ``refractory_s`` of the previous one.

   A transition yields an ``events.Transition`` in :attr:`FusedUpdate.transition`.

With no fresh evidence at all (no face, nobody speaking) the smoothed vector and the current
emotion are held and any candidate is dropped: silence is not evidence of a change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import CLASSES, NUM_CLASSES
from .config import FusionConfig
from .events import Transition
from .modalities import MODALITIES, prior_weight

_LN_K = math.log(NUM_CLASSES)
_EPS = 1e-9
_P_FLOOR = 1e-4  # product rule: a model's "0" for a class is a rounding, not a veto of certainty
_T_TOL = 1e-9  # seconds; float slack so a dwell of exactly min_dwell_s counts
_NEUTRAL = CLASSES.index("neutral")


def probs_to_dict(probs: np.ndarray) -> dict[str, float]:
    """(7,) probabilities in CLASSES order → ``{class name: float}`` rounded to 6 digits (JSON)."""
    return {name: round(float(p), 6) for name, p in zip(CLASSES, probs)}


def _as_probs(probs, what: str) -> np.ndarray:
    p = np.array(probs, dtype=np.float32).reshape(-1) if np.ndim(probs) else None
    if p is None or p.shape != (NUM_CLASSES,):
        raise ValueError(f"{what}: expected {NUM_CLASSES} probabilities in CLASSES order, got shape "
                         f"{np.shape(probs)}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{what}: probabilities must be finite and non-negative")
    total = float(p.sum())
    if total <= _EPS:
        raise ValueError(f"{what}: probabilities sum to {total}")
    p /= total  # int8 softmax outputs sum to 1 only approximately
    p.flags.writeable = False
    return p


@dataclass(frozen=True, eq=False)
class Evidence:
    """One modality's latest classification.

    ``modality`` is ``"face"`` or ``"voice"``; ``t`` the capture time (seconds) of the data it was
    computed from (the frame, or the end of the SER window); ``probs`` (7,) in ``CLASSES`` order.
    ``probs`` is converted to a read-only float32 array and renormalised to sum to 1.
    ``reliability`` in 0..1 (default 1): how far the producer trusts its input, apart from the
    model's own confidence (:func:`face_reliability`; for the voice, the VAD's mean speech
    probability over the audio classified). Raises ValueError for an unknown modality, a
    non-finite time, an invalid probability vector or a reliability outside 0..1.
    """

    modality: str
    t: float
    probs: np.ndarray
    reliability: float = 1.0

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r} (expected one of {list(MODALITIES)})")
        if not math.isfinite(self.t):
            raise ValueError(f"{self.modality} evidence: time must be finite, got {self.t}")
        object.__setattr__(self, "t", float(self.t))
        object.__setattr__(self, "probs", _as_probs(self.probs, f"{self.modality} evidence"))
        r = float(self.reliability)
        if not 0.0 <= r <= 1.0:  # also rejects NaN
            raise ValueError(f"{self.modality} evidence: reliability must be in 0..1, got {r}")
        object.__setattr__(self, "reliability", r)


@dataclass(frozen=True, eq=False)
class UsedEvidence:
    """A modality's evidence as it entered one fused update.

    ``age_s`` = update time − evidence time (≥ 0); ``confidence``, ``freshness`` and
    ``reliability`` in 0..1; ``weight`` = prior × confidence × freshness × reliability (× the
    talking-face factor for a face while someone speaks; unnormalised, the fused vector divides
    by the sum). ``probs`` (7,) float32 the model's output as it entered the fusion."""

    modality: str
    t: float
    probs: np.ndarray
    age_s: float
    confidence: float
    freshness: float
    weight: float
    reliability: float = 1.0

    def to_json(self) -> dict:
        """``{"probs": {name: p}, "age_s": s, "weight": w}`` as in docs/architecture.md."""
        return {"probs": probs_to_dict(self.probs), "age_s": round(self.age_s, 4),
                "weight": round(self.weight, 6)}


@dataclass(frozen=True, eq=False)
class FusedUpdate:
    """The result of one :meth:`Fusion.update`.

    ``probs`` (7,) float32 smoothed fused probabilities (uniform before any evidence); ``raw`` the
    instantaneous fused vector before smoothing, or None when no modality had fresh, informative
    evidence; ``emotion`` the current state-machine emotion; ``evidence`` the fresh evidence per
    modality (stale modalities are absent); ``transition`` set when this update changed the
    emotion. Published on the event bus as type ``"update"``.
    """

    type: ClassVar[str] = "update"
    t: float
    probs: np.ndarray
    raw: np.ndarray | None
    emotion: str
    evidence: dict[str, UsedEvidence]
    transition: Transition | None = None

    def model_output(self, modality: str) -> np.ndarray | None:
        """(7,) float32: what ``modality``'s model said in this update, or None when it had no
        fresh evidence."""
        used = self.evidence.get(modality)
        return None if used is None else used.probs

    def to_json(self) -> dict:
        """The replay record ``{"type": "update", "t", <modality>..., "fused", "emotion"}``: for
        each modality of ``modalities.MODALITIES`` (``face``, ``voice``, ...) ``{name: p}`` of its
        fresh model output, or None."""
        rec: dict = {"type": "update", "t": round(self.t, 4)}
        for m in MODALITIES:
            probs = self.model_output(m)
            rec[m] = None if probs is None else probs_to_dict(probs)
        rec["fused"] = probs_to_dict(self.probs)
        rec["emotion"] = self.emotion
        return rec


@dataclass(frozen=True, eq=False)
class FusionState:
    """A snapshot for the status file: times in seconds (None before the first update)."""

    t: float | None
    emotion: str
    since_t: float | None
    probs: np.ndarray | None
    candidate: str | None
    candidate_since: float | None
    last_transition_t: float | None
    updates: int
    transitions: int

    def to_json(self) -> dict:
        """The status-file form: times in seconds or None, ``probs`` {class: p} or None."""
        return {"t": self.t, "emotion": self.emotion, "since_t": self.since_t,
                "probs": probs_to_dict(self.probs) if self.probs is not None else None,
                "candidate": self.candidate, "candidate_since": self.candidate_since,
                "last_transition_t": self.last_transition_t, "updates": self.updates,
                "transitions": self.transitions}


def talking_face_factor(p_neutral: float, k: float) -> float:
    """Weight factor 0..1 of a face while someone speaks: ``1 − (1 − k)·p_neutral``, where
    ``p_neutral`` is the face's neutral probability and ``k`` (``talking_face_neutral``, 0..1)
    what a neutral reading of a talking face still counts. ``k = 1`` gives 1 (off); ``k = 0``
    gives the face's non-neutral share, so a face reading neutral 0.8 keeps a fifth of its
    weight and a face reading 0.1 neutral keeps nine tenths."""
    return float(min(1.0, max(0.0, 1.0 - (1.0 - k) * p_neutral)))


def face_reliability(height_px: float, full_px: float) -> float:
    """Reliability 0..1 of a face ``height_px`` tall (detector box, pixels): ``height/full_px``
    up to 1. FER reads 48x48 crops; a face smaller than that is upsampled blur, and a small
    face is usually a far or partly visible one. ``full_px`` ≤ 0 turns the term off (1)."""
    if full_px <= 0:
        return 1.0
    return float(min(1.0, max(0.0, height_px / full_px)))


def confidence_of(probs: np.ndarray, method: str = "entropy") -> float:
    """Confidence in 0..1 of a (7,) probability vector.

    ``entropy``: 1 − H(p)/ln 7 (0 for uniform, 1 for one-hot); ``max_prob``: max p (≥ 1/7);
    ``none``: 1. Raises ValueError for another method.
    """
    if method == "entropy":
        p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
        return float(min(1.0, max(0.0, 1.0 + float(np.sum(p * np.log(p))) / _LN_K)))
    if method == "max_prob":
        return float(np.max(probs))
    if method == "none":
        return 1.0
    raise ValueError(f"unknown confidence method {method!r}")


class Fusion:
    """Confidence- and staleness-weighted late fusion with smoothing, hysteresis, dwell and cooldown.

    ``Fusion(cfg, initial="neutral")``; call :meth:`update` with non-decreasing times (an earlier
    ``t`` is treated as the latest one seen: time never runs backwards, so worker threads that
    report slightly out of order cannot break the smoothing). Not thread-safe: call it from one
    thread. See the module docstring for the method and its sources.
    """

    def __init__(self, cfg: FusionConfig, initial: str = "neutral") -> None:
        if initial not in CLASSES:
            raise ValueError(f"initial emotion {initial!r} is not one of {CLASSES}")
        self._cfg = cfg.model_copy(deep=True)
        self._current = CLASSES.index(initial)
        self._since: float | None = None           # when the current emotion began
        self._latest: dict[str, Evidence] = {}     # newest evidence per modality
        self._s: np.ndarray | None = None           # smoothed fused probabilities (float64)
        self._s_t: float | None = None              # time of the last smoothing step
        self._t: float | None = None                # latest update time
        self._candidate: int | None = None
        self._candidate_since: float | None = None  # since it led at the lower threshold
        self._strong_since: float | None = None     # since it led at enter_threshold
        self._last_transition: float | None = None
        self._updates = 0
        self._transitions = 0

    @property
    def config(self) -> FusionConfig:
        """The ``[fusion]`` values in force."""
        return self._cfg

    def reconfigure(self, cfg: FusionConfig) -> None:
        """Swap the parameters (live reload, SIGHUP); evidence, smoothed probabilities, current
        emotion, dwell and refractory timers are kept and the new values apply from the next
        update."""
        self._cfg = cfg.model_copy(deep=True)

    @property
    def emotion(self) -> str:
        """The current fused emotion (a CLASSES name)."""
        return CLASSES[self._current]

    @property
    def state(self) -> FusionState:
        """A snapshot of the state machine for the status file."""
        return FusionState(
            t=self._t, emotion=CLASSES[self._current], since_t=self._since,
            probs=None if self._s is None else self._s.astype(np.float32),
            candidate=None if self._candidate is None else CLASSES[self._candidate],
            candidate_since=self._candidate_since, last_transition_t=self._last_transition,
            updates=self._updates, transitions=self._transitions)

    def update(self, t: float, evidence: Evidence | None = None) -> FusedUpdate:
        """Add ``evidence`` (if any) and advance to time ``t`` (seconds).

        Evidence older than the modality's stored one (by capture time) is ignored. Returns a
        :class:`FusedUpdate`; its ``transition`` is set when the emotion changed. Raises
        ValueError for a non-finite ``t``.
        """
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"update time must be finite, got {t}")
        if self._t is not None and t < self._t:
            t = self._t
        self._t = t
        self._updates += 1
        if evidence is not None:
            prev = self._latest.get(evidence.modality)
            if prev is None or evidence.t >= prev.t:
                self._latest[evidence.modality] = evidence

        cfg = self._cfg
        used: dict[str, UsedEvidence] = {}
        fresh_of = {m: 1.0 - max(0.0, t - ev.t) / cfg.max_age_s
                    for m, ev in self._latest.items()}
        for m, ev in self._latest.items():
            fresh = fresh_of[m]
            if fresh <= 0.0 or m not in MODALITIES:
                continue
            mod = MODALITIES[m]
            weight = prior_weight(mod, cfg) * fresh * ev.reliability
            # The face while someone speaks (the voice has fresh evidence: every voice evidence
            # is speech the VAD found): a talking face reads neutral to a FER model trained on
            # posed stills.
            if mod.neutral_yields_to is not None and fresh_of.get(mod.neutral_yields_to, 0.0) > 0:
                weight *= talking_face_factor(float(ev.probs[_NEUTRAL]), cfg.talking_face_neutral)
            conf = confidence_of(ev.probs, cfg.confidence)
            used[m] = UsedEvidence(m, ev.t, ev.probs, max(0.0, t - ev.t), conf, fresh,
                                   weight * conf, ev.reliability)

        total = sum(u.weight for u in used.values())
        raw = None
        transition = None
        if total > _EPS:
            prior = cfg.uniform_weight
            if cfg.combiner == "product":
                logp = sum(u.weight * np.log(np.maximum(u.probs.astype(np.float64), _P_FLOOR))
                           for u in used.values()) / (total + prior)
                raw = np.exp(logp - logp.max())
                raw /= raw.sum()
            else:
                raw = (sum(u.weight * u.probs.astype(np.float64) for u in used.values())
                       + prior / NUM_CLASSES) / (total + prior)
            if self._s is None:
                self._s = raw.copy()  # first evidence: nothing to smooth against
            else:
                dt = t - self._s_t
                tau = cfg.smoothing_tau_s
                alpha = 1.0 if tau <= 0 else -math.expm1(-dt / tau)
                self._s = self._s + alpha * (raw - self._s)
                self._s /= self._s.sum()
            self._s_t = t
            if self._since is None:
                self._since = t  # the initial emotion is "held" from the first evidence on
            transition = self._step(t, self._s, used)
        else:
            self._drop_candidate()

        probs = (np.full(NUM_CLASSES, 1.0 / NUM_CLASSES) if self._s is None else self._s)
        return FusedUpdate(t=t, probs=probs.astype(np.float32),
                           raw=None if raw is None else raw.astype(np.float32),
                           emotion=CLASSES[self._current], evidence=used, transition=transition)

    def _drop_candidate(self) -> None:
        self._candidate = self._candidate_since = self._strong_since = None

    def _step(self, t: float, s: np.ndarray, used: dict[str, UsedEvidence]) -> Transition | None:
        cfg = self._cfg
        cur = self._current
        top = int(np.argmax(s))
        # Dwell: the same candidate must lead (top class, at or above the lower of the two
        # thresholds) on every update since candidate_since, and for the short dwell at or above
        # enter_threshold since strong_since; any interruption restarts that clock.
        if top != cur and s[top] >= min(cfg.enter_threshold, cfg.sustained_threshold):
            if self._candidate != top:
                self._candidate, self._candidate_since, self._strong_since = top, t, None
            if s[top] < cfg.enter_threshold:
                self._strong_since = None
            elif self._strong_since is None:
                self._strong_since = t
        else:
            self._drop_candidate()
            return None
        released = s[cur] < cfg.exit_threshold  # hysteresis: current kept while >= exit
        dwelt = ((self._strong_since is not None
                  and t - self._strong_since >= cfg.min_dwell_s - _T_TOL)
                 or t - self._candidate_since
                 >= max(cfg.min_dwell_s, cfg.sustained_dwell_s) - _T_TOL)
        cooled = self._last_transition is None or t - self._last_transition >= cfg.refractory_s - _T_TOL
        if not (released and dwelt and cooled):
            return None
        event = Transition(
            t=t, from_emotion=CLASSES[cur], to_emotion=CLASSES[top], confidence=float(s[top]),
            previous_duration_s=t - self._since,
            evidence={m: u.to_json() for m, u in used.items()})
        self._current = top
        self._since = self._last_transition = t
        self._drop_candidate()
        self._transitions += 1
        return event
