"""``redsg-edge analyze``: FER on photos, SER on recordings, both and their fusion on videos,
without the daemon.

Images: every face MediaPipe finds, each classified; the image's label is the main (largest)
face's top class. Audio: the daemon's speech path (trained VAD → utterances → SER), one label
per utterance with its start and end, and a whole-file result, the utterances' probabilities
averaged with their durations as weights. Videos: the clip replayed through the live loop's
perception step and fusion (:func:`replay.replay`), summarised by :func:`summarize_replay`,
plus its sound track as a recording.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import CLASSES
from .config import Config, FusionConfig
from .fusion import Evidence, Fusion, probs_to_dict

log = logging.getLogger(__name__)

#: Longest side of a photo as analysed, px; larger photos are reduced first (faces in them are
#: large too, and the detector sees 128 x 128 anyway). Boxes are reported in original pixels.
MAX_SIDE = 4096
#: A photo in which BlazeFace finds no face is searched again centred on a grey canvas this many
#: times its size, in turn: a face that fills the photo (a cropped face, as face sets ship them)
#: is more than the short-range detector was trained to frame. On FER2013 PublicTest's 3,589
#: photos (48x48 crops) 190 had no face, 180 of them found padded, 110 of those read right.
PAD_FACTORS = (1.5, 2.0)
#: A photo in which no face is found whole or padded is searched in overlapping squares of
#: 1/2, then 1/4 of its longer side (``vision.far_tiles``), each magnified to the detector's
#: input: a face under about a tenth of the photo's side is too small for BlazeFace short range
#: at 128 x 128 (docs/architecture.md, "Far faces").
FAR_ZOOMS = (2, 4)
#: A recording in which the VAD finds no utterance but whose highest speech probability reaches
#: this is listened to again with ``speech.vad_threshold`` at this value (speech continuing down
#: to 0.15), and what that finds is labelled, marked ``"vad_threshold"`` in the result. Silero
#: reads shouted and screamed speech as less speech-like (models/README.md, Silero VAD, "known
#: limit"), and a file handed to ``analyze`` is known to hold something worth labelling; the
#: live loop keeps the configured threshold. The noises of ``scripts/compare_vad.py`` stay
#: under it, and so does URDU's one file without speech (a hum, 0.20).
RELISTEN_VAD_THRESHOLD = 0.3


class Heard(NamedTuple):
    """The speech path over one recording (:meth:`Analyzer._listen`)."""
    outputs: list          # speech.SpeechOutput, oldest first, the stream's end included
    t0: float | None       # capture time of the first sample (s)
    samples: int           # samples read
    warning: str | None    # the file source's warning, if any
    speech_prob_max: float  # the VAD's highest speech probability (0..1)


IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"}
VIDEO_EXT = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".3gp"}

MEDIA_EXT = IMAGE_EXT | AUDIO_EXT | VIDEO_EXT


def _vector(probs: dict) -> np.ndarray:
    return np.array([probs[c] for c in CLASSES], np.float64)


def summarize_replay(records: list[dict], t_end: float) -> dict:
    """What a replay's records say about a whole clip (pure: no I/O).

    ``records``: :func:`replay.replay`'s output (``update`` and ``transition`` records, media
    time in seconds); ``t_end``: the clip's end (s). Each update holds until the next, the
    last until ``t_end``. Returns ``"fused_over_time"``: ``{"label", "probs"}``, the argmax and
    the time-weighted mean of the smoothed fused probabilities from the first update on (None
    without updates); ``"face"``: ``{"label", "probs", "coverage"}`` from the face's model
    outputs where it had fresh evidence, ``coverage`` the share of ``[first update, t_end]`` it
    had (None when it never had); ``"emotions"``: the fused state machine's
    ``[{"start_s", "end_s", "emotion"}]`` from the first update (its initial emotion) through
    each transition.
    """
    ups = sorted((r for r in records if r.get("type") == "update"), key=lambda r: r["t"])
    if not ups:
        return {"fused_over_time": None, "face": None, "emotions": []}
    t0 = float(ups[0]["t"])
    end = max(float(t_end), float(ups[-1]["t"]))
    fused, face = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    face_time = 0.0
    for u, nxt in zip(ups, ups[1:] + [None]):
        dt = (end if nxt is None else float(nxt["t"])) - float(u["t"])
        fused += dt * _vector(u["fused"])
        if u.get("face"):
            face_time += dt
            face += dt * _vector(u["face"])
    if end <= t0:  # one update at the very end: it is the whole summary
        fused = _vector(ups[-1]["fused"])
    fused /= fused.sum()
    emotions = [{"start_s": t0, "emotion": ups[0]["emotion"]}]
    for tr in sorted((r for r in records if r.get("type") == "transition"), key=lambda r: r["t"]):
        emotions[-1]["end_s"] = float(tr["t"])
        emotions.append({"start_s": float(tr["t"]), "emotion": tr["to"]})
    emotions[-1]["end_s"] = end
    face_out = None
    if face_time > 0:
        face /= face.sum()
        face_out = {"label": CLASSES[int(face.argmax())], "probs": probs_to_dict(face),
                    "coverage": round(face_time / max(end - t0, 1e-9), 3)}
    return {"fused_over_time": {"label": CLASSES[int(fused.argmax())],
                                "probs": probs_to_dict(fused)},
            "face": face_out,
            "emotions": [{"start_s": round(e["start_s"], 3), "end_s": round(e["end_s"], 3),
                          "emotion": e["emotion"]} for e in emotions]}


def clip_fusion(cfg: FusionConfig, face: dict | None, voice: dict | None) -> dict | None:
    """Late fusion of a whole clip's evidence: the face's mean output and the voice's whole-file
    result (each ``{class: p}`` or None), combined once by :class:`fusion.Fusion`'s own weights
    and combiner (prior weight, confidence, the talking face's neutral share) with both fresh,
    as clip-level late fusion is done (Luna-Jiménez et al. 2021, module docstring of
    ``fusion``). Unlike the state machine, it does not wait: a short clip whose voice arrives
    late still counts it fully. Returns ``{class: p}``, or None when neither is given or
    neither carries weight."""
    fusion = Fusion(cfg)
    raw = None
    for modality, probs in (("face", face), ("voice", voice)):
        if probs is not None:
            raw = fusion.update(0.0, Evidence(modality, 0.0, _vector(probs))).raw
    return None if raw is None else probs_to_dict(raw)


def expand(paths: list[Path]) -> Iterator[Path]:
    """Files named, and the photos, recordings and videos inside named folders (sorted,
    recursive); a folder without any is yielded itself, for :meth:`Analyzer.file` to report."""
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in MEDIA_EXT
                           and q.is_file())
            yield from found or [p]  # an empty folder is reported (Analyzer.file raises)
        else:
            yield p


def to_rgb8(im) -> np.ndarray:
    """A PIL image as RGB uint8 (H, W, 3). 16-bit grey (``I;16*``, or ``I`` holding values over
    255) is scaled by 255/65535 rather than clipped (``convert("RGB")`` clips it to white);
    float (``F``) images in [0, 1] are scaled by 255."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf pixels are zeroed next
            a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        top = float(a.max()) if a.size else 0.0
        if mode == "F" and top <= 1.0:
            a = a * 255.0
        elif mode.startswith("I;16") or top > 255.0:
            a = a * (255.0 / max(65535.0, top))
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_image(path: Path, max_side: int = MAX_SIDE) -> tuple[np.ndarray, float]:
    """Decode a photo: EXIF orientation applied, any mode to RGB uint8 (:func:`to_rgb8`),
    reduced (box filter) so that its longest side is at most ``max_side`` px.

    Returns ``(rgb (H, W, 3) uint8, scale)``, scale = analysed px per original px (<= 1).
    Raises ValueError naming the file for anything Pillow cannot decode (truncated or corrupt
    files, decompression bombs over Pillow's pixel limit). What Pillow decodes with a warning
    (a corrupt EXIF block: the orientation is then not applied) is logged once, naming the file,
    instead of reaching stderr as a Python warning without it."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Image.open(path) as im:
                w0, h0 = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: 90° turn
                    w0, h0 = h0, w0
                im.draft("RGB", (max_side, max_side))  # JPEG: decoded at a reduced size directly
                rgb = to_rgb8(ImageOps.exif_transpose(im))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    for msg in dict.fromkeys(str(w.message).strip() for w in caught):
        log.warning("%s: %s (decoded anyway)", path, msg)
    h, w = rgb.shape[:2]
    if min(h, w) == 0:
        raise ValueError(f"{path}: image has no pixels ({w}x{h})")
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    return rgb, rgb.shape[1] / w0


class Analyzer:
    """Loads the detector and models lazily, once, for many files."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._det = self._fer = self._ser = self._vad = self._utt = None
        #: The utterance SER's voice normalisation and the room's reverberation
        #: (``reverb.RoomReverb``), shared by every file of this run.
        self.norm = self.room = None

    def _find_faces(self, rgb: np.ndarray) -> tuple[list, np.ndarray, tuple[int, int]]:
        """(faces largest first, the image they were found in, its (x, y) offset in that
        image): ``rgb`` itself; when it shows no face, ``rgb`` centred on a grey canvas
        (``PAD_FACTORS``); when that shows none either, ``rgb`` searched in parts
        (``FAR_ZOOMS``)."""
        from .vision import detect_in, far_tiles

        h, w = rgb.shape[:2]

        def attempts():  # (image, its offset, its faces), each made only when reached
            yield rgb, (0, 0), self._det.detect(rgb)
            for f in PAD_FACTORS:
                canvas = np.full((int(h * f), int(w * f), 3), 128, np.uint8)
                ox, oy = (canvas.shape[1] - w) // 2, (canvas.shape[0] - h) // 2
                canvas[oy:oy + h, ox:ox + w] = rgb
                yield canvas, (ox, oy), self._det.detect(canvas)
            for zoom in FAR_ZOOMS:
                yield rgb, (0, 0), detect_in(self._det, rgb, far_tiles(w, h, zoom))

        for seen, offset, faces in attempts():
            if faces:
                break
        return sorted(faces, key=lambda f: -f.area), seen, offset

    def image(self, path: Path, annotate: Path | None = None) -> dict:
        """FER for every face in one photo (see :func:`read_image`; a face that fills the
        photo is found on a padded copy, ``PAD_FACTORS``, and a face too small for the whole
        photo in its parts, ``FAR_ZOOMS``); boxes in the file's own pixels, clipped to the
        photo. Raises ValueError naming the file for an unreadable image."""
        from .vision import FaceDetector, FerModel, crop_face

        if self._det is None:
            self._det = FaceDetector(self.cfg.vision.detector_model,
                                     self.cfg.vision.min_detection_confidence)
            self._fer = FerModel.from_config(self.cfg.vision)
        rgb, scale = read_image(path)
        faces, seen, (ox, oy) = self._find_faces(rgb)
        h, w = rgb.shape[:2]
        out = []
        for f in faces:
            p = self._fer.predict(crop_face(seen, f))
            bx, by, bw, bh = f.box[0] - ox, f.box[1] - oy, f.box[2], f.box[3]
            x0, y0 = max(0.0, bx), max(0.0, by)
            x1, y1 = min(float(w), bx + bw), min(float(h), by + bh)
            box = (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))
            out.append({"box": [round(v / scale, 1) for v in box], "score": round(f.score, 3),
                        "label": CLASSES[int(p.argmax())], "probs": probs_to_dict(p)})
        if annotate is not None:
            self._annotate(rgb, out, annotate / (path.stem + "_annotated.png"), scale)
        main = out[0] if out else None
        return {"path": str(path), "kind": "image", "label": main["label"] if main else None,
                "probs": main["probs"] if main else None, "faces": out}

    def _speech(self):
        from .reverb import RoomReverb
        from .speech import SerModel
        from .utterance_ser import UtteranceSer
        from .vad import SileroVad
        if self._ser is None:
            sp = self.cfg.speech
            self._ser = SerModel(sp.ser_model, sp.window_s)
            self._vad = SileroVad(sp.vad_model)
            self._utt = UtteranceSer(sp.utterance_model) if sp.utterance_model else None
            self.norm = self._utt.new_norm() if self._utt is not None else None
            self.room = RoomReverb()

    def _listen(self, path: Path, vad_threshold: float | None = None) -> Heard:
        """The daemon's speech path over one recording (``vad_threshold``: another
        ``speech.vad_threshold`` than the configured one). Raises ValueError for audio FFmpeg
        cannot decode."""
        from .capture import AudioFileMic, DeviceError
        from .speech import SpeechPerception

        self._speech()
        sp = self.cfg.speech
        if vad_threshold is not None:
            sp = sp.model_copy(update={"vad_threshold": vad_threshold})
        step = SpeechPerception(self._ser, sp, self._vad,  # resets the VAD
                                utterance_model=self._utt, norm=self.norm, room=self.room)
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
            why = str(exc).split(": ", 1)[-1]
            if "has no audio track" in why:
                raise ValueError(f"{path}: no audio track: analyze reads photos "
                                 f"({', '.join(sorted(IMAGE_EXT))}) and recordings with "
                                 "sound") from None
            why = why.split("cannot be decoded: ", 1)[-1].split(" (analyze PATH", 1)[0]
            raise ValueError(f"{path}: neither a photo nor a recording FFmpeg can decode "
                             f"({why})") from None
        return Heard(outs + step.finish(), t0, n, mic.warning, step.max_speech_prob)

    def calibrate(self, paths: list[Path], progress: bool = False) -> int:
        """Listen to every recording among ``paths`` once, so that the utterance SER's running
        voice normalisation (``utterance_ser.FeatureNorm``) holds the statistics of them all
        and the room's reverberation (``reverb.RoomReverb``) their median, then freeze both:
        each file is then labelled with the same statistics, whatever the order of the files
        (unsupervised adaptation to the batch's microphone, room and speakers; no labels are
        read). Unreadable files are skipped here and reported by :meth:`file`.
        Returns the utterances heard; 0 without an utterance SER."""
        audio = [p for p in paths if p.is_file() and p.suffix.lower() not in IMAGE_EXT]
        if not audio:
            return 0
        self._speech()
        if self.norm is None:
            return 0
        from tqdm import tqdm
        heard = 0
        for p in tqdm(audio, desc="calibrating the voice normalisation", unit="file",
                      disable=not progress, mininterval=1, leave=False):
            try:
                heard += sum(o.kind == "utterance" for o in self._listen(p).outputs)
            except ValueError:
                continue
        self.norm.frozen = self.room.frozen = True
        return heard

    def audio(self, path: Path) -> dict:
        """Utterances and the whole-file result, through the daemon's own speech path
        (``speech.SpeechPerception``). Raises ValueError for unreadable audio.

        ``speech_prob_max``: the VAD's highest speech probability in the file (speech starts at
        ``speech.vad_threshold``), which says how near a file without speech came to it.
        ``utterances``: [{start_s, end_s, label, probs[, srmr]}] (seconds from the file's start;
        ``srmr`` how reverberant it sounded, ``reverb.srmr``, where measured); the file's
        ``probs`` are the utterances' probabilities averaged with their durations as weights;
        ``label`` None only when the file holds no speech. ``room_srmr``: the room's median
        SRMR that scaled the utterance SER's weight (``speech.reverb_weight``), once known. A
        file in which the VAD finds no utterance at ``speech.vad_threshold`` but whose
        ``speech_prob_max`` reaches ``RELISTEN_VAD_THRESHOLD`` is listened to again at that
        threshold; when that finds speech, the result says ``"vad_threshold": 0.3``. Without
        :meth:`calibrate` the voice normalisation keeps learning from file to file.
        """
        h = self._listen(path)
        utts = [o for o in h.outputs if o.kind == "utterance"]
        relistened = (not utts and RELISTEN_VAD_THRESHOLD <= h.speech_prob_max
                      and RELISTEN_VAD_THRESHOLD < self.cfg.speech.vad_threshold)
        if relistened:
            h2 = self._listen(path, RELISTEN_VAD_THRESHOLD)
            utts = [o for o in h2.outputs if o.kind == "utterance"]
            relistened = bool(utts)
        whole = None
        if utts:
            w = np.array([o.end_s - o.start_s for o in utts])
            whole = np.average(np.stack([o.probs for o in utts]), axis=0, weights=w)
        t0 = h.t0 or 0.0
        extra = {"warning": h.warning} if h.warning else {}
        if relistened:
            extra["vad_threshold"] = RELISTEN_VAD_THRESHOLD
        room = self.room.srmr() if utts and self.cfg.speech.reverb_gate else None
        if room is not None:
            extra["room_srmr"] = round(room, 2)
        return {"path": str(path), "kind": "audio", "duration_s": round(h.samples / 16000, 3),
                "speech_prob_max": round(float(h.speech_prob_max), 3), **extra,
                "label": CLASSES[int(whole.argmax())] if whole is not None else None,
                "probs": probs_to_dict(whole) if whole is not None else None,
                "utterances": [{"start_s": round(o.start_s - t0, 3),
                                "end_s": round(o.end_s - t0, 3),
                                "label": CLASSES[int(o.probs.argmax())],
                                "probs": probs_to_dict(o.probs),
                                **({"srmr": round(o.srmr, 2)} if o.srmr is not None else {})}
                               for o in utts]}

    def video(self, path: Path) -> dict:
        """A video clip as the device would see and hear it, and its sound track as a recording.

        ``face``, ``fused_over_time`` and ``emotions`` (:func:`summarize_replay`) come from
        :func:`replay.replay` of the clip: the live loop's perception step and fusion, with the
        voice normalisation a device starts from. ``voice`` (``{"label", "probs"}``),
        ``utterances`` and ``speech_prob_max`` are :meth:`audio` of its sound track (with this
        run's calibrated normalisation); ``voice`` is None and ``utterances`` empty when the clip
        has no speech or no sound track. ``label`` and ``probs``, the clip's own: the face and
        the voice combined once (:func:`clip_fusion`). A file with sound but no picture is
        analysed as a recording (:meth:`audio`). Raises ValueError for a file FFmpeg cannot decode.
        """
        from .capture import DeviceError
        from .replay import replay

        warned: list[str] = []
        try:
            records = replay(self.cfg, path, warnings=warned)
        except DeviceError as exc:
            why = str(exc).split(" (replay VIDEO", 1)[0]
            if why.endswith("has no video track"):  # an .mp4 voice memo, say
                return self.audio(path)
            why = why.split("cannot be decoded: ", 1)[-1]
            raise ValueError(f"{path}: neither a video nor a recording FFmpeg can decode "
                             f"({why})") from None
        try:
            sound = self.audio(path)
        except ValueError as exc:
            if "no audio track" not in str(exc):
                raise
            sound = None
        duration = sound["duration_s"] if sound else 0.0
        out = {"path": str(path), "kind": "video", "label": None, "probs": None,
               **summarize_replay(records, duration)}
        out["duration_s"] = max(duration, out["emotions"][-1]["end_s"] if out["emotions"] else 0.0)
        out["voice"] = ({"label": sound["label"], "probs": sound["probs"]}
                        if sound and sound["label"] else None)
        probs = clip_fusion(self.cfg.fusion, out["face"] and out["face"]["probs"],
                            out["voice"] and out["voice"]["probs"])
        out["label"] = None if probs is None else max(probs, key=probs.get)
        out["probs"] = probs
        out["speech_prob_max"] = sound["speech_prob_max"] if sound else None
        out["utterances"] = sound["utterances"] if sound else []
        warned += [sound["warning"]] if sound and sound.get("warning") else []
        if warned:
            out["warning"] = "; ".join(dict.fromkeys(warned))
        return out

    def file(self, path: Path, annotate: Path | None = None) -> dict:
        """Analyse one image, recording or video. Returns the JSON-able result (``path``,
        ``kind``, ``label``, ``probs`` {class: p}, for recordings ``duration_s`` and
        ``utterances``, for videos also ``face``, ``voice`` and ``emotions``: :meth:`video`);
        ``annotate``: write the image with its face boxes there. Raises ValueError for a
        missing, unreadable or unsupported file (the caller reports it and goes on with the
        next)."""
        if not path.exists():
            raise ValueError(f"{path}: no such file")
        if path.is_dir():
            raise ValueError(f"{path}: folder holds no photos, recordings or videos (looked for "
                             f"{', '.join(sorted(MEDIA_EXT))})")
        if path.suffix.lower() in IMAGE_EXT:
            return self.image(path, annotate)
        if path.suffix.lower() in VIDEO_EXT:
            return self.video(path)
        return self.audio(path)

    @staticmethod
    def _annotate(rgb: np.ndarray, faces: list[dict], dest: Path, scale: float = 1.0) -> None:
        from PIL import Image, ImageDraw

        im = Image.fromarray(rgb)
        d = ImageDraw.Draw(im)
        width = max(2, rgb.shape[1] // 300)
        for i, f in enumerate(faces):
            x, y, w, h = (v * scale for v in f["box"])
            colour = (40, 220, 90) if i == 0 else (240, 200, 40)
            d.rectangle([x, y, x + w, y + h], outline=colour, width=width)
            text = f"{f['label']} {f['probs'][f['label']]:.2f}"
            d.text((x + 2, max(0, y - 12)), text, fill=colour)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest)

    def close(self) -> None:
        """Release the face detector's native resources (idempotent)."""
        if self._det is not None:
            self._det.close()


