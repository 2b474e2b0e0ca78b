"""Speech: the int8 SER model and the one perception step that turns audio into voice evidence.

:class:`SpeechPerception` is the whole speech path, shared by the live daemon (``run``), ``replay``
and ``analyze``: 16 kHz int16 audio goes in, in blocks of any size, and :class:`SpeechOutput`
records come out. Inside, the trained VAD (``vad.SileroVad``) gives a speech probability per
32 ms chunk, the :class:`~redsg_edge.vad.Segmenter` cuts utterances, and the SER model labels

- each utterance when it ends (from ``speech.min_utterance_s`` of speech, padded by
  ``speech.padding_s`` at both ends): the mean of the window SER's probabilities over the
  windows of ``features.ser_windows`` (the function training uses), pooled as
  ``p_utt^w · p_windows^(1 − w)`` (w = ``speech.utterance_weight``) with the utterance SER
  (``utterance_ser.UtteranceSer``, ``speech.utterance_model``): the utterance's functionals,
  normalised by the running statistics of the voices heard (:attr:`SpeechPerception.norm`);
- while an utterance goes on, from ``speech.rolling_after_s`` of its audio on, the newest
  ``window_s`` of audio (never reaching back into the previous utterance) every ``hop_s``
  ("rolling"), in quiet pooled with the utterance SER over the utterance so far at
  ``speech.rolling_utterance_weight`` scaled by :func:`snr_weight` of the SNR against the
  noise floor between utterances (``vad.NoiseFloor``).

With ``speech.reverb_gate`` both utterance-SER weights are also scaled by :func:`reverb_weight`
of the room's reverberation (:attr:`SpeechPerception.room`, the median ``reverb.srmr`` of the
utterances heard): from across a reverberant room the window SER, trained in simulated rooms,
leads.

Every ``hop_s`` of audio the step also emits a tick without evidence, so fusion advances in media
time even when nobody speaks. Callers feed every output's :meth:`SpeechOutput.fusion_input` to
fusion, nothing else: the live loop and replay cannot differ. The step reads no clock: times are
the capture time of the first sample pushed plus the samples counted since.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import CLASSES
from .config import SpeechConfig
from .features import SAMPLE_RATE, mfcc_features, ser_windows
from .fusion import Evidence
from .calibration import load_calibration
from .litert import LiteRTClassifier, ModelError
from .reverb import RoomReverb, srmr
from .utterance_ser import FeatureNorm, UtteranceSer
from .vad import (CHUNK, NEG_OFFSET, InputGain, NoiseFloor, Segmenter, SileroVad, Utterance,
                  chunk_dbfs, chunks_for)



class SerModel:
    """The int8 SER classifier over featurised windows.

    path: ``.tflite`` whose input is (frames, features); frames must match ``window_s``
    (``features.num_frames``) and features what ``features.ser_windows`` yields. Its
    :attr:`calibration` (``calibration.load_calibration`` of ``<model>.json``, e.g.
    ``{"temperature": T}``) is applied to every window's output, ``softmax(log(p) / T)``; no
    sidecar = T 1. ``predict(pcm (window,) int16) → (7,)`` and
    ``predict_utterance(pcm (N,) int16, hop_samples) → (7,)`` float32 in CLASSES order.
    Raises ModelError naming the file when it is missing, corrupt or shaped for another window.
    """

    def __init__(self, path: str | os.PathLike, window_s: float, num_threads: int = 1) -> None:
        self.window_samples = int(round(window_s * SAMPLE_RATE))
        want = tuple(ser_windows(np.zeros(1, np.int16), self.window_samples,
                                 self.window_samples).shape[1:])
        try:
            self.clf = LiteRTClassifier(path, (None, None), len(CLASSES), num_threads)
        except ModelError as exc:
            raise ModelError(f"{exc} (speech.window_s = {window_s} needs an SER model of "
                             f"{want[0]}x{want[1]} MFCC windows)") from None
        self.path = self.clf.path
        if self.clf.input_shape != want:
            raise ModelError(f"{self.path}: input shape {self.clf.input_shape} does not match "
                             f"the features of a {window_s} s window {want} (speech.window_s "
                             f"= {window_s} needs a model trained on {want[0]}-frame windows)")
        self.calibration = load_calibration(self.path, len(CLASSES))

    def _calibrated(self, feats: np.ndarray) -> np.ndarray:
        p = np.clip(self.clf.predict(feats), 0.0, None).astype(np.float64)
        if p.sum() <= 0:
            return np.full(len(CLASSES), 1 / len(CLASSES), np.float32)
        return self.calibration.apply(p / p.sum())

    def predict(self, pcm: np.ndarray) -> np.ndarray:
        """SER on one window: ``pcm`` (window_samples,) int16 at 16 kHz; returns (7,) float32
        probabilities summing to 1 (calibrated when ``models/ser_int8.json`` gives a temperature).
        Raises ValueError for a window of another length."""
        if len(pcm) != self.window_samples:
            raise ValueError(f"SER window must be {self.window_samples} samples, got {len(pcm)}")
        return self._calibrated(mfcc_features(pcm))

    def predict_utterance(self, pcm: np.ndarray, hop_samples: int) -> np.ndarray:
        """One utterance of any length ≥ 1 sample: the mean of its windows' probabilities."""
        wins = ser_windows(pcm, self.window_samples, hop_samples)
        p = np.mean([self._calibrated(w) for w in wins], axis=0)
        return (p / p.sum()).astype(np.float32)


