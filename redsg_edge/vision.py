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


def merge_faces(faces: list[Face], max_iou: float = blazeface.IOU_THRESHOLD) -> list[Face]:
    """Faces found in overlapping parts of one frame, each kept once: the best-scoring face of
    every group overlapping more than ``max_iou`` (IoU), best first (greedy non-maximum
    suppression; a face on a tile's border is also whole inside its neighbour)."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        if all(iou(f.box, k.box) <= max_iou for k in kept):
            kept.append(f)
    return kept


def far_tiles(width: int, height: int, zoom: int = 2) -> list[tuple[int, int, int, int]]:
    """The parts of a ``width`` x ``height`` frame searched for far faces: squares of side
    ``ceil(max(width, height) / zoom)`` (clipped to the frame), overlapping by at least half a
    side, so that every face up to half a side across lies whole inside one of them; (x, y, w,
    h) in pixels, row by row. The detector letterboxes each into its 128 x 128 input, so a face
    in a tile is ``zoom`` times larger to it than in the whole frame. A 640 x 480 frame gives 6
    tiles of 320 px at zoom 2. None when a tile would be smaller than that input: magnified
    beyond its own pixels it holds no face the whole frame hides, only more chances to see one
    in noise. Raises ValueError for a side of 0 or a zoom below 2."""
    if width <= 0 or height <= 0 or zoom < 2:
        raise ValueError(f"far_tiles: frame {width}x{height}, zoom {zoom}")
    side = -(-max(width, height) // zoom)
    if side < blazeface.INPUT_SIZE:
        return []

    def starts(length: int) -> list[int]:
        if length <= side:
            return [0]
        n = -(-(length - side) * 2 // side) + 1  # stride at most half a side
        return [round(i * (length - side) / (n - 1)) for i in range(n)]

    return [(x, y, min(side, width), min(side, height))
            for y in starts(height) for x in starts(width)]


#: Lowest detector score of a face found in a tile. Each tile is one more chance for the
#: detector to see a face in texture: in 356 photos without a face (flat, noise, gradients, real
#: room walls; scripts/eval_face_range.py, seed 0) the tiles of zooms 2 and 4 made 26 false
#: detections at the whole frame's threshold 0.5, scoring 0.61 at most, while the real faces
#: of the two av_clips videos moved up to 4x farther scored 0.8 or more in every frame. 0.1
#: above the highest false score (docs/architecture.md, "Far faces").
FAR_MIN_SCORE = 0.75


def detect_in(detector: FaceDetector, rgb: np.ndarray, tiles: list[tuple[int, int, int, int]],
              min_score: float = FAR_MIN_SCORE) -> list[Face]:
    """The faces ``detector`` finds in each tile (x, y, w, h) of ``rgb`` ((H, W, 3) uint8)
    scoring at least ``min_score``, in the frame's pixels, merged (:func:`merge_faces`)."""
    found = []
    for x, y, w, h in tiles:
        for f in detector.detect(rgb[y:y + h, x:x + w]):
            if f.score < min_score:
                continue
            found.append(Face((f.box[0] + x, f.box[1] + y, f.box[2], f.box[3]), f.score,
                              f.keypoints + np.array((x, y), np.float32)))
    return merge_faces(found)


class FarFaceSearch:
    """The live loop's search for a face too far for the whole frame (state only; no clock).

    BlazeFace short range sees the whole frame at 128 x 128 px and misses faces under about a
    tenth of the frame's longer side (docs/architecture.md, "Far faces"): with a 640 x 480
    camera behind a 60° lens, a person more than about 1.2 m away. On a frame without a face,
    :meth:`search` runs the detector on ``per_frame`` of :func:`far_tiles` (zoom 2). After a far
    face, the tiles go nearest first to where it was (the tile that holds it most centrally,
    then outwards, one step a frame while it is missed), so a person is followed as they walk
    across tiles; with no face to follow, all tiles in turn. It costs one more detector call a
    frame and finds a face within ``len(tiles) / per_frame`` frames (6 tiles: 0.4 s at 15 fps).
    Tiling a detector's input is slicing-aided inference (Akyon et al., "Slicing Aided Hyper
    Inference and Fine-tuning for Small Object Detection", ICIP 2022). ``per_frame`` 0 turns
    it off."""

    def __init__(self, per_frame: int) -> None:
        if per_frame < 0:
            raise ValueError(f"far-face tiles per frame must be >= 0, got {per_frame}")
        self.per_frame = per_frame
        self._size: tuple[int, int] | None = None
        self._tiles: list[tuple[int, int, int, int]] = []
        self._next = 0  # the round over all tiles goes on with this one
        self._anchor: tuple[float, float] | None = None  # centre of the last far face, px
        self._missed = 0  # frames searched since, without a face

    def search(self, detector: FaceDetector, rgb: np.ndarray) -> list[Face]:
        """Faces in this frame's next tiles ((H, W, 3) uint8 RGB), in frame pixels, best
        first; [] when off or none is found."""
        if self.per_frame == 0:
            return []
        h, w = rgb.shape[:2]
        if self._size != (w, h):
            self._size, self._tiles, self._next, self._anchor = (w, h), far_tiles(w, h), 0, None
        n = min(self.per_frame, len(self._tiles))
        if self._anchor is not None:
            ax, ay = self._anchor
            near = sorted(range(len(self._tiles)), key=lambda i: (
                (self._tiles[i][0] + self._tiles[i][2] / 2 - ax) ** 2
                + (self._tiles[i][1] + self._tiles[i][3] / 2 - ay) ** 2))
            order = near[self._missed * n:(self._missed + 1) * n]
        else:
            order = [(self._next + k) % len(self._tiles) for k in range(n)]
            self._next = (self._next + n) % max(1, len(self._tiles))
        for i in order:
            faces = detect_in(detector, rgb, [self._tiles[i]])
            if faces:
                x, y, fw, fh = faces[0].box
                self._anchor, self._missed = (x + fw / 2, y + fh / 2), 0
                return faces
        if self._anchor is not None:
            self._missed += 1
            if self._missed * n >= len(self._tiles):  # a whole round around it: gone
                self._anchor, self._missed = None, 0
        return []


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

    def __init__(self, detector: FaceDetector, fer: FerModel,
                 far_tiles_per_frame: int = 0) -> None:
        self.detector, self.fer = detector, fer
        #: The search for a face too far for the whole frame (``vision.far_face_tiles``).
        self.far = FarFaceSearch(far_tiles_per_frame)
        self._current: Face | None = None
        self.frames = 0
        self.faces_found = 0

    def process(self, rgb: np.ndarray) -> tuple[FaceResult | None, list[Face]]:
        """rgb: (H, W, 3) uint8 RGB. Returns (result for the followed face or None when no face,
        all faces). A frame whose whole shows no face is searched in parts (:attr:`far`)."""
        faces = self.detector.detect(rgb) or self.far.search(self.detector, rgb)
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
