"""MFCC features for speech emotion recognition (SER), shared by training and inference.

One function, ``mfcc_features``, is used by ``scripts/train_ser.py`` and by the speech worker, so
the two cannot drift. The MFCC are python_speech_features 0.6's (Lyons et al.), the classic ASR
front end: 25 ms frames without a window every 10 ms, 512-point FFT, pre-emphasis 0.97, 40 mel
filters (HTK mel scale), 20 cepstra (orthonormal DCT-II) with liftering 22, c0 replaced by the
frame's log energy. ``mfcc`` computes them on numpy alone, step for step as that package does
(its ``mfcc``, ``fbank``, ``get_filterbanks`` and ``sigproc``), because the package imports
scipy's FFT module at its own import, and with it scipy.special: 95 modules and 12 MB of the
daemon's resident memory (8.6 MB anonymous, 3.6 MB of mapped libraries; the daemon's models
loaded one after the other in one process, x86-64, scipy 1.17) for one DCT of 40 numbers a
frame. The output is the same to the bit (RAVDESS windows and utterance functionals, float32);
``tests/test_models.py`` holds it to the package's own.

Per-window cepstral mean normalisation (CMN) removes the channel and the absolute level: RAVDESS
levels vary by ~50 dB between files and a room microphone is nothing like the studio one, so only
the contour within the window is kept (energy rises and falls stay, loudness does not).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

SAMPLE_RATE = 16_000  # Hz; the SER model and the audio ring use this rate
WINLEN_S = 0.025
WINSTEP_S = 0.01
NUM_CEPSTRA = 20
NUM_FILTERS = 40
NFFT = 512  # ≥ WINLEN_S × SAMPLE_RATE = 400
_WIN = int(round(WINLEN_S * SAMPLE_RATE))    # 400 samples
_STEP = int(round(WINSTEP_S * SAMPLE_RATE))  # 160 samples


def pcm_to_float(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Audio samples as floats of full scale 1: int16 PCM divided by 32768 (so −32768 → −1.0),
    any other dtype only cast. x: (N,) int16 or float; returns (N,) ``dtype``."""
    x = np.asarray(x)
    return x.astype(dtype) / 32768.0 if x.dtype == np.int16 else x.astype(dtype)


def hz_to_mel(hz):
    """HTK mel scale (Young et al., The HTK Book): 2595 log10(1 + f / 700); hz in Hz, scalar or
    array."""
    return 2595 * np.log10(1 + hz / 700.0)


def mel_to_hz(mel):
    """Inverse of ``hz_to_mel``."""
    return 700 * (10 ** (mel / 2595.0) - 1)


@cache
def mel_filterbank(nfilt: int, nfft: int = NFFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular mel filters over 0 Hz to Nyquist, python_speech_features' ``get_filterbanks``:
    ``nfilt`` centres equally spaced in mel, each triangle's corners on the FFT bins
    floor((nfft + 1) f / sample_rate), peak 1. Returns (nfilt, nfft // 2 + 1) float64, read-only
    (cached)."""
    mel = np.linspace(hz_to_mel(0), hz_to_mel(sample_rate / 2), nfilt + 2)
    edge = np.floor((nfft + 1) * mel_to_hz(mel) / sample_rate)
    i = np.arange(nfft // 2 + 1)[None, :]
    lo, mid, hi = edge[:-2, None], edge[1:-1, None], edge[2:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # empty triangles (mid == lo) stay 0
        up = np.where((i >= lo) & (i < mid), (i - lo) / (mid - lo), 0.0)
        down = np.where((i >= mid) & (i < hi), (hi - i) / (hi - mid), 0.0)
    fb = up + down
    fb.setflags(write=False)
    return fb


@cache
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II as a matrix: ``x @ dct_matrix(n)`` is scipy's ``dct(x, type=2,
    norm="ortho")`` along the last axis. Returns (n, n) float64, read-only (cached)."""
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[:, None] + 1) * k[None, :] / (2 * n)) * np.sqrt(2.0 / n)
    m[:, 0] /= np.sqrt(2.0)
    m.setflags(write=False)
    return m


def mfcc(x: np.ndarray) -> np.ndarray:
    """python_speech_features' ``mfcc`` at this module's settings (``WINLEN_S``, ``WINSTEP_S``,
    ``NUM_CEPSTRA``, ``NUM_FILTERS``, ``NFFT``, pre-emphasis 0.97, lifter 22, c0 = log frame
    energy), with the same arithmetic: the pre-emphasis in the input's dtype, the rest in float64.

    x: (N,) float audio at 16 kHz, N ≥ 1. Returns (num_frames(N), NUM_CEPSTRA) float64."""
    x = np.asarray(x)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    n = num_frames(len(x))
    padded = np.concatenate((x, np.zeros((n - 1) * _STEP + _WIN - len(x))))
    frames = padded[np.arange(_WIN)[None, :] + _STEP * np.arange(n)[:, None]]
    pspec = np.abs(np.fft.rfft(frames, NFFT)) ** 2 / NFFT
    eps = np.finfo(float).eps
    energy = pspec.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ mel_filterbank(NUM_FILTERS).T
    feat = np.log(np.where(feat == 0, eps, feat))
    cep = feat @ dct_matrix(NUM_FILTERS)[:, :NUM_CEPSTRA]
    cep *= 1 + 11.0 * np.sin(np.pi * np.arange(NUM_CEPSTRA) / 22)  # lifter, L = 22
    cep[:, 0] = np.log(energy)
    return cep