#: SNR (dB) of the speech over the noise floor at and below which a rolling label leaves the
#: utterance SER out, and at and above which it pools it at the full
#: ``speech.rolling_utterance_weight``, linear between. In noise the window CNN is the better
#: reader of a short stretch of speech: out of fold on RAVDESS an utterance SER trained without
#: noise read 63.2 % clean, 49.8 % with white noise at 20 dB and 46.7 % at 10 dB, where pooling
#: with the window CNN kept 64 and 59 % (models/README.md, "an SNR pooling rule"); the shipped
#: one, trained with noisy copies, reads the folds' noisy copies at 55.6 %.
SNR_NONE_DB = 15.0
SNR_FULL_DB = 25.0
#: Most audio (s) of the utterance in progress a rolling label reads with the utterance SER,
#: the newest: its functionals cost about 6.6 ms of one core per second of audio (36 ms for
#: 5 s, 66 ms for 10 s, 2026-12-05), once every hop_s while someone speaks.
ROLLING_UTTERANCE_MAX_S = 5.0
_ROLLING_UTTERANCE_MAX = int(round(ROLLING_UTTERANCE_MAX_S * SAMPLE_RATE))  # samples


def _ramp(value: float, none: float, full: float) -> float:
    """0 up to ``none``, 1 from ``full``, linear between."""
    return min(1.0, max(0.0, (value - none) / (full - none)))


def snr_weight(snr_db: float | None) -> float:
    """Share (0..1) of ``speech.rolling_utterance_weight`` a rolling label uses at ``snr_db``
    (dB; None, an unknown floor, gives 0): 0 up to SNR_NONE_DB, 1 from SNR_FULL_DB."""
    return 0.0 if snr_db is None else _ramp(snr_db, SNR_NONE_DB, SNR_FULL_DB)


#: The room's SRMR (``reverb.RoomReverb``: the median over the utterances heard) at and below
#: which an utterance's label and the rolling labels leave the utterance SER out, and at and
#: above which they pool it at the full configured weight, linear between. The utterance SER
#: trains without rooms and the window SER with simulated ones: through ``analyze``, RAVDESS
#: actors 1-22 four critical distances away in a living room read 61.5 % by the utterance SER
#: alone and 76.0 % by the window SER alone (91 % each as recorded). Room medians: as recorded
#: 7.6, URDU's talk shows 7.7, white noise at 10 dB SNR 5.0, RT60 0.6 s at the critical
#: distance 3.0, four times that distance 2.4. Chosen on those development files and URDU
#: (models/README.md, "A reverberation gate"): the window SER alone overtakes the pooled label
#: at about 2.8.
SRMR_NONE = 2.0
SRMR_FULL = 3.5


def reverb_weight(srmr_value: float | None) -> float:
    """Share (0..1) of ``speech.utterance_weight`` and ``speech.rolling_utterance_weight`` used
    in a room whose SRMR is ``srmr_value`` (``reverb.RoomReverb.srmr``; None, not yet known,
    gives 1): 0 up to SRMR_NONE, 1 from SRMR_FULL."""
    return 1.0 if srmr_value is None else _ramp(srmr_value, SRMR_NONE, SRMR_FULL)


