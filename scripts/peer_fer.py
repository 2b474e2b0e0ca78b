#!/usr/bin/env python3
"""Peer worker for ``redsg-edge bench peers``: the ``fer`` package (25.10.3) through its own API.

Runs inside the separate ``.venv-peers`` (see docs/benchmarks.md for how it is built: ``fer``
with ``--no-deps`` plus ``tensorflow-cpu``, ``opencv-contrib-python<5``, ``pillow``, ``requests``;
a plain ``pip install fer`` pulls a CUDA PyTorch through facenet-pytorch, which only its optional
MTCNN mode needs). ``from fer.fer import FER`` is used because ``from fer import FER`` does not
work in this release. Default mode, as its users get it: OpenCV Haar cascade
(``haarcascade_frontalface_default``) + the bundled quantized mini-XCEPTION TFLite model.

Input (``--in payload.json``): ``{"npz": path with "faces" (N, 48, 48) uint8, "limit": n | null,
"modes": ["crop", "photo"]}``. The bench sets this process's CPU affinity before it starts.
Output: one JSON line on stdout (everything else goes to stderr)::

    {"versions": {...}, "crop_offsets_0": {"scores": [[7] | null], "latency_ns": [...]},
     "crop_default": {...}, "photo_default": {"scores", "latency_ns", "n_faces", "boxes"},
     "photo_offsets_0": {"scores"}, "haar_ns": [...], "bare_classifier_ns": [...]}

Scores are the API's own (rounded to 2 decimals by ``detect_emotions``), in FER2013 order
(angry, disgust, fear, happy, sad, surprise, neutral), which is also ours.

Feeding: *crop* = the 48x48 dataset image as a 3-channel BGR array with the whole image given
as the face rectangle (``face_rectangles=[(0, 0, 48, 48)]``), with ``offsets=(0, 0)`` and with
the default offsets (10, 10) (which take in its grey padding). *photo* = the image that
``redsg_edge.bench.common.compose_photo`` builds (face upscaled to 240 px on a 640x480 grey
canvas), given to ``detect_emotions(photo)`` so its Haar cascade finds the face; of several
boxes the largest is scored. The photo latency is the whole ``detect_emotions`` call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in", dest="inp", type=Path, required=True, help="payload JSON")
    args = ap.parse_args(argv)
    payload = json.loads(args.inp.read_text())

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # TensorFlow/OpenCV prints go to stderr; the result goes to the saved fd
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import cv2
    import numpy as np
    import tensorflow as tf
    import fer as fer_pkg
    from fer.fer import FER

    from redsg_edge.bench.common import compose_photo  # the same photos the project's side gets

    faces = np.load(payload["npz"])["faces"]
    n = len(faces) if payload.get("limit") is None else min(len(faces), payload["limit"])
    modes = payload.get("modes") or ["crop", "photo"]
    fer_default = FER()
    fer_zero = FER(offsets=(0, 0))

    def bgr(gray):
        return np.repeat(gray[..., None], 3, axis=2)

    def scores_of(result):
        return [float(result["emotions"][k]) for k in LABELS]

    def largest(results):
        return max(results, key=lambda r: int(r["box"][2]) * int(r["box"][3])) if results else None

    out: dict = {"n": n, "cpus": sorted(os.sched_getaffinity(0)), "versions": {
        "fer": fer_pkg.__version__, "tensorflow": tf.__version__, "opencv": cv2.__version__,
        "numpy": np.__version__, "cv2_threads": cv2.getNumThreads(),
        "python": sys.version.split()[0], "detector": "Haar haarcascade_frontalface_default",
        "classifier": "fer/data/emotion_model_quantized.tflite (use_tflite=True, default)"}}
    whole = [(0, 0, 48, 48)]
    for i in range(min(10, n)):  # warm-up, excluded
        fer_default.detect_emotions(bgr(faces[i]), face_rectangles=whole)
        fer_zero.detect_emotions(bgr(faces[i]), face_rectangles=whole)
        fer_default.detect_emotions(bgr(compose_photo(faces[i])))

    if "crop" in modes:
        for key, model in (("crop_offsets_0", fer_zero), ("crop_default", fer_default)):
            sc, lat = [], []
            for i in range(n):
                img = bgr(faces[i])
                t0 = time.perf_counter_ns()
                r = model.detect_emotions(img, face_rectangles=whole)
                lat.append(time.perf_counter_ns() - t0)
                sc.append(scores_of(r[0]) if r else None)
            out[key] = {"scores": sc, "latency_ns": lat}
        # The bare TFLite invoke on one preprocessed 64x64 face (a private method: for reference
        # only, to show where the time goes).
        x = cv2.resize(faces[0], (64, 64)).astype(np.float32)[None] / 255.0
        x = (x - 0.5) * 2.0
        bare = []
        for j in range(1050):
            t0 = time.perf_counter_ns()
            fer_default._classify_emotions(x)
            if j >= 50:
                bare.append(time.perf_counter_ns() - t0)
        out["bare_classifier_ns"] = bare

    if "photo" in modes:
        sc, sc0, lat, nf, boxes, haar = [], [], [], [], [], []
        for i in range(n):
            photo = bgr(compose_photo(faces[i]))
            t0 = time.perf_counter_ns()
            r = fer_default.detect_emotions(photo)
            lat.append(time.perf_counter_ns() - t0)
            best = largest(r)
            nf.append(len(r))
            sc.append(scores_of(best) if best else None)
            box = [int(v) for v in best["box"]] if best else None
            boxes.append(box)
            if box is not None:  # the same Haar box classified with offsets=(0, 0)
                r0 = fer_zero.detect_emotions(photo, face_rectangles=[tuple(box)])
                sc0.append(scores_of(r0[0]) if r0 else None)
            else:
                sc0.append(None)
            if i < 500:  # Haar alone, for the breakdown
                t0 = time.perf_counter_ns()
                fer_default.find_faces(photo, bgr=True)
                haar.append(time.perf_counter_ns() - t0)
        out["photo_default"] = {"scores": sc, "latency_ns": lat, "n_faces": nf, "boxes": boxes}
        out["photo_offsets_0"] = {"scores": sc0}
        out["haar_ns"] = haar

    sys.stdout.flush()
    os.write(saved, (json.dumps(out) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
