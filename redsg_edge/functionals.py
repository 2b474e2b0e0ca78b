"""Utterance functionals for SER: frame descriptors of the voice, summarised over the utterance.

The recipe of the openSMILE ComParE 2016 set (Schuller et al. 2016, "The INTERSPEECH 2016
computational paralinguistics challenge"; its low-level descriptors and functionals are listed
in Weninger et al. 2013, "On the acoustics of emotion in audio", Front. Psychol. 4:292), written
here on numpy because openSMILE's licence (audEERING research licence, non-commercial) does not
fit a GPL project. Low-level descriptors (LLDs) per 25 ms frame, 10 ms hop, smoothed over 3
frames as ComParE does:

- energy: RMS (linear), zero crossings, loudness (sum of the auditory spectrum) and the same
  after RASTA filtering;
- auditory spectrum: 26 mel bands (0–8 kHz) RASTA-filtered on the log scale (Hermansky and
  Morgan 1994, IEEE TSAP 2(4): H(z) = 0.1 (2 + z⁻¹ − z⁻³ − 2z⁻⁴) / (1 − 0.94 z⁻¹)), so that a
  fixed microphone or room colouring cancels, then cube-root compressed (the PLP intensity-
  loudness law, Hermansky 1990, JASA 87(4));
- cepstrum: MFCC 1–14 of the 26 log-mel energies;
- spectrum of the magnitude: energy in 250–650 Hz and 1–4 kHz, roll-off at 25/50/75/90 % (kHz),
  flux, centroid (kHz), entropy, variance, skewness, kurtosis, slope, and sharpness (Zwicker's
  weighting of the bark scale, on the auditory spectrum);
- voice source: harmonicity (peak of the normalised autocorrelation between 2.5 and 16.7 ms lag,
  i.e. 60–400 Hz; ComParE's voicing probability) on every frame; on the voiced frames (that peak
  above 0.45), F0 in semitones above 27.5 Hz, log harmonics-to-noise ratio 10·log10(r / (1 − r))
  (Boersma 1993), and frame-to-frame F0 and peak-amplitude perturbation (a frame-level stand-in
  for jitter and shimmer, which openSMILE measures period by period).

Each LLD and its delta (2-frame regression) is summarised by 42 functionals (``_STATS``), the
ComParE list less its segment lengths: mean, std, skewness, kurtosis, 1/6/25/50/75/94/99th
percentiles, the three inter-quartile and the 1–99 and 6–94 ranges, relative positions of the
maximum and minimum, up-level times at 25/50/75/90 % of the range, rise time, left-curvature
time, linear regression slope, offset and error, quadratic regression a, b and error, root mean
square, mean of the peaks (and its distance to the mean), peak rate, mean rising and falling
slope, and LPC gain and coefficients 1–5 of the contour. Energy and spectral LLDs use every
frame, the voice-source ones the voiced frames; the voiced fraction is appended. The audio is
first scaled so that its loud frames sit at ``LEVEL_DBFS`` (:func:`level_normalise`), and white
noise ``FLOOR_DB`` under them is added, so that no functional depends on the microphone gain or
distance, nor on how silent the pauses of a recording are.

``utterance_functionals(x)``: x (n,) int16 or float32 in [-1, 1], 16 kHz, n ≥ ``MIN_SAMPLES``;
returns (``DIM``,) float32, finite. Raises ValueError for shorter audio.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .features import SAMPLE_RATE, dct_matrix, loud_rms, mel_filterbank, pcm_to_float

FRAME = 400          # 25 ms
HOP = 160            # 10 ms
NFFT = 512
LEVEL_DBFS = -20.0   # where the loud frames (95th percentile of frame RMS) are put
MIN_SAMPLES = FRAME + 4 * HOP
FLOOR_DB = 50.0      # the noise floor added under the loud frames (see _lld)
VOICED = 0.45        # autocorrelation peak above which a frame counts as voiced
F0_MIN, F0_MAX = 60.0, 400.0
N_MEL = 26
N_MFCC = 14
ROLLOFFS = (0.25, 0.5, 0.75, 0.9)
RASTA_B, RASTA_A = np.array([0.2, 0.1, 0.0, -0.1, -0.2]), np.array([1.0, -0.94])
LPC_ORDER = 5
_IIR_BLOCK = 256  # frames summed in closed form at a time (pole^-256 stays far from overflow)

_STATS = ("mean", "std", "skew", "kurt", "p1", "p6", "p25", "p50", "p75", "p94", "p99",
          "iqr1-3", "iqr1-2", "iqr2-3", "range1-99", "range6-94", "maxpos", "minpos",
          "uplevel25", "uplevel50", "uplevel75", "uplevel90", "risetime", "leftctime",
          "linslope", "linoffset", "linerr", "quad_a", "quad_b", "quaderr", "rms",
          "peakmean", "peakmean-mean", "peakrate", "risingslope", "fallingslope",
          "lpcgain") + tuple(f"lpc{k}" for k in range(1, LPC_ORDER + 1))


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
def _filters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mel (26, 257), DCT rows for MFCC 1–14 (14, 26), Zwicker sharpness weight of each mel
    band's centre on the bark scale (26,)), built once."""
    mel = mel_filterbank(N_MEL, NFFT, SAMPLE_RATE)
    freqs = np.fft.rfftfreq(NFFT, 1 / SAMPLE_RATE)
    centre = (mel @ freqs) / mel.sum(1)
    bark = 26.81 * centre / (1960 + centre) - 0.53          # Traunmüller 1990
    g = np.where(bark < 15.8, 1.0, 0.066 * np.exp(0.171 * bark))  # Zwicker and Fastl 1990
    return mel, dct_matrix(N_MEL).T[1:1 + N_MFCC], g * bark