def _log_pool(p: np.ndarray, q: np.ndarray, w: float) -> np.ndarray:
    """Weighted geometric pooling of two (7,) distributions, ``p^w q^(1-w)`` renormalised."""
    z = w * np.log(np.maximum(p, 1e-6)) + (1 - w) * np.log(np.maximum(q, 1e-6))
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32)


@dataclass(frozen=True, eq=False)
class SpeechOutput:
    """One output of :class:`SpeechPerception`.

    t: capture time (s) of the end of the audio consumed so far, the fusion update time.
    probs: (7,) float32 SER probabilities, or None for a tick without new evidence.
    kind: ``"utterance"`` (an utterance ended; ``split`` when it was cut at
    ``max_utterance_s``), ``"rolling"`` (the newest window while speech goes on) or None.
    start_s, end_s: capture times of the audio classified (padding included), or None.
    reliability: the VAD's mean speech probability over the voiced chunks classified (0..1),
    handed to fusion as :attr:`Evidence.reliability`.
    srmr: for an utterance read with the reverberation gate on, its own ``reverb.srmr`` (None
    when too short to measure, or not measured); the gate uses the room's median.
    audio: for an utterance, its samples ((n,) int16, padding included, start_s..end_s) for
    speech-to-text; None otherwise.
    """

    t: float
    probs: np.ndarray | None = None
    kind: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    split: bool = False
    reliability: float = 1.0
    audio: np.ndarray | None = None
    srmr: float | None = None

    def fusion_input(self) -> tuple[float, Evidence | None]:
        """``(t, evidence or None)``: what fusion.update gets, in every loop alike."""
        if self.probs is None:
            return self.t, None
        return self.t, Evidence("voice", self.end_s, self.probs, self.reliability)


