"""BlazeFace's decoding (table-driven) and the detector against MediaPipe's own on real frames."""

from __future__ import annotations

import av
import numpy as np
import pytest

from redsg_edge import blazeface as bf
from redsg_edge.vision import FaceDetector

from .conftest import DETECTOR, PEXELS, SINGLE_FACE


def test_anchors_are_the_short_range_models_896_in_output_order():
    a = bf.ANCHORS
    assert a.shape == (896, 2) and a.dtype == np.float32
    # 16x16 cells of stride 8, two anchors each, then 8x8 cells of stride 16, six anchors each
    assert a[0].tolist() == a[1].tolist() == [0.5 / 16, 0.5 / 16]
    assert a[2].tolist() == [1.5 / 16, 0.5 / 16]            # row-major: x moves first
    assert a[32].tolist() == [0.5 / 16, 1.5 / 16]
    assert a[511].tolist() == [15.5 / 16, 15.5 / 16]
    assert (a[512:518] == [0.5 / 8, 0.5 / 8]).all()
    assert a[518].tolist() == [1.5 / 8, 0.5 / 8]
    assert a[-1].tolist() == [7.5 / 8, 7.5 / 8]
    assert len(bf.ssd_anchors(strides=(8, 16))) == 16 * 16 * 2 + 8 * 8 * 2


@pytest.mark.parametrize("logit, min_score, kept", [
    (0.0, 0.5, 1),           # sigmoid(0) = 0.5: at the threshold is kept
    (-0.01, 0.5, 0),
    (2.0, 0.88, 1),          # 0.8808
    (2.0, 0.89, 0),
    (500.0, 0.5, 1),         # clipped at 100 before the sigmoid: no overflow
    (-500.0, 0.0, 896),      # a threshold of 0 keeps every anchor
])
def test_decode_keeps_scores_from_min_score(logit, min_score, kept):
    reg = np.zeros((896, 16), np.float32)
    logits = np.full(896, -500.0, np.float32)
    logits[600] = logit
    with np.errstate(over="raise"):
        boxes, kps, scores = bf.decode(reg, logits, min_score)
    assert len(boxes) == len(kps) == len(scores) == kept


def test_decode_places_box_and_keypoints_relative_to_the_anchor():
    reg = np.zeros((896, 16), np.float32)
    # anchor 2: centre (1.5/16, 0.5/16); the box 6.4 px right, 12.8 px down, 32 x 64 px
    reg[2, :4] = [6.4, 12.8, 32.0, 64.0]
    reg[2, 4:] = np.arange(12, dtype=np.float32)           # keypoint k at (2k, 2k + 1) px
    logits = np.full(896, -100.0, np.float32)
    logits[2] = 10.0
    boxes, kps, scores = bf.decode(reg, logits[:, None], 0.5)
    cx, cy = 1.5 / 16 + 0.05, 0.5 / 16 + 0.1
    np.testing.assert_allclose(boxes[0], [cx - 0.125, cy - 0.25, 0.25, 0.5], atol=1e-6)
    np.testing.assert_allclose(kps[0], np.arange(12).reshape(6, 2) / 128 + [1.5 / 16, 0.5 / 16],
                               atol=1e-6)
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-10.0)))
    with pytest.raises(ValueError, match="do not match"):
        bf.decode(reg[:, :15], logits, 0.5)


def _dets(rows):
    boxes = np.array([r[0] for r in rows], np.float32).reshape(-1, 4)
    kps = np.array([np.full((6, 2), r[1], np.float32) for r in rows]).reshape(-1, 6, 2)
    return boxes, kps, np.array([r[2] for r in rows], np.float32)


@pytest.mark.parametrize("rows, expected", [
    # boxes [xmin, ymin, width, height]
    # two overlapping (IoU 0.6): one face, box and keypoints weighted by score, best score
    ([((0, 0, 1, 1), 0.0, 0.9), ((0.25, 0, 1, 1), 1.0, 0.3)],
     [((0.0625, 0, 1, 1), 0.25, 0.9)]),
    # IoU exactly 1/3 > 0.3 merges; apart (IoU 0) stays two faces, best first
    ([((0, 0, 1, 1), 0.0, 0.5), ((0.5, 0, 1, 1), 1.0, 0.5)], [((0.25, 0, 1, 1), 0.5, 0.5)]),
    ([((0, 0, 1, 1), 0.0, 0.6), ((2, 0, 1, 1), 1.0, 0.8)],
     [((2, 0, 1, 1), 1.0, 0.8), ((0, 0, 1, 1), 0.0, 0.6)]),
    # IoU 0.09 (<= 0.3): not merged; IoU 0.64 with different sizes: averaged by the corners
    ([((0, 0, 1, 1), 0.0, 0.9), ((0.6, 0.6, 1, 1), 1.0, 0.8)],
     [((0, 0, 1, 1), 0.0, 0.9), ((0.6, 0.6, 1, 1), 1.0, 0.8)]),
    ([((0, 0, 1, 1), 0.0, 0.5), ((0, 0, 0.8, 0.8), 1.0, 0.5)], [((0, 0, 0.9, 0.9), 0.5, 0.5)]),
    # a zero-area box is its own face and does not stop the loop
    ([((0.5, 0.5, 0, 0), 0.0, 0.9), ((0, 0, 1, 1), 1.0, 0.8)],
     [((0.5, 0.5, 0, 0), 0.0, 0.9), ((0, 0, 1, 1), 1.0, 0.8)]),
    ([], []),
])
def test_weighted_nms_table(rows, expected):
    boxes, kps, scores = bf.weighted_nms(_dets(rows))
    assert len(scores) == len(expected)
    for b, k, s, (eb, ek, es) in zip(boxes, kps, scores, expected):
        np.testing.assert_allclose(b, eb, atol=1e-6)
        np.testing.assert_allclose(k, np.full((6, 2), ek), atol=1e-6)
        assert s == pytest.approx(es)


