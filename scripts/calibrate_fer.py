#!/usr/bin/env python3
"""Fit the FER model's temperature on FER2013 PublicTest (validation) and report calibration.

Temperature scaling (Guo et al. 2017; ``redsg_edge.calibration``): T is fitted by minimum NLL on
the validation split only (``val`` = PublicTest, 3,589 faces, the split the FER model was
selected on), then expected calibration error (15 bins) is reported before and after on
PrivateTest (``test``) and on CK+48 (6 classes, softmax renormalised over them). Writes
``{"temperature": T, ...}`` to the model's sidecar JSON (``models/fer_int8.json``), which
``FerModel`` applies at run time.

    python scripts/calibrate_fer.py [--model models/fer_int8.tflite] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.calibration import (expected_calibration_error, fit_temperature,  # noqa: E402
                                    sidecar_path, temperature_scale)
from redsg_edge.datasets import CK48_CLASSES as SIX, load_ck48, load_fer2013  # noqa: E402
from redsg_edge.litert import LiteRTClassifier  # noqa: E402


def raw_probs(clf: LiteRTClassifier, x: np.ndarray) -> np.ndarray:
    """Uncalibrated probabilities (N, 7) of 48x48 uint8 faces, as FerModel computes them at T=1."""
    from tqdm import tqdm
    out = np.stack([np.clip(clf.predict(im.astype(np.float32)[..., None]), 0, None)
                    for im in tqdm(x, desc="FER", unit="face", leave=False)])
    return out / np.maximum(out.sum(1, keepdims=True), 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/fer_int8.tflite"))
    ap.add_argument("--dry-run", action="store_true", help="report, do not write the sidecar")
    args = ap.parse_args()
    clf = LiteRTClassifier(args.model, (48, 48, 1), len(CLASSES))
    xv, yv, _ = load_fer2013("val")
    xt, yt, _ = load_fer2013("test")
    ck = load_ck48()
    xc, yc = np.stack([c.image for c in ck]), np.array([c.label for c in ck])
    pv, pt, pc = raw_probs(clf, xv), raw_probs(clf, xt), raw_probs(clf, xc)
    t = fit_temperature(pv, yv)

    def ck6(p):
        q = p[:, SIX]
        return q / q.sum(1, keepdims=True), np.array([SIX.index(int(y)) for y in yc])

    rows = {}
    for name, p, y in (("val (fit)", pv, yv), ("PrivateTest", pt, yt)):
        rows[name] = (expected_calibration_error(p, y),
                      expected_calibration_error(temperature_scale(p, t), y), float((p.argmax(1) == y).mean()))
    q, y6 = ck6(pc)
    qs, _ = ck6(temperature_scale(pc, t))
    rows["CK+48 (6)"] = (expected_calibration_error(q, y6), expected_calibration_error(qs, y6),
                         float((q.argmax(1) == y6).mean()))
    print(f"temperature T = {t}")
    print(f"{'set':<14}{'ECE before':>12}{'ECE after':>12}{'accuracy':>10}")
    for name, (a, b, acc) in rows.items():
        print(f"{name:<14}{a:>12.4f}{b:>12.4f}{acc:>10.4f}")
    if not args.dry_run:
        dest = sidecar_path(args.model)
        meta = json.loads(dest.read_text()) if dest.is_file() else {}
        meta.update({"temperature": t, "temperature_fitted_on": "FER2013 PublicTest (val), min NLL",
                     "ece_15bins": {k: {"before": round(a, 4), "after": round(b, 4)}
                                    for k, (a, b, _acc) in rows.items()}})
        dest.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
