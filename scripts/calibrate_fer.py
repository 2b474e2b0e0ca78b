#!/usr/bin/env python3
"""Fit the FER model's calibration on FER2013 PublicTest (validation) and report it.

Two steps, both fitted on the validation split only (``val`` = PublicTest, 3,589 faces, the
split the FER model was selected on; ``redsg_edge.calibration``):

1. **Temperature scaling** (Guo et al. 2017): T by minimum NLL.
2. **Prior shift** (Saerens et al. 2002; Menon et al. 2021): the calibrated posterior times
   ``(1/π)^s``, π the class frequencies of FER2013 Training, which FER2013's faces share and
   other people do not (happy is 25 % of it, disgust 1.5 %). The strength s is chosen on val
   from 0 to 1.5 in steps of 0.05 by the mean of accuracy (FER2013's own prior) and UAR (the
   mean per-class recall: a uniform prior), since the device sees neither prior; a tie goes to
   the smaller s. ``--strength S`` fixes it, ``--strength 0`` turns the shift off.

Then expected calibration error (15 bins), accuracy and UAR before and after, on val,
PrivateTest (``test``) and CK+48 (6 classes, softmax renormalised over them; cross-corpus).
Writes ``{"temperature": T, "prior_shift": {...}, ...}`` to the model's sidecar JSON
(``models/fer_int8.json``), which ``FerModel`` applies at run time.

    python scripts/calibrate_fer.py [--model models/fer_int8.tflite] [--strength S] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.calibration import (expected_calibration_error, fit_temperature,  # noqa: E402
                                    prior_shift_bias, sidecar_path, temperature_scale)
from redsg_edge.datasets import CK48_CLASSES as SIX, load_ck48, load_fer2013  # noqa: E402
from redsg_edge.litert import LiteRTClassifier  # noqa: E402
from eval_models import uar  # noqa: E402


def raw_probs(clf: LiteRTClassifier, x: np.ndarray) -> np.ndarray:
    """Uncalibrated probabilities (N, 7) of 48x48 uint8 faces, as FerModel computes them at T=1."""
    from tqdm import tqdm
    out = np.stack([np.clip(clf.predict(im.astype(np.float32)[..., None]), 0, None)
                    for im in tqdm(x, desc="FER", unit="face", leave=False)])
    return out / np.maximum(out.sum(1, keepdims=True), 1e-12)


def choose_strength(probs: np.ndarray, labels: np.ndarray, t: float, prior: np.ndarray,
                    grid=np.round(np.arange(0.0, 1.501, 0.05), 2)) -> tuple[float, list]:
    """The prior-shift strength of ``grid`` with the best mean of accuracy and UAR on
    (probs, labels) after temperature ``t`` (the smallest on a tie); returns (s, rows of
    (s, accuracy, UAR))."""
    rows = []
    for s in grid:
        pred = temperature_scale(probs, t, prior_shift_bias(prior, float(s))).argmax(1)
        rows.append((float(s), float(np.mean(pred == labels)), uar(labels, pred)))
    best = max(rows, key=lambda r: (round((r[1] + r[2]) / 2, 6), -r[0]))
    return best[0], rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/fer_int8.tflite"))
    ap.add_argument("--strength", type=float, default=None,
                    help="prior-shift strength s ≥ 0 instead of choosing it on val (0 = off)")
    ap.add_argument("--dry-run", action="store_true", help="report, do not write the sidecar")
    args = ap.parse_args()
    if args.strength is not None and not args.strength >= 0:
        ap.error(f"--strength must be ≥ 0, got {args.strength}")
    clf = LiteRTClassifier(args.model, (48, 48, 1), len(CLASSES))
    _x, ytrain, _ = load_fer2013("train")
    prior = np.bincount(ytrain, minlength=len(CLASSES)) / len(ytrain)
    xv, yv, _ = load_fer2013("val")
    xt, yt, _ = load_fer2013("test")
    ck = load_ck48()
    xc, yc = np.stack([c.image for c in ck]), np.array([c.label for c in ck])
    pv, pt, pc = raw_probs(clf, xv), raw_probs(clf, xt), raw_probs(clf, xc)
    t = fit_temperature(pv, yv)
    if args.strength is None:
        strength, grid = choose_strength(pv, yv, t, prior)
        print("prior-shift strength on val: s, accuracy, UAR, mean")
        for s, acc, u in grid:
            mark = "  <- chosen" if s == strength else ""
            print(f"  {s:.2f}  {acc:.4f}  {u:.4f}  {(acc + u) / 2:.4f}{mark}")
    else:
        strength = args.strength
    bias = prior_shift_bias(prior, strength)

    def ck6(p):
        q = p[:, SIX]
        return q / q.sum(1, keepdims=True), np.array([SIX.index(int(y)) for y in yc])

    rows = {}
    for name, p, y in (("val (fit)", pv, yv), ("PrivateTest", pt, yt), ("CK+48 (6)", pc, None)):
        q = temperature_scale(p, t, bias)
        if y is None:
            (p, y), (q, _) = ck6(p), ck6(q)
        a, b = p.argmax(1), q.argmax(1)
        rows[name] = (expected_calibration_error(p, y), expected_calibration_error(q, y),
                      float(np.mean(a == y)), float(np.mean(b == y)), uar(y, a), uar(y, b))
    print(f"temperature T = {t}, prior-shift strength s = {strength}")
    print(f"{'set':<14}{'ECE before':>12}{'ECE after':>11}{'acc before':>12}{'acc after':>11}"
          f"{'UAR before':>12}{'UAR after':>11}")
    for name, r in rows.items():
        print(f"{name:<14}" + "".join(f"{v:>{w}.4f}" for v, w in zip(r, (12, 11, 12, 11, 12, 11))))
    if not args.dry_run:
        dest = sidecar_path(args.model)
        meta = json.loads(dest.read_text()) if dest.is_file() else {}
        meta.update({"temperature": t, "temperature_fitted_on": "FER2013 PublicTest (val), min NLL",
                     "prior_shift": {"train_prior": [round(float(v), 6) for v in prior],
                                     "train_prior_of": "FER2013 Training (28,709 faces)",
                                     "strength": strength,
                                     "strength_chosen_on": "--strength, by hand" if args.strength
                                     is not None else "FER2013 PublicTest (val), best mean of "
                                                      "accuracy and UAR"},
                     "ece_15bins": {k: {"before": round(r[0], 4), "after": round(r[1], 4)}
                                    for k, r in rows.items()}})
        dest.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
