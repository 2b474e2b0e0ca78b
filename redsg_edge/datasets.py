"""Readers for the evaluation and training datasets described in ``../shared/data/README.md``.

Nothing here downloads anything: every reader takes a path that defaults to the shared data folder
(override with ``REDSG_DATA`` or the function argument). Used by the training scripts, the
evaluation script, the scenario composer, the benchmarks and the tests.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import CLASSES

#: Default data root: ``$REDSG_DATA`` or ``../shared/data`` next to the repository.
DATA_ROOT = Path(os.environ.get("REDSG_DATA",
                                Path(__file__).resolve().parent.parent.parent / "shared" / "data"))

#: FER2013 zip folders → the split names used in our issues.
FER_SPLITS = {"train": "train", "val": "val", "test": "test"}

#: CK+48 folder → our class name; ``contempt`` has no class of ours and is left out.
CK_MAP = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
          "sadness": "sad", "surprise": "surprise"}

#: RAVDESS emotion code → our class (calm → neutral, fearful → fear, surprised → surprise).
RAVDESS_MAP = {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad",
               "angry": "angry", "fearful": "fear", "disgust": "disgust",
               "surprised": "surprise"}


def _open_image_gray(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def load_fer2013(split: str, path: str | os.PathLike | None = None,
                 limit_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """FER2013 images of one split (``train``, ``val`` = PublicTest, ``test`` = PrivateTest).

    Returns ``(x, y, names)``: x (N, 48, 48) uint8 grayscale, y (N,) int64 class indices in
    ``CLASSES`` order, names the zip member names. ``limit_per_class`` takes the first n of each
    class (sorted by name), for small deterministic samples. Raises FileNotFoundError naming the zip.
    """
    path = Path(path) if path else DATA_ROOT / "fer2013.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FER2013 zip not found (set REDSG_DATA or pass --data)")
    folder = FER_SPLITS[split]
    xs, ys, names = [], [], []
    with zipfile.ZipFile(path) as zf:
        members = sorted(n for n in zf.namelist()
                         if n.startswith(folder + "/") and n.lower().endswith((".jpg", ".png")))
        counts: dict[str, int] = {}
        for name in members:
            cls = name.split("/")[1]
            if cls not in CLASSES:
                continue
            if limit_per_class is not None:
                if counts.get(cls, 0) >= limit_per_class:
                    continue
                counts[cls] = counts.get(cls, 0) + 1
            xs.append(_open_image_gray(zf.read(name)))
            ys.append(CLASSES.index(cls))
            names.append(name)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), names


#: CK+48's six classes (no neutral) as indices into CLASSES; a 7-class output is scored on CK+48
#: "6-way" by the argmax over these.
CK48_CLASSES = [CLASSES.index(c) for c in ("angry", "disgust", "fear", "happy", "sad", "surprise")]


def ck48_label(p: np.ndarray) -> np.ndarray:
    """How a 7-class output is scored on CK+48, 6 classes: p (..., 7) probabilities in CLASSES
    order → (...,) int64 index into CLASSES of the most probable of CK+48's six classes."""
    six = np.asarray(CK48_CLASSES)
    return six[np.asarray(p)[..., six].argmax(-1)]


@dataclass(frozen=True)
class CKImage:
    """One CK+48 image: file ``name``, ``subject`` id, ``label`` (index into CLASSES) and its
    48x48 uint8 grey ``pixels``."""
    name: str
    subject: str
    label: int
    image: np.ndarray  # (48, 48) uint8


def load_ck48(path: str | os.PathLike | None = None) -> list[CKImage]:
    """CK+48 images of our six classes (contempt left out; CK+48 has no neutral).

    Returns CKImage records sorted by member name; ``subject`` (e.g. ``S005``) is for subject-wise
    grouping. Raises FileNotFoundError naming the zip.
    """
    path = Path(path) if path else DATA_ROOT / "ck48.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CK+48 zip not found (set REDSG_DATA or pass --data)")
    out = []
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) < 2 or not parts[-1].lower().endswith(".png"):
                continue
            cls = CK_MAP.get(parts[-2])
            if cls is None:
                continue
            out.append(CKImage(name, parts[-1].split("_")[0], CLASSES.index(cls),
                               _open_image_gray(zf.read(name))))
    return out


@dataclass(frozen=True)
class RavdessFile:
    """One RAVDESS speech file with the fields of its name (actor 1–24, sex, emotion as a CLASSES
    index, intensity, statement, repetition)."""
    path: Path
    actor: int
    sex: str
    label: int  # index into CLASSES
    emotion: str  # RAVDESS's own name
    intensity: str
    duration_s: float


def load_ravdess_index(root: str | os.PathLike | None = None) -> list[RavdessFile]:
    """The RAVDESS speech index (1,440 files, 24 actors) with our class mapping applied."""
    root = Path(root) if root else DATA_ROOT / "ravdess"
    index = root / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: RAVDESS index not found (set REDSG_DATA or pass --data)")
    out = []
    with index.open(newline="") as f:
        for row in csv.DictReader(f):
            out.append(RavdessFile(root / row["file"], int(row["actor"]), row["sex"],
                                   CLASSES.index(RAVDESS_MAP[row["emotion"]]), row["emotion"],
                                   row["intensity"], float(row["duration_s"])))
    return out


#: nEMO emotion name → our class (nEMO has no disgust).
NEMO_MAP = {"anger": "angry", "fear": "fear", "happiness": "happy", "sadness": "sad",
            "surprised": "surprise", "neutral": "neutral"}


@dataclass(frozen=True)
class NemoFile:
    """One nEMO recording: ``path`` (24 kHz mono 16-bit WAV), ``speaker`` id (e.g. ``WR0``) and
    ``label`` (index into CLASSES)."""
    path: Path
    speaker: str
    label: int


