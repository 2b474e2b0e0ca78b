#!/usr/bin/env python3
"""SER representation experiments (issue 15): utterance-level features + a small classifier,
measured on the SER card's protocol (speaker-independent RAVDESS folds, URDU 4-class).

The shipped SER is a 1-D CNN over 2.5 s MFCC windows; on URDU (natural Urdu talk-show speech,
validation only) it and every CNN variant tried stayed at 27–40 %. This script asks whether
another *representation* of the utterance moves URDU, each with a logistic regression or a small
MLP on top, trained on RAVDESS only:

- ``egemaps``: openSMILE eGeMAPS v02 functionals (88; Eyben et al. 2016), ``opensmile`` package;
- ``compare``: openSMILE ComParE 2016 functionals (6,373);
- ``mfcc_stats``: statistics of the runtime's MFCC frames (``features.mfcc_features`` over the
  whole utterance, i.e. per-utterance CMN) after per-utterance variance normalisation: std,
  delta std, skewness, kurtosis of each coefficient, percentiles of c0 (level-free by design);
- ``mfcc_meanstd``: mean and std of raw MFCC frames and of their deltas (python_speech_features
  with the runtime's settings, no CMN: carries level and channel);
- ``moonshine``: mean + std pooled last hidden states of the Moonshine tiny encoder that the
  speech-to-text already runs (``models/moonshine-tiny-en-encoder.ort``, from the moonshine-voice
  wheel; fetch with ``redsg-edge fetch-models``), fed like ``stt.Transcriber`` feeds it.

Feature normalisation (``--norms``, ``TRAIN:TEST``): ``global`` = z-score with the training
set's constants (what a shipped model can carry); ``actor`` = z-score per training actor;
``running`` = z-score with the running mean/variance of the utterances heard so far (random
order, a prior of ``--prior`` pseudo-utterances at the training statistics): what the daemon
could keep; ``corpus`` = the test set's own statistics (unlabelled; the limit of ``running``);
``speaker`` = per test speaker (oracle: the runtime does not know who speaks).

Audio: RAVDESS recordings are cut to their speech (frames within 35 dB of the loudest) with
0.25 s of padding, like a VAD cut; URDU files are used whole (they are already cut). ``--aug K``
adds K augmented copies of each training recording (``ser_augment.Augmenter`` without pitch
shift and reverberation, which need the [train] extra): speed, band-limiting, noise at 0–20 dB
SNR, gain −25..+12 dB. URDU is never trained on (``datasets.assert_not_validation``).

Reported per variant: RAVDESS utterance accuracy of each fold model on its held-out actors (mean
over ``--folds``; fold index 2 = actors 9–12, the card's validation fold), URDU 4-class accuracy
(argmax over angry/happy/neutral/sad of the 7-class output) and UAR of the actors-9–12 fold model
(the model the card's "choices" table used), its per-class recall, a 95 % interval that resamples
URDU *speakers* (most speak one emotion only), the URDU accuracy averaged over the fold models,
and that model on the URDU files at −20 dB. ``--urdu-path analyze`` takes URDU through the
daemon's VAD path (the utterances ``redsg-edge analyze`` cuts); ``--ravdess-test whole`` tests
on whole recordings (the CNN card's protocol); ``--export-int8 DIR`` exports each fold-9–12
classifier to int8 TFLite and scores it (needs tensorflow). Features are cached under
``--cache`` (default /tmp/ser_repr); the shipped CNN's URDU row is added unless ``--no-baseline``.

    python scripts/ser_representations.py                      # the main table
    python scripts/ser_representations.py --features egemaps --classifiers lr --norms global:global
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.datasets import (DATA_ROOT, URDU_CLASSES as FOUR,  # noqa: E402
                                 assert_not_validation, load_ravdess_index, load_urdu,
                                 urdu_label)
from redsg_edge.features import SAMPLE_RATE  # noqa: E402
from ser_functionals import lean_smile, level_normalised  # noqa: E402
from train_ser import FOLDS, group_of, read_pcm, speech_span  # noqa: E402

PAD_S = 0.25
VAL_FOLD = 2  # actors 9–12: the card's validation fold
DEFAULT_NORMS = ["global:global", "global:running", "actor:running", "actor:corpus", "actor:speaker"]
DEFAULT_FEATURES = ("egemaps,egemaps@lvl,mfcc_stats,mfcc_meanstd,mfcc_meanstd@lvl,compare@lvl,"
                    "moonshine@lvl,compare@lvl+moonshine@lvl")


# --- features -------------------------------------------------------------------------------------

def _opensmile(name: str):
    import opensmile
    smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, name),
                            feature_level=opensmile.FeatureLevel.Functionals)
    return lambda x: smile.process_signal(x, SAMPLE_RATE).to_numpy()[0].astype(np.float32)


def _raw_mfcc(x: np.ndarray) -> np.ndarray:
    from python_speech_features import mfcc
    from redsg_edge import features as F
    x = x + F._dither(len(x)) * np.float32(F._floor_rms(x))
    return mfcc(x, samplerate=SAMPLE_RATE, winlen=F.WINLEN_S, winstep=F.WINSTEP_S,
                numcep=F.NUM_CEPSTRA, nfilt=F.NUM_FILTERS, nfft=F.NFFT, preemph=0.97,
                ceplifter=22, appendEnergy=True)


def _delta(f: np.ndarray, n: int = 2) -> np.ndarray:
    from python_speech_features import delta
    return delta(f, n) if len(f) > 2 * n else np.zeros_like(f)


def _mfcc_stats(x: np.ndarray) -> np.ndarray:
    from scipy.stats import kurtosis, skew
    from redsg_edge.features import mfcc_features
    f = mfcc_features(x).astype(np.float64)  # per-utterance CMN (the runtime's function)
    sd = f.std(0) + 1e-6
    z = f / sd  # per-utterance CMVN
    d = _delta(z)
    c0 = f[:, 0]
    return np.concatenate([np.log(sd), d.std(0), skew(z, 0), kurtosis(z, 0),
                           np.percentile(c0, [5, 25, 50, 75, 95]) - c0.max()]).astype(np.float32)


def _mfcc_meanstd(x: np.ndarray) -> np.ndarray:
    f = _raw_mfcc(x)
    d = _delta(f)
    return np.concatenate([f.mean(0), f.std(0), d.mean(0), d.std(0)]).astype(np.float32)


def _moonshine(path: Path):
    import onnxruntime as ort
    if not path.is_file():
        raise SystemExit(f"{path}: Moonshine encoder missing (run `redsg-edge fetch-models`, or "
                         "pass --moonshine-encoder, or leave `moonshine` out of --features)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    enc = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in enc.get_inputs()]

    def f(x):
        # as stt.Transcriber feeds it: int16-scaled float, the level as recorded
        audio = (np.round(np.clip(x, -1, 1) * 32767) / 32768.0).astype(np.float32)[None]
        feeds = {names[0]: audio}
        if "attention_mask" in names:
            feeds["attention_mask"] = np.ones_like(audio, dtype=np.int64)
        h = enc.run(None, feeds)[0][0]
        return np.concatenate([h.mean(0), h.std(0)]).astype(np.float32)
    return f


def extractor(name: str, args):
    if name.endswith("@lvl"):
        return level_normalised(extractor(name[:-4], args))
    if name == "egemaps":
        return _opensmile("eGeMAPSv02")
    if name == "compare":
        return _opensmile("ComParE_2016")
    if name.endswith("_lean"):
        return lean_smile(name[:-5])
    if name == "utt":
        from redsg_edge.functionals import utterance_functionals
        return utterance_functionals
    if name == "mfcc_stats":
        return _mfcc_stats
    if name == "mfcc_meanstd":
        return _mfcc_meanstd
    if name == "moonshine":
        return _moonshine(args.moonshine_encoder)
    raise SystemExit(f"--features: unknown feature set {name!r} (known: {', '.join(FEATURES)}, "
                     "each also NAME@lvl: on level-normalised audio)")


FEATURES = ["utt", "egemaps", "compare", "mfcc_stats", "mfcc_meanstd", "moonshine"]


# --- audio ----------------------------------------------------------------------------------------

def ravdess_audio(recs) -> list[np.ndarray]:
    """Each recording cut like a VAD would: its speech with PAD_S of padding."""
    from tqdm import tqdm
    assert_not_validation([r.path for r in recs])
    out = []
    for r in tqdm(recs, desc="read RAVDESS", unit="file", mininterval=2):
        out.append(speech_cut(read_pcm(r.path)))
    return out


def speech_cut(x: np.ndarray) -> np.ndarray:
    """x (n,) float32 at 16 kHz → its speech (``train_ser.speech_span``) with PAD_S of padding."""
    s0, s1 = speech_span(x)
    pad = int(PAD_S * SAMPLE_RATE)
    return x[max(0, s0 - pad):min(len(x), s1 + pad)]


def nemo_audio(recs) -> list[np.ndarray]:
    """nEMO recordings (``datasets.load_nemo``; 24 kHz) at 16 kHz, each its ``speech_cut``."""
    import soundfile as sf
    from scipy.signal import resample_poly
    from tqdm import tqdm
    assert_not_validation([r.path for r in recs])
    out = []
    for r in tqdm(recs, desc="read nEMO", unit="file", mininterval=2):
        x, sr = sf.read(r.path, dtype="float32")
        if x.ndim != 1:
            x = x.mean(1)
        g = np.gcd(sr, SAMPLE_RATE)
        out.append(speech_cut(resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)))
    return out


def augmented(recs, audio: list[np.ndarray], k: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """K augmented copies of every cut; babble and room tone from the recording's own actor
    group (its fold), as train_ser does. Returns (clips, index of the source recording)."""
    from tqdm import tqdm
    from ser_augment import Augmenter
    rng = np.random.default_rng(seed)
    groups = np.array([group_of(r.actor) for r in recs])
    tone = []
    for r in recs:  # the non-speech stretches of the whole recordings
        x = read_pcm(r.path)
        s0, s1 = speech_span(x)
        tone.append(np.concatenate([x[:max(0, s0 - 1600)], x[s1 + 1600:]]))
    out, src = [], []
    for i, x in enumerate(tqdm(audio, desc=f"augment x{k}", unit="file", mininterval=2)):
        mates = np.flatnonzero(groups == groups[i])
        aug = Augmenter([audio[j] for j in mates if j != i],
                        [tone[j] for j in mates if len(tone[j]) > 4000 and np.any(tone[j])], [],
                        p_pitch=0.0)
        for _ in range(k):
            out.append(aug(x, rng)[0])
            src.append(i)
    return out, np.array(src)


def runtime_utterances(audio, desc: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The utterances the daemon's speech path cuts from each recording
    (``speech.SpeechPerception``: Silero VAD with its input gain, segmenter, padding;
    config.toml's [speech]), as ``redsg-edge analyze`` cuts them. audio: iterable of (n,) float
    in [-1, 1] at 16 kHz, fed as the int16 a microphone delivers. Returns (clips (n,) float32 in
    [-1, 1] with their padding, owning recording index (C,), duration in s (C,)); a recording
    with no speech owns none."""
    from tqdm import tqdm
    from redsg_edge.config import load_config
    from redsg_edge.speech import SerModel, SpeechPerception
    from redsg_edge.vad import SileroVad
    cfg = load_config(ROOT / "config.toml")
    ser, vad = SerModel(ROOT / "models" / "ser_int8.tflite", cfg.speech.window_s), SileroVad(cfg.speech.vad_model)
    clips, owner, dur = [], [], []
    for i, x in enumerate(tqdm(audio, desc=desc, unit="file", mininterval=2)):
        pcm = (np.clip(x, -1, 32767 / 32768) * 32768).astype(np.int16)
        step = SpeechPerception(ser, cfg.speech, vad)
        outs = [o for b in range(0, len(pcm), 16_000) for o in step.push(b / 16_000, pcm[b:b + 16_000])]
        for o in outs + step.finish():
            if o.kind == "utterance":
                clips.append(o.audio.astype(np.float32) / 32768)
                owner.append(i)
                dur.append(o.end_s - o.start_s)
    return clips, np.array(owner, int), np.array(dur)


