"""``redsg-edge analyze``: FER on photos and SER on recordings, without the daemon.

Images: every face MediaPipe finds, each classified; the image's label is the main (largest)
face's top class. Audio: the daemon's speech path (trained VAD → utterances → SER), one label
per utterance with its start and end, and a whole-file result, the utterances' probabilities
averaged with their durations as weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import CLASSES
from .config import Config
from .fusion import probs_to_dict

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"}


def expand(paths: list[Path]) -> Iterator[Path]:
    """Files named, and the images/recordings inside named folders (sorted, recursive)."""
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXT | AUDIO_EXT)
        else:
            yield p


class Analyzer:
    """Loads the detector and models lazily, once, for many files."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._det = self._fer = self._ser = self._vad = None

    def image(self, path: Path, annotate: Path | None = None) -> dict:
        """FER for every face in one photo. Raises ValueError for an unreadable image."""
        from PIL import Image, ImageOps

        from .vision import FaceDetector, FerModel, crop_face

        if self._det is None:
            self._det = FaceDetector(self.cfg.vision.detector_model,
                                     self.cfg.vision.min_detection_confidence, video=False)
            self._fer = FerModel(self.cfg.vision.fer_model)
        try:
            with Image.open(path) as im:
                rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception as exc:
            raise ValueError(f"{path}: not a readable image ({exc})") from None
        faces = sorted(self._det.detect(rgb), key=lambda f: -f.area)
        out = []
        for f in faces:
            p = self._fer.predict(crop_face(rgb, f))
            out.append({"box": [round(v, 1) for v in f.box], "score": round(f.score, 3),
                        "label": CLASSES[int(p.argmax())], "probs": probs_to_dict(p)})
        if annotate is not None:
            self._annotate(rgb, out, annotate / (path.stem + "_annotated.png"))
        main = out[0] if out else None
        return {"path": str(path), "kind": "image", "label": main["label"] if main else None,
                "probs": main["probs"] if main else None, "faces": out}

    def audio(self, path: Path) -> dict:
        """Utterances and the whole-file result, through the daemon's own speech path
        (``speech.SpeechPerception``). Raises ValueError for unreadable audio.

        ``utterances``: [{start_s, end_s, label, probs}] (seconds from the file's start); the
        file's ``probs`` are the utterances' probabilities averaged with their durations as
        weights; ``label`` None only when the file holds no speech.
        """
        from .capture import AudioFileMic, DeviceError
        from .speech import SerModel, SpeechPerception
        from .vad import SileroVad

        if self._ser is None:
            self._ser = SerModel(self.cfg.speech.ser_model, self.cfg.speech.window_s)
            self._vad = SileroVad()
        step = SpeechPerception(self._ser, self.cfg.speech, self._vad)  # resets the VAD
        outs, t0, n = [], None, 0
        try:
            mic = AudioFileMic(path, 1000, realtime=False, key="analyze PATH")
            mic.open()
            try:
                for t, block in mic:
                    t0 = t if t0 is None else t0
                    n += len(block)
                    outs += step.push(t, block)
            finally:
                mic.close()
        except DeviceError as exc:
            raise ValueError(str(exc)) from None
        outs += step.finish()
        utts = [o for o in outs if o.kind == "utterance"]
        whole = None
        if utts:
            w = np.array([o.end_s - o.start_s for o in utts])
            whole = np.average(np.stack([o.probs for o in utts]), axis=0, weights=w)
        t0 = t0 or 0.0
        return {"path": str(path), "kind": "audio", "duration_s": round(n / 16000, 3),
                "label": CLASSES[int(whole.argmax())] if whole is not None else None,
                "probs": probs_to_dict(whole) if whole is not None else None,
                "utterances": [{"start_s": round(o.start_s - t0, 3),
                                "end_s": round(o.end_s - t0, 3),
                                "label": CLASSES[int(o.probs.argmax())],
                                "probs": probs_to_dict(o.probs)} for o in utts]}

    def file(self, path: Path, annotate: Path | None = None) -> dict:
        if not path.exists():
            raise ValueError(f"{path}: no such file")
        if path.suffix.lower() in IMAGE_EXT:
            return self.image(path, annotate)
        return self.audio(path)

    @staticmethod
    def _annotate(rgb: np.ndarray, faces: list[dict], dest: Path) -> None:
        from PIL import Image, ImageDraw

        im = Image.fromarray(rgb)
        d = ImageDraw.Draw(im)
        width = max(2, rgb.shape[1] // 300)
        for i, f in enumerate(faces):
            x, y, w, h = f["box"]
            colour = (40, 220, 90) if i == 0 else (240, 200, 40)
            d.rectangle([x, y, x + w, y + h], outline=colour, width=width)
            text = f"{f['label']} {f['probs'][f['label']]:.2f}"
            d.text((x + 2, max(0, y - 12)), text, fill=colour)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest)

    def close(self) -> None:
        if self._det is not None:
            self._det.close()


def human_line(r: dict) -> str:
    if r.get("error"):
        return f"{r['path']}: error: {r['error']}"
    if r["label"] is None:
        return f"{r['path']}: {'no face' if r['kind'] == 'image' else 'no speech'}"
    if r["kind"] == "image":
        return (f"{r['path']}: {r['label']} ({r['probs'][r['label']]:.2f}), "
                f"{len(r['faces'])} face(s)")
    utts = r["utterances"]
    lines = [f"{r['path']}: {r['label']} ({r['probs'][r['label']]:.2f}), {len(utts)} "
             f"utterance(s) in {r['duration_s']} s"]
    lines += [f"  {u['start_s']:7.2f}-{u['end_s']:7.2f} s  {u['label']} "
              f"({u['probs'][u['label']]:.2f})" for u in utts]
    return "\n".join(lines)

