#!/usr/bin/env python3
"""Write the golden predictions and accuracy floors that tests/test_goldens.py checks.

Run it deliberately when a model or its calibration sidecar changes, and commit its output in
the same commit as the model and its card; the test fails with a pointer here while a golden
file names another model's or sidecar's sha256. The method (items, windows, argmax) lives in
``tests.helpers.goldens``.

    python scripts/make_goldens.py --fer       # tests/data/fer_golden.json (FER2013 + CK+48)
    python scripts/make_goldens.py --ser       # tests/data/ser_golden.json (RAVDESS 23 + 24)
    python scripts/make_goldens.py --fer --ser [--models models] [--out tests/data]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.helpers import goldens  # noqa: E402


def write(path: Path, model: Path, sets: dict, method: str) -> None:
    doc = {"model": model.name, "model_sha256": goldens.sha256_file(model),
           "calibration_sha256": goldens.calibration_sha256(model),
           "generated": date.today().isoformat(), "generator": "scripts/make_goldens.py",
           "method": method, "sets": goldens.with_floors(sets)}
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for name, s in doc["sets"].items():
        print(f"{path}: {name}: n {s['n']}, accuracy {s['acc']:.4f}, floor {s['floor']:.3f}, "
              f"max flips {s['max_flips']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fer", action="store_true", help="FER goldens (fer_golden.json)")
    ap.add_argument("--ser", action="store_true", help="SER goldens (ser_golden.json)")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    args = ap.parse_args(argv)
    if not (args.fer or args.ser):
        ap.error("choose --fer and/or --ser")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fer:
        model = args.models / "fer_int8.tflite"
        write(args.out / "fer_golden.json", model, goldens.fer_sets(model),
              "FerModel.predict on each 48x48 image; CK+48: argmax over the six classes")
    if args.ser:
        model = args.models / "ser_int8.tflite"
        write(args.out / "ser_golden.json", model, goldens.ser_set(model),
              "per utterance: mean of features.ser_windows probabilities (speech.window_s "
              "windows every speech.hop_s, the default config's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
