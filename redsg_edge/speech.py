"""Speech: energy VAD gate, MFCC windows and the int8 SER model.

The speech worker classifies the last ``speech.window_s`` seconds of 16 kHz mono audio every
``speech.hop_s`` seconds, but only when enough of the window is voiced (a simple energy VAD on
25 ms frames): SER on silence or room noise would be guesswork that the fusion then has to
discount. Features are ``features.mfcc_features``, the very function training used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import CLASSES
from .config import SpeechConfig
from .features import SAMPLE_RATE, mfcc_features, num_frames
from .litert import LiteRTClassifier, ModelError

VAD_FRAME = int(0.025 * SAMPLE_RATE)  # 25 ms, the MFCC frame


def frame_dbfs(pcm: np.ndarray, frame: int = VAD_FRAME) -> np.ndarray:
    """Level of consecutive frames in dBFS (0 dB = full-scale square wave).

    pcm: (N,) int16 or float in [-1, 1]. Returns (N // frame,) float32; digital silence → -120.
    """
    x = pcm.astype(np.float32) / (32768.0 if pcm.dtype == np.int16 else 1.0)
    n = len(x) // frame
    if n == 0:
        return np.zeros(0, np.float32)
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    return (20 * np.log10(np.maximum(rms, 1e-6))).astype(np.float32)


def vad_voiced_fraction(pcm: np.ndarray, threshold_dbfs: float) -> float:
    """Fraction of 25 ms frames louder than ``threshold_dbfs`` (0..1)."""
    db = frame_dbfs(pcm)
    return float((db > threshold_dbfs).mean()) if len(db) else 0.0


class SerModel:
    """The int8 SER classifier over one MFCC window.

    path: ``.tflite`` whose input is (frames, 20) for the window length. window_s: seconds.
    predict(pcm (window_s × 16000,) int16) → probs (7,) float32, CLASSES order.
    Raises ModelError naming the file when it is missing, corrupt or shaped for another window.
    """

    def __init__(self, path: str | os.PathLike, window_s: float, num_threads: int = 1) -> None:
        self.window_samples = int(round(window_s * SAMPLE_RATE))
        frames = num_frames(self.window_samples)
        try:
            self.clf = LiteRTClassifier(path, (frames, 20), len(CLASSES), num_threads)
        except ModelError as exc:
            raise ModelError(f"{exc} (speech.window_s = {window_s} needs a model trained on "
                             f"{frames}-frame windows)") from None
        self.path = self.clf.path

    def predict(self, pcm: np.ndarray) -> np.ndarray:
        if len(pcm) != self.window_samples:
            raise ValueError(f"SER window must be {self.window_samples} samples, got {len(pcm)}")
        p = np.clip(self.clf.predict(mfcc_features(pcm)), 0.0, None)
        s = float(p.sum())
        return (p / s if s > 0 else np.full(len(CLASSES), 1 / len(CLASSES))).astype(np.float32)

    def predict_long(self, pcm: np.ndarray, hop_s: float, vad_threshold_dbfs: float,
                     min_voiced_fraction: float) -> list[tuple[float, float, np.ndarray]]:
        """Windows over a whole recording: [(start_s, end_s, probs)] for voiced windows only.
        A recording shorter than one window is zero-padded to one window."""
        n, hop = self.window_samples, max(1, int(round(hop_s * SAMPLE_RATE)))
        if len(pcm) < n:
            pcm = np.pad(pcm, (0, n - len(pcm)))
        out = []
        for s in range(0, len(pcm) - n + 1, hop):
            w = pcm[s:s + n]
            if vad_voiced_fraction(w, vad_threshold_dbfs) >= min_voiced_fraction:
                out.append((s / SAMPLE_RATE, (s + n) / SAMPLE_RATE, self.predict(w)))
        return out


@dataclass(frozen=True)
class SpeechResult:
    t: float             # capture time of the window's last sample (s)
    voiced: float        # voiced fraction 0..1
    probs: np.ndarray    # (7,) float32


class SpeechWorker:
    """Per-window step: VAD gate then SER. No threads, no clock (see VisionWorker)."""

    def __init__(self, model: SerModel, cfg: SpeechConfig) -> None:
        self.model, self.cfg = model, cfg
        self.windows = 0
        self.voiced_windows = 0

    def process(self, t_end: float, pcm: np.ndarray) -> SpeechResult | None:
        """pcm: (window,) int16 ending at capture time t_end. None when the window is not voiced."""
        self.windows += 1
        voiced = vad_voiced_fraction(pcm, self.cfg.vad_threshold_dbfs)
        if voiced < self.cfg.min_voiced_fraction:
            return None
        self.voiced_windows += 1
        return SpeechResult(t_end, voiced, self.model.predict(pcm))
