"""BlazeFace short range: what its network's raw outputs mean, as pure functions.

BlazeFace (Bazarevsky et al. 2019, arXiv:1907.05047) is an SSD-style detector: for each of 896
fixed anchors the network gives one face logit and 16 regressors (box centre, box size, six
keypoints) relative to that anchor, on a 128x128 input that holds the whole frame letterboxed.
The numbers here are those of MediaPipe's face detector graph for ``blaze_face_short_range``
(``mediapipe/tasks/cc/vision/face_detector/face_detector_graph.cc``: the anchors, decoding and
suppression options) and its calculators (``ssd_anchors_calculator.cc``,
``tensors_to_detections_calculator.cc``, ``non_max_suppression_calculator.cc`` with the
WEIGHTED algorithm, ``image_to_tensor_converter_opencv.cc``), so that the model file MediaPipe
ships gives the same faces here as through MediaPipe (``tests/test_blazeface.py`` compares the
two on real frames). No I/O, no clock: :class:`redsg_edge.vision.FaceDetector` runs the network.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["INPUT_SIZE", "NUM_KEYPOINTS", "ssd_anchors", "ANCHORS", "letterbox", "decode",
           "weighted_nms", "to_frame", "Detections"]

#: Side of the network's square input (pixels).
INPUT_SIZE = 128
#: Right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion (the
#: subject's right and left).
NUM_KEYPOINTS = 6
# face_detector_graph.cc: ConfigureSsdAnchorsCalculator and ConfigureTensorsToDetectionsCalculator
_STRIDES = (8, 16, 16, 16)
_ANCHOR_OFFSET = 0.5
_COORD_SCALE = 128.0       # x_scale = y_scale = w_scale = h_scale
_SCORE_CLIP = 100.0        # score_clipping_thresh, applied to the logit before the sigmoid
#: min_suppression_threshold of the face detector's defaults (IoU above which two detections are
#: one face).
IOU_THRESHOLD = 0.3

#: (boxes (N, 4) float32 [xmin, ymin, width, height], keypoints (N, 6, 2) float32 [x, y],
#: scores (N,) float32 in [0, 1]), coordinates relative to the input (0..1).
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]

# Every step below is MediaPipe's float32 arithmetic in MediaPipe's order, so the faces come out
# equal to its own to the bit, not merely close: the FER crop is rotated by the eyes' keypoints,
# and a keypoint one float32 step away flips some crop pixels and some FER outputs by one int8
# step.


def ssd_anchors(input_size: int = INPUT_SIZE, strides: tuple[int, ...] = _STRIDES,
                offset: float = _ANCHOR_OFFSET) -> np.ndarray:
    """Anchor centres (A, 2) float32 [x, y], relative to the input, in the network's output
    order: layers of one stride share a feature map, and each of its cells holds two anchors per
    layer (one aspect ratio plus the interpolated scale) in row-major cell order. The anchors'
    size is fixed at 1 (``fixed_anchor_size``), so only their centres matter. For the short-range
    model A = 16x16x2 + 8x8x6 = 896."""
    centres = []
    layer = 0
    while layer < len(strides):
        same = layer
        while same < len(strides) and strides[same] == strides[layer]:
            same += 1
        per_cell = 2 * (same - layer)
        side = math.ceil(input_size / strides[layer])
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        cell = np.stack([(xs + offset) / side, (ys + offset) / side], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(cell, per_cell, axis=0))
        layer = same
    return np.concatenate(centres).astype(np.float32)


#: The short-range model's 896 anchors (``ssd_anchors()``).
ANCHORS = ssd_anchors()


@functools.lru_cache(maxsize=8)  # a camera's frames share one size: one matrix, not one a frame
def letterbox(width: int, height: int, size: int = INPUT_SIZE) -> np.ndarray:
    """Where a ``width`` x ``height`` frame lies in the square input: the frame is scaled so its
    longer side fills ``size`` pixels and centred, the rest padded (MediaPipe's
    ``keep_aspect_ratio``). Returns the 3x3 float64 perspective matrix from frame pixels to input
    pixels, as MediaPipe's OpenCV converter builds it from the square region's corners
    (read-only: it is cached). Raises ValueError for an empty frame."""
    import cv2

    if width <= 0 or height <= 0:
        raise ValueError(f"frame of {width}x{height} px: nothing to search")
    side = float(max(width, height))
    x0, y0 = width / 2 - side / 2, height / 2 - side / 2
    src = np.array([[x0, y0 + side], [x0, y0], [x0 + side, y0], [x0 + side, y0 + side]],
                   np.float32)
    dst = np.array([[0, size], [0, 0], [size, 0], [size, size]], np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    matrix.setflags(write=False)
    return matrix


def decode(regressors: np.ndarray, logits: np.ndarray, min_score: float,
           anchors: np.ndarray = ANCHORS) -> Detections:
    """The detections scoring at least ``min_score``, in anchor order (:data:`Detections`).

    regressors: (A, 16) float32, per anchor [x, y, w, h] of the box then [x, y] of each keypoint,
    in input pixels relative to the anchor centre (``reverse_output_order``); logits: (A,) or
    (A, 1) float32, the face logit. Scores are ``sigmoid(clip(logit, ±100))``. Raises ValueError
    when the shapes do not match the anchors.
    """
    reg = np.asarray(regressors, np.float32).reshape(len(anchors), -1)
    raw = np.asarray(logits, np.float32).reshape(-1)
    if reg.shape[1] != 4 + 2 * NUM_KEYPOINTS or raw.shape[0] != len(anchors):
        raise ValueError(f"BlazeFace outputs {reg.shape} and {raw.shape} do not match "
                         f"{len(anchors)} anchors of {4 + 2 * NUM_KEYPOINTS} values")
    # expf correctly rounded (numpy's float32 exp can be one step off); exp(100) is inf in
    # float32, and 1 / inf = 0, as in C++
    with np.errstate(over="ignore"):
        e = np.exp(-np.clip(raw, -_SCORE_CLIP, _SCORE_CLIP).astype(np.float64)).astype(np.float32)
    scores = np.float32(1) / (np.float32(1) + e)
    keep = np.flatnonzero(scores >= min_score)
    reg, anc = reg[keep], anchors[keep]
    centre = reg[:, 0:2] / np.float32(_COORD_SCALE) + anc
    half = reg[:, 2:4] / np.float32(_COORD_SCALE) / np.float32(2)
    lo, hi = centre - half, centre + half
    boxes = np.concatenate([lo, hi - lo], axis=1)
    kps = reg[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / np.float32(_COORD_SCALE) + anc[:, None, :]
    return boxes.astype(np.float32), kps.astype(np.float32), scores[keep].astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[:2] + box[2:], boxes[:, :2] + boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(detections: Detections, iou_threshold: float = IOU_THRESHOLD) -> Detections:
    """MediaPipe's weighted non-maximum suppression: the best-scoring detection and every other
    one overlapping it by more than ``iou_threshold`` (IoU) become one face whose box and
    keypoints are their score-weighted mean and whose score is the best one's; repeated on what is
    left. Returns the faces best first, in the shapes of :data:`Detections`."""
    boxes, kps, scores = detections
    order = np.argsort(-scores, kind="stable")
    out_b, out_k, out_s = [], [], []
    while order.size:
        top = order[0]
        near = _iou(boxes[top], boxes[order]) > iou_threshold
        near[0] = True  # a degenerate (zero-area) box still ends its own group
        # sums in float32, one detection after the other (non_max_suppression_calculator.cc)
        total = np.float32(0)
        corners = np.zeros(4, np.float32)   # score-weighted xmin, ymin, xmax, ymax
        points = np.zeros((NUM_KEYPOINTS, 2), np.float32)
        for i in order[near]:
            w = scores[i]
            total += w
            corners += np.concatenate([boxes[i, :2], boxes[i, :2] + boxes[i, 2:]]) * w
            points += kps[i] * w
        lo = corners[:2] / total
        out_b.append(np.concatenate([lo, corners[2:] / total - lo]))
        out_k.append(points / total)
        out_s.append(scores[top])
        order = order[~near]
    if not out_s:
        return (np.zeros((0, 4), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32),
                np.zeros(0, np.float32))
    return (np.array(out_b, np.float32), np.array(out_k, np.float32),
            np.array(out_s, np.float32))


def to_frame(detections: Detections, width: int, height: int) -> Detections:
    """Input-relative detections (of a frame ``letterbox``-ed into the input) → relative to the
    ``width`` x ``height`` frame, through the matrix MediaPipe's ``ImageToTensorCalculator``
    hands to ``DetectionProjectionCalculator`` (float32). Same shapes as :data:`Detections`;
    coordinates may fall outside 0..1 for a face cut by the frame's edge."""
    boxes, kps, scores = detections
    f32 = np.float32
    side = f32(max(width, height))
    gx, gy = f32(1) / f32(width), f32(1) / f32(height)
    scale = np.array([side * gx, side * gy], np.float32)
    shift = np.array([(f32(-0.5) * side + f32(width / 2)) * gx,
                      (f32(-0.5) * side + f32(height / 2)) * gy], np.float32)
    lo = boxes[:, :2] * scale + shift
    hi = (boxes[:, :2] + boxes[:, 2:]) * scale + shift
    return (np.concatenate([lo, hi - lo], axis=1).astype(np.float32),
            (kps * scale + shift).astype(np.float32), scores)
