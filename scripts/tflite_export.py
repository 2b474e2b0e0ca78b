"""Full-integer int8 TFLite export shared by the training scripts.

Keras 3 models are exported as a SavedModel first: converting a concrete function that captures
the model's variables leaves READ_VARIABLE ops that the calibrator cannot run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def export_int8(model, representative: np.ndarray, dest: Path) -> int:
    """Quantize ``model`` to int8 (int8 input and output) with ``representative`` examples
    (N, *input_shape) float32 from the training data; writes ``dest``, returns its size in bytes."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in representative)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        data = conv.convert()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return len(data)
