"""Utterance functionals for SER: frame descriptors of the voice, summarised over the utterance.

The paralinguistic recipe of the openSMILE ComParE and eGeMAPS sets (Schuller et al. 2013,
"The INTERSPEECH 2013 computational paralinguistics challenge"; Eyben et al. 2016, "The Geneva
minimalistic acoustic parameter set", IEEE TAC 7(2)), written here on numpy and
python_speech_features because openSMILE's licence (audEERING research licence, non-commercial)
does not fit a GPL project. Low-level descriptors (LLDs) per 25 ms frame, 10 ms hop:

- loudness: frame RMS in dB, and the same in four bands (0–0.5, 0.5–1, 1–2, 2–4 kHz) relative to
  the frame's total, a proxy of spectral tilt and the alpha ratio;
- spectrum: centroid, spread, 85 % roll-off (all Hz/1000), flatness, entropy, flux, zero
  crossings per frame;
- cepstrum: MFCC 1–12 (c0 is the level) and 26 log-mel energies minus their frame mean;
- voice source: the peak of the normalised autocorrelation between 2.5 and 16.7 ms lag
  (60–400 Hz) as harmonicity, and F0 in semitones above 27.5 Hz where that peak is above 0.45.

Each LLD and its delta (2-frame regression) is summarised by mean, std, skewness, kurtosis, the
10th/50th/90th percentiles, the 10–90 range and the slope of a line fitted over the utterance
(per second). F0 and harmonicity use the voiced frames only, with the voiced fraction appended.
The audio is first scaled so that its loud frames sit at ``LEVEL_DBFS`` (:func:`level_normalise`),
so that no functional depends on the microphone gain or distance.

``utterance_functionals(x)``: x (n,) int16 or float32 in [-1, 1], 16 kHz, n ≥ ``MIN_SAMPLES``;
returns (``DIM``,) float32, finite. Raises ValueError for shorter audio.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .features import SAMPLE_RATE, loud_rms

FRAME = 400          # 25 ms
HOP = 160            # 10 ms
NFFT = 512
LEVEL_DBFS = -20.0   # where the loud frames (95th percentile of frame RMS) are put
MIN_SAMPLES = FRAME + 4 * HOP
VOICED = 0.45        # autocorrelation peak above which a frame counts as voiced
F0_MIN, F0_MAX = 60.0, 400.0
BANDS_HZ = ((0, 500), (500, 1000), (1000, 2000), (2000, 4000))
N_MEL = 26

_STATS = ("mean", "std", "skew", "kurt", "p10", "p50", "p90", "range", "slope")


def level_normalise(x: np.ndarray) -> np.ndarray:
    """x (n,) float in [-1, 1] scaled so that the 95th percentile of its 25 ms frame RMS is at
    ``LEVEL_DBFS``; digital silence is returned unchanged. Returns float64."""
    x = np.asarray(x, np.float64)
    loud = loud_rms(x) if len(x) >= FRAME else float(np.sqrt(np.mean(x ** 2)))
    if loud <= 1e-7:
        return x
    return x * (10 ** (LEVEL_DBFS / 20) / loud)


def _frames(x: np.ndarray) -> np.ndarray:
    n = 1 + (len(x) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    return x[idx]


@cache
def _filters() -> tuple[np.ndarray, np.ndarray]:
    """(mel (26, 257), DCT rows for MFCC 1–12 (12, 26)), built once."""
    from python_speech_features.base import get_filterbanks
    from scipy.fft import dct
    return (get_filterbanks(N_MEL, NFFT, SAMPLE_RATE, 0, SAMPLE_RATE // 2),
            dct(np.eye(N_MEL), type=2, norm="ortho", axis=0)[1:13])


def _lld(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (lld (T, L) float64 for all frames, voice (T, 2) [harmonicity, F0 st], voiced (T,))."""
    mel, dct_rows = _filters()
    dither = np.random.default_rng(len(x)).standard_normal(len(x)) * 1e-5
    fr = _frames(x + dither)
    fr = fr - fr.mean(1, keepdims=True)
    win = fr * np.hamming(FRAME)
    spec = np.abs(np.fft.rfft(win, NFFT)) ** 2 + 1e-12          # (T, 257)
    freqs = np.fft.rfftfreq(NFFT, 1 / SAMPLE_RATE)
    total = spec.sum(1)
    rms_db = 10 * np.log10(np.mean(fr ** 2, 1) + 1e-10)
    bands = np.stack([10 * np.log10(spec[:, (freqs >= a) & (freqs < b)].sum(1) / total)
                      for a, b in BANDS_HZ], 1)
    pn = spec / total[:, None]
    centroid = pn @ freqs
    spread = np.sqrt(np.maximum(pn @ freqs ** 2 - centroid ** 2, 0))
    rolloff = freqs[np.minimum((np.cumsum(pn, 1) < 0.85).sum(1), len(freqs) - 1)]
    flatness = np.exp(np.mean(np.log(spec), 1)) / np.mean(spec, 1)
    entropy = -np.sum(pn * np.log2(pn), 1) / np.log2(spec.shape[1])
    sq = np.sqrt(spec)
    flux = np.r_[0.0, np.sqrt(np.sum(np.diff(sq / sq.sum(1, keepdims=True), axis=0) ** 2, 1))]
    zcr = np.mean(np.abs(np.diff(np.sign(fr), axis=1)) > 0, 1)
    logmel = np.log(spec @ mel.T + 1e-10)
    mfcc = logmel @ dct_rows.T
    mel_rel = logmel - logmel.mean(1, keepdims=True)
    # normalised autocorrelation of the frame (windowed, so the lag bias is the window's own)
    ac = np.fft.irfft(np.abs(np.fft.rfft(win, 2 * NFFT)) ** 2, 2 * NFFT)[:, :FRAME]
    wac = np.fft.irfft(np.abs(np.fft.rfft(np.hamming(FRAME), 2 * NFFT)) ** 2, 2 * NFFT)[:FRAME]
    r = ac / (ac[:, :1] + 1e-12) / (wac / wac[0])
    lo, hi = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
    lag = lo + np.argmax(r[:, lo:hi], 1)
    harm = np.clip(r[np.arange(len(r)), lag], 0, 1)
    f0_st = 12 * np.log2(SAMPLE_RATE / lag / 27.5)
    voiced = (harm > VOICED) & (rms_db > rms_db.max() - 40)
    lld = np.column_stack([rms_db, bands, centroid / 1000, spread / 1000, rolloff / 1000,
                           flatness, entropy, flux, zcr, mfcc, mel_rel])
    return lld, np.column_stack([harm, f0_st]), voiced


