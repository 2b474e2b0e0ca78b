"""Golden predictions of the shipped classifiers on fixed held-out items, and their floors.

One function per model computes what ``tests/test_goldens.py`` checks and what
``scripts/make_goldens.py`` writes to ``tests/data/{fer,ser}_golden.json``, so the test and the
generator can never disagree on the method:

- :func:`fer_sets`: FER on every FER2013 PrivateTest image (3,589) and every CK+48 image of our
  six classes (927; the argmax over those six, CK+48 has no neutral). FER2013 PrivateTest and
  CK+48 were never trained on.
- :func:`ser_set`: SER per utterance on every RAVDESS file of the held-out actors 23 and 24
  (120): the utterance's windows (``features.ser_windows``, ``speech.window_s`` every
  ``speech.hop_s`` of the default config: 2.5 s every 0.5 s), the mean of the windows'
  probabilities, its argmax.

Each set is a dict: ``n``, ``names_sha256`` (sha256 of the item names, newline-joined, in
order: the committed identity of the list), ``labels`` and ``top1`` (one digit per item, a
``CLASSES`` index), ``acc``. Accuracy floors sit a few points under the measured figure and the
golden top-1 table allows a few flips (other CPUs' int8 kernels may round a near-tie the other
way); a swapped class, a preprocessing change or a feature bug moves far more than that.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from redsg_edge import CLASSES

#: Floors: measured accuracy minus this many points; flips allowed: this fraction of the items.
FLOOR_MARGIN = {"fer2013_private_test": 0.02, "ck48": 0.025, "ravdess_actors_23_24": 0.035}
FLIP_FRACTION = {"fer2013_private_test": 0.01, "ck48": 0.01, "ravdess_actors_23_24": 0.03}
SER_ACTORS = (23, 24)
CK_SIX = tuple(CLASSES.index(c) for c in ("angry", "disgust", "fear", "happy", "sad", "surprise"))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the whole file (the model identity a golden file names)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def calibration_sha256(model: Path) -> str | None:
    """Hex SHA-256 of the model's calibration sidecar (``NAME.json``: temperature, prior shift),
    None without one: it changes the top-1 as much as the weights do."""
    side = Path(model).with_suffix(".json")
    return sha256_file(side) if side.is_file() else None


def names_sha256(names: list[str]) -> str:
    """Hex SHA-256 of the item names joined by newlines, in order (a set's committed identity)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _set(names: list[str], labels: np.ndarray, top1: np.ndarray) -> dict:
    return {"n": len(names), "names_sha256": names_sha256(names),
            "labels": "".join(str(int(v)) for v in labels),
            "top1": "".join(str(int(v)) for v in top1),
            "acc": round(float(np.mean(np.asarray(labels) == np.asarray(top1))), 4)}


def fer_sets(model: Path, preprocess=None) -> dict[str, dict]:
    """FER golden sets (see module doc). ``preprocess(crop) -> crop`` is applied before the model
    (for checking that a corrupted input fails the floors). Raises FileNotFoundError for a
    missing zip, ModelError for a bad model."""
    from redsg_edge.datasets import load_ck48, load_fer2013
    from redsg_edge.vision import FerModel

    fer = FerModel(model)
    prep = preprocess or (lambda im: im)
    x, y, names = load_fer2013("test")
    top1 = np.array([int(np.argmax(fer.predict(prep(im)))) for im in x])
    out = {"fer2013_private_test": _set(names, y, top1)}
    ck = load_ck48()
    six = np.array(CK_SIX)
    top1 = np.array([int(six[np.argmax(fer.predict(prep(r.image))[six])]) for r in ck])
    out["ck48"] = _set([r.name for r in ck], np.array([r.label for r in ck]), top1)
    return out


def ser_utterance_probs(ser, pcm: np.ndarray, hop_s: float | None = None) -> np.ndarray:
    """(7,) mean of the window probabilities of one utterance (int16 PCM at 16 kHz); hop_s
    defaults to the config's ``speech.hop_s``."""
    from redsg_edge.config import SpeechConfig
    from redsg_edge.features import SAMPLE_RATE, ser_windows

    hop_s = SpeechConfig().hop_s if hop_s is None else hop_s
    hop = int(round(hop_s * SAMPLE_RATE))
    if hasattr(ser, "predict_utterance"):  # the runtime's own utterance path, where it has one
        return np.asarray(ser.predict_utterance(pcm, hop), dtype=np.float64)
    wins = ser_windows(pcm, ser.window_samples, hop)
    probs = []
    for w in wins:
        p = np.clip(ser.clf.predict(w), 0.0, None)
        s = float(p.sum())
        probs.append(p / s if s > 0 else np.full(len(CLASSES), 1 / len(CLASSES)))
    return np.mean(probs, axis=0)


def ser_set(model: Path, window_s: float | None = None, transform=None) -> dict[str, dict]:
    """The SER golden set (see module doc); window_s defaults to the config's
    ``speech.window_s``. ``transform(pcm) -> pcm`` is applied to each file's audio first (for
    corruption checks)."""
    import soundfile as sf

    from redsg_edge.config import SpeechConfig
    from redsg_edge.datasets import load_ravdess_index
    from redsg_edge.speech import SerModel

    ser = SerModel(model, SpeechConfig().window_s if window_s is None else window_s)
    files = [f for f in load_ravdess_index() if f.actor in SER_ACTORS]
    top1 = []
    for f in files:
        pcm, _sr = sf.read(f.path, dtype="int16")
        if transform is not None:
            pcm = transform(pcm)
        top1.append(int(np.argmax(ser_utterance_probs(ser, pcm))))
    names = [f"{f.path.parent.name}/{f.path.name}" for f in files]
    return {"ravdess_actors_23_24": _set(names, np.array([f.label for f in files]),
                                         np.array(top1))}


def with_floors(sets: dict[str, dict]) -> dict[str, dict]:
    """Each set plus ``floor`` (accuracy) and ``max_flips`` (golden top-1 disagreements)."""
    out = {}
    for name, s in sets.items():
        floor = math.floor((s["acc"] - FLOOR_MARGIN[name]) * 1000) / 1000
        out[name] = {**s, "floor": floor,
                     "max_flips": max(2, math.ceil(FLIP_FRACTION[name] * s["n"]))}
    return out


def flips(golden: str, top1: str) -> int:
    """Items whose top-1 digit differs between two top-1 strings, plus any length difference."""
    return sum(a != b for a, b in zip(golden, top1)) + abs(len(golden) - len(top1))
