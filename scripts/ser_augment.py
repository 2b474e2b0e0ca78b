"""Waveform augmentation for SER training: what a cheap microphone in a real room does to a voice.

Every transform takes and returns (N,) float32 audio in [-1, 1] at 16 kHz, is pure (the random
state is an argument) and is measurable: ``snr_db`` and ``level_db`` check what ``add_noise`` and
``apply_gain`` claim (tests/test_ser_model.py does). ``Augmenter`` chains them the way the SER
trainer uses them (scripts/train_ser.py), each with its own probability:

1. speed perturbation 0.9–1.1x by resampling (Ko et al. 2015, Kaldi's recipe: tempo and pitch
   move together), then an independent pitch shift of ±2 semitones (librosa's phase vocoder);
2. reverberation: convolution with a room impulse response from a bank of shoebox rooms
   simulated by pyroomacoustics (image source method; RT60 0.15–0.9 s, random source and
   microphone positions);
3. band-limiting: telephone band 300–3400 Hz, or a low-pass at 2.5–6 kHz, or a high-pass at
   100–400 Hz (cheap microphones and codecs);
4. additive noise at 0–20 dB SNR: white, pink, babble (a mix of 3–6 other training utterances)
   or the non-speech stretches of the training recordings themselves (room tone);
5. gain of −25 to +12 dB, then clipping at full scale (a loud voice into a hot input clips), and
   int16 quantisation (the runtime's sample format).

Outside the chain, ``codec`` sends a recording through MP3 or Opus at a voice-message bit rate
and back (``scripts/train_ser_utterance.py --codec``; ``scripts/eval_voice.py`` writes the same
files for ``analyze``).

numpy and scipy only at import time; librosa and pyroomacoustics (the ``[train]`` extra) and PyAV
are imported by the transforms that need them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

SAMPLE_RATE = 16_000
NOISE_KINDS = ("white", "pink", "babble", "room")


def level_db(x: np.ndarray) -> float:
    """Mean power of ``x`` in dB relative to a full-scale square wave (RMS 1.0). −inf on silence."""
    p = float(np.mean(np.asarray(x, np.float64) ** 2))
    return 10 * np.log10(p) if p > 0 else float("-inf")


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of ``noisy`` against its ``clean`` part in dB: power of clean over power of the difference."""
    return level_db(clean) - level_db(np.asarray(noisy, np.float64) - clean)


def apply_gain(x: np.ndarray, gain_db: float, clip: bool = True) -> np.ndarray:
    """``x`` scaled by ``gain_db`` dB; with ``clip`` hard-clipped to [-1, 1] as an ADC does."""
    y = x.astype(np.float32) * np.float32(10 ** (gain_db / 20))
    return np.clip(y, -1.0, 1.0) if clip else y


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power noise: white noise shaped by 1/sqrt(f) in the frequency domain, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / np.sqrt(f), n)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    """``x`` plus ``noise`` (tiled or cut to len(x)) scaled so that ``snr_db(x, result) == snr``.

    Raises ValueError when ``x`` or ``noise`` is silent (no SNR can be set).
    """
    noise = np.resize(np.asarray(noise, np.float32), len(x))
    px, pn = float(np.mean(x.astype(np.float64) ** 2)), float(np.mean(noise.astype(np.float64) ** 2))
    if px <= 0 or pn <= 0:
        raise ValueError("add_noise needs a non-silent signal and noise")
    return (x + noise * np.float32(np.sqrt(px / pn / 10 ** (snr / 10)))).astype(np.float32)


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (resampling: pitch moves with tempo)."""
    up = 100
    return resample_poly(x, up, int(round(up * factor))).astype(np.float32)


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    import librosa
    return librosa.effects.pitch_shift(x.astype(np.float32), sr=SAMPLE_RATE, n_steps=semitones).astype(np.float32)


def band_limit(x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``kind``: 'telephone' (300–3400 Hz band-pass), 'lowpass' (2.5–6 kHz), 'highpass' (100–400 Hz)."""
    if kind == "telephone":
        sos = butter(6, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    elif kind == "lowpass":
        sos = butter(6, rng.uniform(2500, 6000), btype="lowpass", fs=SAMPLE_RATE, output="sos")
    elif kind == "highpass":
        sos = butter(4, rng.uniform(100, 400), btype="highpass", fs=SAMPLE_RATE, output="sos")
    else:
        raise ValueError(f"unknown band-limit kind {kind!r}")
    return sosfilt(sos, x).astype(np.float32)


#: codec name → (container, encoder, encoder options): the voice-message codecs a phone or a
#: messaging app sends speech through (MP3: ISO/IEC 11172-3, libmp3lame; Opus: RFC 6716, libopus
#: in its VoIP mode).
CODECS = {"mp3": ("mp3", "libmp3lame", {}), "opus": ("ogg", "libopus", {"application": "voip"})}


def encode(x: np.ndarray, dest, codec: str, bit_rate: int, rate: int = SAMPLE_RATE) -> None:
    """Write x ((N,) float32 in [-1, 1], mono, at ``rate`` Hz) through ``codec`` (``CODECS``) at
    ``bit_rate`` bit/s to ``dest`` (a path or a binary file object), with PyAV's FFmpeg."""
    import av

    container, encoder, options = CODECS[codec]
    pcm = (np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)[None, :]
    with av.open(dest, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=rate, layout="mono")
        stream.bit_rate = bit_rate
        stream.options = options
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def codec(x: np.ndarray, kind: str, bit_rate: int) -> np.ndarray:
    """x ((N,) float32 in [-1, 1] at 16 kHz) encoded by ``kind`` (``CODECS``) at ``bit_rate``
    bit/s and decoded back to 16 kHz mono float32, trimmed or padded to N samples (the
    encoder's delay is kept at the start: a device hears it too)."""
    import io

    import av

    buf = io.BytesIO()
    encode(x, buf, kind, bit_rate)
    buf.seek(0)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    parts = []
    with av.open(buf, "r") as src:
        for frame in src.decode(audio=0):
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    y = np.concatenate(parts).astype(np.float32) / 32768 if parts else np.zeros(0, np.float32)
    return np.pad(y[:len(x)], (0, max(0, len(x) - len(y))))


def room_impulse_responses(count: int, seed: int) -> list[np.ndarray]:
    """``count`` RIRs of random shoebox rooms (pyroomacoustics, image source method), peak 1."""
    import pyroomacoustics as pra
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 4)])
        rt60 = rng.uniform(0.15, 0.9)
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # a room too large for this RT60
            continue
        room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption),
                           max_order=min(max_order, 30))
        src = rng.uniform([0.5, 0.5, 1.0], dims - [0.5, 0.5, 0.6])
        mic = rng.uniform([0.5, 0.5, 0.7], dims - [0.5, 0.5, 0.6])
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        h = np.asarray(room.rir[0][0], np.float32)
        out.append(h / (np.abs(h).max() + 1e-12))
    return out