def load_nemo(root: str | os.PathLike | None = None) -> list[NemoFile]:
    """nEMO (Christop 2024, LREC-COLING, "nEMO: Dataset of Emotional Speech in Polish"; CC
    BY-NC-SA 4.0): 4,481 acted Polish utterances of 9 speakers, 6 classes. An extra SER
    *training* corpus; not part of ``../shared/data``: clone GitHub ``amu-cai/nEMO`` at commit
    ``66de9999a8f2f605eb5f64841790aa5cb0877782`` to ``root`` (default ``DATA_ROOT/nemo``).
    Returns the files of ``data.tsv`` in its order. Raises FileNotFoundError naming the index."""
    root = Path(root) if root else DATA_ROOT / "nemo"
    index = root / "data.tsv"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: nEMO index not found; clone github.com/amu-cai/nEMO "
                                f"there (or pass --nemo DIR)")
    with index.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [NemoFile(root / "samples" / r["file_id"], r["speaker_id"].strip(),
                     CLASSES.index(NEMO_MAP[r["emotion"]])) for r in rows]


#: Indian EmoSpeech Command emotion (file-name field) → our class.
EMOSPEECH_MAP = {"calm": "neutral", "angry": "angry", "happy": "happy", "fearful": "fear"}


@dataclass(frozen=True)
class EmoSpeechFile:
    """One Indian EmoSpeech Command clip: ``path`` (16 kHz WAV, about 3 s), ``keyword`` (e.g.
    ``help``), ``place`` (the recording's folder, e.g. ``Metro``), ``speaker`` (the file's user
    hash; one hash stands for all unknown users) and ``label`` (index into CLASSES)."""
    path: Path
    keyword: str
    place: str
    speaker: str
    label: int


def load_emospeech(root: str | os.PathLike | None = None) -> list[EmoSpeechFile]:
    """Indian EmoSpeech Command (Banga et al. 2019, arXiv:1910.13801; CC BY-NC-SA 4.0): single
    keywords spoken calm, angry, fearful or happy by about 110 people in houses, on roads, in
    the metro and through a web page, 4 classes. A cross-corpus SER *check*, never trained on by
    the shipped models; not part of ``../shared/data``: clone GitHub
    ``RakshakTeam/emospeech-dataset-v1`` at ``85b1ef5`` to ``root`` (default
    ``DATA_ROOT/emospeech``). Names are ``keyword-environment-emotion-timestamp-hash.wav``; the
    ``background`` clips (no keyword spoken; most are labelled ``None``, some with an emotion)
    are left out. Returns the labelled clips sorted by path. Raises FileNotFoundError when
    ``root`` holds no labelled clip."""
    root = Path(root) if root else DATA_ROOT / "emospeech"
    out = []
    for p in sorted(root.rglob("*.wav")):
        parts = p.stem.split("-")
        emotion = parts[2].lower() if len(parts) >= 5 else ""
        if parts[0] == "background" or emotion not in EMOSPEECH_MAP:
            continue
        out.append(EmoSpeechFile(p, parts[0], p.parent.name, parts[4],
                                 CLASSES.index(EMOSPEECH_MAP[emotion])))
    if not out:
        raise FileNotFoundError(f"{root}: no labelled EmoSpeech clip (keyword-environment-"
                                f"emotion-timestamp-hash.wav); clone github.com/RakshakTeam/"
                                f"emospeech-dataset-v1 there (or pass --emospeech DIR)")
    return out


def label_among(p: np.ndarray, classes) -> np.ndarray:
    """How a 7-class output is scored on a corpus with fewer classes: p (..., 7) probabilities
    in CLASSES order → (...,) int64 index into CLASSES of the most probable of ``classes``
    (indices into CLASSES)."""
    sub = np.asarray(sorted(classes))
    return sub[np.asarray(p)[..., sub].argmax(-1)]


#: URDU's four classes as indices into CLASSES; a 7-class output is scored on URDU by the argmax
#: over these.
URDU_CLASSES = [CLASSES.index(c) for c in ("angry", "happy", "neutral", "sad")]


def urdu_label(p: np.ndarray) -> np.ndarray:
    """How a 7-class output is scored on URDU: p (..., 7) probabilities in CLASSES order →
    (...,) int64 index into CLASSES of the most probable of URDU's four classes."""
    return label_among(p, URDU_CLASSES)


def load_urdu(root: str | os.PathLike | None = None) -> tuple[list[Path], np.ndarray]:
    """URDU (Latif et al. 2018: 400 natural Urdu talk-show utterances, 29 speakers; 4 classes):
    the cross-corpus **validation** set of SER. Validate and report on it, never train on it
    (``assert_not_validation`` guards the training scripts). Returns (files, labels (N,) int64
    indices into CLASSES). Raises FileNotFoundError naming the index."""
    root = Path(root) if root else DATA_ROOT / "urdu"
    index = root / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: URDU index not found (set REDSG_DATA or pass --urdu)")
    with index.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [root / r["file"] for r in rows], np.array([CLASSES.index(r["label"]) for r in rows])


def assert_not_validation(paths, validation_root: str | os.PathLike | None = None) -> None:
    """Raise ValueError when any of ``paths`` (training audio) lies in the URDU validation set
    (``validation_root``, default ``DATA_ROOT/urdu``): a cross-corpus figure is honest only if
    the model never heard that corpus."""
    root = Path(validation_root or DATA_ROOT / "urdu").resolve()
    bad = [p for p in paths if Path(p).resolve().is_relative_to(root)]
    if bad:
        raise ValueError(f"{bad[0]}: in {root}, the cross-corpus validation set: validate and "
                         f"report on it, never train on it ({len(bad)} such file(s))")
