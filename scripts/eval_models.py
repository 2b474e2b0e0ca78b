#!/usr/bin/env python3
"""Recompute the model card's figures from the committed int8 ``.tflite`` files.

FER: accuracy and per-class recall on FER2013 PrivateTest (3,589 faces, the whole 48x48 image
as the face); accuracy on the same faces through a cheap camera (``fer_augment.Augmenter`` with
each transform at probability 0.5, seed 0); and on CK+48 (6 classes: contempt left out; argmax over our 6 classes, since CK+48
has no neutral, and the 7-way argmax beside it).

SER: every utterance goes through ``features.ser_windows`` on the whole file (2.5 s windows, hop
0.5 s, from ``models/ser_int8.json``) and its probabilities are the mean of its windows'. On the
held-out speakers Actor_23 and Actor_24 (never trained on): utterance accuracy, UAR and per-class
recall on all 120 files, and accuracy on the 104 non-calm files as recorded, at −20 dB, at +10 dB
(clipped) and with white noise at 10 dB SNR. On URDU (cross-corpus, never trained on): 4-class
accuracy, argmax over angry/happy/neutral/sad of the 7-class output. Expected calibration error
(15 bins) before and after the card's temperature. The cross-validation figures come from
training (``scripts/train_ser.py`` writes ``runs/ser/cv.json``): they need the fold models.

Utterance SER (``ser_utt_int8.tflite``): the same held-out files, conditions and URDU set, cut
into utterances by the daemon's speech path, one label per utterance from its functionals, each
set z-scored with its own statistics as ``analyze`` does after its calibration pass
(``eval_ser_utterance``); the cross-validation
figures are read from its sidecar, which training wrote. What ``analyze`` reports for a file,
the two SER models pooled, is measured by ``scripts/eval_voice.py``.

Latency: p50/p95 of one interpreter call (one thread) over ``--calls`` calls, and for SER also
features + call for one 2.5 s window. Writes confusion matrices as PNG next to the models and
prints a table; ``--json`` writes all figures.

    python scripts/eval_models.py [--only fer|ser|ser_utt] [--models models] [--calls 1000] [--json runs/eval.json]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.calibration import (expected_calibration_error, softmax,  # noqa: E402
                                    temperature_scale)
from redsg_edge.datasets import (CK48_CLASSES as SIX, DATA_ROOT, URDU_CLASSES as FOUR,  # noqa: E402
                                 ck48_label, load_ck48, load_fer2013, load_ravdess_index,
                                 load_urdu, urdu_label)
from redsg_edge.features import SAMPLE_RATE, num_frames, ser_windows  # noqa: E402
from redsg_edge.litert import LiteRTClassifier  # noqa: E402
from redsg_edge.vision import FerModel  # noqa: E402
from fer_augment import Augmenter  # noqa: E402
from ser_augment import add_noise, apply_gain, white_noise  # noqa: E402

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


def uar(y: np.ndarray, pred: np.ndarray) -> float:
    return round(float(np.mean(list(recall(y, pred).values()))), 4)


def pcm16(x: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] → int16, as a microphone delivers it."""
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def conditions(rng: np.random.Generator) -> dict:
    """The voice issue's levels and noise: name → transform of float audio."""
    return {"original": lambda x: x, "gain_-20dB": lambda x: apply_gain(x, -20.0),
            "gain_+10dB_clipped": lambda x: apply_gain(x, 10.0),
            "white_noise_10dB_snr": lambda x: add_noise(x, white_noise(len(x), rng), 10.0)}


def ser_rows(tag: str, s: dict) -> list[tuple]:
    """The table rows both SER models share: held-out, its levels and noise, URDU, ECE."""
    n, nu = s.get("utterances_heldout", 120), s.get("utterances_urdu", 400)
    rows = [(tag, f"held-out 23+24 utterance acc ({n})", s["utt_acc"]),
            (tag, f"held-out 23+24 utterance UAR ({n})", s["utt_uar"])]
    rows += [(tag, f"held-out 23+24 non-calm acc (104 files), {k}", v["acc_104_noncalm"])
             for k, v in s["robustness"].items()]
    return rows + [(tag, f"URDU 4-class acc ({nu})", s["urdu_acc4"]),
                   (tag, "URDU 4-class UAR", s["urdu_uar4"]),
                   (tag, f"ECE held-out before / after T = {s['temperature']}",
                    f"{s['ece_heldout_before']} / {s['ece_heldout_after']}"),
                   (tag, "ECE URDU 4-class before / after",
                    f"{s['ece_urdu4_before']} / {s['ece_urdu4_after']}")]


