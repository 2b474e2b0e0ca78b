#!/usr/bin/env python3
"""Train the FER (facial expression) classifier and export it to full-integer int8 TFLite.

Data: FER2013 from ``../shared/data/fer2013.zip`` (train = x_train, val = PublicTest for model
selection; test = PrivateTest is never read here: ``scripts/eval_models.py`` reports it on the
exported file). Input: 48x48x1 grayscale pixels 0..255 (the face crop
``redsg_edge.vision.crop_face`` produces at run time); the network rescales internally, so the
int8 input is simply ``pixel - 128``.

Network: a VGG-style CNN (a full-resolution stem conv, three double-conv blocks of ``--width``
→ 4x that many channels, batch norm, a dense layer of 8x ``--width``), following the
single-network FER2013 results of Khaireddin & Chen 2021 at a size a Raspberry Pi runs in
milliseconds: width 48 (the default and the shipped model) has 1.32 M parameters and 55 M MACs,
width 32 0.6 M and 25 M. Augmentation models what a camera does: shift, scale, rotation,
horizontal flip, brightness/contrast and blur.

``--ensemble`` averages several trained nets inside one graph; each member is kept only if it
raises x_val accuracy. The shipped width-48 net is a single model: no width-32 member raised its
x_val accuracy. A warm restart (``--init`` the best checkpoint, a shorter cycle at a quarter of
the LR) raised the shipped net's x_val accuracy from 66.20 to 66.87 %.

Reproducible (seeded), resumable (``--out`` keeps a backup; rerun the same command to resume),
logged to ``OUT/train.csv``. Needs the ``[train]`` extra (tensorflow-cpu).

    python scripts/train_fer.py --width 48 --seed 3 --epochs 60 --out runs/fer_w48  # shipped:
    python scripts/train_fer.py --width 48 --seed 4 --epochs 20 --lr 5e-4 \
        --init runs/fer_w48/best.keras --out runs/fer_w48r                       # + warm restart
    python scripts/train_fer.py --width 32 --seed 1 --epochs 60 --out runs/fer_m1   # a width-32 net
    python scripts/train_fer.py --ensemble runs/fer_w48/best.keras runs/fer_m1/best.keras \
        --out runs/fer_ens --export runs/fer_ens/fer_int8.tflite        # try an ensemble
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


def build_models(seed: int, width: int = 48, jitter: float = 1.0):
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
    # cost near 55 M MACs per face at width 48 (a Pi 4 core runs it in a few ms) and training
    # on 2 CPU cores near an hour.
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
        layers.RandomRotation(0.03 * jitter, fill_mode="nearest", seed=seed + 1),
        layers.RandomZoom((-0.1 * jitter, 0.1 * jitter), fill_mode="nearest", seed=seed + 2),
        layers.RandomTranslation(0.08 * jitter, 0.08 * jitter, fill_mode="nearest", seed=seed + 3),
        layers.RandomContrast(0.25, value_range=(0, 255), seed=seed + 4),
        layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 5),
    ], name="camera_augment")
    train_in = keras.Input((48, 48, 1))
    train_model = keras.Model(train_in, core(aug(train_in)), name="fer_train")
    return core, train_model


def averaged(cores, flip: bool):
    """Mean class probabilities of ``cores`` (and, with ``flip``, of each on the mirror image too):
    (48, 48, 1) → (7,). One graph, so the export is one interpreter call. Members of different
    seeds make different errors; averaging them is the classic FER2013 ensemble (Pramerdorfer &
    Kampel 2016, "Facial Expression Recognition using CNNs: State of the Art")."""
    import keras
    inp = keras.Input((48, 48, 1), name="face")
    views = [inp]
    if flip:
        views.append(keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name="mirror")(inp))
    outs = [core(v) for core in cores for v in views]
    out = outs[0] if len(outs) == 1 else keras.layers.Average(name="probs_mean")(outs)
    return keras.Model(inp, out, name="fer_ensemble" if len(cores) > 1 else cores[0].name + "_tta")


def recover_from_int8(tflite: Path, core, x_sample: np.ndarray) -> None:
    """Load the weights of an int8 export of ``core``'s architecture back into ``core``.

    The converter folds each batch norm into the conv/dense before it (a bias appears); here each
    folded bias b goes into the batch norm's beta, and the norm's moving statistics are set to
    those of its input over ``x_sample`` (N, 48, 48) uint8 training images, with gamma = the
    moving std. Inference then equals the dequantized int8 network, and in training mode each norm
    starts near identity, so a warm restart continues from where the export left off.
    Used to resume from a shipped model whose float checkpoint no longer exists.
    """
    import keras
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the XNNPACK delegate, which takes ownership of constant tensors.
    it = Interpreter(model_path=str(tflite),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    details = {t["index"]: t for t in it.get_tensor_details()}

    def dequant(idx):
        q = details[idx]["quantization_parameters"]
        shape = [-1] + [1] * (len(details[idx]["shape"]) - 1)  # per output channel (axis 0)
        return (it.get_tensor(idx).astype(np.float32) - q["zero_points"].reshape(shape)) \
            * q["scales"].reshape(shape)

    # Each weight appears once per flip-TTA branch; the first occurrence follows layer order.
    weights, seen = [], set()
    for op in it._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED") and op["inputs"][1] not in seen:
            seen.add(op["inputs"][1])
            w, b = dequant(op["inputs"][1]), dequant(op["inputs"][2])
            weights.append((w.transpose(1, 2, 3, 0) if w.ndim == 4 else w.T, b))
    trainable = [layer for layer in core.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    norms = [layer for layer in core.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if len(weights) != len(trainable) or len(norms) != len(trainable) - 1:
        raise ValueError(f"{tflite}: {len(weights)} weight layers, the network has {len(trainable)}")
    for layer, (w, b) in zip(trainable, weights):
        if tuple(layer.kernel.shape) != w.shape:
            raise ValueError(f"{tflite}: {layer.name} expects {tuple(layer.kernel.shape)}, file has "
                             f"{w.shape}: pass the --width it was trained with")
    for layer, norm, (w, b) in zip(trainable, norms, weights):
        layer.kernel.assign(w)
        norm.set_weights([np.full_like(b, np.sqrt(1 + norm.epsilon)), b, np.zeros_like(b), np.ones_like(b)])
    layer, (w, b) = trainable[-1], weights[-1]
    layer.set_weights([w, b])
    probe = keras.Model(core.input, [n.input for n in norms])
    acts = probe.predict(x_sample[..., None].astype(np.float32), batch_size=256, verbose=0)
    for norm, (w, b), z in zip(norms, weights, acts):
        axes = tuple(range(z.ndim - 1))
        m, v = z.mean(axes), z.var(axes)
        norm.set_weights([np.sqrt(v + norm.epsilon), m + b, m, v])


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
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--width", type=int, default=48, help="channels of the first double-conv block")
    ap.add_argument("--export", type=Path, default=Path("models/fer_int8.tflite"))
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this saved core model (.keras, or an int8 .tflite export) "
                         "instead of random weights: a second cosine cycle (warm restart)")
    ap.add_argument("--augment", choices=["camera", "heavy"], default="camera",
                    help="camera: flip, rotation, zoom, shift, contrast, brightness, blur (the first "
                         "two cycles); heavy: that with 1.5x the geometric jitter, plus gamma, low "
                         "resolution, sensor noise, JPEG and occlusion (scripts/fer_augment.py)")
    ap.add_argument("--teacher", type=Path, default=None, metavar="NPZ",
                    help="distil: a teacher's probs (N, 7) for the training images, in their order "
                         "(scripts/fer_teacher.py writes face-api's)")
    ap.add_argument("--distill", type=float, default=0.3, metavar="ALPHA",
                    help="with --teacher, the target is (1 - ALPHA) one-hot + ALPHA teacher probs")
    ap.add_argument("--ema", type=float, default=0.0, metavar="MOMENTUM",
                    help="validate and keep an exponential moving average of the weights "
                         "(Polyak averaging; e.g. 0.999), not the weights themselves (0: off)")
    ap.add_argument("--export-only", action="store_true", help="skip training; export best.keras")
    ap.add_argument("--ensemble", type=Path, nargs="+", default=None, metavar="MODEL",
                    help="skip training; export the mean of these trained core models (.keras, or "
                         "an int8 .tflite export whose float checkpoint is lost: its weights are "
                         "recovered). Members are kept only if they improve x_val accuracy")
    ap.add_argument("--max-params", type=int, default=2_000_000,
                    help="skip an ensemble member that would take the total past this many "
                         "parameters (int8: about one byte each; the card's limit is 2 MB)")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    args.out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr = cached_split("train", args.data, args.cache)
    x_va, y_va = cached_split("val", args.data, args.cache)
    print(f"train {len(x_tr)}  val {len(x_va)}", flush=True)

    def load_core(path: Path):
        """A saved core model (.keras), or one recovered from its int8 export (.tflite)."""
        if path.suffix != ".tflite":
            return keras.models.load_model(path)
        member, _ = build_models(args.seed, args.width)
        sample = np.random.default_rng(args.seed).choice(len(x_tr), 4096, replace=False)
        recover_from_int8(path, member, x_tr[sample])
        return member

    core, train_model = build_models(args.seed, args.width, 1.5 if args.augment == "heavy" else 1.0)
    if args.init is not None:
        core.set_weights(load_core(args.init).get_weights())
        print(f"initialised from {args.init}", flush=True)
    best = args.out / "best.keras"
    if not (args.export_only or args.ensemble):
        steps = int(np.ceil(len(x_tr) / args.batch)) * args.epochs
        sched = keras.optimizers.schedules.CosineDecay(
            args.lr * 0.1, steps, warmup_target=args.lr, warmup_steps=steps // 20, alpha=0.01)
        train_model.compile(
            optimizer=keras.optimizers.AdamW(sched, weight_decay=1e-4, use_ema=args.ema > 0,
                                             ema_momentum=args.ema or 0.99),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
            # No XLA: Keras will not compile RandomZoom or RandomTranslation with it, and with the
            # augmentation moved into the input pipeline the compiled step was slower on this
            # 2-core host (width 56: 1.20 s against 0.74 s a batch, 2026-12-05).
            metrics=["accuracy"], jit_compile=False)
        seed = tf.constant([args.seed, 0], tf.int64)
        targets = np.eye(len(CLASSES), dtype=np.float32)[y_tr]
        if args.teacher is not None:
            # Soft targets (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"),
            # here at temperature 1, mixed with the labels.
            taught = np.load(args.teacher)
            if not np.array_equal(taught["y"], y_tr):
                raise SystemExit(f"{args.teacher}: written for other training images; rerun "
                                 "scripts/fer_teacher.py")
            targets = (1 - args.distill) * targets + args.distill * taught["probs"]
            print(f"distilling from {args.teacher} at alpha {args.distill}", flush=True)
        ds = (tf.data.Dataset.from_tensor_slices((x_tr[..., None].astype(np.float32), targets))
              .shuffle(len(x_tr), seed=args.seed, reshuffle_each_iteration=True)
              .batch(args.batch)
              .enumerate()
              .map(lambda i, b: (random_blur(b[0], seed + tf.stack([i, i])), b[1])))
        if args.augment == "heavy":
            from fer_augment import Augmenter
            augmenter, rng = Augmenter(), np.random.default_rng(args.seed)

            def heavy(x, y):
                x = tf.numpy_function(lambda b: augmenter(b, rng), [x], tf.float32)
                return tf.ensure_shape(x, [None, 48, 48, 1]), y
            ds = ds.map(heavy)
        ds = ds.prefetch(2)
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
                       # the averaged weights are swapped in for validation and the save
                       *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if args.ema else []),
                       SaveCore(), Progress()])
        (args.out / "train_time.txt").write_text(f"{time.time() - t0:.0f} s, this run\n")
    if args.ensemble:
        cores = []
        for i, path in enumerate(args.ensemble):
            member = load_core(path)
            cores.append(keras.Model(member.input, member.output, name=f"member{i}"))
    else:
        cores = [keras.models.load_model(best)]
    # Choices on x_val only, never on the test set: horizontal-flip test-time augmentation (about
    # twice the compute, one interpreter call) and, greedily in the given order, each member.
    xv = x_va[..., None].astype(np.float32)
    # Each member's x_val probabilities on the image and on its mirror, predicted once: the
    # argmax of their sum over a set of members is that of ``averaged`` over the same set.
    views = [(c.predict(xv, batch_size=512, verbose=0),
              c.predict(xv[:, :, ::-1], batch_size=512, verbose=0)) for c in cores]

    def val_acc(members: list[int], flip: bool) -> float:
        probs = sum(views[i][0] + views[i][1] if flip else views[i][0] for i in members)
        return float((probs.argmax(1) == y_va).mean())

    everyone = list(range(len(cores)))
    facts: dict = {"members": [str(p) for p in (args.ensemble or [best])],
                   "member_val_accuracy": [val_acc([i], False) for i in everyone],
                   "val_accuracy": val_acc(everyone, False),
                   "val_accuracy_flip_tta": val_acc(everyone, True)}
    flip = facts["val_accuracy_flip_tta"] > facts["val_accuracy"]
    kept, kept_acc = [0], val_acc([0], flip)
    for i in everyone[1:]:
        params = sum(cores[j].count_params() for j in kept + [i])
        if params > args.max_params:
            print(f"{cores[i].name}: skipped, {params:,} parameters > --max-params", flush=True)
            continue
        acc = val_acc(kept + [i], flip)
        print(f"{cores[i].name}: x_val {kept_acc:.4f} → {acc:.4f} with it", flush=True)
        if acc > kept_acc:
            kept, kept_acc = kept + [i], acc
    final = averaged([cores[i] for i in kept], flip)
    facts.update(flip_tta=flip, kept=[cores[i].name for i in kept], final_val_accuracy=kept_acc)
    rep = x_tr[np.random.default_rng(args.seed).choice(len(x_tr), 500, replace=False)]
    export_int8(final, rep[..., None].astype(np.float32), args.export)
    # No test-set figure here: PrivateTest is scored once, on the exported int8 file, by
    # scripts/eval_models.py, so that nothing in a training run can be chosen on it.
    print(f"{facts}; exported {args.export} ({args.export.stat().st_size} bytes)")
    (args.out / "float_val.json").write_text(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
