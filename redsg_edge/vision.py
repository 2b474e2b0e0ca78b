"""Vision: MediaPipe face detection, a stable choice of one face, the FER crop, and FER.

The face detector is MediaPipe Tasks' ``FaceDetector`` (BlazeFace short range; Bazarevsky et al.
2019, arXiv:1907.05047) with the model file from config. The FER model is this project's int8
TFLite classifier trained on FER2013 48x48 grayscale faces (``scripts/train_fer.py``).

The crop reproduces FER2013's framing, measured on PrivateTest images run through the same
detector: the FER2013 image side is 1.13x the BlazeFace box side and its centre lies 0.0625 of a
side above the box centre. The crop is also rotated so that the eyes are level, as the faces in
FER2013 mostly are.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import CLASSES
from .calibration import load_temperature, temperature_scale
from .litert import LiteRTClassifier, ModelError, quiet_native_stderr

FER_SIZE = 48
#: FER2013 image side / BlazeFace box side, and the image centre's offset above the box centre
#: in image sides (medians over 273 PrivateTest faces; see module docstring).
CROP_SCALE = 1.13
CROP_SHIFT_UP = 0.0625


@dataclass(frozen=True)
class Face:
    """One detected face in pixel coordinates of the frame it came from."""
    box: tuple[float, float, float, float]  # x, y, width, height (pixels)
    score: float                            # detector confidence 0..1
    keypoints: np.ndarray                   # (6, 2) float32 pixels: right eye, left eye, nose,
                                            # mouth, right ear, left ear (MediaPipe order)

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return self.box[2] * self.box[3]


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def select_face(faces: list[Face], previous: Face | None, min_iou: float = 0.3) -> Face | None:
    """The face to follow: the one overlapping the previous choice (IoU ≥ min_iou), so the device
    keeps attending to one person while others pass; otherwise the largest (nearest) face."""
    if not faces:
        return None
    if previous is not None:
        best = max(faces, key=lambda f: iou(f.box, previous.box))
        if iou(best.box, previous.box) >= min_iou:
            return best
    return max(faces, key=lambda f: f.area * f.score)


def crop_face(frame: np.ndarray, face: Face, size: int = FER_SIZE) -> np.ndarray:
    """The FER input for one face: eye-levelled, FER2013-framed, grayscale.

    frame: (H, W, 3) uint8 RGB or (H, W) uint8 grayscale. Returns (size, size) uint8.
    Pixels outside the frame are filled by replicating the border, as a camera crop near the
    edge would look least unnatural that way.
    """
    import cv2

    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    x, y, w, h = face.box
    side = CROP_SCALE * max(w, h)
    cx, cy = x + w / 2, y + h / 2 - CROP_SHIFT_UP * side
    right_eye, left_eye = face.keypoints[0], face.keypoints[1]
    # MediaPipe's "right eye" is the subject's right, i.e. on the image's left.
    angle = float(np.degrees(np.arctan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])))
    if abs(angle) > 45:  # keypoints implausible (profile face): do not rotate
        angle = 0.0
    scale = size / side
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(gray, m, (size, size), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)


# mediapipe.tasks.python.vision's __init__ imports its drawing helpers, which import
# matplotlib.pyplot: ~40 MB of resident memory and ~0.8 s of cold start on this machine for code
# the daemon never calls. They are loaded lazily instead (importlib.util.LazyLoader: the module
# runs on first attribute access), so nothing changes for a program that does draw.
_MP_DRAWING = ("mediapipe.tasks.python.vision.drawing_utils",
               "mediapipe.tasks.python.vision.drawing_styles")


class _LazyDrawingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _MP_DRAWING:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


def _defer_mediapipe_drawing() -> None:
    if "mediapipe.tasks.python.vision" in sys.modules:
        return
    if not any(isinstance(f, _LazyDrawingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _LazyDrawingFinder())


#: OpenCV's geometric functions take coordinates as 16-bit integers (SHRT_MAX = 32767): a larger
#: side aborts the whole process (SIGABRT, no exception), so such images are refused first.
MAX_DETECT_SIDE = 32767


class FaceDetector:
    """MediaPipe Tasks face detector.

    model: a face-detector ``.tflite`` with MediaPipe metadata (blaze_face_short_range).
    video: VIDEO running mode (tracking-friendly; needs strictly increasing timestamps, which
        ``detect`` enforces) or IMAGE mode for unrelated stills.
    Raises ModelError naming the file when it is missing or not a MediaPipe face detector.
    """

    def __init__(self, model: str | os.PathLike, min_confidence: float = 0.5,
                 video: bool = True) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: face detector model not found (vision.detector_model; "
                             "run `redsg-edge fetch-models`)")
        _defer_mediapipe_drawing()
        from mediapipe.tasks.python import BaseOptions, vision

        mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
        opts = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(self.path)),
            running_mode=mode, min_detection_confidence=min_confidence)
        try:
            with quiet_native_stderr():
                self._det = vision.FaceDetector.create_from_options(opts)
        except Exception as exc:
            raise ModelError(f"{self.path}: not a MediaPipe face detector model ({exc})") from exc
        self.video = video
        self._last_ms = -1
        self._calls = 0

    def detect(self, rgb: np.ndarray, t: float | None = None) -> list[Face]:
        """rgb: (H, W, 3) uint8 RGB; t: capture time in seconds (VIDEO mode). Returns faces.

        Raises ValueError for an image with a side of ``MAX_DETECT_SIDE`` px or more, which
        OpenCV inside MediaPipe would answer with an assertion that aborts the process."""
        import mediapipe as mp

        if max(rgb.shape[:2]) >= MAX_DETECT_SIDE:
            raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} px: a side of "
                             f"{MAX_DETECT_SIDE} px or more cannot be searched for faces")

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        quiet = quiet_native_stderr() if self._calls == 0 else contextlib.nullcontext()
        with quiet:
            if self.video:
                # MediaPipe rejects non-increasing timestamps; frames closer than 1 ms apart
                # (or a clock step back) are nudged forward.
                ms = max(int(round((t or 0.0) * 1000)), self._last_ms + 1)
                self._last_ms = ms
                result = self._det.detect_for_video(image, ms)
            else:
                result = self._det.detect(image)
        self._calls += 1
        h, w = rgb.shape[:2]
        faces = []
        for d in result.detections:
            b = d.bounding_box
            kp = np.array([(k.x * w, k.y * h) for k in d.keypoints], np.float32).reshape(-1, 2)
            faces.append(Face((float(b.origin_x), float(b.origin_y), float(b.width),
                               float(b.height)), float(d.categories[0].score), kp))
        return faces

    def close(self) -> None:
        """Release MediaPipe's native detector (idempotent)."""
        with quiet_native_stderr():
            self._det.close()


