"""``redsg-edge analyze``: FER on photos and SER on recordings, without the daemon.

Images: every face MediaPipe finds, each classified; the image's label is the main (largest)
face's top class. Audio: SER over ``speech.window_s`` windows every ``speech.hop_s`` (voiced
windows only) and a whole-file result, the mean of the voiced windows' probabilities.
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
        self._det = self._fer = self._ser = None

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
        """SER windows and the whole-file result. Raises ValueError for unreadable audio."""
        from .capture import AudioFileMic, DeviceError
        from .speech import SerModel

        if self._ser is None:
            self._ser = SerModel(self.cfg.speech.ser_model, self.cfg.speech.window_s)
        try:
            mic = AudioFileMic(path, 1000, realtime=False, key="analyze PATH")
            mic.open()
            pcm = np.concatenate([b for _t, b in mic] or [np.zeros(0, np.int16)])
            mic.close()
        except DeviceError as exc:
            raise ValueError(str(exc)) from None
        sc = self.cfg.speech
        wins = self._ser.predict_long(pcm, sc.hop_s, sc.vad_threshold_dbfs, sc.min_voiced_fraction)
        whole = np.mean([w[2] for w in wins], axis=0) if wins else None
        return {"path": str(path), "kind": "audio", "duration_s": round(len(pcm) / 16000, 3),
                "label": CLASSES[int(whole.argmax())] if whole is not None else None,
                "probs": probs_to_dict(whole) if whole is not None else None,
                "windows": [{"start_s": round(s, 2), "end_s": round(e, 2),
                             "label": CLASSES[int(p.argmax())], "probs": probs_to_dict(p)}
                            for s, e, p in wins]}

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
    extra = (f"{len(r['faces'])} face(s)" if r["kind"] == "image"
             else f"{len(r['windows'])} voiced window(s) of {r['duration_s']} s")
    return f"{r['path']}: {r['label']} ({r['probs'][r['label']]:.2f}), {extra}"

