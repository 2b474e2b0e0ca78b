#!/usr/bin/env python3
"""Train the SER (speech emotion) classifier on RAVDESS speech, speaker-independently.

Features: ``redsg_edge.features.mfcc_features`` over 2.5 s windows (the window the daemon
classifies live; hop 0.5 s), the same function the speech worker calls. Network: a small 1-D CNN
over time (three conv blocks, global average + max pooling, ~110 k parameters).

Protocol (EmoBox-style, speaker-independent):
1. 6-fold cross-validation by actor over all 24 actors (folds of 4 consecutive actors, two male and
   two female each); every fold is exported to int8 and evaluated as int8 too. Reported: mean
   accuracy and unweighted average recall (UAR) over folds, per window and per utterance
   (utterance = mean of its windows' probabilities).
2. The shipped model is trained on actors 1–22 and tested on the two held-out speakers
   Actor_23 (male) and Actor_24 (female), which no shipped model ever sees.

Augmentation (applied to the waveform before MFCC, fixed seed): additive white noise at
10–40 dB SNR, gain, and ±10 % speed (resampling), so room noise and other voices are less foreign.

Needs the ``[train]`` extra (tensorflow-cpu).

    python scripts/train_ser.py --out runs/ser
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
from redsg_edge.datasets import DATA_ROOT, load_ravdess_index  # noqa: E402
from redsg_edge.features import SAMPLE_RATE, mfcc_features, num_frames  # noqa: E402

WINDOW_S = 2.5
HOP_S = 0.5
TEST_ACTORS = (23, 24)
FOLDS = [tuple(range(1 + 4 * k, 5 + 4 * k)) for k in range(6)]


def windows(x: np.ndarray) -> list[np.ndarray]:
    """Windows of WINDOW_S every HOP_S; a shorter signal is zero-padded to one window."""
    n, h = int(WINDOW_S * SAMPLE_RATE), int(HOP_S * SAMPLE_RATE)
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    return [x[s:s + n] for s in range(0, len(x) - n + 1, h)]


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import resample
    x = x.astype(np.float32) / 32768.0
    speed = rng.uniform(0.9, 1.1)
    x = resample(x, int(len(x) / speed)).astype(np.float32)
    x *= rng.uniform(0.3, 1.5)
    rms = np.sqrt(np.mean(x ** 2)) + 1e-9
    snr_db = rng.uniform(10, 40)
    x += rng.standard_normal(len(x)).astype(np.float32) * rms / 10 ** (snr_db / 20)
    return np.clip(x, -1, 1)


def build_features(files, copies: int, seed: int, cache: Path):
    """Returns X (W, T, 20) float32, y (W,), utt (W,) utterance index, actor (W,), aug (W,)."""
    import soundfile as sf
    from tqdm import tqdm
    f = cache / f"ser_feats_c{copies}_s{seed}.npz"
    if f.is_file():
        z = np.load(f)
        return z["X"], z["y"], z["utt"], z["actor"], z["aug"]
    rng = np.random.default_rng(seed)
    X, y, utt, actor, aug = [], [], [], [], []
    for i, rec in enumerate(tqdm(files, desc="MFCC", unit="file")):
        pcm, sr = sf.read(rec.path, dtype="int16")
        assert sr == SAMPLE_RATE, rec.path
        for c in range(copies + 1):
            sig = pcm if c == 0 else augment(pcm, rng)
            for w in windows(sig):
                X.append(mfcc_features(w))
                y.append(rec.label)
                utt.append(i)
                actor.append(rec.actor)
                aug.append(c)
    out = (np.stack(X), np.array(y), np.array(utt), np.array(actor), np.array(aug))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, X=out[0], y=out[1], utt=out[2], actor=out[3], aug=out[4])
    return out


def build_model(frames: int, seed: int, mean: np.ndarray, std: np.ndarray):
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    inp = keras.Input((frames, mean.shape[-1]), name="mfcc")
    x = layers.Normalization(mean=mean, variance=std ** 2)(inp)
    x = layers.GaussianNoise(0.1)(x)
    # The first conv strides by 2 (20 ms), which halves the cost at no loss: prosody and spectral
    # envelope change more slowly than the 10 ms frame step.
    for ch, k, stride in ((32, 5, 2), (64, 5, 1), (96, 3, 1)):
        x = layers.Conv1D(ch, k, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling1D(2)(x)
        x = layers.SpatialDropout1D(0.1)(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    x = layers.Dropout(0.4)(x)
    out = layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="ser_cnn1d")


def fit(X, y, seed, epochs, batch=64, lr=2e-3):
    import keras
    mean, std = X.mean(axis=(0, 1)), X.std(axis=(0, 1)) + 1e-6
    model = build_model(X.shape[1], seed, mean, std)
    steps = int(np.ceil(len(X) / batch)) * epochs
    model.compile(optimizer=keras.optimizers.AdamW(
                      keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.02), weight_decay=1e-3),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    # Class weights: neutral (neutral + calm) has 1.5x the files of every other class.
    counts = np.bincount(y, minlength=len(CLASSES))
    cw = {i: len(y) / (len(CLASSES) * c) for i, c in enumerate(counts)}
    model.fit(X, keras.utils.to_categorical(y, len(CLASSES)), batch_size=batch, epochs=epochs,
              shuffle=True, class_weight=cw, verbose=0)
    return model


def scores(probs: np.ndarray, y: np.ndarray, utt: np.ndarray) -> dict:
    """Window- and utterance-level accuracy and UAR (mean per-class recall)."""
    def acc_uar(p, t):
        pred = p.argmax(1)
        rec = [float((pred[t == c] == c).mean()) for c in range(len(CLASSES)) if (t == c).any()]
        return float((pred == t).mean()), float(np.mean(rec))
    wa, wu = acc_uar(probs, y)
    ids = np.unique(utt)
    up = np.stack([probs[utt == u].mean(0) for u in ids])
    ut = np.array([y[utt == u][0] for u in ids])
    ua, uu = acc_uar(up, ut)
    return {"window_acc": wa, "window_uar": wu, "utt_acc": ua, "utt_uar": uu,
            "windows": int(len(y)), "utterances": int(len(ids))}


def int8_probs(path: Path, X: np.ndarray) -> np.ndarray:
    from redsg_edge.litert import LiteRTClassifier
    clf = LiteRTClassifier(path, X.shape[1:], len(CLASSES))
    return np.stack([clf.predict(x) for x in X])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "ravdess", help="RAVDESS folder")
    ap.add_argument("--out", type=Path, default=Path("runs/ser"))
    ap.add_argument("--cache", type=Path, default=Path(".cache"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--copies", type=int, default=2, help="augmented copies per utterance")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--skip-cv", action="store_true", help="only train the shipped model")
    ap.add_argument("--export", type=Path, default=Path("models/ser_int8.tflite"))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tqdm import tqdm

    args.out.mkdir(parents=True, exist_ok=True)
    files = load_ravdess_index(args.data)
    X, y, utt, actor, aug = build_features(files, args.copies, args.seed, args.cache)
    assert X.shape[1] == num_frames(int(WINDOW_S * SAMPLE_RATE))
    print(f"{len(files)} files → {len(X)} windows of {X.shape[1]}x{X.shape[2]} "
          f"({(aug == 0).sum()} clean)", flush=True)
    # The shipped model first (the daemon needs it soonest): every actor except the two
    # held-out test speakers. A rerun skips it once shipped.json exists (resume).
    if not ((args.out / "shipped.json").is_file() and args.export.is_file()):
        t0 = time.time()
        tr = ~np.isin(actor, TEST_ACTORS)
        te = np.isin(actor, TEST_ACTORS) & (aug == 0)
        model = fit(X[tr], y[tr], args.seed, args.epochs)
        export_int8(model, X[tr][np.random.default_rng(0).choice(tr.sum(), 300, replace=False)],
                    args.export)
        shipped = {"test_actors": list(TEST_ACTORS),
                   "float": scores(model.predict(X[te], verbose=0), y[te], utt[te]),
                   "int8": scores(int8_probs(args.export, X[te]), y[te], utt[te]),
                   "train_time_s": round(time.time() - t0)}
        (args.out / "shipped.json").write_text(json.dumps(shipped, indent=1))
        print(json.dumps(shipped, indent=1), flush=True)

    results_path = args.out / "cv.json"
    cv = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if not args.skip_cv:
        for k, fold in enumerate(tqdm(FOLDS, desc="actor folds", unit="fold")):
            if str(k) in cv:  # resume
                continue
            tr = ~np.isin(actor, fold)
            te = np.isin(actor, fold) & (aug == 0)
            model = fit(X[tr], y[tr], args.seed + k, args.epochs)
            pf = model.predict(X[te], verbose=0)
            dest = args.out / f"fold{k}_int8.tflite"
            export_int8(model, X[tr][np.random.default_rng(k).choice(tr.sum(), 300, replace=False)], dest)
            pq = int8_probs(dest, X[te])
            cv[str(k)] = {"actors": list(fold), "float": scores(pf, y[te], utt[te]),
                          "int8": scores(pq, y[te], utt[te])}
            results_path.write_text(json.dumps(cv, indent=1))
            tqdm.write(f"fold {k} actors {fold}: float {cv[str(k)]['float']}  int8 {cv[str(k)]['int8']}")
        for kind in ("float", "int8"):
            for m in ("window_acc", "window_uar", "utt_acc", "utt_uar"):
                print(f"CV {kind} {m}: {np.mean([cv[str(k)][kind][m] for k in range(len(FOLDS))]):.4f}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