def file_facts(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def eval_fer(path: Path, calls: int, plots: bool) -> dict:
    from tqdm import tqdm
    fer = FerModel(path)
    x, y, _ = load_fer2013("test")
    p = np.stack([fer.predict(im) for im in tqdm(x, desc="FER PrivateTest", unit="face")])
    pred = p.argmax(1)
    # The same faces through a cheap camera: every transform of fer_augment at probability 0.5
    # (exposure, resolution, sensor noise, JPEG, occlusion), drawn once with seed 0.
    xc = np.round(Augmenter(*[0.5] * 5)(x.astype(np.float32), np.random.default_rng(0))).astype(np.uint8)
    pc = np.stack([fer.predict(im) for im in tqdm(xc, desc="FER PrivateTest, camera", unit="face")])
    ck = load_ck48()
    cp = np.stack([fer.predict(r.image) for r in ck])
    cy = np.array([r.label for r in ck])
    ck6 = ck48_label(cp)
    if plots:
        confusion(y, pred, list(range(7)), path.with_name("fer_confusion_privatetest.png"),
                  f"FER int8 on FER2013 PrivateTest (n={len(y)}), row-normalised")
        confusion(cy, ck6, SIX, path.with_name("fer_confusion_ck48.png"),
                  f"FER int8 on CK+48, 6 classes (n={len(cy)}), row-normalised")
    return {"model": str(path), **file_facts(path),
            "privatetest_acc": round(float((pred == y).mean()), 4),
            "privatetest_uar": uar(y, pred),
            "privatetest_recall": recall(y, pred),
            "privatetest_camera_acc": round(float((pc.argmax(1) == y).mean()), 4),
            "ck48_acc_6way": round(float((ck6 == cy).mean()), 4),
            "ck48_acc_7way": round(float((cp.argmax(1) == cy).mean()), 4),
            "ck48_uar_6way": uar(cy, ck6),
            "ck48_recall_6way": recall(cy, ck6),
            "latency_one_thread": latency(fer.predict, x[0], calls)}


def _ser_dataset(data: Path):
    """Held-out RAVDESS actors 23 + 24 (all 120 files) and URDU (400): [(pcm float32, label)]."""
    import soundfile as sf
    held = [r for r in load_ravdess_index(data / "ravdess") if r.actor in HELD_OUT]
    urdu = list(zip(*load_urdu(data / "urdu")))

    def read(path):
        x, sr = sf.read(path, dtype="float32")
        assert sr == SAMPLE_RATE and x.ndim == 1, path
        return x
    return ([(read(r.path), r.label, r.emotion) for r in held],
            [(read(p), y, "") for p, y in urdu])


def eval_ser(path: Path, calls: int, plots: bool, data: Path) -> dict:
    """SER figures through ``features.ser_windows`` on whole files (utterance = mean of windows).
    A model without its sidecar ``.json`` (a fold model) is read with the shipped window and hop
    and temperature 1."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        sidecar = Path(__file__).resolve().parent.parent / "models" / "ser_int8.json"
        meta = {**json.loads(sidecar.read_text()), "temperature": 1.0}
    else:
        meta = json.loads(sidecar.read_text())
    win, hop = int(meta["window_s"] * SAMPLE_RATE), int(meta["hop_s"] * SAMPLE_RATE)
    t = float(meta["temperature"])
    clf = LiteRTClassifier(path, (num_frames(win), 20), len(CLASSES), 1)

    def windows(x: np.ndarray) -> np.ndarray:
        return np.stack([clf.predict(w) for w in ser_windows(x, win, hop)])

    def utt(x: np.ndarray) -> np.ndarray:
        return windows(x).mean(0)

    def utt_t(pw: np.ndarray) -> np.ndarray:  # the runtime's: scale each window, then the mean
        m = temperature_scale(pw, t).mean(0)
        return m / m.sum()

    held, urdu = _ser_dataset(data)
    y = np.array([h[1] for h in held])
    pw = [windows(pcm16(x)) for x, _, _ in held]
    p = np.stack([w.mean(0) for w in pw])
    pt = np.stack([utt_t(w) for w in pw])
    pred = p.argmax(1)
    noncalm = np.array([e != "calm" for _, _, e in held])
    robust = {}
    for name, f in conditions(np.random.default_rng(0)).items():
        q = p if name == "original" else np.stack([utt(pcm16(f(x))) for x, _, _ in held])
        robust[name] = {"acc_104_noncalm": round(float((q.argmax(1) == y)[noncalm].mean()), 4),
                        "acc_120": round(float((q.argmax(1) == y).mean()), 4)}
    uy = np.array([u[1] for u in urdu])
    upw = [windows(pcm16(x)) for x, _, _ in urdu]
    up = np.stack([w.mean(0) for w in upw])
    upt = np.stack([utt_t(w)[FOUR] for w in upw])
    u4 = urdu_label(up)
    u4p = up[:, FOUR] / up[:, FOUR].sum(1, keepdims=True)
    u4y = np.array([FOUR.index(c) for c in uy])
    if plots:
        confusion(y, pred, list(range(7)), path.with_name("ser_confusion_heldout.png"),
                  f"SER int8, held-out speakers 23+24, per utterance (n={len(y)})")
        confusion(uy, u4, FOUR, path.with_name("ser_confusion_urdu.png"),
                  f"SER int8 on URDU (cross-corpus), 4 classes (n={len(uy)})")
    window = (np.random.default_rng(0).standard_normal(win) * 3000).astype(np.int16)
    feats = ser_windows(window, win, hop)[0]
    return {"model": str(path), **file_facts(path), "test_actors": list(HELD_OUT),
            "temperature": t, "utt_acc": round(float((pred == y).mean()), 4),
            "utt_uar": uar(y, pred), "utt_recall": recall(y, pred), "utterances": int(len(y)),
            "robustness": robust,
            "ece_heldout_before": round(expected_calibration_error(p, y), 4), "ece_heldout_after": round(expected_calibration_error(pt, y), 4),
            "urdu_acc4": round(float((u4 == uy).mean()), 4), "urdu_uar4": uar(uy, u4),
            "urdu_recall4": recall(uy, u4),
            "urdu_pred7": {CLASSES[c]: int((up.argmax(1) == c).sum()) for c in range(len(CLASSES))},
            "ece_urdu4_before": round(expected_calibration_error(u4p, u4y), 4),
            "ece_urdu4_after": round(expected_calibration_error(upt / upt.sum(1, keepdims=True), u4y), 4),
            "latency_one_thread_ser": latency(clf.predict, feats, calls),
            "latency_one_thread_features_plus_ser": latency(
                lambda w: clf.predict(ser_windows(w, win, hop)[0]), window, calls)}


def eval_ser_utterance(path: Path, calls: int, data: Path) -> dict:
    """The utterance SER alone on the utterances the daemon's speech path cuts from each file
    (``ser_representations.runtime_utterances``: the VAD, its padding and hangover, as
    ``analyze`` and training cut them), each utterance labelled with its file's emotion; each
    set normalised as ``analyze`` does it: the running statistics learn every utterance of the
    set first (its calibration pass), then label them frozen. Held-out actors 23 + 24 as
    recorded, at −20 dB, +10 dB (clipped) and in white noise at 10 dB SNR (each condition its
    own batch); URDU 4-class. ECE before and after the sidecar's temperature. The
    cross-validation figures are the sidecar's (training's)."""
    from ser_representations import runtime_utterances
    from redsg_edge.functionals import utterance_functionals
    from redsg_edge.utterance_ser import UtteranceSer

    model = UtteranceSer(path)

    def batch(audio: list[np.ndarray], desc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 7) probabilities of the N utterances cut from ``audio`` before and after the
        temperature, with batch statistics, and (N,) the index of each one's recording."""
        clips, owner, _ = runtime_utterances(audio, desc)
        feats = [utterance_functionals(c) for c in clips]  # the float of the int16 it was cut as
        norm = model.batch_norm(feats)
        logits = np.stack([model.raw_logits(f, norm) for f in feats])
        return softmax(logits), softmax(logits, model.calibration.temperature), owner

    held, urdu = _ser_dataset(data)
    y_file = np.array([h[1] for h in held])
    noncalm_file = np.array([e != "calm" for _, _, e in held])
    robust, p = {}, None
    for name, f in conditions(np.random.default_rng(0)).items():
        q, qt, own = batch([f(x) for x, _, _ in held], f"held-out, {name}")
        if p is None:
            p, pt, y = q, qt, y_file[own]
        hit, nc = q.argmax(1) == y_file[own], noncalm_file[own]
        robust[name] = {"acc_104_noncalm": round(float(hit[nc].mean()), 4),
                        "acc_120": round(float(hit.mean()), 4), "utterances": int(len(own)),
                        "files_labelled": int(len(np.unique(own)))}
    pred = p.argmax(1)
    up, upt, uown = batch([x for x, _, _ in urdu], "URDU")
    uy = np.array([u[1] for u in urdu])[uown]
    u4 = urdu_label(up)
    u4y = np.array([FOUR.index(c) for c in uy])
    four = lambda q: q[:, FOUR] / q[:, FOUR].sum(1, keepdims=True)  # noqa: E731
    meta = json.loads(path.with_suffix(".json").read_text())
    utt = pcm16(held[0][0])
    norm = model.new_norm()
    return {"model": str(path), **file_facts(path), "test_actors": list(HELD_OUT),
            "temperature": model.calibration.temperature,
            "cv_mean_acc": round(meta["cv"]["mean_accuracy"], 4),
            "cv_mean_uar": round(meta["cv"]["mean_uar"], 4),
            "utterances_heldout": int(len(y)), "utterances_urdu": int(len(uy)),
            "urdu_files_labelled": int(len(np.unique(uown))),
            "utt_acc": round(float((pred == y).mean()), 4), "utt_uar": uar(y, pred),
            "utt_recall": recall(y, pred), "robustness": robust,
            "ece_heldout_before": round(expected_calibration_error(p, y), 4),
            "ece_heldout_after": round(expected_calibration_error(pt, y), 4),
            "urdu_acc4": round(float((u4 == uy).mean()), 4), "urdu_uar4": uar(uy, u4),
            "urdu_recall4": recall(uy, u4),
            "ece_urdu4_before": round(expected_calibration_error(four(up), u4y), 4),
            "ece_urdu4_after": round(expected_calibration_error(four(upt), u4y), 4),
            "latency_one_thread_utterance": latency(
                lambda x: model.predict(x, norm, learn=False), utt, max(calls // 10, 20)),
            "utterance_s": round(len(utt) / SAMPLE_RATE, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--data", type=Path, default=DATA_ROOT,
                    help="data root holding ravdess/ and urdu/ (FER sets: REDSG_DATA)")
    ap.add_argument("--only", choices=("fer", "ser", "ser_utt"), help="evaluate one model")
    ap.add_argument("--ser-model", type=Path,
                    help="SER .tflite to validate (default MODELS/ser_int8.tflite; e.g. a fold "
                         "model of scripts/train_ser.py, which never reads the URDU set itself)")
    ap.add_argument("--calls", type=int, default=1000, help="latency calls per model")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    res, rows = {}, []
    if args.only in (None, "fer"):
        res["fer"] = f = eval_fer(args.models / "fer_int8.tflite", args.calls, not args.no_plots)
        rows += [("FER int8", "FER2013 PrivateTest acc", f["privatetest_acc"]),
                 ("FER int8", "FER2013 PrivateTest UAR", f["privatetest_uar"]),
                 ("FER int8", "FER2013 PrivateTest through a cheap camera acc",
                  f["privatetest_camera_acc"]),
                 ("FER int8", "CK+48 acc (6 classes)", f["ck48_acc_6way"]),
                 ("FER int8", "CK+48 acc (7-way argmax)", f["ck48_acc_7way"]),
                 ("FER int8", "CK+48 UAR (6 classes)", f["ck48_uar_6way"]),
                 ("FER int8", "latency p50 ms (1 thread)", f["latency_one_thread"]["p50_ms"]),
                 ("FER int8", "size bytes", f["bytes"]), ("FER int8", "sha256", f["sha256"])]
    if args.only in (None, "ser_utt"):
        res["ser_utt"] = u = eval_ser_utterance(args.models / "ser_utt_int8.tflite", args.calls,
                                                args.data)
        rows += [("SER utt", "CV mean acc / UAR (6 folds, from the sidecar)",
                  f"{u['cv_mean_acc']} / {u['cv_mean_uar']}")]
        rows += ser_rows("SER utt", u)
        rows += [("SER utt", f"features + model p50 ms ({u['utterance_s']} s utterance)",
                  u["latency_one_thread_utterance"]["p50_ms"]),
                 ("SER utt", "size bytes", u["bytes"]), ("SER utt", "sha256", u["sha256"])]
    if args.only in (None, "ser"):
        res["ser"] = s = eval_ser(args.ser_model or args.models / "ser_int8.tflite", args.calls,
                                  not args.no_plots, args.data)
        rows += ser_rows("SER int8", s)
        rows += [("SER int8", "SER latency p50 ms (1 thread)", s["latency_one_thread_ser"]["p50_ms"]),
                 ("SER int8", "features + SER p50 ms per window (1 thread)",
                  s["latency_one_thread_features_plus_ser"]["p50_ms"]),
                 ("SER int8", "size bytes", s["bytes"]), ("SER int8", "sha256", s["sha256"])]
    w = max(len(r[1]) for r in rows)
    for model, what, v in rows:
        print(f"{model:9} {what:<{w}}  {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
