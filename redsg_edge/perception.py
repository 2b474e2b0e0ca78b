"""Perception: one frame or one audio block in, fusion inputs out. No threads, no clock.

The live loop (``pipeline.Pipeline``) and ``replay.replay`` call the very same
:class:`Perception` object with capture (live) or media (replay) times, so both turn the same
media into the same evidence (tests/test_pipeline.py checks it). What comes out is a list of
:class:`Percept`: each is one fusion update, ``(t, evidence or None)``, and for the voice the
utterance the VAD just closed (for speech-to-text).
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .capture import FrameSchedule
from .config import Config
from .events import EventBus
from .fusion import Evidence, FusedUpdate, Fusion, face_reliability
from .speech import SerModel, SpeechOutput, SpeechPerception
from .utterance_ser import FeatureNorm, UtteranceSer
from .vision import FaceDetector, FerModel, VisionWorker

__all__ = ["Percept", "Perception", "face_evidence", "deliver", "fuse_and_publish", "load_norm"]

log = logging.getLogger(__name__)


def load_norm(path, model: UtteranceSer) -> FeatureNorm:
    """The running voice normalisation saved at ``path`` (``speech.norm_state``), or a fresh one
    at the model's training statistics when there is none yet or it cannot be used (logged:
    a stale or broken file never stops the daemon)."""
    if not Path(path).exists():
        return model.new_norm()
    try:
        norm = FeatureNorm.load(path)
    except ValueError as exc:
        log.warning("speech.norm_state: %s; starting from the training statistics", exc)
        return model.new_norm()
    log.info("speech.norm_state: voice normalisation of %.0f utterances from %s", norm.count, path)
    return norm


@dataclass(frozen=True)
class Percept:
    """One fusion input: ``t`` (s) the update time; ``evidence`` the new evidence, or None for
    a tick (time passes, nothing new: no face, or a speech tick without SER); ``utterance`` the
    closed utterance (its ``audio``, ``start_s``, ``end_s``, ``probs``) when this percept ends
    one, else None."""

    t: float
    evidence: Evidence | None
    utterance: SpeechOutput | None = None


def face_evidence(t: float, result, cfg: Config) -> Evidence | None:
    """The one way a frame's FER result becomes fusion evidence: None without a face; the
    face's reliability from its height (``fusion.face_full_size_px``)."""
    if result is None:
        return None
    return Evidence("face", t, result.probs,
                    face_reliability(result.face.box[3], cfg.fusion.face_full_size_px))


def _speech_percepts(outputs: Iterable[SpeechOutput]) -> list[Percept]:
    out = []
    for o in outputs:
        t, ev = o.fusion_input()
        out.append(Percept(t, ev, o if o.kind == "utterance" else None))
    return out


def deliver(percepts: Iterable[Percept], fuse: Callable[[float, Evidence | None], None],
            on_utterance: Callable[[SpeechOutput], None] | None = None) -> None:
    """Hand each percept to ``fuse(t, evidence)``, and each closed utterance to
    ``on_utterance`` just before its update: a transition the utterance fires can then wait
    for its words."""
    for p in percepts:
        if p.utterance is not None and on_utterance is not None:
            on_utterance(p.utterance)
        fuse(p.t, p.evidence)


def fuse_and_publish(fusion: Fusion, bus: EventBus, t: float, ev: Evidence | None,
                     on_evidence: Callable[[float, Evidence | None], None] | None = None,
                     lock: threading.Lock | None = None) -> FusedUpdate:
    """One fusion update at ``t`` (s) with ``ev`` (or None), the same live and in replay:
    ``on_evidence`` sees the input, ``fusion.update`` runs (under ``lock`` when given: live,
    two threads feed one fusion), then the update and any transition are published on ``bus``
    (outside the lock: subscribers never hold up the other thread's update)."""
    if on_evidence is not None:
        on_evidence(t, ev)
    with lock if lock is not None else nullcontext():
        upd = fusion.update(t, ev)
    bus.publish(upd)
    if upd.transition is not None:
        bus.publish(upd.transition)
    return upd