def human_line(r: dict) -> str:
    """The human-readable result of one file: its first line starts with the path, shown with
    characters that are not printable (a newline in a file name) escaped, as Python writes
    them, so a file's lines are never split by its name; a recording adds one indented line
    per utterance."""
    return _human_line(r)


def _shown(path: str) -> str:
    return path if path.isprintable() else repr(path)[1:-1]


def _human_line(r: dict) -> str:
    if r.get("error"):
        return _shown(f"{r['path']}: error: {r['error']}")
    warn = f" (warning: {r['warning']})" if r.get("warning") else ""
    if r["label"] is None and r["kind"] == "image":
        return f"{_shown(r['path'])}: no face{warn}"
    if r["kind"] == "video":
        return _video_line(r, warn)
    if r["label"] is None:
        return (f"{_shown(r['path'])}: no speech (the VAD's highest speech probability "
                f"{r['speech_prob_max']:.2f}; speech.vad_threshold sets where speech starts){warn}")
    if r["kind"] == "image":
        return (f"{_shown(r['path'])}: {r['label']} ({r['probs'][r['label']]:.2f}), "
                f"{len(r['faces'])} face(s){warn}")
    utts = r["utterances"]
    quiet = (f" (speech found at VAD threshold {r['vad_threshold']:g})"
             if r.get("vad_threshold") else "")
    lines = [f"{_shown(r['path'])}: {r['label']} ({r['probs'][r['label']]:.2f}), {len(utts)} "
             f"utterance(s) in {r['duration_s']} s{quiet}{warn}"]
    lines += [f"  {u['start_s']:7.2f}-{u['end_s']:7.2f} s  {u['label']} "
              f"({u['probs'][u['label']]:.2f})" for u in utts]
    return "\n".join(lines)


def _video_line(r: dict, warn: str) -> str:
    if r["label"] is None:
        return f"{_shown(r['path'])}: no face and no speech in {r['duration_s']} s{warn}"
    face, voice = r["face"], r["voice"]
    parts = [f"face {face['label']} ({100 * face['coverage']:.0f} % of the time)" if face
             else "no face", f"voice {voice['label']}" if voice else "no speech"]
    lines = [f"{_shown(r['path'])}: {r['label']} ({r['probs'][r['label']]:.2f}) face and voice; "
             f"{', '.join(parts)}; as it happened, {len(r['emotions']) - 1} transition(s) in "
             f"{r['duration_s']} s{warn}"]
    lines += [f"  {e['start_s']:7.2f}-{e['end_s']:7.2f} s  {e['emotion']}" for e in r["emotions"]]
    return "\n".join(lines)