def reverb(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``rir``, aligned to the direct path, same length and RMS as ``x``."""
    d = int(np.argmax(np.abs(rir)))
    y = fftconvolve(x, rir[d:])[: len(x)].astype(np.float32)
    return y * np.float32(np.sqrt(np.mean(x ** 2) / (np.mean(y ** 2) + 1e-20)))


@dataclass
class Augmenter:
    """The training chain. ``babble`` and ``room``: lists of (N,) float32 training clips to draw
    babble voices and room tone from (other utterances, non-speech stretches); ``rirs``: RIR bank.
    ``__call__(x, rng)`` → (augmented (M,) float32 in [-1, 1], dict of what was applied)."""
    babble: list[np.ndarray]
    room: list[np.ndarray]
    rirs: list[np.ndarray]
    p_speed: float = 0.6
    p_pitch: float = 0.25
    p_reverb: float = 0.35
    p_band: float = 0.3
    p_noise: float = 0.6
    gain_range_db: tuple[float, float] = (-25.0, 12.0)
    snr_range_db: tuple[float, float] = (0.0, 20.0)

    def noise(self, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
        if kind == "white":
            return white_noise(n, rng)
        if kind == "pink":
            return pink_noise(n, rng)
        if kind == "room":
            tone = np.resize(self.room[rng.integers(len(self.room))], n)
            return tone if np.any(tone) else white_noise(n, rng)  # a stretch of digital silence
        voices = [np.resize(self.babble[i], n) for i in rng.choice(len(self.babble), rng.integers(3, 7),
                                                                   replace=False)]
        voices = [v / (np.sqrt(np.mean(v ** 2)) + 1e-9) for v in voices]
        return np.sum(voices, axis=0).astype(np.float32)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        applied: dict = {}
        x = x.astype(np.float32)
        if rng.random() < self.p_speed:
            applied["speed"] = f = float(rng.uniform(0.9, 1.1))
            x = speed(x, f)
        if rng.random() < self.p_pitch:
            applied["pitch"] = s = float(rng.uniform(-2, 2))
            x = pitch_shift(x, s)
        if self.rirs and rng.random() < self.p_reverb:
            x = reverb(x, self.rirs[rng.integers(len(self.rirs))])
            applied["reverb"] = True
        if rng.random() < self.p_band:
            applied["band"] = kind = str(rng.choice(["telephone", "lowpass", "highpass"]))
            x = band_limit(x, kind, rng)
        if rng.random() < self.p_noise and np.any(x):
            kind = str(rng.choice(NOISE_KINDS if self.babble and self.room else ("white", "pink")))
            applied["noise"], applied["snr_db"] = kind, snr = kind, float(rng.uniform(*self.snr_range_db))
            x = add_noise(x, self.noise(kind, len(x), rng), snr)
        applied["gain_db"] = g = float(rng.uniform(*self.gain_range_db))
        x = apply_gain(x, g)
        return np.round(x * 32767).astype(np.float32) / 32767, applied
