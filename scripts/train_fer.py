#!/usr/bin/env python3
"""Train the FER (facial expression) classifier and export it to full-integer int8 TFLite.

Data: FER2013 from ``../shared/data/fer2013.zip`` (train = x_train, val = PublicTest for model
selection, test = PrivateTest, reported). Input: 48x48x1 grayscale pixels 0..255 (the face crop
``redsg_edge.vision.crop_face`` produces at run time); the network rescales internally, so the int8
input is simply ``pixel - 128``.

Network: a VGG-style CNN (a full-resolution stem conv, three double-conv blocks of 32→128
channels, batch norm, a 256-unit dense layer; ~0.6 M parameters, ~25 M MACs), following the single-network FER2013 results of Khaireddin & Chen 2021 at a size a
Raspberry Pi runs in milliseconds. Augmentation models what a camera does: shift, scale, rotation,
horizontal flip, brightness/contrast and blur.

Reproducible (seeded), resumable (``--out`` keeps a backup; rerun the same command to resume),
logged to ``OUT/train.csv``. Needs the ``[train]`` extra (tensorflow-cpu).

    python scripts/train_fer.py --epochs 20 --out runs/fer
    python scripts/train_fer.py --epochs 40 --lr 1e-3 --init runs/fer/best.keras --out runs/fer2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from redsg_edge import CLASSES  # noqa: E402
from tflite_export import export_int8  # noqa: E402
from redsg_edge.datasets import DATA_ROOT, load_fer2013  # noqa: E402


def cached_split(split: str, data: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    cache.mkdir(parents=True, exist_ok=True)
    f = cache / f"fer2013_{split}.npz"
    if f.is_file():
        z = np.load(f)
        return z["x"], z["y"]
    x, y, _ = load_fer2013(split, data)
    np.savez(f, x=x, y=y)
    return x, y


def build_models(seed: int, width: int = 32):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)

    def block(x, ch, drop):
        for _ in range(2):
            x = layers.Conv2D(ch, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
        return layers.Dropout(drop)(x)

    inp = keras.Input((48, 48, 1), name="face")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    # Stem: one conv at full resolution; the double-conv blocks start at 24x24. This keeps the
    # cost near 25 M MACs per face (a Pi 4 core runs it in a few ms) and training on 2 CPU cores.
    x = layers.Conv2D(width // 2, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)
    for ch, drop in ((width, 0.1), (2 * width, 0.2), (4 * width, 0.3)):
        x = block(x, ch, drop)
    x = layers.Flatten()(x)
    x = layers.Dense(8 * width, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.5)(x)
    out = layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    core = keras.Model(inp, out, name="fer_vgg")

    aug = keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        # Rotation ±11°: the run-time crop is eye-levelled, so larger angles only teach poses the
        # model never sees (±18° left a 0.6 M-parameter net under-fitting: train 56 % < val 58 %).
        layers.RandomRotation(0.03, fill_mode="nearest", seed=seed + 1),
        layers.RandomZoom((-0.1, 0.1), fill_mode="nearest", seed=seed + 2),
        layers.RandomTranslation(0.08, 0.08, fill_mode="nearest", seed=seed + 3),
        layers.RandomContrast(0.25, value_range=(0, 255), seed=seed + 4),
        layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 5),
    ], name="camera_augment")
    train_in = keras.Input((48, 48, 1))
    train_model = keras.Model(train_in, core(aug(train_in)), name="fer_train")
    return core, train_model


def with_flip_tta(core):
    """core(x) averaged with core(mirror image of x): (48, 48, 1) → (7,) probabilities."""
    import keras
    inp = keras.Input((48, 48, 1), name="face")
    mirrored = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name="mirror")(inp)
    out = keras.layers.Average(name="probs_tta")([core(inp), core(mirrored)])
    return keras.Model(inp, out, name=core.name + "_tta")


def random_blur(x, seed):
    """Gaussian blur (sigma ~1 px) on a random half of the batch: camera defocus and motion."""
    import tensorflow as tf
    k = np.outer(*(2 * [np.array([1, 4, 6, 4, 1], np.float32)]))
    k = tf.constant((k / k.sum())[:, :, None, None])
    blurred = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME")
    mask = tf.cast(tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seed) < 0.3, x.dtype)
    return mask * blurred + (1 - mask) * x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "fer2013.zip", help="FER2013 zip")
    ap.add_argument("--out", type=Path, default=Path("runs/fer"), help="checkpoints, logs")
    ap.add_argument("--cache", type=Path, default=Path(".cache"), help="decoded-image cache")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--width", type=int, default=32, help="channels of the first double-conv block")
    ap.add_argument("--export", type=Path, default=Path("models/fer_int8.tflite"))
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this saved core model (.keras) instead of random weights: a "
                         "second cosine cycle (warm restart) over an earlier run")
    ap.add_argument("--no-jit", action="store_true", help="disable XLA (about 20%% slower on CPU)")
    ap.add_argument("--export-only", action="store_true", help="skip training; export best.keras")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    args.out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr = cached_split("train", args.data, args.cache)
    x_va, y_va = cached_split("val", args.data, args.cache)
    print(f"train {len(x_tr)}  val {len(x_va)}", flush=True)

    core, train_model = build_models(args.seed, args.width)
    if args.init is not None:
        core.set_weights(keras.models.load_model(args.init).get_weights())
        print(f"initialised from {args.init}", flush=True)
    best = args.out / "best.keras"
    if not args.export_only:
        steps = int(np.ceil(len(x_tr) / args.batch)) * args.epochs
        sched = keras.optimizers.schedules.CosineDecay(
            args.lr * 0.1, steps, warmup_target=args.lr, warmup_steps=steps // 20, alpha=0.01)
        train_model.compile(
            optimizer=keras.optimizers.AdamW(sched, weight_decay=1e-4),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
            metrics=["accuracy"], jit_compile=not args.no_jit)
        seed = tf.constant([args.seed, 0], tf.int64)
        ds = (tf.data.Dataset.from_tensor_slices(
                (x_tr[..., None].astype(np.float32), tf.one_hot(y_tr, len(CLASSES))))
              .shuffle(len(x_tr), seed=args.seed, reshuffle_each_iteration=True)
              .batch(args.batch)
              .enumerate()
              .map(lambda i, b: (random_blur(b[0], seed + tf.stack([i, i])), b[1]))
              .prefetch(2))
        val = (x_va[..., None].astype(np.float32), keras.utils.to_categorical(y_va, len(CLASSES)))

        class SaveCore(keras.callbacks.Callback):
            best_acc = -1.0

            def on_epoch_end(self, epoch, logs=None):
                acc = logs.get("val_accuracy", 0.0)
                if acc > self.best_acc:
                    self.best_acc = acc
                    core.save(best)
                    (args.out / "best.json").write_text(json.dumps({"epoch": epoch + 1, "val_accuracy": acc}))

        class Progress(keras.callbacks.Callback):
            """One log line every 50 steps: the epoch bar of verbose=1 is unreadable in a log."""

            def on_train_batch_end(self, batch, logs=None):
                if batch % 50 == 0:
                    print(f"  step {batch}  loss {logs['loss']:.3f}  acc {logs['accuracy']:.3f}  "
                          f"{time.time() - t0:.0f} s", flush=True)

        t0 = time.time()
        train_model.fit(
            ds, epochs=args.epochs, validation_data=val, verbose=2,
            callbacks=[keras.callbacks.BackupAndRestore(str(args.out / "backup")),
                       keras.callbacks.CSVLogger(str(args.out / "train.csv"), append=True),
                       SaveCore(), Progress()])
        (args.out / "train_time.txt").write_text(f"{time.time() - t0:.0f} s, this run\n")
    core = keras.models.load_model(best)
    # Horizontal-flip test-time augmentation inside the graph (one interpreter call, about twice
    # the compute): kept only if it helps on x_val, never decided on the test set.
    flip = with_flip_tta(core)
    xv = x_va[..., None].astype(np.float32)
    val_plain = float((core.predict(xv, verbose=0).argmax(1) == y_va).mean())
    val_flip = float((flip.predict(xv, verbose=0).argmax(1) == y_va).mean())
    final = flip if val_flip > val_plain else core
    rep = x_tr[np.random.default_rng(args.seed).choice(len(x_tr), 500, replace=False)]
    export_int8(final, rep[..., None].astype(np.float32), args.export)
    x_te, y_te, _ = load_fer2013("test", args.data)
    acc = float((final.predict(x_te[..., None].astype(np.float32), verbose=0).argmax(1) == y_te).mean())
    facts = {"val_accuracy": val_plain, "val_accuracy_flip_tta": val_flip,
             "flip_tta": final is flip, "test_accuracy": acc}
    print(f"{facts}; exported {args.export} ({args.export.stat().st_size} bytes)")
    (args.out / "float_test.json").write_text(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