class SpeechPerception:
    """Audio blocks in, speech evidence out: VAD → utterances → SER (see the module docstring).

    model: the window SER (rolling windows; utterances too without ``utterance_model``);
    cfg: the [speech] section; vad: a fresh :class:`SileroVad` of ``cfg.vad_model`` by default;
    utterance_model: the utterance SER or None; norm: its running normalisation
    (``utterance_model.new_norm()`` by default), kept in :attr:`norm` (a caller may share one
    between steps, save or freeze it).
    ``push(t_first, pcm, gated=False)``: pcm (n,) int16, contiguous with the previous push;
    ``t_first`` = capture time (s) of its first sample, read on the first push only. ``gated``
    audio (the device's own voice) is never classified (:meth:`_gated`). Returns the
    outputs it produced, oldest first; a gated push returns at most the utterance it cut
    short, and no ticks. ``finish()`` ends the stream (the utterance in progress is
    classified). Counters: ``ticks``, ``speech_ticks`` (ticks inside speech),
    ``utterances``, ``rolling``, ``gated_samples``; ``max_speech_prob``: the highest VAD speech
    probability of any chunk so far (0..1).
    """

    def __init__(self, model: SerModel, cfg: SpeechConfig, vad: SileroVad | None = None,
                 utterance_model: UtteranceSer | None = None,
                 norm: FeatureNorm | None = None, room: RoomReverb | None = None) -> None:
        self.model = model
        self.utterance_model = utterance_model
        self.room = room if room is not None else RoomReverb()
        self.norm = norm if norm is not None or utterance_model is None else utterance_model.new_norm()
        self.vad = vad or SileroVad(cfg.vad_model)
        self.vad.reset()
        self.seg = Segmenter(cfg.vad_threshold, 1, 1, 1)
        self.vad_gain = InputGain(cfg.vad_gain_max_db)
        self.reconfigure(cfg)
        self.t0: float | None = None
        self._pending = np.zeros(0, np.int16)  # samples short of a whole chunk
        self._buf = np.zeros(0, np.int16)      # audio from absolute sample _buf_pos on
        self._buf_pos = 0
        self._p: list[float] = []               # VAD probability of each buffered chunk
        self._db: list[float] = []              # level (dBFS) of each buffered chunk
        self.noise = NoiseFloor()
        self._prev_end = 0                      # padded end of the last utterance (samples)
        self._next_tick = self.hop
        self.ticks = self.speech_ticks = self.utterances = self.rolling = self.gated_samples = 0
        self.max_speech_prob = 0.0

    def reconfigure(self, cfg: SpeechConfig) -> None:
        """Apply [speech] values (live reload); the utterance in progress continues."""
        self.cfg = cfg
        self.hop = max(1, int(round(cfg.hop_s * SAMPLE_RATE)))
        self.pad = chunks_for(cfg.padding_s) * CHUNK
        self.rolling_after = int(round(cfg.rolling_after_s * SAMPLE_RATE))
        self.vad_gain.max_gain_db = cfg.vad_gain_max_db
        s = self.seg
        s.threshold, s.neg_threshold = cfg.vad_threshold, max(0.0, cfg.vad_threshold - NEG_OFFSET)
        s.min_chunks = max(1, chunks_for(cfg.min_utterance_s))
        s.hangover_chunks = max(1, chunks_for(cfg.hangover_s))
        s.max_chunks = max(s.min_chunks, chunks_for(cfg.max_utterance_s))

    def _time(self, pos: int) -> float:
        return self.t0 + pos / SAMPLE_RATE  # type: ignore[operator]

    def push(self, t_first: float, pcm: np.ndarray, gated: bool = False) -> list[SpeechOutput]:
        """Add ``pcm`` ((n,) int16, 16 kHz, contiguous with the previous push; ``t_first`` the capture
        time in s of its first sample, read on the first push only). Returns the outputs completed,
        oldest first; ``gated`` audio is never classified (:meth:`_gated`)."""
        x = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if self.t0 is None:
            self.t0 = float(t_first)
        if gated:
            return self._gated(len(x))
        data = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = len(data) // CHUNK
        self._pending = data[n * CHUNK:].copy()
        if n == 0:
            return []
        self._buf = np.concatenate([self._buf, data[:n * CHUNK]])
        out: list[SpeechOutput] = []
        for i in range(n):
            c = data[i * CHUNK:(i + 1) * CHUNK]
            db = chunk_dbfs(c)
            p = self.vad.chunk_prob(c, self.vad_gain.gain_at(db))
            self._p.append(p)
            self._db.append(db)
            self.max_speech_prob = max(self.max_speech_prob, p)
            self.noise.update(db, p >= self.seg.neg_threshold)
            o = self._after_chunk(self.seg.step(p))
            if o is not None:
                out.append(o)
        self._trim()
        return out

    def _gated(self, n_samples: int) -> list[SpeechOutput]:
        """The device is speaking: the utterance in progress ends where the gate began (and is
        classified now), and the gated audio is skipped as silence, without VAD, SER or ticks,
        so fusion hears nothing from the speech path until the gate opens."""
        self.gated_samples += n_samples
        out = self.finish()
        total = len(self._pending) + n_samples
        n = total // CHUNK
        self._pending = np.zeros(total - n * CHUNK, np.int16)
        self.seg.pos += n
        end = self.seg.pos * CHUNK
        self._buf = np.zeros(0, np.int16)
        self._p, self._db = [], []
        self._buf_pos = self._prev_end = end
        while self._next_tick <= end:
            self._next_tick += self.hop
        self.vad.reset()
        return out

    def finish(self) -> list[SpeechOutput]:
        """End of stream: classify the utterance in progress (its padding clipped to the end)."""
        utt = self.seg.flush()
        end = self.seg.pos * CHUNK
        if utt is None:
            return []
        return [self._classify(utt, end)]

    def _after_chunk(self, utt: Utterance | None) -> SpeechOutput | None:
        end = self.seg.pos * CHUNK
        tick = end >= self._next_tick
        while self._next_tick <= end:
            self._next_tick += self.hop
        if tick:
            self.ticks += 1
            if self.seg.in_speech:
                self.speech_ticks += 1
        if utt is not None:
            return self._classify(utt, end)
        if not tick:
            return None
        s = self.seg
        if s.in_speech and s.voiced_chunks >= s.min_chunks:
            prev = max(self._prev_end, self._buf_pos)
            first = max(s.start * CHUNK - self.pad, prev)
            w = self.model.window_samples
            # From rolling_after_s of the utterance on, the newest window (with the audio
            # before the utterance as context, as at its end) is classified every hop, so the
            # voice reaches fusion while the person is still talking.
            if end - first >= self.rolling_after:
                self.rolling += 1
                a = max(end - w, prev)
                probs = self.model.predict_utterance(self._audio(a, end), self.hop)
                um = self.utterance_model
                if um is not None and self.cfg.rolling_utterance_weight > 0:
                    rw = self.cfg.rolling_utterance_weight * snr_weight(
                        self.noise.snr_db(self._speech_db(s.start, s.pos)))
                    if self.cfg.reverb_gate:
                        rw *= reverb_weight(self.room.srmr())
                    if rw > 0:
                        # learn=False: the running normalisation learns from whole
                        # utterances only, at their end, as in training.
                        u = max(first, end - _ROLLING_UTTERANCE_MAX)
                        probs = _log_pool(um.predict(self._audio(u, end), self.norm,
                                                     learn=False), probs, rw)
                return SpeechOutput(self._time(end), probs, "rolling", self._time(a),
                                    self._time(end),
                                    reliability=self._speech_prob(s.start, s.last_voiced + 1))
        return SpeechOutput(self._time(end))

    def _classify(self, utt: Utterance, end: int) -> SpeechOutput:
        prev = max(self._prev_end, self._buf_pos)
        a = max(utt.start * CHUNK - self.pad, prev)
        b = min(utt.end * CHUNK + (0 if utt.split else self.pad), end)
        # An utterance shorter than one window is classified with the audio before it (never
        # from the previous utterance) rather than zero-padded: the SER was trained on whole
        # RAVDESS files, all ≥ 2.9 s with their quiet lead-in, and never saw digital silence.
        um = self.utterance_model
        ctx = max(min(a, b - self.model.window_samples), prev)
        w = self.cfg.utterance_weight if um is not None and b - a >= um.min_samples else 0.0
        heard_srmr, share = None, 1.0
        if w > 0 and self.cfg.reverb_gate:
            heard_srmr = srmr(self._audio(a, b))
            self.room.add(heard_srmr)
            share = reverb_weight(self.room.srmr())
        probs = (self.model.predict_utterance(self._audio(ctx, b), self.hop)
                 if w * share < 1 else None)
        if w > 0:
            # read even at share 0: the running normalisation learns from every utterance,
            # whatever the room
            pu = um.predict(self._audio(a, b), self.norm)
            probs = pu if probs is None else _log_pool(pu, probs, w * share)
        self._prev_end = b
        self.utterances += 1
        return SpeechOutput(self._time(end), probs, "utterance", self._time(a), self._time(b),
                            utt.split, self._speech_prob(utt.start, utt.end),
                            self._audio(a, b).copy(), heard_srmr)

    def _held(self, values: list[float], c0: int, c1: int) -> list[float]:
        """The per-chunk ``values`` (``_p`` or ``_db``) of chunks c0..c1-1 still held."""
        base = self._buf_pos // CHUNK
        return values[max(0, c0 - base):max(0, c1 - base)]

    def _speech_prob(self, c0: int, c1: int) -> float:
        """Mean VAD probability of chunks c0..c1-1 (those still held), 0..1."""
        ps = self._held(self._p, c0, c1)
        return float(min(1.0, max(0.0, np.mean(ps)))) if ps else 1.0

    def _speech_db(self, c0: int, c1: int) -> float:
        """Mean power of chunks c0..c1-1 (those still held) in dBFS: the speech level over an
        utterance as the scenarios and the augmentation define SNR (its pauses included)."""
        dbs = np.asarray(self._held(self._db, c0, c1))
        return float(10 * np.log10(np.mean(10 ** (dbs / 10)))) if len(dbs) else -120.0

    def _audio(self, a: int, b: int) -> np.ndarray:
        return self._buf[a - self._buf_pos:b - self._buf_pos]

    def _trim(self) -> None:
        end = self.seg.pos * CHUNK
        # keep the padding and one window of context before the utterance in progress
        back = max(self.pad, self.model.window_samples)
        keep_from = (self.seg.start * CHUNK if self.seg.in_speech else end) - back
        keep_from = max(self._buf_pos, keep_from)
        keep_from -= keep_from % CHUNK  # chunk-aligned, so _p stays aligned with the buffer
        if keep_from > self._buf_pos:
            del self._p[:(keep_from - self._buf_pos) // CHUNK]
            del self._db[:(keep_from - self._buf_pos) // CHUNK]
            self._buf = self._buf[keep_from - self._buf_pos:]
            self._buf_pos = keep_from
