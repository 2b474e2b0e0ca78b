#!/usr/bin/env python3
"""Compose real-input test scenarios: a face video, a speech track and the ground-truth timeline.

Each scenario is 3–6 segments of 6–12 s, one emotion per segment (neutral first in 80 % of
scenarios; then no label twice in a row; disgust drawn at weight 0.4, see ``--emotions``). The
inputs are real recordings that no shipped model trained on:

- **Face**: one face image per segment, from FER2013 *PrivateTest* (the FER model trains on
  Training and selects on PublicTest; PrivateTest images that are byte-identical to a Training
  image are excluded) or, for about half of the scenarios (``--ck-fraction``), from one CK+48
  subject (Lucey et al. 2010) whose posed expressions make a consistent person; CK+48 has no
  neutral, so neutral segments of those scenarios show a PrivateTest neutral face. The 48x48
  crop is upscaled (Lanczos) to 220–260 px and placed, unpadded, on a plain grey background with
  a margin: padding the tight FER crops (replicated or mirrored border) *lowered* the BlazeFace
  detection rate here (~77–80 % vs ~98 %), so the crop is used as is. Each frame gets
  a slow translation/scale drift, a brightness drift and sensor-like noise, so it is not a
  frozen still. Every chosen image is screened with the real detector first (IMAGE mode on the
  composed still) and replaced when no face is found.
- **Voice**: RAVDESS speech (Livingstone & Russo 2018, CC BY-NC-SA 4.0) of the held-out test
  speakers only, Actor_23 (male) or Actor_24 (female), which the shipped SER model never hears.
  A segment holds whole utterances of its emotion (calm counts as neutral, as in training), each
  level-normalised like a microphone AGC (loudest 25 ms frame at ``--level-dbfs``), separated by
  the files' own ~1 s silences plus a random 0–0.6 s gap, over a low white-noise floor.

Scenario kinds (``--kind``), so the fusion is judged on how people really speak (issue 14):

- ``expressive`` (a): the expressive face of each segment's emotion and a voice speaking it.
- ``talking`` (b): a near-neutral face (a FER2013 PrivateTest *neutral* image, a new one per
  segment) while the voice carries the segment's emotion: the face of someone speaking sadly
  reads neutral to the FER model. The truth is the voice's emotion.
- ``silent`` (c): the expressive face in silence (the noise floor only): a clear face must win.
- ``noisy`` (d): as (a) with the speech 20 dB quieter than ``--level-dbfs`` (a quieter
  microphone, or the speaker a metre further away) under white noise at 10 dB SNR (speech RMS
  over its utterances against noise RMS).

Outputs per scenario in ``--out`` (default ``runs/scenarios``, git-ignored): ``NAME.mp4``
(640x480, 15 fps, H.264 yuv420p via PyAV, with the same speech as a 16 kHz mono AAC track),
``NAME.wav`` (16 kHz mono PCM-16, the exact reference audio: pass it to
``redsg-edge replay NAME.mp4 --audio NAME.wav``) and ``NAME.json``::

    {"segments": [{"start": s, "end": s, "label": name, "face_source": zip member,
                   "face_dataset": "fer2013" | "ck48", "voice_sources": [flac paths],
                   "utterances": [{"file", "start", "end"}]}],
     "fps": 15, "speaker": "Actor_23", "duration_s": s, "face_detection": {...}, ...}

plus ``index.json`` summarising the run. With ``--verify`` (default) the written MP4 is decoded
and every frame goes through the daemon's face detector (``redsg_edge.vision``); a frame counts as
detected when a detection's centre lies on the placed face. Deterministic for a given ``--seed``
(scenario i uses its own generator seeded with (seed, i), so ``--count`` does not change earlier
scenarios). Data licences: research/non-commercial only; never commit the outputs.

    python scripts/make_scenario.py --count 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.datasets import DATA_ROOT, load_ck48, load_fer2013, load_ravdess_index  # noqa: E402

SAMPLE_RATE = 16_000
TEST_SPEAKERS = {23: "Actor_23", 24: "Actor_24"}  # RAVDESS speakers held out from SER training
DEFAULT_EMOTIONS = "neutral,happy,sad,angry,surprise,fear,disgust:0.4"
WIDTH, HEIGHT = 640, 480
KINDS = ("expressive", "talking", "silent", "noisy")


# ----------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Face:
    dataset: str        # "fer2013" | "ck48"
    member: str         # zip member name
    label: str
    image: np.ndarray   # (48, 48) uint8


def load_faces(fer_zip: Path, ck_zip: Path) -> tuple[dict[str, list[Face]], dict[str, dict[str, list[Face]]]]:
    """FER2013 PrivateTest faces by class, and CK+48 faces by subject → class.

    PrivateTest images byte-identical to a Training image (same CRC-32 and size in the zip) and
    near-blank images (pixel std < 12) are left out.
    """
    x, y, names = load_fer2013("test", fer_zip)
    with zipfile.ZipFile(fer_zip) as zf:
        train = {(i.CRC, i.file_size) for i in zf.infolist() if i.filename.startswith("train/")}
        info = {i.filename: (i.CRC, i.file_size) for i in zf.infolist()}
    fer: dict[str, list[Face]] = {c: [] for c in CLASSES}
    for img, lab, name in zip(x, y, names):
        if info[name] in train or img.std() < 12:
            continue
        fer[CLASSES[lab]].append(Face("fer2013", name, CLASSES[lab], img))
    ck: dict[str, dict[str, list[Face]]] = {}
    for rec in load_ck48(ck_zip):
        ck.setdefault(rec.subject, {}).setdefault(CLASSES[rec.label], []).append(
            Face("ck48", rec.name, CLASSES[rec.label], rec.image))
    return fer, ck


def load_voices(ravdess_root: Path) -> dict[int, dict[str, list]]:
    """RAVDESS files of the two test speakers by actor → class (sorted by file name)."""
    out: dict[int, dict[str, list]] = {a: {c: [] for c in CLASSES} for a in TEST_SPEAKERS}
    for rec in load_ravdess_index(ravdess_root):
        if rec.actor in TEST_SPEAKERS:
            out[rec.actor][CLASSES[rec.label]].append(rec)
    for by_class in out.values():
        for lst in by_class.values():
            lst.sort(key=lambda r: str(r.path))
    return out


def read_utterance(path: Path, level_dbfs: float | None) -> np.ndarray:
    """16 kHz mono float32 in −1..1, gain set so the loudest 25 ms frame has RMS ``level_dbfs``
    (peak kept ≤ 0.98). Raises ValueError for a file that is not 16 kHz mono."""
    import soundfile as sf
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: {sr} Hz, expected {SAMPLE_RATE} (see ../shared/data/README.md)")
    x = x.mean(axis=1)
    if level_dbfs is not None:
        n = 400  # 25 ms
        frames = x[: len(x) // n * n].reshape(-1, n)
        loudest = float(np.sqrt((frames ** 2).mean(axis=1)).max()) + 1e-9
        gain = 10 ** (level_dbfs / 20) / loudest
        gain = min(gain, 0.98 / (float(np.abs(x).max()) + 1e-9))
        x = x * gain
    return x


# --------------------------------------------------------------------------------- planning

def plan_labels(rng: np.random.Generator, n: int, weights: dict[str, float]) -> list[str]:
    """n segment labels drawn with ``weights`` (class → relative weight), neutral first with
    probability 0.8, never the same label twice in a row."""
    def draw(exclude: str | None) -> str:
        names = [c for c in weights if c != exclude]
        w = np.array([weights[c] for c in names], dtype=float)
        return str(names[int(rng.choice(len(names), p=w / w.sum()))])
    labels = ["neutral" if "neutral" in weights and rng.random() < 0.8 else draw(None)]
    while len(labels) < n:
        labels.append(draw(labels[-1]))
    return labels


class Screen:
    """Real face detection of a composed still (the daemon's detector), to reject undetectable
    faces."""

    def __init__(self, model: Path, min_confidence: float) -> None:
        from redsg_edge.vision import FaceDetector
        self._det = FaceDetector(model, min_confidence)

    def ok(self, frame: np.ndarray, box: tuple[int, int, int, int]) -> bool:
        faces = self._det.detect(np.repeat(frame[..., None], 3, axis=2))
        return any(_on_face(f, box, 0) for f in faces)

    def close(self) -> None:
        self._det.close()


def _on_face(face, box: tuple[int, int, int, int], slack: int) -> bool:
    bx, by, bw, bh = face.box
    cx, cy = bx + bw / 2, by + bh / 2
    x0, y0, size, _ = box
    return x0 - slack <= cx <= x0 + size + slack and y0 - slack <= cy <= y0 + size + slack


# -------------------------------------------------------------------------------- rendering

class Renderer:
    """Grey frames (H, W) uint8 with one face image, slow drift and sensor noise."""

    def __init__(self, rng: np.random.Generator, fps: float, face_px: int) -> None:
        from PIL import Image
        self._Image = Image
        self.fps = fps
        self.face_px = face_px
        level = rng.uniform(105, 150)
        ramp = np.linspace(-12, 12, HEIGHT)[:, None] * rng.choice([-1, 1])
        self.background = np.clip(level + ramp + np.zeros((HEIGHT, WIDTH)), 0, 255).astype(np.float32)
        # Somewhere near the middle, as a person facing a companion device would be, with at
        # least 40 px of background (plus the drift amplitude) on every side.
        margin = 40 + 12
        lo_x, hi_x = margin + face_px // 2, WIDTH - margin - face_px // 2
        lo_y, hi_y = margin + face_px // 2, HEIGHT - margin - face_px // 2
        self.cx = int(rng.integers(max(lo_x, WIDTH // 2 - 120), min(hi_x, WIDTH // 2 + 120) + 1))
        self.cy = int(rng.integers(lo_y, hi_y + 1))
        # Drift: a sum of two slow sinusoids per axis (head sway, ~0.1–0.5 Hz), ±10 px, ±3 % scale.
        self._f = rng.uniform(0.1, 0.5, size=(4, 2))
        self._ph = rng.uniform(0, 2 * np.pi, size=(4, 2))
        self._amp = np.array([6.0, 6.0, 0.02, 0.03])
        self._noise = [rng.normal(0, 2.0, (HEIGHT, WIDTH)).astype(np.float32) for _ in range(12)]
        self._rng = rng

    def _wave(self, k: int, t: float) -> float:
        return float(self._amp[k] * 0.5 * np.sin(2 * np.pi * self._f[k] * t + self._ph[k]).sum())

    def box(self, t: float | None = None) -> tuple[int, int, int, int]:
        """(x0, y0, size, size) of the face at time t (None = rest position)."""
        if t is None:
            s, dx, dy = self.face_px, 0.0, 0.0
        else:
            s = int(round(self.face_px * (1 + self._wave(2, t))))
            dx, dy = self._wave(0, t), self._wave(1, t)
        return (int(round(self.cx + dx - s / 2)), int(round(self.cy + dy - s / 2)), s, s)

    def frame(self, face: np.ndarray, t: float | None) -> np.ndarray:
        x0, y0, s, _ = self.box(t)
        img = np.asarray(self._Image.fromarray(face).resize((s, s), self._Image.LANCZOS), np.float32)
        out = self.background.copy()
        out[y0:y0 + s, x0:x0 + s] = img
        if t is not None:
            out *= 1 + self._wave(3, t)
            out += self._noise[int(self._rng.integers(len(self._noise)))]
        return np.clip(out, 0, 255).astype(np.uint8)


def write_media(path_mp4: Path, path_wav: Path, frames, n_frames: int, fps: int,
                audio: np.ndarray, mux_audio: bool, preset: str = "veryfast") -> None:
    """H.264 (libx264, yuv420p, CRF 20) MP4 with an optional AAC 16 kHz mono track; PCM-16 WAV."""
    import av
    import soundfile as sf
    sf.write(path_wav, audio, SAMPLE_RATE, subtype="PCM_16")
    with av.open(str(path_mp4), "w") as out:
        v = out.add_stream("libx264", rate=fps, options={"crf": "20", "preset": preset})
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        a = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if mux_audio else None
        for i, gray in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(gray, format="gray")
            vf.pts = i
            out.mux(v.encode(vf))
        if i + 1 != n_frames:
            raise RuntimeError(f"rendered {i + 1} frames, expected {n_frames}")
        out.mux(v.encode(None))
        if a is not None:
            # The same samples as the WAV, quantised identically, in AAC's 1024-sample frames.
            pcm = (np.round(np.clip(audio, -1, 1) * 32767) / 32768).astype(np.float32)
            for k in range(0, len(pcm), 1024):
                af = av.AudioFrame.from_ndarray(pcm[None, k:k + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = SAMPLE_RATE, k
                out.mux(a.encode(af))
            out.mux(a.encode(None))


def verify_detection(path_mp4: Path, renderer: Renderer, model: Path, min_confidence: float,
                     bounds: np.ndarray) -> dict:
    """Decode the MP4 and run the daemon's face detector on every frame; ``bounds`` are the
    segments' frame boundaries (for per-segment rates)."""
    import av

    from redsg_edge.vision import FaceDetector
    hits: list[bool] = []
    det = FaceDetector(model, min_confidence)
    try:
        with av.open(str(path_mp4)) as c:
            for i, fr in enumerate(c.decode(video=0)):
                faces = det.detect(fr.to_ndarray(format="rgb24"))
                hits.append(any(_on_face(f, renderer.box(i / renderer.fps), 8) for f in faces))
    finally:
        det.close()
    frames, detected = len(hits), int(sum(hits))
    per_segment = [round(float(np.mean(hits[a:b])), 4) if b > a else None
                   for a, b in zip(bounds[:-1], bounds[1:])]
    return {"frames": frames, "detected": detected, "rate": detected / max(frames, 1),
            "per_segment": per_segment, "model": model.name,
            "min_detection_confidence": min_confidence}


# --------------------------------------------------------------------------------- scenario

def compose(i: int, args, fer, ck, voices, screen: Screen | None) -> dict:
    """Build scenario ``i`` and write its files; returns its ground-truth dict."""
    rng = np.random.default_rng([args.seed, i])
    name = f"scenario_{i:03d}"
    actor = int(rng.choice(sorted(TEST_SPEAKERS)))
    n_seg = int(rng.integers(args.min_segments, args.max_segments + 1))
    use_ck = rng.random() < args.ck_fraction
    subject = None
    if use_ck:
        # a subject with at least three of our classes (plus neutral from PrivateTest)
        subjects = sorted(s for s, d in ck.items() if len(d) >= 3)
        subject = str(rng.choice(subjects))
        pool = {c: w for c, w in args.emotions.items() if c in ck[subject] or c == "neutral"}
    else:
        pool = dict(args.emotions)
    labels = plan_labels(rng, n_seg, pool if len(pool) >= 2 else args.emotions)
    kind = args.kind
    fps = args.fps
    seg_frames = [int(round(rng.uniform(args.min_seg_s, args.max_seg_s) * fps)) for _ in labels]
    bounds = np.concatenate([[0], np.cumsum(seg_frames)])
    n_frames = int(bounds[-1])
    duration = n_frames / fps
    renderer = Renderer(rng, fps, int(rng.integers(args.face_px[0], args.face_px[1] + 1)))

    # Faces: one per segment, screened on the composed still.
    used: set[str] = set()
    faces: list[Face] = []
    rejected = 0
    for label in labels:
        if kind == "talking":
            cands = [fer["neutral"][j] for j in rng.permutation(len(fer["neutral"]))]
        elif use_ck and label in ck[subject]:
            cands = list(ck[subject][label])
            cands = [cands[j] for j in rng.permutation(len(cands))] + \
                [fer[label][j] for j in rng.permutation(len(fer[label]))]
        else:
            cands = [fer[label][j] for j in rng.permutation(len(fer[label]))]
        for face in cands:
            if face.member in used and face.dataset == "fer2013":
                continue
            if screen is None or screen.ok(renderer.frame(face.image, None), renderer.box()):
                break
            rejected += 1
        else:
            raise RuntimeError(f"{name}: no detectable {label} face")
        used.add(face.member)
        faces.append(face)

    # Audio: whole utterances of the segment's emotion, gaps between them, a noise floor.
    audio = np.zeros(int(round(duration * SAMPLE_RATE)), np.float32)
    level = args.level_dbfs - 20.0 if kind == "noisy" and args.level_dbfs is not None else args.level_dbfs
    used_voice: set[str] = set()
    segments = []
    for k, (label, face) in enumerate(zip(labels, faces)):
        start, end = bounds[k] / fps, bounds[k + 1] / fps
        pos = start + rng.uniform(0.0, 0.3)
        utts = []
        pool_v = voices[actor][label]
        while kind != "silent":
            fits = [r for r in pool_v if pos + r.duration_s <= end and str(r.path) not in used_voice]
            if not fits:
                fits = [r for r in pool_v if pos + r.duration_s <= end]
            if not fits:
                break
            rec = fits[int(rng.integers(len(fits)))]
            x = read_utterance(rec.path, level)
            a0 = int(round(pos * SAMPLE_RATE))
            x = x[: len(audio) - a0]
            audio[a0:a0 + len(x)] += x
            used_voice.add(str(rec.path))
            rel = str(Path(rec.path).relative_to(args.ravdess))
            utts.append({"file": rel, "start": round(pos, 4), "end": round(pos + len(x) / SAMPLE_RATE, 4)})
            pos += len(x) / SAMPLE_RATE + rng.uniform(0.0, 0.6)
        segments.append({"start": round(start, 4), "end": round(end, 4), "label": label,
                         "face_source": face.member, "face_dataset": face.dataset,
                         "voice_sources": [u["file"] for u in utts], "utterances": utts})
    snr = None
    if kind == "noisy":
        # 10 dB SNR against the speech's RMS over its utterances (not over the gaps).
        mask = np.zeros(len(audio), bool)
        for seg in segments:
            for u in seg["utterances"]:
                mask[int(u["start"] * SAMPLE_RATE):int(u["end"] * SAMPLE_RATE)] = True
        speech_rms = float(np.sqrt(np.mean(audio[mask] ** 2))) if mask.any() else 1e-3
        snr = 10.0
        audio += rng.normal(0, speech_rms / 10 ** (snr / 20), audio.shape).astype(np.float32)
    elif args.noise_dbfs is not None:
        audio += rng.normal(0, 10 ** (args.noise_dbfs / 20), audio.shape).astype(np.float32)
    np.clip(audio, -1.0, 1.0, out=audio)

    def frames():
        seg = 0
        for f in range(n_frames):
            while f >= bounds[seg + 1]:
                seg += 1
            yield renderer.frame(faces[seg].image, f / fps)

    mp4, wav = args.out / f"{name}.mp4", args.out / f"{name}.wav"
    write_media(mp4, wav, frames(), n_frames, fps, audio, args.mux_audio, args.x264_preset)
    truth = {
        "name": name, "video": mp4.name, "audio": wav.name, "audio_in_video": args.mux_audio,
        "fps": fps, "width": WIDTH, "height": HEIGHT, "duration_s": round(duration, 4),
        "speaker": TEST_SPEAKERS[actor], "speaker_sex": "male" if actor % 2 else "female",
        "kind": kind, "speech_level_dbfs": None if kind == "silent" else level, "snr_db": snr,
        "face_kind": "ck48" if use_ck else "fer2013", "ck_subject": subject,
        "face_px": renderer.face_px, "screen_rejected": rejected, "seed": args.seed, "index": i,
        "segments": segments,
        "licence": "research/non-commercial only (FER2013, CK+, RAVDESS CC BY-NC-SA 4.0)",
        "generator": "scripts/make_scenario.py",
    }
    if args.verify:
        truth["face_detection"] = verify_detection(mp4, renderer, args.detector, args.min_confidence,
                                                   bounds)
    (args.out / f"{name}.json").write_text(json.dumps(truth, indent=1))
    return truth


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scenarios")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA_ROOT, help="shared data folder")
    ap.add_argument("--fer", type=Path, help="fer2013.zip (default DATA/fer2013.zip)")
    ap.add_argument("--ck", type=Path, help="ck48.zip (default DATA/ck48.zip)")
    ap.add_argument("--ravdess", type=Path, help="RAVDESS folder (default DATA/ravdess)")
    ap.add_argument("--detector", type=Path,
                    default=DATA_ROOT.parent / "models" / "blaze_face_short_range.tflite",
                    help="BlazeFace face detector .tflite (screening and --verify)")
    ap.add_argument("--min-confidence", type=float, default=0.5,
                    help="detector threshold (as vision.min_detection_confidence)")
    ap.add_argument("--kind", choices=KINDS, default="expressive",
                    help="expressive face + voice (a), near-neutral talking face + emotional voice "
                         "(b), expressive face in silence (c), quiet speech in noise (d); see above")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--face-px", type=int, nargs=2, default=(220, 260), metavar=("MIN", "MAX"))
    ap.add_argument("--min-segments", type=int, default=3)
    ap.add_argument("--max-segments", type=int, default=6)
    ap.add_argument("--min-seg-s", type=float, default=6.0)
    ap.add_argument("--max-seg-s", type=float, default=12.0)
    ap.add_argument("--ck-fraction", type=float, default=0.5,
                    help="share of scenarios whose non-neutral faces are one CK+ subject")
    ap.add_argument("--emotions", default=DEFAULT_EMOTIONS,
                    help="comma-separated classes to draw segments from, each with an optional "
                         ":weight (default %(default)s: disgust is rare in daily life and in "
                         "FER2013, 1.5 %% of its training images)")
    ap.add_argument("--x264-preset", default="veryfast",
                    help="libx264 speed preset (ultrafast is ~3x faster, files ~2x larger)")
    ap.add_argument("--level-dbfs", type=float, default=-20.0,
                    help="loudest 25 ms frame of each utterance (dBFS); 'none' keeps levels")
    ap.add_argument("--noise-dbfs", default="-65",
                    help="white-noise floor RMS in dBFS, or 'none'")
    ap.add_argument("--no-audio-in-video", dest="mux_audio", action="store_false",
                    help="do not mux the AAC track into the MP4 (the WAV is always written)")
    ap.add_argument("--no-screen", dest="screen", action="store_false",
                    help="skip the detector screening of chosen faces")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip the VIDEO-mode detection pass over each written MP4")
    args = ap.parse_args(argv)
    args.fer = args.fer or args.data / "fer2013.zip"
    args.ck = args.ck or args.data / "ck48.zip"
    args.ravdess = (args.ravdess or args.data / "ravdess").resolve()
    emotions: dict[str, float] = {}
    for item in (e.strip() for e in args.emotions.split(",")):
        if not item:
            continue
        label, _, w = item.partition(":")
        try:
            emotions[label] = float(w) if w else 1.0
        except ValueError:
            ap.error(f"--emotions: bad weight in {item!r}")
    bad = [e for e, w in emotions.items() if e not in CLASSES or not w > 0]
    if bad or len(emotions) < 2:
        ap.error(f"--emotions: need at least two of {', '.join(CLASSES)} with weights > 0 (bad: {bad})")
    args.emotions = emotions
    args.noise_dbfs = None if str(args.noise_dbfs).lower() == "none" else float(args.noise_dbfs)
    if not (3 <= args.min_segments <= args.max_segments) or not (0 < args.min_seg_s <= args.max_seg_s):
        ap.error("need 3 <= --min-segments <= --max-segments and 0 < --min-seg-s <= --max-seg-s")
    if args.max_seg_s < 5.5:
        ap.error("--max-seg-s below 5.5 s cannot hold a RAVDESS utterance (up to 5.3 s)")
    if (args.screen or args.verify) and not args.detector.is_file():
        ap.error(f"--detector {args.detector}: not found (or pass --no-screen --no-verify)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fer, ck = load_faces(args.fer, args.ck)
    voices = load_voices(args.ravdess)
    screen = Screen(args.detector, args.min_confidence) if args.screen else None
    results = []
    try:
        for i in tqdm(range(args.count), desc="scenarios", unit="scn"):
            results.append(compose(i, args, fer, ck, voices, screen))
    finally:
        if screen is not None:
            screen.close()
    elapsed = time.perf_counter() - t0
    index = {"count": len(results), "seed": args.seed, "seconds": round(elapsed, 1),
             "media_s": round(sum(r["duration_s"] for r in results), 1),
             "kind": args.kind,
             "scenarios": [{"name": r["name"], "duration_s": r["duration_s"], "speaker": r["speaker"],
                            "face_kind": r["face_kind"], "labels": [s["label"] for s in r["segments"]],
                            "face_detection_rate": r.get("face_detection", {}).get("rate")}
                           for r in results]}
    if args.verify:
        frames = sum(r["face_detection"]["frames"] for r in results)
        hits = sum(r["face_detection"]["detected"] for r in results)
        index["face_detection"] = {"frames": frames, "detected": hits, "rate": hits / max(frames, 1),
                                   "min_scenario_rate": min(r["face_detection"]["rate"] for r in results)}
    (args.out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"{len(results)} scenarios, {index['media_s']:.0f} s of media, in {elapsed:.1f} s → {args.out}")
    if args.verify:
        fd = index["face_detection"]
        print(f"face detection (decoded MP4): {fd['detected']}/{fd['frames']} frames = "
              f"{fd['rate']:.2%}; worst scenario {fd['min_scenario_rate']:.2%}")
    print(f"screening rejected {sum(r['screen_rejected'] for r in results)} candidate face images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
