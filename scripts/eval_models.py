#!/usr/bin/env python3
"""Recompute the model card's figures from the committed int8 ``.tflite`` files.

FER: accuracy and per-class recall on FER2013 PrivateTest (3,589 faces, the whole 48x48 image
as the face), and on CK+48 (6 classes: contempt left out; argmax over our 6 classes, since CK+48
has no neutral, and the 7-way argmax beside it). SER: accuracy and UAR on the two held-out
speakers Actor_23 and Actor_24 per 2.5 s window and per utterance (mean of its windows). Latency:
p50/p95 of one interpreter call (one thread) over ``--calls`` calls. Writes confusion matrices as
PNG next to the models and prints a table; ``--json`` writes all figures.

    python scripts/eval_models.py [--models models] [--calls 1000] [--json runs/eval.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.datasets import DATA_ROOT, load_ck48, load_fer2013, load_ravdess_index  # noqa: E402
from redsg_edge.features import SAMPLE_RATE, mfcc_features  # noqa: E402
from redsg_edge.speech import SerModel  # noqa: E402
from redsg_edge.vision import FerModel  # noqa: E402

SIX = [CLASSES.index(c) for c in ("angry", "disgust", "fear", "happy", "sad", "surprise")]
HELD_OUT = (23, 24)


def recall(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {CLASSES[c]: round(float((pred[y == c] == c).mean()), 4)
            for c in range(len(CLASSES)) if (y == c).any()}


def confusion(y, pred, labels, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = np.zeros((len(labels), len(labels)), int)
    for a, b in zip(y, pred):
        m[labels.index(a), labels.index(b)] += 1
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [CLASSES[i] for i in labels]
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({m[i, j]})", ha="center", va="center", fontsize=6.5,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latency(fn, x, calls: int) -> dict[str, float]:
    for _ in range(20):
        fn(x)
    ts = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn(x)
        ts.append((time.perf_counter_ns() - t) / 1e6)
    return {"p50_ms": round(float(np.percentile(ts, 50)), 3),
            "p95_ms": round(float(np.percentile(ts, 95)), 3), "calls": calls}


def file_facts(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def eval_fer(path: Path, calls: int, plots: bool) -> dict:
    from tqdm import tqdm
    fer = FerModel(path)
    x, y, _ = load_fer2013("test")
    p = np.stack([fer.predict(im) for im in tqdm(x, desc="FER PrivateTest", unit="face")])
    pred = p.argmax(1)
    ck = load_ck48()
    cp = np.stack([fer.predict(r.image) for r in ck])
    cy = np.array([r.label for r in ck])
    ck6 = np.array(SIX)[cp[:, SIX].argmax(1)]
    if plots:
        confusion(y, pred, list(range(7)), path.with_name("fer_confusion_privatetest.png"),
                  f"FER int8 on FER2013 PrivateTest (n={len(y)}), row-normalised")
        confusion(cy, ck6, SIX, path.with_name("fer_confusion_ck48.png"),
                  f"FER int8 on CK+48, 6 classes (n={len(cy)}), row-normalised")
    return {"model": str(path), **file_facts(path),
            "privatetest_acc": round(float((pred == y).mean()), 4),
            "privatetest_recall": recall(y, pred),
            "ck48_acc_6way": round(float((ck6 == cy).mean()), 4),
            "ck48_acc_7way": round(float((cp.argmax(1) == cy).mean()), 4),
            "ck48_recall_6way": recall(cy, ck6),
            "latency_one_thread": latency(fer.predict, x[0], calls)}


def eval_ser(path: Path, calls: int, plots: bool, data: Path) -> dict:
    import soundfile as sf
    ser = SerModel(path, 2.5)
    win_y, win_p, utt_y, utt_p = [], [], [], []
    for rec in load_ravdess_index(data):
        if rec.actor not in HELD_OUT:
            continue
        pcm, sr = sf.read(rec.path, dtype="int16")
        assert sr == SAMPLE_RATE
        # Every window, as in training's evaluation (no VAD gate: RAVDESS files are speech).
        wins = ser.predict_long(pcm, 0.5, -120.0, 0.0)
        ps = [w[2] for w in wins]
        win_p += [int(np.argmax(q)) for q in ps]
        win_y += [rec.label] * len(ps)
        utt_p.append(int(np.mean(ps, axis=0).argmax()))
        utt_y.append(rec.label)
    win_y, win_p, utt_y, utt_p = map(np.array, (win_y, win_p, utt_y, utt_p))
    if plots:
        confusion(utt_y, utt_p, list(range(7)), path.with_name("ser_confusion_heldout.png"),
                  f"SER int8, held-out speakers 23+24, per utterance (n={len(utt_y)})")
    window = np.zeros(ser.window_samples, np.int16)
    window[:] = (np.random.default_rng(0).standard_normal(len(window)) * 3000).astype(np.int16)
    uar = lambda y, p: round(float(np.mean(list(recall(y, p).values()))), 4)  # noqa: E731
    return {"model": str(path), **file_facts(path), "test_actors": list(HELD_OUT),
            "window_acc": round(float((win_p == win_y).mean()), 4), "window_uar": uar(win_y, win_p),
            "utt_acc": round(float((utt_p == utt_y).mean()), 4), "utt_uar": uar(utt_y, utt_p),
            "utt_recall": recall(utt_y, utt_p), "windows": int(len(win_y)),
            "utterances": int(len(utt_y)),
            "latency_one_thread_ser": latency(ser.clf.predict, mfcc_features(window), calls),
            "latency_one_thread_mfcc_plus_ser": latency(ser.predict, window, calls)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "ravdess", help="RAVDESS folder")
    ap.add_argument("--calls", type=int, default=1000, help="latency calls per model")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    res = {"fer": eval_fer(args.models / "fer_int8.tflite", args.calls, not args.no_plots),
           "ser": eval_ser(args.models / "ser_int8.tflite", args.calls, not args.no_plots, args.data)}
    f, s = res["fer"], res["ser"]
    rows = [("FER int8", "FER2013 PrivateTest acc", f["privatetest_acc"]),
            ("FER int8", "CK+48 acc (6 classes)", f["ck48_acc_6way"]),
            ("FER int8", "CK+48 acc (7-way argmax)", f["ck48_acc_7way"]),
            ("FER int8", "latency p50 ms (1 thread)", f["latency_one_thread"]["p50_ms"]),
            ("FER int8", "size bytes", f["bytes"]),
            ("SER int8", "held-out 23+24 utterance acc", s["utt_acc"]),
            ("SER int8", "held-out 23+24 utterance UAR", s["utt_uar"]),
            ("SER int8", "held-out 23+24 window acc", s["window_acc"]),
            ("SER int8", "SER latency p50 ms (1 thread)", s["latency_one_thread_ser"]["p50_ms"]),
            ("SER int8", "MFCC+SER p50 ms (1 thread)", s["latency_one_thread_mfcc_plus_ser"]["p50_ms"]),
            ("SER int8", "size bytes", s["bytes"])]
    w = max(len(r[1]) for r in rows)
    for model, what, v in rows:
        print(f"{model:9} {what:<{w}}  {v}")
    print(f"sha256 fer {f['sha256']}\nsha256 ser {s['sha256']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