def _rasta(logspec: np.ndarray) -> np.ndarray:
    """RASTA band-pass of each column of (T, B) log energies along time; the filter starts as if
    the first frame had lasted forever, so the utterance onset is no step. The same output as
    ``scipy.signal.lfilter`` on the padded input, written on numpy because importing
    scipy.signal would cost the daemon ~50 MB and ~0.7 s at the first utterance."""
    k = len(RASTA_B) - 1
    x = np.vstack([np.repeat(logspec[:1], k, axis=0), logspec])
    xz = np.vstack([np.zeros((k, x.shape[1])), x])
    fir = sum(RASTA_B[j] * xz[k - j:k - j + len(x)] for j in range(k + 1))
    pole = -RASTA_A[1]
    y = np.empty_like(fir)
    state = np.zeros(x.shape[1])
    for s0 in range(0, len(fir), _IIR_BLOCK):  # y[n] = fir[n] + pole · y[n−1], a block at a time
        blk = fir[s0:s0 + _IIR_BLOCK]
        powers = pole ** np.arange(1, len(blk) + 1)[:, None]
        y[s0:s0 + len(blk)] = powers * (state + np.cumsum(blk / powers, axis=0))
        state = y[s0 + len(blk) - 1]
    return y[k:]


def _smooth(f: np.ndarray) -> np.ndarray:
    p = np.pad(f, ((1, 1), (0, 0)), mode="edge")
    return (p[:-2] + p[1:-1] + p[2:]) / 3


