#!/usr/bin/env python3
"""Train the SER (speech emotion) classifier on RAVDESS speech for robustness, speaker-independently.

What the runtime feeds the model is an utterance cut by the VAD: 0.5 s up to long speech, trimmed
to the speech with some padding, at any level and in any room. ``redsg_edge.features.ser_windows``
turns it into 2.5 s windows (hop 0.5 s; a shorter utterance is tiled to one window) and the
utterance's probabilities are the mean over its windows. Training sees exactly that:

- **crops** of each recording like the VAD's: the whole utterance with 0.05–0.4 s of padding, a
  stretch of 0.5–2.0 s of its speech with padding, or the whole file (silence at both ends);
- **augmentation** of every crop but one clean copy (``ser_augment.Augmenter``): speed 0.9–1.1x,
  pitch ±2 semitones, reverberation (simulated rooms), band-limiting, noise at 0–20 dB SNR (white,
  pink, babble, room tone), gain −25..+12 dB with clipping, int16 quantisation. ``--copies`` crops
  per recording are drawn once with a fixed seed and cached (``--cache``).

Babble and room tone for a recording come only from recordings of its own group of actors (its
cross-validation fold, with the held-out actors 23 and 24 a group of their own), so no test
speaker's voice is ever mixed into a training sample.

Protocol (speaker-independent):
1. The shipped model: actors 1–22; test speakers Actor_23 and Actor_24, evaluated once.
2. 6-fold cross-validation by actor (folds of 4 consecutive actors, 2 male + 2 female): each fold
   is exported to int8 and evaluated as int8 on whole recordings (``ser_windows`` over the file).
   Reported: mean utterance accuracy and UAR over folds.
3. Temperature scaling: one temperature T fitted on the pooled out-of-fold int8 windows of the 6
   folds (held out for each fold's model, trained like the shipped one) the way the runtime
   applies it (softmax(log p / T) on each window, then the mean over the utterance), written
   with the window settings to ``models/ser_int8.json``.

Network: a 1-D CNN over time, ``--blocks`` conv blocks of ``--width`` x (1, 2, 3, 4) channels
(shipped: 3 blocks of 32/64/96, 34 k parameters). ``--variant``, ``--floor-db`` and ``--mixup``
are the experiments the model card's "choices" table compares (fold 9–12 as validation);
``--variant`` models compute other features than the runtime and must not ship.

This script reads RAVDESS only; ``datasets.assert_not_validation`` makes it refuse any file of
the cross-corpus validation set before reading a sample. Cross-corpus validation is a separate
step that never feeds training: ``scripts/eval_models.py --only ser --ser-model
runs/ser/fold2_int8.tflite``.

Needs the ``[train]`` extra (tensorflow-cpu, librosa, pyroomacoustics).

    python scripts/train_ser.py --out runs/ser            # shipped model, then the folds (resumable)
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge import features  # noqa: E402
from redsg_edge.calibration import expected_calibration_error, temperature_scale  # noqa: E402
from redsg_edge.datasets import (DATA_ROOT, assert_not_validation,  # noqa: E402
                                 load_ravdess_index)
from redsg_edge.features import SAMPLE_RATE, num_frames, ser_windows  # noqa: E402
from ser_augment import Augmenter, room_impulse_responses  # noqa: E402
from tflite_export import export_int8  # noqa: E402

WINDOW_S = 2.5
HOP_S = 0.5
WIN, HOP = int(WINDOW_S * SAMPLE_RATE), int(HOP_S * SAMPLE_RATE)
TEST_ACTORS = (23, 24)
FOLDS = [tuple(range(1 + 4 * k, 5 + 4 * k)) for k in range(6)]


# --- data -----------------------------------------------------------------------------------------

def read_pcm(path: Path) -> np.ndarray:
    """(N,) float32 in [-1, 1] of a 16 kHz mono file; ValueError naming it at another rate."""
    import soundfile as sf
    x, sr = sf.read(path, dtype="int16")
    if sr != SAMPLE_RATE or x.ndim != 1:
        raise ValueError(f"{path}: need 16 kHz mono audio, got {sr} Hz, shape {x.shape}")
    return x.astype(np.float32) / 32768.0


def speech_span(x: np.ndarray, below_peak_db: float = 35.0) -> tuple[int, int]:
    """Sample span [start, end) of the 25 ms frames within ``below_peak_db`` of the loudest frame
    (RAVDESS recordings are one sentence between about 1 s of near-silence at each end)."""
    f = 400
    n = len(x) // f
    db = 10 * np.log10(np.mean(x[: n * f].reshape(n, f).astype(np.float64) ** 2, 1) + 1e-12)
    on = np.flatnonzero(db > db.max() - below_peak_db)
    return int(on[0] * f), int((on[-1] + 1) * f)


def group_of(actor: int) -> int:
    """Babble/room-tone group: the actor's CV fold, with the held-out test actors on their own."""
    return 6 if actor in TEST_ACTORS else (actor - 1) // 4


