"""Vision: face detection, a stable choice of one face, the FER crop, and FER.

The face detector is BlazeFace short range (Bazarevsky et al. 2019, arXiv:1907.05047), MediaPipe's
model file run on LiteRT and decoded as MediaPipe does (:mod:`redsg_edge.blazeface`). The FER
model is this project's int8 TFLite classifier trained on FER2013 48x48 grayscale faces
(``scripts/train_fer.py``).

The crop reproduces FER2013's framing, measured on PrivateTest images run through the same
detector: the FER2013 image side is 1.13x the BlazeFace box side and its centre lies 0.0625 of a
side above the box centre. The crop is also rotated so that the eyes are level, as the faces in
FER2013 mostly are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import CLASSES, blazeface
from .calibration import load_calibration
from .litert import LiteRTClassifier, ModelError, load_interpreter

if TYPE_CHECKING:  # pragma: no cover
    from .config import VisionConfig

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
                                            # mouth, right ear, left ear (BlazeFace order)

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


#: OpenCV's geometric functions take coordinates as 16-bit integers (SHRT_MAX = 32767): a larger
#: side aborts the whole process (SIGABRT, no exception), so such images are refused first.
MAX_DETECT_SIDE = 32767


class FaceDetector:
    """BlazeFace short range on LiteRT, decoded as MediaPipe's face detector decodes it.

    model: MediaPipe's ``blaze_face_short_range.tflite`` (input (1, 128, 128, 3) float32 RGB in
        [-1, 1]; outputs ``regressors`` (1, 896, 16) and ``classificators`` (1, 896, 1) float32).
    min_confidence: the lowest face score (0..1) kept.
    num_threads: interpreter threads (1 keeps the daemon's CPU use predictable).

    The frame is letterboxed into the input with OpenCV's bilinear perspective warp and black
    borders, and the outputs go through :mod:`redsg_edge.blazeface` (anchors, weighted
    non-maximum suppression). Boxes are then made pixels as MediaPipe's task API makes them
    (truncated to integers, the origin clamped at 0 and the size at the frame's), because
    ``CROP_SCALE`` and ``CROP_SHIFT_UP`` were measured on such boxes. On 591 real frames (none,
    one and two faces) the boxes, keypoints and scores equal MediaPipe 1.2's to the bit
    (``tests/test_blazeface.py``), without MediaPipe's ~55 MB of resident memory.
    Raises ModelError naming the file when it is missing or is not such a model.
    """

    def __init__(self, model: str | os.PathLike, min_confidence: float = 0.5,
                 num_threads: int = 1) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: face detector model not found (vision.detector_model; "
                             "run `redsg-edge fetch-models`)")
        self.min_confidence = float(min_confidence)
        self._interp = load_interpreter(self.path, num_threads)
        ins = self._interp.get_input_details()
        outs = {tuple(int(d) for d in o["shape"][1:]): o["index"]
                for o in self._interp.get_output_details()}
        n = len(blazeface.ANCHORS)
        size = blazeface.INPUT_SIZE
        shape = tuple(int(d) for d in ins[0]["shape"][1:]) if len(ins) == 1 else None
        if (shape != (size, size, 3) or np.dtype(ins[0]["dtype"]) != np.float32
                or set(outs) != {(n, 4 + 2 * blazeface.NUM_KEYPOINTS), (n, 1)}):
            raise ModelError(f"{self.path}: not a BlazeFace short-range face detector (input "
                             f"{shape}, outputs {sorted(outs)}; expected ({size}, {size}, 3) "
                             f"float32 and ({n}, 16), ({n}, 1)); set vision.detector_model to "
                             "blaze_face_short_range.tflite")
        self._in = ins[0]["index"]
        self._regressors = outs[(n, 4 + 2 * blazeface.NUM_KEYPOINTS)]
        self._logits = outs[(n, 1)]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """rgb: (H, W, 3) uint8 RGB. Returns the faces scoring at least ``min_confidence``,
        best first.

        Raises ValueError for an image that is not (H, W, 3) or has a side of 0 px or of
        ``MAX_DETECT_SIDE`` px or more (OpenCV would abort the process)."""
        import cv2

        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image of shape {rgb.shape}: expected (H, W, 3) RGB")
        h, w = rgb.shape[:2]
        if min(h, w) == 0:
            raise ValueError(f"image of {w}x{h} px: nothing to search for faces")
        if max(h, w) >= MAX_DETECT_SIDE:
            raise ValueError(f"image of {w}x{h} px: a side of {MAX_DETECT_SIDE} px or more "
                             "cannot be searched for faces")
        size = blazeface.INPUT_SIZE
        matrix = blazeface.letterbox(w, h, size)
        tensor = cv2.warpPerspective(np.ascontiguousarray(rgb, np.uint8), matrix, (size, size),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=0)
        # [0, 255] -> [-1, 1], the range in the model's metadata
        self._interp.set_tensor(self._in, (tensor.astype(np.float32) * (2 / 255) - 1)[None])
        self._interp.invoke()
        boxes, kps, scores = blazeface.to_frame(blazeface.weighted_nms(blazeface.decode(
            self._interp.get_tensor(self._regressors)[0], self._interp.get_tensor(self._logits)[0],
            self.min_confidence)), w, h)
        faces = []
        for b, k, s in zip(boxes, kps, scores):
            # pixels as MediaPipe's task API makes them (float32 products, truncated)
            box = (max(int(b[0] * np.float32(w)), 0), max(int(b[1] * np.float32(h)), 0),
                   min(int(b[2] * np.float32(w)), w), min(int(b[3] * np.float32(h)), h))
            faces.append(Face(tuple(float(v) for v in box), float(s),
                              (k.astype(np.float64) * (w, h)).astype(np.float32)))
        return faces

    def close(self) -> None:
        """Drop the interpreter (idempotent); ``detect`` must not be called afterwards."""
        self._interp = None


class FerModel:
    """The int8 FER classifier, calibrated.

    path: the ``.tflite`` (48x48x1 → 7); its calibration (``calibration.load_calibration``
    from the sidecar ``NAME.json``: the temperature, then the shift from FER2013's class prior
    towards a uniform one; neither without a sidecar) is applied to every output.
    prior_shift: the shift's strength instead of the sidecar's (0 = off; None = the sidecar's).
    Raises ModelError naming the file when it is missing, corrupt, not a 48x48x1 → 7 model, or
    its sidecar is unreadable or lacks the prior a ``prior_shift`` > 0 needs.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 1,
                 prior_shift: float | None = None) -> None:
        self.clf = LiteRTClassifier(path, (FER_SIZE, FER_SIZE, 1), len(CLASSES), num_threads)
        self.path = self.clf.path
        self.set_prior_shift(prior_shift)

    def set_prior_shift(self, strength: float | None) -> None:
        """Reload the calibration with the prior shift at ``strength`` (None = the sidecar's,
        0 = off). The new calibration replaces the old in one reference swap, so a thread
        classifying meanwhile sees one or the other. Raises ModelError as the constructor does,
        leaving the calibration unchanged."""
        self.calibration = load_calibration(self.path, len(CLASSES), strength)

    @classmethod
    def from_config(cls, vision: VisionConfig, num_threads: int = 1) -> FerModel:
        """The model ``[vision]`` names (``fer_model``, ``fer_prior_shift``)."""
        return cls(vision.fer_model, num_threads, vision.fer_prior_shift)

    def predict(self, crop: np.ndarray) -> np.ndarray:
        """crop: (48, 48) uint8 grayscale face (``crop_face``). Returns probs (7,) float32 in
        CLASSES order, summing to 1, calibrated."""
        p = np.clip(self.clf.predict(crop.astype(np.float32)[..., None]), 0.0, None)
        s = float(p.sum())
        if s <= 0:
            return np.full(len(CLASSES), 1 / len(CLASSES), np.float32)
        return self.calibration.apply(p / s)


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

    def process(self, rgb: np.ndarray) -> tuple[FaceResult | None, list[Face]]:
        """rgb: (H, W, 3) uint8 RGB. Returns (result for the followed face or None when no face,
        all faces)."""
        faces = self.detector.detect(rgb)
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
