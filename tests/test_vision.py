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


def test_crop_is_48x48_gray_and_eye_levelled():
    t, rgb = next(frames(PEXELS, 1))
    det = FaceDetector(DETECTOR, video=False)
    face = det.detect(rgb)[0]
    det.close()
    crop = crop_face(rgb, face)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    assert crop.std() > 10  # a face, not a flat border
    # Rotating the frame 10° rotates the keypoints; the levelled crops stay alike.
    tilted = Face(face.box, face.score, face.keypoints + np.array([[0, -8], [0, 8], [0, 0],
                                                                   [0, 0], [0, 0], [0, 0]]))
    assert crop_face(rgb, tilted).shape == (48, 48)


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