def crop(x: np.ndarray, span: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A VAD-like cut: the utterance or 0.5–2.0 s of its speech with 0.05–0.4 s of padding, or the
    whole recording."""
    mode = rng.choice(["utterance", "short", "file"], p=[0.45, 0.35, 0.2])
    if mode == "file":
        return x
    s0, s1 = span
    if mode == "short" and s1 - s0 > SAMPLE_RATE // 2:
        length = int(rng.uniform(0.5, min(2.0, (s1 - s0) / SAMPLE_RATE)) * SAMPLE_RATE)
        s0 = int(rng.integers(s0, s1 - length + 1))
        s1 = s0 + length
    pad = rng.uniform(0.05, 0.4, 2) * SAMPLE_RATE
    return x[max(0, s0 - int(pad[0])): min(len(x), s1 + int(pad[1]))]


def build_crops(files, copies: int, seed: int, cache: Path):
    """Augmented VAD-like crops, cached as int16. Returns (audio list of (M,) float32, file index
    (C,), copy index (C,)); copy 0 of each recording is clean (a crop, not augmented)."""
    from tqdm import tqdm
    assert_not_validation([r.path for r in files])  # validation data is never trained on
    f = cache / f"ser_crops_c{copies}_s{seed}.npz"
    if f.is_file():
        z = np.load(f)
        cuts = np.cumsum(z["lengths"])[:-1]
        return [a.astype(np.float32) / 32767 for a in np.split(z["pcm"], cuts)], z["owner"], z["copy"]
    rng = np.random.default_rng(seed)
    audio = [read_pcm(r.path) for r in tqdm(files, desc="read", unit="file")]
    spans = [speech_span(x) for x in audio]
    groups = np.array([group_of(r.actor) for r in files])
    speech = [x[s0:s1] for x, (s0, s1) in zip(audio, spans)]
    # Room tone: each recording's stretches more than 0.1 s away from its speech.
    tone = [np.concatenate([x[: max(0, s0 - 1600)], x[s1 + 1600:]]) for x, (s0, s1) in zip(audio, spans)]
    rirs = room_impulse_responses(120, seed)
    out, fidx, cidx = [], [], []
    for i, x in enumerate(tqdm(audio, desc="crops", unit="file")):
        mates = np.flatnonzero(groups == groups[i])
        aug = Augmenter([speech[j] for j in mates if j != i],
                        [tone[j] for j in mates if len(tone[j]) > 4000 and np.any(tone[j])], rirs)
        for c in range(copies + 1):
            y = crop(x, spans[i], rng)
            if c > 0:
                y, _ = aug(y, rng)
            out.append(y)
            fidx.append(i)
            cidx.append(c)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, pcm=np.concatenate([np.round(a * 32767).astype(np.int16) for a in out]),
             lengths=np.array([len(a) for a in out]), owner=np.array(fidx), copy=np.array(cidx))
    return out, np.array(fidx), np.array(cidx)


def featurise(audio: list[np.ndarray], owner: np.ndarray):
    """Windows of every clip through ``ser_windows``: X (W, T, F) float32, clip index (W,)."""
    from tqdm import tqdm
    X, who = [], []
    for i, a in enumerate(tqdm(audio, desc="features", unit="clip", mininterval=5)):
        w = ser_windows(a, WIN, HOP)
        X.append(w)
        who += [owner[i]] * len(w)
    return np.concatenate(X), np.array(who)


def _cmvn(x, sample_rate=SAMPLE_RATE, c0_var=True):
    f = _mfcc_cmn(x, sample_rate)
    sd = f.std(0, keepdims=True) + 1e-3
    if not c0_var:
        sd[0, 0] = 1.0
    return (f / sd).astype(np.float32)


def _logmel(x, sample_rate=SAMPLE_RATE, nfilt=40):
    from python_speech_features import logfbank
    x = np.asarray(x)
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
    x = x + features._dither(len(x)) * np.float32(features._floor_rms(x))
    f = logfbank(x, samplerate=SAMPLE_RATE, winlen=features.WINLEN_S, winstep=features.WINSTEP_S,
                 nfilt=nfilt, nfft=features.NFFT, preemph=0.97)
    return (f - f.mean(0, keepdims=True)).astype(np.float32)


_mfcc_cmn = features.mfcc_features
def _keep(n):
    def f(x, sample_rate=SAMPLE_RATE):
        out = _mfcc_cmn(x, sample_rate)
        out[:, n:] = 0.0
        return out
    return f


VARIANTS = {"logmel40": _logmel, "c12": _keep(13), "c8": _keep(9), "cmvn": _cmvn, "cmvn_c1": lambda x, sample_rate=SAMPLE_RATE: _cmvn(x, c0_var=False)}


# --- model ----------------------------------------------------------------------------------------

def build_model(frames: int, feats: int, seed: int, mean: np.ndarray, std: np.ndarray, width: int,
                blocks: int = 4):
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    inp = keras.Input((frames, feats), name="mfcc")
    x = layers.Normalization(mean=mean, variance=std ** 2)(inp)
    x = layers.GaussianNoise(0.1)(x)
    # The first conv strides by 2 (20 ms): prosody and spectral envelope change more slowly than
    # the 10 ms frame step, and it halves the cost.
    for ch, k, stride in ((width, 5, 2), (2 * width, 5, 1), (3 * width, 3, 1), (4 * width, 3, 1))[:blocks]:
        x = layers.Conv1D(ch, k, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling1D(2)(x)
        x = layers.SpatialDropout1D(0.1)(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    x = layers.Dropout(0.4)(x)
    out = layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="ser_cnn1d")


class MixupBatches:
    """Batches of mixup (Zhang et al. 2018): pairs of windows and their one-hot labels mixed with
    a Beta(alpha, alpha) weight; class weights mixed the same way, as sample weights."""

    def __new__(cls, X, y, cw, batch, alpha, seed):
        import keras

        class _Seq(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()
                self.rng = np.random.default_rng(seed)
                self.order = self.rng.permutation(len(X))

            def __len__(self):
                return int(np.ceil(len(X) / batch))

            def on_epoch_end(self):
                self.order = self.rng.permutation(len(X))

            def __getitem__(self, i):
                a = self.order[i * batch:(i + 1) * batch]
                b = self.rng.permutation(a)
                lam = self.rng.beta(alpha, alpha, (len(a), 1)).astype(np.float32)
                lam = np.maximum(lam, 1 - lam)
                oh = np.eye(len(CLASSES), dtype=np.float32)
                xm = lam[:, :, None] * X[a] + (1 - lam[:, :, None]) * X[b]
                ym = lam * oh[y[a]] + (1 - lam) * oh[y[b]]
                w = lam[:, 0] * cw[y[a]] + (1 - lam[:, 0]) * cw[y[b]]
                return xm, ym, w
        return _Seq()


def fit(X, y, seed: int, epochs: int, width: int, batch: int = 64, lr: float = 2e-3,
        log: Path | None = None, blocks: int = 4, mixup: float = 0.0):
    import keras
    mean, std = X.mean(axis=(0, 1)), X.std(axis=(0, 1)) + 1e-6
    model = build_model(X.shape[1], X.shape[2], seed, mean, std, width, blocks)
    steps = int(np.ceil(len(X) / batch)) * epochs
    model.compile(optimizer=keras.optimizers.AdamW(
                      keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.02), weight_decay=1e-3),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    # Class weights: neutral (neutral + calm) has 1.5x the recordings of every other class.
    counts = np.bincount(y, minlength=len(CLASSES))
    cw = {i: len(y) / (len(CLASSES) * c) for i, c in enumerate(counts)}
    cb = [keras.callbacks.CSVLogger(str(log))] if log else []
    if mixup > 0:
        model.fit(MixupBatches(X, y, np.array([cw[i] for i in range(len(CLASSES))], np.float32),
                               batch, mixup, seed), epochs=epochs, verbose=0, callbacks=cb)
    else:
        model.fit(X, keras.utils.to_categorical(y, len(CLASSES)), batch_size=batch, epochs=epochs,
                  shuffle=True, class_weight=cw, verbose=0, callbacks=cb)
    return model


# --- evaluation -----------------------------------------------------------------------------------

def window_probs(predict, audio: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every utterance (``ser_windows``): probs (W, 7) and utterance index (W,)."""
    X, who = featurise(audio, np.arange(len(audio)))
    return predict(X), who


def utterance_mean(pw: np.ndarray, who: np.ndarray, t: float = 1.0) -> np.ndarray:
    """(U, 7) utterance probabilities as the runtime forms them (``speech.SerModel``): each
    window's output scaled by the temperature, then the mean over the utterance's windows."""
    q = temperature_scale(pw, t)
    p = np.stack([q[who == u].mean(0) for u in range(int(who.max()) + 1)])
    return p / p.sum(1, keepdims=True)


def scores(p: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy, UAR (mean per-class recall) and per-class recall of utterance probabilities."""
    pred = p.argmax(1)
    rec = {CLASSES[c]: float((pred[y == c] == c).mean()) for c in range(len(CLASSES)) if (y == c).any()}
    return {"acc": float((pred == y).mean()), "uar": float(np.mean(list(rec.values()))),
            "recall": rec, "n": int(len(y))}


def int8_predict(path: Path):
    from redsg_edge.litert import LiteRTClassifier
    clf = None

    def predict(X):
        nonlocal clf
        clf = clf or LiteRTClassifier(path, X.shape[1:], len(CLASSES))
        return np.stack([clf.predict(x) for x in X])
    return predict


def fit_temperature(pw: np.ndarray, who: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the utterance labels ``y`` when
    applied to every window ``pw`` before the mean (``utterance_mean``); grid 0.3–5, refined."""
    def nll(t):
        return float(-np.mean(np.log(np.maximum(utterance_mean(pw, who, t)[np.arange(len(y)), y], 1e-12))))
    grid = np.exp(np.linspace(np.log(0.3), np.log(5), 120))
    t = grid[int(np.argmin([nll(g) for g in grid]))]
    fine = np.linspace(t * 0.97, t * 1.03, 31)
    return float(fine[int(np.argmin([nll(g) for g in fine]))])


def window_oof(out: Path, k: int, whole: list[np.ndarray], label: np.ndarray):
    """Fold k's out-of-fold int8 window probabilities (W, 7), utterance index (W,), labels (U,);
    recomputed from ``fold{k}_int8.tflite`` for runs saved before windows were kept."""
    z = np.load(out / f"fold{k}_probs.npz")
    if "int8_windows" in z:
        return z["int8_windows"], z["who"], z["y"]
    pw, who = window_probs(int8_predict(out / f"fold{k}_int8.tflite"), [whole[i] for i in z["files"]])
    np.savez(out / f"fold{k}_probs.npz", **dict(z), int8_windows=pw, who=who)
    return pw, who, z["y"]


def write_sidecar(model: Path, t: float) -> Path:
    """``<model>.json``: what the runtime needs besides the weights (window, hop, temperature)."""
    dest = model.with_suffix(".json")
    dest.write_text(json.dumps({
        "temperature": round(t, 3), "window_s": WINDOW_S, "hop_s": HOP_S, "sample_rate": SAMPLE_RATE,
        "input_shape": [num_frames(WIN), 20], "classes": list(CLASSES),
        "temperature_apply": "softmax(log(p) / T) on each window's probabilities, then the mean "
                             "over the utterance's windows (speech.SerModel)",
        "temperature_fitted_on": "pooled out-of-fold int8 windows of the 6 actor folds, utterance "
                                 "NLL (scripts/train_ser.py)"}, indent=1) + "\n")
    return dest


# --- main -----------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "ravdess", help="RAVDESS folder")
    ap.add_argument("--out", type=Path, default=Path("runs/ser"))
    ap.add_argument("--cache", type=Path, default=Path(".cache"))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--width", type=int, default=32, help="channels of the first conv block")
    ap.add_argument("--blocks", type=int, default=3, help="conv blocks (channels w, 2w, 3w, 4w)")
    ap.add_argument("--mixup", type=float, default=0.0, help="mixup Beta alpha (0: off)")
    ap.add_argument("--copies", type=int, default=6, help="augmented crops per recording")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--folds", default="0,1,2,3,4,5", help="CV folds to run ('' for none)")
    ap.add_argument("--skip-shipped", action="store_true", help="only the folds")
    ap.add_argument("--export", type=Path, default=Path("models/ser_int8.tflite"))
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="feature experiment (not shippable: "
                    "the runtime computes features.mfcc_features)")
    ap.add_argument("--floor-db", type=float, help="features.NOISE_FLOOR_DB experiment (0: none)")
    args = ap.parse_args()
    if args.variant:
        features.mfcc_features = VARIANTS[args.variant]
    if args.floor_db is not None:
        features.NOISE_FLOOR_DB = None if args.floor_db == 0 else args.floor_db
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    args.out.mkdir(parents=True, exist_ok=True)
    files = load_ravdess_index(args.data)
    actor = np.array([r.actor for r in files])
    label = np.array([r.label for r in files])
    audio, fidx, cidx = build_crops(files, args.copies, args.seed, args.cache)
    X, clip = featurise(audio, np.arange(len(audio)))
    y, a_w = label[fidx[clip]], actor[fidx[clip]]
    assert X.shape[1] == num_frames(WIN)
    print(f"{len(files)} files → {len(audio)} crops → {len(X)} windows of {X.shape[1]}x{X.shape[2]}",
          flush=True)
    whole = [read_pcm(r.path) for r in files]
    rep = np.random.default_rng(0)

    def run(name: str, test_actors: tuple[int, ...], seed: int, dest: Path) -> dict:
        t0 = time.time()
        tr = ~np.isin(a_w, test_actors)
        model = fit(X[tr], y[tr], seed, args.epochs, args.width, log=args.out / f"{name}.csv",
                    blocks=args.blocks, mixup=args.mixup)
        export_int8(model, X[tr][rep.choice(tr.sum(), 400, replace=False)], dest)
        te = np.flatnonzero(np.isin(actor, test_actors))
        res = {"test_actors": list(test_actors), "train_time_s": round(time.time() - t0),
               "params": int(model.count_params()), "bytes": dest.stat().st_size}
        probs = {}
        for kind, pred in (("float", lambda Z: model.predict(Z, batch_size=256, verbose=0)),
                           ("int8", int8_predict(dest))):
            probs[kind] = pw, who = window_probs(pred, [whole[i] for i in te])
            res[kind] = {"ravdess": scores(utterance_mean(pw, who), label[te])}
        np.savez(args.out / f"{name}_probs.npz", int8=utterance_mean(*probs["int8"]),
                 float=utterance_mean(*probs["float"]), int8_windows=probs["int8"][0],
                 who=probs["int8"][1], y=label[te], files=te)
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=1))
        print(name, json.dumps({k: v["ravdess"]["acc"] for k, v in res.items()
                                if isinstance(v, dict)}), f"{res['train_time_s']} s", flush=True)
        return res

    if not args.skip_shipped and not (args.out / "shipped.json").is_file():
        run("shipped", TEST_ACTORS, args.seed, args.export)
    folds = [int(k) for k in args.folds.split(",") if k.strip()]
    for k in folds:
        if not (args.out / f"fold{k}.json").is_file():
            run(f"fold{k}", FOLDS[k], args.seed + k, args.out / f"fold{k}_int8.tflite")
    done = [k for k in range(6) if (args.out / f"fold{k}.json").is_file()]
    if done:
        cv = [json.loads((args.out / f"fold{k}.json").read_text()) for k in done]
        summary = {"folds": done}
        for kind in ("float", "int8"):
            summary[kind] = {m: float(np.mean([c[kind]["ravdess"][m] for c in cv])) for m in ("acc", "uar")}
        oof = [window_oof(args.out, k, whole, label) for k in done]
        pw = np.concatenate([o[0] for o in oof])
        who = np.concatenate([o[1] + sum(len(p[2]) for p in oof[:i]) for i, o in enumerate(oof)])
        yy = np.concatenate([o[2] for o in oof])
        t = fit_temperature(pw, who, yy)
        # Cross-fitted: each fold's utterances scaled by the temperature fitted on the other folds,
        # so the ECE after scaling is measured on data the temperature never saw.
        crossed = []
        for i, (pwi, whoi, yi) in enumerate(oof):
            rest = [o for j, o in enumerate(oof) if j != i]
            ti = fit_temperature(np.concatenate([o[0] for o in rest]),
                                 np.concatenate([o[1] + sum(len(p[2]) for p in rest[:j])
                                                 for j, o in enumerate(rest)]),
                                 np.concatenate([o[2] for o in rest]))
            crossed.append(utterance_mean(pwi, whoi, ti))
        p = utterance_mean(pw, who)
        summary["temperature"] = {"T": round(t, 3), "fitted_on": "pooled out-of-fold int8 windows, "
                                  "scaled per window then averaged per utterance as the runtime does",
                                  "ece_before": expected_calibration_error(p, yy), "ece_after": expected_calibration_error(utterance_mean(pw, who, t), yy),
                                  "ece_after_cross_fitted": expected_calibration_error(np.concatenate(crossed), yy),
                                  "utterances": int(len(yy))}
        (args.out / "cv.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
        if not args.skip_shipped and len(done) == len(FOLDS):
            write_sidecar(args.export, t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
