#!/usr/bin/env python3
"""A second FER teacher: face-api's expression net, run in TensorFlow, for distillation.

The net is ``face_expression_model`` of the npm package ``@vladmandic/face-api`` 1.7.15 (MIT,
Vladimir Mandic; the network and weights come from Vincent Mühler's ``face-api.js``, MIT). Its
training data is not documented: posed sets such as CK+ may be in it, so any CK+48 figure of a
model distilled from it can be optimistic, and the model cards say so. It is a training-time
teacher only; nothing at run time loads it.

Architecture, from the package's ``src/faceFeatureExtractor``: a 112x112 RGB input minus the mean
RGB (122.782, 117.001, 104.298), divided by 255; four "dense blocks" (a stride-2 conv, then three
depthwise-separable convs whose inputs are the ReLU of the running sum of the block's outputs) of
32/64/128/256 channels; a 7x7 average pool; a 256→7 dense layer. Weights are tfjs uint8 affine
quantised (value = q · scale + min). Its classes are reordered to ours.

Get the package (an explicit, verified step; nothing downloads at run time), then write the
teacher's probabilities for FER2013's training images:

    npm pack @vladmandic/face-api@1.7.15 --pack-destination .cache
    tar -xzf .cache/vladmandic-face-api-1.7.15.tgz -C .cache
    python scripts/fer_teacher.py --package .cache/package --out .cache/fer_teacher_train.npz

``--report`` prints its accuracy on x_val (PublicTest) and CK+48 as well. Needs the ``[train]``
extra (tensorflow-cpu).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from redsg_edge.datasets import DATA_ROOT, ck48_label, load_ck48  # noqa: E402
from train_fer import cached_split  # noqa: E402

WEIGHTS_SHA256 = "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d"
FACE_API_CLASSES = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
#: face-api's output index for each of our CLASSES (angry, disgust, fear, happy, sad, surprise, neutral).
TO_OURS = [FACE_API_CLASSES.index(n) for n in
           ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")]
MEAN_RGB = (122.782, 117.001, 104.298)


def load_weights(package: Path) -> dict[str, np.ndarray]:
    """face-api's expression weights, dequantised: name → float32 array in tfjs (HWIO) layout.

    Raises FileNotFoundError naming the missing file, ValueError if the weights' sha256 is not
    that of face-api 1.7.15 or the manifest does not account for every byte.
    """
    model = package / "model"
    manifest, blob = (model / "face_expression_model-weights_manifest.json",
                      model / "face_expression_model.bin")
    for f in (manifest, blob):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not found; unpack @vladmandic/face-api 1.7.15 there "
                                    "(see this script's --help)")
    buf = blob.read_bytes()
    if hashlib.sha256(buf).hexdigest() != WEIGHTS_SHA256:
        raise ValueError(f"{blob}: sha256 differs from face-api 1.7.15's weights")
    weights, off = {}, 0
    for w in json.loads(manifest.read_text())[0]["weights"]:
        n = int(np.prod(w["shape"]))
        q = w.get("quantization")
        if q:
            a = np.frombuffer(buf, np.uint8, n, off).astype(np.float32) * q["scale"] + q["min"]
            off += n
        else:
            a = np.frombuffer(buf, np.float32, n, off).copy()
            off += 4 * n
        weights[w["name"]] = a.reshape(w["shape"])
    if off != len(buf):
        raise ValueError(f"{blob}: manifest covers {off} of {len(buf)} bytes")
    return weights


class FaceApiExpression:
    """face-api's expression net on our 48x48 grey crops.

    ``logits(x)``: x (N, 48, 48) uint8 grey → (N, 7) float32 logits in CLASSES order. The grey
    crop is resized bilinearly to 112x112 and repeated over the three colour channels.
    """

    def __init__(self, package: Path) -> None:
        import tensorflow as tf
        w = {k: tf.constant(v) for k, v in load_weights(package).items()}

        def sep(x, p, stride):
            return tf.nn.separable_conv2d(x, w[p + "/depthwise_filter"], w[p + "/pointwise_filter"],
                                          [1, stride, stride, 1], "SAME") + w[p + "/bias"]

        def dense_block(x, p, first):
            if first:
                o1 = tf.nn.conv2d(x, w[p + "/conv0/filters"], 2, "SAME") + w[p + "/conv0/bias"]
            else:
                o1 = sep(x, p + "/conv0", 2)
            o1 = tf.nn.relu(o1)
            o2 = sep(o1, p + "/conv1", 1)
            o3 = sep(tf.nn.relu(o1 + o2), p + "/conv2", 1)
            o4 = sep(tf.nn.relu(o1 + o2 + o3), p + "/conv3", 1)
            return tf.nn.relu(o1 + o2 + o3 + o4)

        @tf.function
        def run(grey):
            x = tf.image.resize(tf.cast(grey, tf.float32)[..., None], (112, 112), method="bilinear")
            x = tf.concat([x - m for m in MEAN_RGB], -1) / 255.0
            for i in range(4):
                x = dense_block(x, f"dense{i}", i == 0)
            x = tf.reshape(tf.nn.avg_pool2d(x, 7, 2, "VALID"), (-1, 256))
            return tf.gather(x @ w["fc/weights"] + w["fc/bias"], TO_OURS, axis=1)

        self._run = run

    def logits(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        return np.concatenate([self._run(x[i:i + batch]).numpy() for i in range(0, len(x), batch)])

    def probs(self, x: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 → (N, 7) float32: softmax of the mean logits of the image and its mirror."""
        from scipy.special import softmax
        z = (self.logits(x) + self.logits(np.ascontiguousarray(x[:, :, ::-1]))) / 2
        return softmax(z, axis=1).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", type=Path, default=Path(".cache/package"),
                    help="the unpacked @vladmandic/face-api 1.7.15 npm package")
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "fer2013.zip", help="FER2013 zip")
    ap.add_argument("--cache", type=Path, default=Path(".cache"), help="decoded-image cache")
    ap.add_argument("--out", type=Path, default=Path(".cache/fer_teacher_train.npz"),
                    help="where to write probs (N, 7) for FER2013's training images, in their order")
    ap.add_argument("--report", action="store_true", help="also print x_val and CK+48 accuracy")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        net = FaceApiExpression(args.package)
    except (FileNotFoundError, ValueError) as e:
        print(f"fer_teacher: {e}", file=sys.stderr)
        return 66
    x_tr, y_tr = cached_split("train", args.data, args.cache)
    p = net.probs(x_tr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, probs=p, y=y_tr)
    print(f"wrote {args.out}: {len(p)} images, teacher train accuracy {(p.argmax(1) == y_tr).mean():.4f}")
    if args.report:
        x_va, y_va = cached_split("val", args.data, args.cache)
        print(f"x_val accuracy {(net.probs(x_va).argmax(1) == y_va).mean():.4f}")
        ck = load_ck48()
        cp, cy = net.probs(np.stack([r.image for r in ck])), np.array([r.label for r in ck])
        print(f"CK+48 accuracy 7-way {(cp.argmax(1) == cy).mean():.4f}, "
              f"6-way {(ck48_label(cp) == cy).mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