@pytest.mark.parametrize("w, h, x0, y0, side", [(640, 480, 0, -80, 640), (360, 640, -140, 0, 640),
                                                (128, 128, 0, 0, 128)])
def test_letterbox_centres_the_frame_in_a_square(w, h, x0, y0, side):
    m = bf.letterbox(w, h)
    for fx, fy in ((0, 0), (w, h), (w / 2, h / 2)):   # frame corners and centre
        p = m @ [fx, fy, 1]
        np.testing.assert_allclose(p[:2] / p[2], [(fx - x0) * 128 / side, (fy - y0) * 128 / side],
                                   atol=1e-4)
    with pytest.raises(ValueError, match="nothing to search"):
        bf.letterbox(0, 10)
    # the input's corners are the square's corners, in frame-relative coordinates
    box = np.array([[0, 0, 1, 1]], np.float32)
    kps = np.zeros((1, 6, 2), np.float32)
    fb, fk, _ = bf.to_frame((box, kps, np.ones(1, np.float32)), w, h)
    np.testing.assert_allclose(fb[0], [x0 / w, y0 / h, side / w, side / h], rtol=1e-6)
    np.testing.assert_allclose(fk[0, 0], [x0 / w, y0 / h], rtol=1e-6, atol=1e-7)


# ------------------------------------------------- against MediaPipe (the test extra has it)

def _real_frames():
    """Every 2nd frame of both clips, CK+48 faces upscaled alone, two of them side by side, and
    a portrait crop of the clip: one face, two faces, faces at the frame's edge, no face."""
    from redsg_edge.bench.common import compose_photo
    from redsg_edge.datasets import load_ck48
    for clip in (PEXELS, SINGLE_FACE):
        with av.open(str(clip)) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i % 2 == 0:
                    rgb = f.to_ndarray(format="rgb24")
                    yield rgb
                    if i % 20 == 0:
                        yield np.ascontiguousarray(rgb[:, 100:300])  # portrait, face cut
    ck = load_ck48()[::8]
    from PIL import Image
    for img in ck:
        big = np.asarray(Image.fromarray(img.image).resize((192, 192), Image.LANCZOS))
        yield np.repeat(big[..., None], 3, axis=2)                   # the face fills the frame
        yield np.repeat(compose_photo(img.image)[..., None], 3, axis=2)
    for a, b in zip(ck[::2], ck[1::2]):
        pair = np.concatenate([compose_photo(a.image), compose_photo(b.image)], axis=1)
        yield np.repeat(pair[..., None], 3, axis=2)
    yield np.full((480, 640, 3), 90, np.uint8)


def test_faces_equal_mediapipes_on_real_frames():
    """The detector must give what MediaPipe's task API gives with the same model file, to the
    bit: boxes, keypoints and scores."""
    vision = pytest.importorskip("mediapipe.tasks.python.vision")
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions

    if not (PEXELS.is_file() and SINGLE_FACE.is_file()):
        pytest.skip("../shared clips missing")
    ours = FaceDetector(DETECTOR, 0.5)
    ref = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(DETECTOR)),
        running_mode=vision.RunningMode.IMAGE, min_detection_confidence=0.5))
    counts = {0: 0, 1: 0, 2: 0}
    frames = 0
    try:
        for rgb in _real_frames():
            got = ours.detect(rgb)
            want = ref.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).detections
            frames += 1
            assert len(got) == len(want), f"frame {frames}: {len(got)} faces, MediaPipe {len(want)}"
            counts[min(len(got), 2)] += 1
            h, w = rgb.shape[:2]
            for g, d in zip(got, want):
                b = d.bounding_box
                assert g.box == (b.origin_x, b.origin_y, b.width, b.height)
                kp = np.array([(k.x * w, k.y * h) for k in d.keypoints], np.float32)
                assert (g.keypoints == kp).all(), np.abs(g.keypoints - kp).max()
                assert g.score == d.categories[0].score
    finally:
        ref.close()
    # the comparison covered every case it claims to
    assert frames > 400 and counts[0] >= 1 and counts[1] > 300 and counts[2] >= 5, counts