def _lld(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (lld (T, 59) float64 for all frames, voice (T, 4) [F0 st, log HNR dB, F0 and
    amplitude perturbation], voiced (T,) bool)."""
    mel, dct_rows, sharp_w = _filters()
    # A fixed noise floor FLOOR_DB under the loud frames: what lies below it (a studio's
    # silence, int16 rounding of a quiet microphone) would otherwise set the pauses' spectra.
    noise = np.random.default_rng(len(x)).standard_normal(len(x))
    fr = _frames(x + noise * 10 ** ((LEVEL_DBFS - FLOOR_DB) / 20))
    fr = fr - fr.mean(1, keepdims=True)
    win = fr * np.hamming(FRAME)
    mag = np.abs(np.fft.rfft(win, NFFT)) + 1e-9                 # (T, 257)
    spec = mag ** 2
    freqs = np.fft.rfftfreq(NFFT, 1 / SAMPLE_RATE)
    kf = freqs / 1000
    rms = np.sqrt(np.mean(fr ** 2, 1))
    zcr = np.mean(np.abs(np.diff(np.sign(fr), axis=1)) > 0, 1)
    melp = spec @ mel.T + 1e-12
    logmel = np.log(melp)
    aud = melp ** 0.33
    aud_rasta = np.exp(_rasta(logmel)) ** 0.33
    mfcc = logmel @ dct_rows.T
    bands = [mag[:, (freqs >= a) & (freqs < b)].sum(1) for a, b in ((250, 650), (1000, 4000))]
    pn = mag / mag.sum(1, keepdims=True)
    cum = np.cumsum(pn, 1)
    rolloff = [kf[np.minimum((cum < r).sum(1), len(kf) - 1)] for r in ROLLOFFS]
    centroid = pn @ kf
    dev = kf[None, :] - centroid[:, None]
    var = np.sum(pn * dev ** 2, 1)
    skew = np.sum(pn * dev ** 3, 1) / (var ** 1.5 + 1e-12)
    kurt = np.sum(pn * dev ** 4, 1) / (var ** 2 + 1e-12)
    entropy = -np.sum(pn * np.log2(pn), 1) / np.log2(mag.shape[1])
    flux = np.r_[0.0, np.sqrt(np.sum(np.diff(pn, axis=0) ** 2, 1))]
    kc = kf - kf.mean()
    slope = (mag - mag.mean(1, keepdims=True)) @ kc / (kc @ kc)
    sharp = 0.11 * (aud @ sharp_w) / (aud.sum(1) + 1e-12)
    # normalised autocorrelation of the frame (windowed, so the lag bias is the window's own)
    ac = np.fft.irfft(np.abs(np.fft.rfft(win, 2 * NFFT)) ** 2, 2 * NFFT)[:, :FRAME]
    wac = np.fft.irfft(np.abs(np.fft.rfft(np.hamming(FRAME), 2 * NFFT)) ** 2, 2 * NFFT)[:FRAME]
    r = ac / (ac[:, :1] + 1e-12) / (wac / wac[0])
    lo, hi = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
    lag = lo + np.argmax(r[:, lo:hi], 1)
    harm = np.clip(r[np.arange(len(r)), lag], 0, 1)
    rms_db = 20 * np.log10(rms + 1e-10)
    voiced = (harm > VOICED) & (rms_db > rms_db.max() - 40)
    hc = np.clip(harm, 0.01, 0.99)
    peak = np.abs(fr).max(1) + 1e-9
    jitter = np.r_[0.0, np.abs(np.diff(lag)) / lag[1:]]
    shimmer = np.r_[0.0, np.abs(np.diff(20 * np.log10(peak)))]
    lld = np.column_stack([rms, zcr, aud.sum(1), aud_rasta.sum(1), aud_rasta, mfcc, *bands,
                           *rolloff, flux, centroid, entropy, var, skew, kurt, slope, sharp,
                           harm])
    voice = np.column_stack([12 * np.log2(SAMPLE_RATE / lag / 27.5), 10 * np.log10(hc / (1 - hc)),
                             jitter, shimmer])
    return _smooth(lld), voice, voiced


def _delta(f: np.ndarray) -> np.ndarray:
    if len(f) < 5:
        return np.zeros_like(f)
    p = np.pad(f, ((2, 2), (0, 0)), mode="edge")
    return (p[3:-1] - p[1:-3] + 2 * (p[4:] - p[:-4])) / 10.0


def _lpc(d: np.ndarray) -> list[np.ndarray]:
    """LPC of each mean-free column of (T, L) by Levinson–Durbin on its autocorrelation:
    [gain, a1 … a5], each (L,)."""
    t = len(d)
    r = [np.sum(d[k:] * d[:t - k], 0) if k < t else np.zeros(d.shape[1])
         for k in range(LPC_ORDER + 1)]
    a = [np.ones(d.shape[1])] + [np.zeros(d.shape[1]) for _ in range(LPC_ORDER)]
    e = r[0] + 1e-12
    for i in range(1, LPC_ORDER + 1):
        k = -(r[i] + sum(a[j] * r[i - j] for j in range(1, i))) / e
        a = [a[0]] + [a[j] + k * a[i - j] for j in range(1, i)] + [k] + a[i + 1:]
        e = np.maximum(e * (1 - k * k), 1e-12)
    return [np.sqrt(e / t)] + a[1:]


def _stats(f: np.ndarray) -> np.ndarray:
    """(T, L) → (L * len(_STATS),): the functionals of ``_STATS`` for each column, time
    normalised to the utterance (0..1) as ComParE's ``masterTimeNorm = segment``."""
    if len(f) < 4:  # a contour this short has no shape: repeat it so every functional is defined
        f = np.resize(f, (4, f.shape[1]))
    t = len(f)
    m = f.mean(0)
    d = f - m
    sd = d.std(0)
    z = d / (sd + 1e-9)
    q = np.percentile(f, [1, 6, 25, 50, 75, 94, 99], axis=0)
    lo = f.min(0)
    rg = f.max(0) - lo + 1e-12
    tt = np.linspace(0, 1, t)
    tc = tt - tt.mean()
    slope = tc @ d / (tc @ tc)
    offset = m - slope * tt.mean()
    vand = np.column_stack([tt ** 2, tt, np.ones(t)])
    quad = np.linalg.lstsq(vand, f, rcond=None)[0]
    df, d2 = np.diff(f, axis=0), np.diff(f, 2, axis=0)
    peaks = (f[1:-1] > f[:-2]) & (f[1:-1] >= f[2:])
    n_peaks = peaks.sum(0)
    peak_mean = np.where(n_peaks > 0, (f[1:-1] * peaks).sum(0) / np.maximum(n_peaks, 1), m)
    return np.concatenate([
        m, sd, (z ** 3).mean(0), (z ** 4).mean(0) - 3, *q,
        q[4] - q[2], q[3] - q[2], q[4] - q[3], q[6] - q[0], q[5] - q[1],
        np.argmax(f, 0) / t, np.argmin(f, 0) / t,
        *[((f - lo) > a * rg).mean(0) for a in (0.25, 0.5, 0.75, 0.9)],
        (df > 0).mean(0), (d2 > 0).mean(0),
        slope, offset, np.mean((d - tc[:, None] * slope) ** 2, 0),
        quad[0], quad[1], np.mean((f - vand @ quad) ** 2, 0), np.sqrt(np.mean(f ** 2, 0)),
        peak_mean, peak_mean - m, n_peaks / t,
        np.where(df > 0, df, 0).sum(0) / np.maximum((df > 0).sum(0), 1),
        np.where(df < 0, df, 0).sum(0) / np.maximum((df < 0).sum(0), 1),
        *_lpc(d)])


def _rows(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of ``a`` under ``mask``, or all of them when fewer than 3 are."""
    return a[mask] if mask.sum() >= 3 else a


def utterance_functionals(x: np.ndarray) -> np.ndarray:
    """The functionals of one utterance (see the module docstring): x (n,) int16 or float in
    [-1, 1] at 16 kHz, n ≥ MIN_SAMPLES; returns (DIM,) float32. Raises ValueError when shorter."""
    x = pcm_to_float(x, np.float64)
    if len(x) < MIN_SAMPLES:
        raise ValueError(f"utterance of {len(x)} samples is shorter than the {MIN_SAMPLES} "
                         "the functionals need (65 ms)")
    lld, voice, voiced = _lld(level_normalise(x))
    v = _rows(voice, voiced)
    out = np.concatenate([_stats(lld), _stats(_delta(lld)), _stats(v), _stats(_delta(v)),
                          [voiced.mean()]])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


#: Names this feature set; a model and a saved normalisation made for another are refused.
FEATURES_VERSION = "redsg-functionals-2"
#: Number of frame descriptors in the all-frames and the voiced-frames groups.
N_LLD, N_VOICE = 4 + N_MEL + N_MFCC + 2 + len(ROLLOFFS) + 9, 4
#: Length of the functionals vector.
DIM = 2 * (N_LLD + N_VOICE) * len(_STATS) + 1
