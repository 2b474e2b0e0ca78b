#!/usr/bin/env python3
"""Does a derived (int8) Piper voice sound worse than the float one? DNSMOS says, sentence by sentence.

Every reply template of ``redsg_edge.reply.prompt.DEFAULT_TEMPLATES`` (21 sentences) is spoken
``--takes`` times by each voice (Piper's noise makes takes differ), resampled to 16 kHz and
scored by DNSMOS P.835 (Reddy et al. 2022, "DNSMOS P.835: a non-intrusive perceptual objective
speech quality metric to evaluate noise suppressors", ICASSP; the ONNX models of the MIT
``speechmos`` package): OVRL (overall), SIG (speech), BAK (background noise) and the P.808 MOS.
For each candidate: the mean of each score, the mean per-sentence difference to the float voice
with a 95 % bootstrap interval over the sentences (5,000 resamples, seed 0), and the float
voice's own take-to-take spread for scale. DNSMOS was trained on noisy and enhanced speech, not
on synthetic voices: it hears added noise and distortion, not prosody or naturalness.

    pip install speechmos==0.0.1.1 librosa requests    # speechmos imports both undeclared
    python scripts/voice_quality.py models/en_US-joe-medium-int8.onnx [OTHER.onnx ...]

Exit codes: 0 done, 2 a missing voice or package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCORES = ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")
NAMES = ("OVRL", "SIG", "BAK", "P.808")


def speak(model: Path | None, sentences: list[str], takes: int) -> list[list[np.ndarray]]:
    """[sentence][take] -> (N,) float32 16 kHz in [-1, 1] spoken by the voice ``model``
    (None: the packaged float voice)."""
    from scipy.signal import resample_poly
    from tqdm import tqdm

    from redsg_edge.voice import Voice

    voice = Voice(model)
    out = []
    for s in tqdm(sentences, desc=(model.name if model else "float voice"), unit="sentence"):
        row = []
        for _ in range(takes):
            pcm = np.concatenate([p for p, _ in voice.synthesize(s)]).astype(np.float32) / 32768
            row.append(np.clip(resample_poly(pcm, 16000, voice.sample_rate), -1, 1)
                       .astype(np.float32))
        out.append(row)
    return out


def score(clips: list[list[np.ndarray]]) -> np.ndarray:
    """(sentences, takes, 4) DNSMOS OVRL, SIG, BAK, P.808 of each clip."""
    from speechmos import dnsmos

    return np.array([[[float(dnsmos.run(x, 16000)[k]) for k in SCORES] for x in row]
                     for row in clips])


def compare(base: np.ndarray, cand: np.ndarray, seed: int = 0, n_boot: int = 5000
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean per-sentence difference ``cand - base`` (takes averaged first) and its 95 %
    bootstrap interval over sentences: (mean (4,), low (4,), high (4,))."""
    d = cand.mean(1) - base.mean(1)
    rng = np.random.default_rng(seed)
    boot = np.array([d[rng.integers(0, len(d), len(d))].mean(0) for _ in range(n_boot)])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return d.mean(0), lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("voices", nargs="+", type=Path, help="Piper .onnx voices to compare with "
                    "the packaged float en_US-joe-medium")
    ap.add_argument("--takes", type=int, default=3, help="takes per sentence (default 3)")
    args = ap.parse_args(argv)
    missing = [v for v in args.voices if not v.is_file()]
    if missing:
        print(f"voice_quality: {missing[0]} not found (`redsg-edge fetch-models` derives "
              "models/en_US-joe-medium-int8.onnx)", file=sys.stderr)
        return 2
    try:
        import librosa  # noqa: F401 - speechmos needs it
        import speechmos  # noqa: F401
    except ImportError as exc:
        print(f"voice_quality: {exc}; pip install speechmos==0.0.1.1 librosa requests",
              file=sys.stderr)
        return 2
    from redsg_edge.reply.prompt import DEFAULT_TEMPLATES

    sentences = [s for group in DEFAULT_TEMPLATES.values() for s in group]
    base = score(speak(None, sentences, args.takes))
    spread = np.abs(base[:, 0] - base[:, 1]).mean(0) if args.takes > 1 else np.full(4, np.nan)
    print(f"float voice, {len(sentences)} sentences x {args.takes} takes: " + ", ".join(
        f"{n} {m:.3f} (take to take {s:.3f})" for n, m, s in zip(NAMES, base.mean((0, 1)), spread)))
    for v in args.voices:
        cand = score(speak(v, sentences, args.takes))
        mean, lo, hi = compare(base, cand)
        print(f"{v.name}: " + "; ".join(
            f"{n} {c:.3f}, {d:+.3f} ({a:+.3f} .. {b:+.3f})"
            for n, c, d, a, b in zip(NAMES, cand.mean((0, 1)), mean, lo, hi)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