def num_frames(num_samples: int) -> int:
    """Frames python_speech_features yields for ``num_samples`` samples (its framesig rule)."""
    if num_samples <= _WIN:
        return 1
    return 1 + int(np.ceil((num_samples - _WIN) / _STEP))


_DITHER = np.random.default_rng(0).standard_normal(10 * SAMPLE_RATE).astype(np.float32)
#: The noise floor mixed into every window, in dB below the RMS of its loudest frames (the 95th
#: percentile of 25 ms frame RMS). Relative, so a window's features do not change with gain.
NOISE_FLOOR_DB = -30.0
_ABS_FLOOR = 1e-5  # on digital silence: keeps log energy finite


def _dither(n: int) -> np.ndarray:
    reps = -(-n // _DITHER.shape[0])
    return np.tile(_DITHER, reps)[:n] if reps > 1 else _DITHER[:n]


_BLAS: ThreadpoolController | None = None


def _one_blas_thread():
    """Context that runs BLAS on one thread. The filterbank product (249x257 by 257x40) is far too
    small to split: on a busy 2-core machine, waking OpenBLAS's pool cost 6 ms a window against
    2.4 ms for the whole window on one thread (measured 2026-12-02)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def loud_rms(x: np.ndarray) -> float:
    """RMS of the loud part of ``x`` ((N,) float, N ≥ 400): the 95th percentile of its 25 ms
    (400-sample) frame RMS, in x's own units; a trailing part frame is left out."""
    n = len(x) // 400
    return float(np.percentile(np.sqrt(np.mean(x[: n * 400].reshape(n, 400) ** 2, axis=1)), 95))


def _floor_rms(x: np.ndarray) -> float:
    if NOISE_FLOOR_DB is None or len(x) < 400:
        return _ABS_FLOOR
    return max(loud_rms(x) * 10 ** (NOISE_FLOOR_DB / 20), _ABS_FLOOR)


def mfcc_features(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """MFCC matrix of one window of mono audio, mean-normalised per coefficient.

    signal: (N,) int16 PCM or float in [-1, 1] at ``sample_rate`` (must be 16 kHz).
    Returns (num_frames(N), 20) float32: column 0 is log frame energy, 1..19 cepstra, each with
    its mean over the window subtracted. Raises ValueError on a wrong rate or a non-1-D signal.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"MFCC expects {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"MFCC expects mono (N,) audio, got shape {x.shape}")
    x = pcm_to_float(x)
    # A noise floor a fixed distance below the window's loud frames: a studio's digital hush and
    # a living room's hum then look alike (both at the floor), and scaling the input scales the
    # floor too, so only clipping and int16 rounding depend on the level. Without any floor,
    # python_speech_features floors log energy at eps: silent frames become extreme outliers.
    x = x + _dither(x.shape[0]) * np.float32(_floor_rms(x))
    with _one_blas_thread():
        feats = mfcc(x)
    feats -= feats.mean(axis=0, keepdims=True)
    return feats.astype(np.float32)


def ser_windows(signal: np.ndarray, window_samples: int, hop_samples: int) -> np.ndarray:
    """The SER model's inputs for one utterance: featurised windows, shared by training and runtime.

    signal: (N,) int16 PCM or float in [-1, 1] at 16 kHz, one utterance (any length ≥ 1 sample;
        the model was trained on VAD-like cuts of 0.5 s and more, padded with 0.05–0.4 s of silence).
    window_samples, hop_samples: window and hop in samples (> 0).
    Returns (W, num_frames(window_samples), 20) float32, W ≥ 1: windows every ``hop_samples``;
    an utterance shorter than one window gives one window, the utterance repeated end to end
    until it fills it (tiling: a zero-padded window would be mostly silence, which shifts the
    per-window mean normalisation); a remainder longer than
    half a hop past the last full window adds one more window, aligned to the end.
    The utterance's probabilities are the mean of its windows' probabilities.
    Raises ValueError as ``mfcc_features`` does, or when a size is not positive.
    """
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError(f"window and hop must be positive, got {window_samples}, {hop_samples}")
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"SER expects mono (N,) audio, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("SER needs at least one sample, got an empty utterance")
    if len(x) < window_samples:
        x = np.resize(x, window_samples)
    starts = list(range(0, len(x) - window_samples + 1, hop_samples))
    if len(x) - (starts[-1] + window_samples) > hop_samples // 2:
        starts.append(len(x) - window_samples)
    return np.stack([mfcc_features(x[s:s + window_samples]) for s in starts])


def frame_dbfs(pcm: np.ndarray, frame: int = int(WINLEN_S * SAMPLE_RATE)) -> np.ndarray:
    """Level of consecutive frames (default 25 ms, the MFCC frame) in dBFS (0 dB = full-scale
    square wave): a level meter, no longer a speech gate (the VAD is ``vad.SileroVad``).

    pcm: (N,) int16 or float in [-1, 1]. Returns (N // frame,) float32; digital silence → -120.
    """
    x = pcm_to_float(pcm)
    n = len(x) // frame
    if n == 0:
        return np.zeros(0, np.float32)
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    return (20 * np.log10(np.maximum(rms, 1e-6))).astype(np.float32)