def analyze_cuts(paths: list[Path], args) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The utterances ``redsg-edge analyze`` cuts from each URDU file (``runtime_utterances``),
    cached in ``args.cache``."""
    f = args.cache / "urdu_analyze_cuts.npz"
    if f.is_file():
        z = np.load(f)
        return np.split(z["pcm"], np.cumsum(z["lengths"])[:-1]), z["owner"], z["dur"]
    import soundfile as sf
    clips, owner, dur = runtime_utterances((sf.read(p, dtype="float32")[0] for p in paths),
                                           "URDU through the analyze path")
    args.cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, pcm=np.concatenate(clips), lengths=[len(c) for c in clips], owner=owner, dur=dur)
    return clips, owner, dur


def cached_features(name: str, corpus: str, clips_fn, args) -> np.ndarray:
    """(N, D) float32 features of a corpus, computed once and kept in ``args.cache``; ``a+b``
    is the concatenation of feature sets a and b."""
    from tqdm import tqdm
    if "+" in name:
        return np.concatenate([cached_features(n, corpus, clips_fn, args)
                               for n in name.split("+")], axis=1)
    f = args.cache / f"{name}_{corpus}.npy"
    if f.is_file():
        return np.load(f)
    clips = clips_fn()
    fx = extractor(name, args)
    X = np.stack([fx(x) for x in tqdm(clips, desc=f"{name} {corpus}", unit="clip", mininterval=2)])
    X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    args.cache.mkdir(parents=True, exist_ok=True)
    np.save(f, X)
    return X


# --- normalisation --------------------------------------------------------------------------------

def znorm_groups(X: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.empty_like(X, dtype=np.float64)
    for a in np.unique(g):
        m = g == a
        out[m] = (X[m] - X[m].mean(0)) / (X[m].std(0) + 1e-6)
    return out


def running_norm(X: np.ndarray, mean0: np.ndarray, var0: np.ndarray, prior: float,
                 seed: int) -> np.ndarray:
    """Causal z-score: utterances arrive in a random order, each normalised by the mean and
    variance of those heard so far (itself included), started from ``prior`` pseudo-utterances
    at (mean0, var0). What a daemon can keep: two vectors and a count."""
    order = np.random.default_rng(seed).permutation(len(X))
    n, m, s2 = float(prior), mean0.astype(np.float64).copy(), var0.astype(np.float64) * prior
    out = np.empty_like(X, dtype=np.float64)
    for i in order:  # Welford's update with the prior as n pseudo-observations
        n += 1
        d = X[i] - m
        m += d / n
        s2 += d * (X[i] - m)
        out[i] = (X[i] - m) / np.sqrt(s2 / n + 1e-12)
    return out


def normalise(kind: str, X: np.ndarray, g: np.ndarray, ref: tuple[np.ndarray, np.ndarray],
              args) -> np.ndarray:
    mean, std = ref
    if kind == "global":
        return (X - mean) / std
    if kind in ("actor", "speaker"):
        return znorm_groups(X, g)
    if kind == "corpus":
        return (X - X.mean(0)) / (X.std(0) + 1e-6)
    if kind == "running":
        return running_norm(X, mean, std ** 2, args.prior, args.seed)
    raise SystemExit(f"--norms: unknown normalisation {kind!r} "
                     "(global, actor, running, corpus, speaker)")


# --- classifiers ----------------------------------------------------------------------------------

def classifier(name: str, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    if name == "lr":
        return LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced")
    if name.startswith("lr"):  # lrC, e.g. lr0.01: another inverse regularisation strength
        return LogisticRegression(C=float(name[2:]), max_iter=3000, class_weight="balanced")
    if name == "mlp":
        return MLPClassifier((64,), alpha=1e-2, learning_rate_init=1e-3, max_iter=300,
                             early_stopping=True, validation_fraction=0.15, n_iter_no_change=15,
                             random_state=seed)
    raise SystemExit(f"--classifiers: unknown classifier {name!r} (lr, mlp)")


# --- scores ---------------------------------------------------------------------------------------

def urdu_scores(p: np.ndarray, y: np.ndarray) -> dict:
    pred = urdu_label(p)
    rec = {CLASSES[c]: float((pred[y == c] == c).mean()) for c in FOUR}
    return {"acc4": float((pred == y).mean()), "uar4": float(np.mean(list(rec.values()))),
            "recall": rec}


def speaker_bootstrap(p: np.ndarray, y: np.ndarray, spk: np.ndarray, seed: int,
                      n: int = 2000) -> list[float]:
    """95 % interval of the URDU 4-class accuracy when speakers (not files) are resampled: most
    URDU speakers speak one emotion only, so files of a speaker are not independent."""
    ok = urdu_label(p) == y
    names = np.unique(spk)
    per = [(ok[spk == s].sum(), (spk == s).sum()) for s in names]
    hits, tot = np.array(per).T
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(names), size=(n, len(names)))
    acc = hits[idx].sum(1) / tot[idx].sum(1)
    return [float(np.percentile(acc, 2.5)), float(np.percentile(acc, 97.5))]


CLIP_Z = 8.0  # normalised features are clipped here before the int8 model (outliers set its scale)


def keras_from_sklearn(model, ref_n):
    """The fitted LogisticRegression or MLPClassifier as a Keras model on normalised features,
    the final scaler folded into the first layer: input (D,) float32 → (7,) probabilities."""
    import keras
    from keras import layers
    if hasattr(model, "coefs_"):
        Ws, bs, act = model.coefs_, model.intercepts_, model.activation
    else:
        Ws, bs, act = [model.coef_.T], [model.intercept_], None
    W0 = Ws[0] / ref_n[1][:, None]
    b0 = bs[0] - (ref_n[0] / ref_n[1]) @ Ws[0]
    Ws, bs = [W0, *Ws[1:]], [b0, *bs[1:]]
    inp = keras.Input((W0.shape[0],), name="features")
    x = inp
    for i, (W, b) in enumerate(zip(Ws, bs)):
        last = i == len(Ws) - 1
        d = layers.Dense(W.shape[1], activation="softmax" if last else act)
        x = d(x)
        d.set_weights([W.astype(np.float32), b.astype(np.float32)])
    return keras.Model(inp, x)


def int8_check(model, ref_n, Ztr, Zr, yr, Zu, uy, dest: Path) -> dict:
    """Export the classifier to int8 TFLite (scripts/tflite_export.py) and score int8 and float
    (both on features clipped to ±CLIP_Z) on the fold's RAVDESS actors and on URDU. Needs
    tensorflow (the [train] extra)."""
    from redsg_edge.litert import LiteRTClassifier
    from tflite_export import export_int8
    km = keras_from_sklearn(model, ref_n)
    rep = np.clip(Ztr[np.random.default_rng(0).choice(len(Ztr), min(400, len(Ztr)), replace=False)],
                  -CLIP_Z, CLIP_Z).astype(np.float32)
    size = export_int8(km, rep, dest)
    clf = LiteRTClassifier(dest, (Ztr.shape[1],), len(CLASSES))
    out = {"bytes": size, "path": str(dest)}
    for kind, f in (("float", lambda Z: km.predict(Z, verbose=0)),
                    ("int8", lambda Z: np.stack([clf.predict(z) for z in Z]))):
        pr = f(np.clip(Zr, -CLIP_Z, CLIP_Z).astype(np.float32))
        pu = f(np.clip(Zu, -CLIP_Z, CLIP_Z).astype(np.float32))
        out[kind] = {"ravdess_acc": float((pr.argmax(1) == yr).mean()),
                     "urdu_acc4": urdu_scores(pu, uy)["acc4"]}
    import time as _t
    z = np.clip(Zu[:1], -CLIP_Z, CLIP_Z).astype(np.float32)[0]
    ts = []
    for _ in range(200):
        t = _t.perf_counter()
        clf.predict(z)
        ts.append(_t.perf_counter() - t)
    out["interpreter_ms_p50"] = float(np.median(ts) * 1000)
    print(f"  int8 export {dest.name}: {size} bytes, " + json.dumps(out), flush=True)
    return out


def evaluate(feat: str, norm: str, clf: str, data: dict, args) -> dict:
    tr_norm, te_norm = norm.split(":")
    X, y, actor = data["X"], data["y"], data["actor"]
    U, uy, uspk = data["U"], data["uy"], data["uspk"]
    res = {"features": feat, "norm": norm, "classifier": clf, "dims": int(X.shape[1]), "folds": {}}
    for k in args.folds:
        tr = ~np.isin(actor, FOLDS[k])
        Xtr, gtr, ytr = X[tr], actor[tr], y[tr]
        if data.get("A") is not None:  # augmented copies of the training recordings
            keep = tr[data["Asrc"]]
            Xtr = np.concatenate([Xtr, data["A"][keep]])
            gtr = np.concatenate([gtr, actor[data["Asrc"]][keep]])
            ytr = np.concatenate([ytr, y[data["Asrc"]][keep]])
        ref = (Xtr.mean(0), Xtr.std(0) + 1e-6)
        Ztr = normalise(tr_norm, Xtr, gtr, ref, args)
        ref_n = (Ztr.mean(0), Ztr.std(0) + 1e-6)  # a final scaler, part of the shipped model
        model = classifier(clf, args.seed).fit((Ztr - ref_n[0]) / ref_n[1], ytr)

        def probs(T, g):
            Z = normalise(te_norm, T, g, ref, args)
            return model.predict_proba((Z - ref_n[0]) / ref_n[1])
        Xte = data["Xtest"] if data.get("Xtest") is not None else X
        pr = probs(Xte[~tr], actor[~tr])
        if data.get("Ucut") is not None:  # utterances of the analyze path → file probabilities
            pc = probs(data["Ucut"], uspk[data["Uowner"]])
            pu = np.full((len(U), len(CLASSES)), 1.0 / len(CLASSES))  # no utterance: no label
            for i in np.unique(data["Uowner"]):
                m = data["Uowner"] == i
                pu[i] = np.average(pc[m], axis=0, weights=data["Udur"][m])
            res["urdu_unlabelled"] = int(len(U) - len(np.unique(data["Uowner"])))
        else:
            pu = probs(U, uspk)
        res["folds"][k] = {"ravdess_acc": float((pr.argmax(1) == y[~tr]).mean()),
                           "urdu": urdu_scores(pu, uy)}
        if k == VAL_FOLD and data.get("Uquiet") is not None:
            pq = probs(data["Uquiet"], uspk)
            res["urdu_quiet"] = urdu_scores(pq, uy)
            res["urdu_quiet"]["changed"] = int((pq[:, FOUR].argmax(1) != pu[:, FOUR].argmax(1)).sum())
        if k == VAL_FOLD and args.export_int8:
            Zr = normalise(te_norm, Xte[~tr], actor[~tr], ref, args)
            Zu = normalise(te_norm, U, uspk, ref, args)
            res["int8"] = int8_check(model, ref_n, Ztr, Zr, y[~tr], Zu, uy,
                                     args.export_int8 / f"{feat}_{norm.replace(':', '-')}_{clf}.tflite")
        if k == VAL_FOLD:
            res["urdu_ci95"] = speaker_bootstrap(pu, uy, uspk, args.seed)
            if te_norm == "running":  # how long the running statistics take to settle
                order = np.random.default_rng(args.seed).permutation(len(U))
                ok = urdu_label(pu) == uy
                res["urdu_first50"] = float(ok[order[:50]].mean())
                res["urdu_after50"] = float(ok[order[50:]].mean())
    folds = res["folds"]
    res["ravdess_mean"] = float(np.mean([f["ravdess_acc"] for f in folds.values()]))
    res["urdu_mean"] = float(np.mean([f["urdu"]["acc4"] for f in folds.values()]))
    v = folds.get(VAL_FOLD) or next(iter(folds.values()))
    res["ravdess_val"], res["urdu"] = v["ravdess_acc"], v["urdu"]
    return res


def shipped_baseline(U_audio: list[np.ndarray], uy: np.ndarray, uspk, seed) -> dict:
    """The shipped int8 CNN on the same URDU files, whole file through ser_windows."""
    from redsg_edge.speech import SerModel
    from tqdm import tqdm
    m = SerModel(ROOT / "models" / "ser_int8.tflite", 2.5)
    p = np.stack([m.predict_utterance(np.round(x * 32768).clip(-32768, 32767).astype(np.int16), 8000)
                  for x in tqdm(U_audio, desc="shipped SER on URDU", unit="file", mininterval=2)])
    r = urdu_scores(p, uy)
    r["urdu_ci95"] = speaker_bootstrap(p, uy, uspk, seed)
    return r


def ci(x: dict) -> str:
    c = x.get("urdu_ci95")
    return f"{100 * c[0]:.0f}–{100 * c[1]:.0f} %" if c else "–"


def quiet(x: dict) -> str:
    q = x.get("urdu_quiet")
    return f"{100 * q['acc4']:.1f} % ({q['changed']} changed)" if q else "–"


def table(results: list[dict], baseline: dict | None) -> str:
    lines = ["| features (dims) | norm train:test | classifier | RAVDESS folds mean | fold 9–12 "
             "| URDU acc (fold 9–12 model) | URDU UAR | recall angry / happy / neutral / sad "
             "| URDU acc, mean of fold models | URDU 95 % CI (speakers resampled) | URDU at −20 dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if baseline:
        r = baseline["recall"]
        lines.append(f"| shipped CNN, MFCC windows | per-window CMN | 1-D CNN int8 | 65.3 % (card) "
                     f"| 67.1 % (card) | {100 * baseline['acc4']:.1f} % (shipped model) "
                     f"| {100 * baseline['uar4']:.1f} % | "
                     + " / ".join(f"{100 * r[c]:.0f}" for c in ("angry", "happy", "neutral", "sad"))
                     + f" | 35.6 % (card) | {ci(baseline)} | – |")
    for x in results:
        r = x["urdu"]["recall"]
        lines.append(
            f"| {x['features']} ({x['dims']}) | {x['norm']} | {x['classifier']} "
            f"| {100 * x['ravdess_mean']:.1f} % | {100 * x['ravdess_val']:.1f} % "
            f"| {100 * x['urdu']['acc4']:.1f} % | {100 * x['urdu']['uar4']:.1f} % | "
            + " / ".join(f"{100 * r[c]:.0f}" for c in ("angry", "happy", "neutral", "sad"))
            + f" | {100 * x['urdu_mean']:.1f} % | {ci(x)} | {quiet(x)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--features", default=DEFAULT_FEATURES,
                    help=f"comma-separated feature sets ({', '.join(FEATURES)}; NAME@lvl: on "
                         "level-normalised audio; A+B: concatenated)")
    ap.add_argument("--classifiers", default="lr,mlp", help="comma-separated: lr (C 0.1), lrC (e.g. lr0.01), mlp")
    ap.add_argument("--norms", default=",".join(DEFAULT_NORMS),
                    help="comma-separated TRAIN:TEST normalisations (see above)")
    ap.add_argument("--folds", default="0,1,2,3,4,5",
                    help="RAVDESS folds to train/test (0..5; 2 = actors 9-12)")
    ap.add_argument("--ravdess-test", choices=["cut", "whole"], default="cut",
                    help="test RAVDESS actors on VAD-like cuts (default, as trained) or on whole "
                         "recordings (the CNN card's protocol)")
    ap.add_argument("--urdu-path", choices=["whole", "analyze"], default="whole",
                    help="URDU as whole files (default) or as the utterances `redsg-edge analyze` "
                         "cuts (daemon VAD path; file = duration-weighted mean of its utterances)")
    ap.add_argument("--train-whole", action="store_true",
                    help="train on the whole recordings too (with their ~1 s silences), beside the cuts")
    ap.add_argument("--aug", type=int, default=0, help="augmented copies per training recording")
    ap.add_argument("--prior", type=float, default=10.0,
                    help="pseudo-utterances of training statistics the running norm starts from")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "ravdess", help="RAVDESS folder")
    ap.add_argument("--urdu", type=Path, default=DATA_ROOT / "urdu", help="URDU folder (validation)")
    ap.add_argument("--moonshine-encoder", type=Path,
                    default=ROOT / "models" / "moonshine-tiny-en-encoder.ort")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ser_repr"), help="feature cache")
    ap.add_argument("--json", type=Path, help="write all results here (default: CACHE/results.json)")
    ap.add_argument("--export-int8", type=Path, metavar="DIR",
                    help="also export each variant's fold 9-12 model to int8 TFLite in DIR and "
                         "score it (needs tensorflow, the [train] extra)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the shipped model's URDU row")
    args = ap.parse_args()
    try:
        args.folds = [int(k) for k in args.folds.split(",")]
        if any(not 0 <= k < len(FOLDS) for k in args.folds):
            raise ValueError
    except ValueError:
        ap.error(f"--folds: comma-separated fold numbers 0..{len(FOLDS) - 1}, got {args.folds!r}")
    for n in args.norms.split(","):
        if n.count(":") != 1:
            ap.error(f"--norms: {n!r} is not TRAIN:TEST (e.g. actor:running)")

    recs = load_ravdess_index(args.data)
    upaths, uy = load_urdu(args.urdu)
    import csv
    with (args.urdu / "index.csv").open(newline="") as f:
        uspk = np.array([r["speaker"] for r in csv.DictReader(f)])
    memo: dict = {}

    def rav():
        if "rav" not in memo:
            memo["rav"] = ravdess_audio(recs)
        return memo["rav"]

    def rav_whole():
        assert_not_validation([r.path for r in recs])
        return [read_pcm(r.path) for r in recs]

    def urdu():
        if "urdu" not in memo:
            memo["urdu"] = [read_pcm(p) for p in upaths]
        return memo["urdu"]

    def urdu_quiet():  # the same files 20 dB quieter, as int16 samples: a gain check
        return [np.round(x * 0.1 * 32767).astype(np.float32) / 32767 for x in urdu()]

    def aug():
        if "aug" not in memo:
            memo["aug"] = augmented(recs, rav(), args.aug, args.seed)
        return memo["aug"][0]

    y = np.array([r.label for r in recs])
    actor = np.array([r.actor for r in recs])
    results = []
    t0 = time.time()
    for feat in args.features.split(","):
        data = {"X": cached_features(feat, "ravdess", rav, args), "y": y, "actor": actor,
                "U": cached_features(feat, "urdu", urdu, args), "uy": uy, "uspk": uspk,
                "Uquiet": cached_features(feat, "urdu_m20dB", urdu_quiet, args)}
        if args.urdu_path == "analyze":
            cuts = memo.setdefault("cuts", analyze_cuts(upaths, args))
            data["Ucut"] = cached_features(feat, "urdu_analyze", lambda: cuts[0], args)
            data["Uowner"], data["Udur"] = cuts[1], cuts[2]
            data["Uquiet"] = None
        if args.ravdess_test == "whole" or args.train_whole:
            whole = cached_features(feat, "ravdess_whole", rav_whole, args)
            if args.ravdess_test == "whole":
                data["Xtest"] = whole
        if args.aug:
            data["A"] = cached_features(feat, f"ravdess_aug{args.aug}_s{args.seed}", aug, args)
            src = args.cache / f"augsrc{args.aug}_s{args.seed}.npy"
            if not src.is_file():
                np.save(src, memo["aug"][1] if "aug" in memo else augmented(recs, rav(), args.aug, args.seed)[1])
            data["Asrc"] = np.load(src)
        if args.train_whole:  # the whole recordings as more training rows, beside the cuts
            data["A"] = np.concatenate([data["A"], whole]) if "A" in data else whole
            data["Asrc"] = np.concatenate([data.get("Asrc", np.zeros(0, int)), np.arange(len(recs))])
        for clf in args.classifiers.split(","):
            for norm in args.norms.split(","):
                r = evaluate(feat, norm, clf, data, args)
                r["aug"], r["ravdess_test"], r["train_whole"] = args.aug, args.ravdess_test, args.train_whole
                r["urdu_path"] = args.urdu_path
                results.append(r)
                print(f"{feat:13s} {norm:16s} {clf:4s} RAVDESS {100 * r['ravdess_mean']:.1f} % "
                      f"(9-12: {100 * r['ravdess_val']:.1f} %)  URDU {100 * r['urdu']['acc4']:.1f} % "
                      f"UAR {100 * r['urdu']['uar4']:.1f} %  (fold mean {100 * r['urdu_mean']:.1f} %)"
                      f"  [{time.time() - t0:.0f} s]", flush=True)
    baseline = None if args.no_baseline else shipped_baseline(urdu(), uy, uspk, args.seed)
    out = args.json or args.cache / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"baseline": baseline, "results": results}, indent=1))
    print(table(results, baseline))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