class FerModel:
    """The int8 FER classifier, calibrated.

    path: the ``.tflite`` (48x48x1 → 7); its temperature (``calibration.load_temperature``, from
    the sidecar ``NAME.json``; 1 without one) is applied to every output.
    Raises ModelError naming the file when it is missing, corrupt, not a 48x48x1 → 7 model, or
    its sidecar is unreadable.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 1) -> None:
        self.clf = LiteRTClassifier(path, (FER_SIZE, FER_SIZE, 1), len(CLASSES), num_threads)
        self.path = self.clf.path
        self.temperature = load_temperature(self.path)

    def predict(self, crop: np.ndarray) -> np.ndarray:
        """crop: (48, 48) uint8 grayscale face (``crop_face``). Returns probs (7,) float32 in
        CLASSES order, summing to 1, temperature-scaled."""
        p = np.clip(self.clf.predict(crop.astype(np.float32)[..., None]), 0.0, None)
        s = float(p.sum())
        if s <= 0:
            return np.full(len(CLASSES), 1 / len(CLASSES), np.float32)
        return temperature_scale(p / s, self.temperature)


@dataclass(frozen=True)
class FaceResult:
    """The chosen face and its FER probabilities ((7,) float32 in CLASSES order)."""
    face: Face
    probs: np.ndarray  # (7,) float32


class VisionWorker:
    """Per-frame step: detect, choose one face, crop, classify. No threads, no clock: the
    pipeline calls ``process`` from its vision thread (live) or in media order (replay)."""

    def __init__(self, detector: FaceDetector, fer: FerModel) -> None:
        self.detector, self.fer = detector, fer
        self._current: Face | None = None
        self.frames = 0
        self.faces_found = 0

    def process(self, t: float, rgb: np.ndarray) -> tuple[FaceResult | None, list[Face]]:
        """rgb: (H, W, 3) uint8; t: capture time (s). Returns (result for the followed face or
        None when no face, all faces)."""
        faces = self.detector.detect(rgb, t)
        self.frames += 1
        face = select_face(faces, self._current)
        self._current = face
        if face is None:
            return None, faces
        self.faces_found += 1
        return FaceResult(face, self.fer.predict(crop_face(rgb, face))), faces

    def close(self) -> None:
        """Release the detector's native resources (idempotent)."""
        self.detector.close()
