"""Classifier files for tests that exercise plumbing, not accuracy (service, check, install).

``classifier_models(dest)`` returns ``(fer, ser)`` paths: the repository's trained
``models/fer_int8.tflite`` and ``models/ser_int8.tflite`` when both exist, else *untrained*
stand-ins with the same input and output shapes (48x48x1 → 7 and MFCC frames x 20 → 7,
random weights, float) built with TensorFlow from the ``[train]`` extra. Nothing is trained.
Raises ImportError when the trained files are missing and TensorFlow is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAINED = (REPO / "models" / "fer_int8.tflite", REPO / "models" / "ser_int8.tflite")

_BUILD = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
def build(shape, out):
    inp = tf.keras.Input(shape)
    x = tf.keras.layers.Dense(7, activation="softmax")(tf.keras.layers.Flatten()(inp))
    conv = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, x))
    open(out, "wb").write(conv.convert())
build((48, 48, 1), sys.argv[1])
build((int(sys.argv[3]), 20), sys.argv[2])
"""


def classifier_models(dest: Path, window_s: float = 2.5, prefer_trained: bool = True
                      ) -> tuple[Path, Path]:
    """(fer, ser) model paths for a SER window of ``window_s`` seconds (see module doc)."""
    if prefer_trained and all(p.is_file() for p in TRAINED):
        return TRAINED
    import importlib.util

    from redsg_edge.features import SAMPLE_RATE, num_frames

    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError("models/fer_int8.tflite or models/ser_int8.tflite is missing and "
                          "tensorflow (the [train] extra) is not installed to build stand-ins")
    dest.mkdir(parents=True, exist_ok=True)
    fer, ser = dest / "stub_fer.tflite", dest / "stub_ser.tflite"
    if not (fer.is_file() and ser.is_file()):
        frames = num_frames(int(round(window_s * SAMPLE_RATE)))
        # A subprocess: TensorFlow's import and threads stay out of the test process.
        subprocess.run([sys.executable, "-c", _BUILD, str(fer), str(ser), str(frames)],
                       check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return fer, ser