class Perception:
    """The perception step of every loop.

    ``cfg`` the whole Config (reads ``vision.max_fps`` and ``fusion.face_full_size_px`` at each
    call, so a reload applies); ``vision`` a :class:`VisionWorker` or None (no camera);
    ``speech`` a :class:`SpeechPerception` or None (no microphone). Use :meth:`load` to build
    both from the config. Not thread-safe per modality: one thread feeds frames, one feeds
    audio (they share no state).
    """

    def __init__(self, cfg: Config, vision: VisionWorker | None,
                 speech: SpeechPerception | None) -> None:
        self.cfg = cfg
        self.vision = vision
        self.speech = speech
        self._schedule = FrameSchedule()

    @classmethod
    def load(cls, cfg: Config, face: bool, voice: bool) -> "Perception":
        """Load the models each active modality needs (face: detector + FER; voice: VAD + SER).
        Raises ModelError naming a missing or broken model file."""
        vision = speech = None
        if face:
            vision = VisionWorker(FaceDetector(cfg.vision.detector_model,
                                               cfg.vision.min_detection_confidence),
                                  FerModel.from_config(cfg.vision), cfg.vision.far_face_tiles)
        if voice:
            utt = cfg.speech.utterance_model
            speech = SpeechPerception(SerModel(cfg.speech.ser_model, cfg.speech.window_s),
                                      cfg.speech, utterance_model=UtteranceSer(utt) if utt else None)
            if speech.utterance_model is not None and cfg.speech.norm_state is not None:
                speech.norm = load_norm(cfg.speech.norm_state, speech.utterance_model)
        return cls(cfg, vision, speech)

    def save_norm(self) -> None:
        """Write the utterance SER's running normalisation to ``speech.norm_state`` (when both
        are configured). An OSError is logged, not raised: the statistics are rebuilt by
        listening."""
        sp = self.speech
        path = self.cfg.speech.norm_state
        if sp is None or sp.norm is None or path is None:
            return
        try:
            sp.norm.save(path)
        except OSError as exc:
            log.warning("speech.norm_state: cannot write %s (%s); the voice normalisation "
                        "starts afresh at the next start", path, exc)

    def frame(self, t: float, rgb: np.ndarray) -> list[Percept]:
        """One video frame: ``rgb`` (H, W, 3) uint8 captured at ``t`` (s). Returns ``[]`` when
        ``capture.FrameSchedule`` thins it away (``vision.max_fps``), else one percept (face
        evidence, or None without a face). Raises RuntimeError without a vision worker."""
        if self.vision is None:
            raise RuntimeError("Perception.frame: no vision worker (the camera is off)")
        if not self._schedule.keep(t, self.cfg.vision.max_fps):
            return []
        result, _faces = self.vision.process(rgb)
        return [Percept(t, face_evidence(t, result, self.cfg))]

    def audio(self, t_first: float, pcm: np.ndarray, gated: bool = False) -> list[Percept]:
        """One audio block: ``pcm`` (n,) int16 at 16 kHz, contiguous with the previous block,
        its first sample captured at ``t_first`` (s). ``gated``: the device's own voice is
        playing, never classified. Returns the percepts it completed, oldest first. Raises
        RuntimeError without a speech step."""
        if self.speech is None:
            raise RuntimeError("Perception.audio: no speech step (the microphone is off)")
        return _speech_percepts(self.speech.push(t_first, pcm, gated))

    def finish(self) -> list[Percept]:
        """End of a recording: the utterance in progress is classified (a live stream never
        ends). ``[]`` without a speech step."""
        return _speech_percepts(self.speech.finish()) if self.speech is not None else []

    def reconfigure(self, cfg: Config, speech_keys: Iterable[str] = ()) -> None:
        """Apply a reloaded config; ``speech_keys`` the ``[speech]`` keys the speech step takes
        live (``pipeline.LIVE_KEYS``). ``vision.fer_prior_shift`` and ``vision.far_face_tiles``
        are applied too. Raises ModelError (before changing anything) when the FER model cannot
        take that shift."""
        shift = cfg.vision.fer_prior_shift
        if self.vision is not None and shift != self.cfg.vision.fer_prior_shift:
            self.vision.fer.set_prior_shift(shift)
        if self.vision is not None:
            self.vision.far.per_frame = cfg.vision.far_face_tiles
        self.cfg = cfg
        keys = list(speech_keys)
        if self.speech is not None and keys:
            self.speech.reconfigure(self.speech.cfg.model_copy(
                update={k: getattr(cfg.speech, k) for k in keys}))

    def close(self) -> None:
        """Release the detector's native resources (idempotent)."""
        if self.vision is not None:
            self.vision.close()