def _delta(f: np.ndarray) -> np.ndarray:
    if len(f) < 5:
        return np.zeros_like(f)
    p = np.pad(f, ((2, 2), (0, 0)), mode="edge")
    return (p[3:-1] - p[1:-3] + 2 * (p[4:] - p[:-4])) / 10.0


def _stats(f: np.ndarray) -> np.ndarray:
    """(T, L) → (L * 9,): the functionals of ``_STATS`` for each column."""
    t = len(f)
    m = f.mean(0)
    d = f - m
    sd = d.std(0)
    z = d / (sd + 1e-9)
    p10, p50, p90 = np.percentile(f, [10, 50, 90], axis=0)
    tc = (np.arange(t) - (t - 1) / 2) * (HOP / SAMPLE_RATE)
    slope = tc @ d / max(float(tc @ tc), 1e-9)
    return np.concatenate([m, sd, (z ** 3).mean(0), (z ** 4).mean(0) - 3, p10, p50, p90,
                           p90 - p10, slope])


def _rows(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of ``a`` under ``mask``, or all of them when fewer than 3 are."""
    return a[mask] if mask.sum() >= 3 else a


def utterance_functionals(x: np.ndarray) -> np.ndarray:
    """The functionals of one utterance (see the module docstring): x (n,) int16 or float in
    [-1, 1] at 16 kHz, n ≥ MIN_SAMPLES; returns (DIM,) float32. Raises ValueError when shorter."""
    x = np.asarray(x)
    if x.dtype == np.int16:
        x = x.astype(np.float64) / 32768.0
    if len(x) < MIN_SAMPLES:
        raise ValueError(f"utterance of {len(x)} samples is shorter than the {MIN_SAMPLES} "
                         "the functionals need (65 ms)")
    lld, voice, voiced = _lld(level_normalise(x))
    active = lld[:, 0] > lld[:, 0].max() - 50
    few = voiced.sum() < 3  # too few voiced frames: their statistics fall back to all frames
    lv, lu = _rows(lld, voiced), _rows(lld, active & ~voiced)
    out = np.concatenate([_stats(lld[active]), _stats(_delta(lld)[active]),
                          _stats(_rows(voice, voiced)),
                          # (feature set 1 falls back to voice itself, not its delta)
                          _stats(voice if few else _delta(voice)[voiced]),
                          lv.mean(0), lv.std(0), lu.mean(0), lu.std(0),
                          [voiced.mean(), active.mean()]])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


#: Names this feature set; a model and a saved normalisation made for another are refused.
FEATURES_VERSION = "redsg-functionals-1"
#: Length of the functionals vector.
N_LLD = 1 + len(BANDS_HZ) + 7 + 12 + N_MEL
DIM = (2 * N_LLD + 4) * len(_STATS) + 4 * N_LLD + 2
