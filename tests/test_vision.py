"""The real MediaPipe detector and the FER crop on real video frames."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import av
import numpy as np
import pytest

from redsg_edge.litert import ModelError
from redsg_edge.vision import (Face, FaceDetector, FerModel, VisionWorker, crop_face, iou,
                               select_face)

from .conftest import DETECTOR, FER_MODEL, PEXELS


def frames(path, n):
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= n:
                return
            yield f.time, f.to_ndarray(format="rgb24")


def test_detector_finds_the_face_in_every_frame_and_fer_classifies_it():
    worker = VisionWorker(FaceDetector(DETECTOR), FerModel(FER_MODEL))
    results = [worker.process(t, rgb)[0] for t, rgb in frames(PEXELS, 60)]
    worker.close()
    assert all(r is not None for r in results)
    boxes = [r.face.box for r in results]
    # One person, followed: consecutive boxes overlap strongly.
    assert min(iou(a, b) for a, b in zip(boxes, boxes[1:])) > 0.5
    for r in results:
        assert r.probs.shape == (7,) and abs(float(r.probs.sum()) - 1) < 1e-5


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _eye_angle(face: Face) -> float:
    (rx, ry), (lx, ly) = face.keypoints[0], face.keypoints[1]
    return float(np.degrees(np.arctan2(ly - ry, lx - rx)))


def test_crop_is_48x48_gray_and_eye_levelled():
    import cv2
    t, rgb = next(frames(PEXELS, 1))
    det = FaceDetector(DETECTOR, video=False)
    try:
        face = det.detect(rgb)[0]
        crop = crop_face(rgb, face)
        assert crop.shape == (48, 48) and crop.dtype == np.uint8
        assert crop.std() > 10  # a face, not a flat border
        # The same frame turned 15° either way about the face: the detector's eye line turns with
        # it, and the levelled crops stay alike (measured 0.87 and 0.85; unlevelled 0.67, 0.69).
        x, y, w, h = face.box
        for deg in (15, -15):
            m = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), deg, 1.0)
            turned = cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]),
                                    borderMode=cv2.BORDER_REPLICATE)
            face2 = det.detect(turned)[0]
            assert abs(_eye_angle(face2) - _eye_angle(face) + deg) < 6, deg
            assert _corr(crop, crop_face(turned, face2)) > 0.8, deg
    finally:
        det.close()


def test_select_face_follows_the_previous_one():
    kp = np.zeros((6, 2), np.float32)
    near = Face((100, 100, 200, 200), 0.9, kp)
    far = Face((400, 50, 60, 60), 0.95, kp)
    assert select_face([far, near], None) is near  # largest first
    moved_far = Face((405, 55, 60, 60), 0.95, kp)
    assert select_face([near, moved_far], far) is moved_far  # keeps following
    assert select_face([], near) is None


def test_detector_model_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="not found.*vision.detector_model"):
        FaceDetector(tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 1000)
    with pytest.raises(ModelError, match=str(bad)):
        FaceDetector(bad)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="MediaPipe imports TensorFlow when installed, and Keras imports "
                           "matplotlib (the training venv); the runtime install has neither")
def test_detector_defers_mediapipe_drawing_helpers_until_used():
    """MediaPipe's drawing helpers (matplotlib, ~40 MB) load only when a program touches them."""
    code = (
        "import sys\n"
        "from redsg_edge.vision import FaceDetector\n"
        f"FaceDetector({str(DETECTOR)!r}).close()\n"
        "print('matplotlib' in sys.modules)\n"
        "from mediapipe.tasks.python import vision\n"
        "spec = vision.drawing_utils.DrawingSpec(color=(1, 2, 3))\n"
        "print(spec.color, 'matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "(1,", "2,", "3)", "True"]
