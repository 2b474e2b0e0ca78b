"""The real face detector and the FER crop on real video frames."""

from __future__ import annotations

import sys

import av
import numpy as np
import pytest

from redsg_edge.litert import ModelError
from redsg_edge.vision import (Face, FaceDetector, FarFaceSearch, FerModel, VisionWorker,
                               crop_face, far_tiles, iou, merge_faces, select_face)

from .conftest import DETECTOR, FER_MODEL, PEXELS, REPO, SINGLE_FACE

sys.path.insert(0, str(REPO / "scripts"))
from eval_face_range import moved_away as _far, walking  # noqa: E402  (a person moved away)


def frames(path, n):
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= n:
                return
            yield f.time, f.to_ndarray(format="rgb24")


def test_detector_finds_the_face_in_every_frame_and_fer_classifies_it():
    worker = VisionWorker(FaceDetector(DETECTOR), FerModel(FER_MODEL))
    results = [worker.process(rgb)[0] for _, rgb in frames(PEXELS, 60)]
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
    det = FaceDetector(DETECTOR)
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
    # a real TFLite model in the wrong slot
    with pytest.raises(ModelError, match="not a BlazeFace.*vision.detector_model"):
        FaceDetector(FER_MODEL)


def test_detector_refuses_images_it_cannot_search():
    det = FaceDetector(DETECTOR)
    for bad in (np.zeros((0, 5, 3), np.uint8), np.zeros((48, 48), np.uint8),
                np.zeros((48, 48, 4), np.uint8)):
        with pytest.raises(ValueError, match="image of"):
            det.detect(bad)
    assert det.detect(np.full((480, 640, 3), 128, np.uint8)) == []


# ------------------------------------------------------- details the mutation run found
# (scripts/mutation.sh vision; docs/testing.md)

@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 4, 2), (2, 1, 4, 2), 2 / 14),        # offset in x and y, non-square boxes
    ((10, 20, 6, 3), (12, 20, 6, 3), 12 / 24),   # same row, x offset only
    ((0, 0, 2, 2), (5, 5, 2, 2), 0.0),           # apart
    ((0, 0, 2, 2), (2, 0, 2, 2), 0.0),           # touching edges
    ((3, 4, 5, 1), (3, 4, 5, 1), 1.0),
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),           # empty boxes: no division by zero
])
def test_iou_table(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_select_face_weighs_size_by_score_and_follows_at_min_iou():
    kp = np.zeros((6, 2), np.float32)
    big_unsure = Face((0, 0, 100, 100), 0.2, kp)      # 10,000 px x 0.2 = 2,000
    small_sure = Face((300, 0, 50, 50), 0.95, kp)     # 2,500 px x 0.95 = 2,375
    assert select_face([big_unsure, small_sure], None) is small_sure
    prev = Face((0, 0, 10, 10), 0.9, kp)
    at_limit = Face((0, 0, 10, 3), 0.9, kp)           # IoU exactly 0.3 with prev
    assert iou(at_limit.box, prev.box) == pytest.approx(0.3)
    assert select_face([big_unsure, at_limit], prev) is at_limit


def _synthetic_face(angle_deg: float = 0.0):
    """A 200x200 grey frame with a bright block centred on (100, 100) and eyes at ±angle."""
    frame = np.full((200, 200, 3), 40, np.uint8)
    frame[90:110, 90:110] = 250
    r = np.radians(angle_deg)
    eyes = np.array([[100 - 20 * np.cos(r), 100 - 20 * np.sin(r)],
                     [100 + 20 * np.cos(r), 100 + 20 * np.sin(r)]], np.float32)
    kp = np.vstack([eyes, np.zeros((4, 2), np.float32)])
    return frame, Face((60.0, 60.0, 80.0, 80.0), 0.9, kp)


def test_crop_centres_the_box_and_takes_gray_frames_as_they_are():
    frame, face = _synthetic_face()
    crop = crop_face(frame, face)
    # The block sits at the box centre; the crop is shifted up by CROP_SHIFT_UP x side, so the
    # block lands a little below the crop centre, and exactly centred left to right.
    cols = np.where(crop.max(0) > 200)[0]
    rows = np.where(crop.max(1) > 200)[0]
    assert abs((cols[0] + cols[-1]) / 2 - 23.5) <= 0.5
    assert 0 < (rows[0] + rows[-1]) / 2 - 23.5 <= 3.5
    gray = frame[..., 0].copy()
    np.testing.assert_array_equal(crop_face(gray, face), crop)
    # Border pixels are replicated, not black, when the crop reaches past the frame.
    edge = Face((-30.0, -30.0, 80.0, 80.0), 0.9, face.keypoints - 130)
    assert crop_face(frame, edge).min() == 40


def test_implausible_eye_angles_are_not_followed():
    frame, level = _synthetic_face(0.0)
    base = crop_face(frame, level)
    for deg in (45.5, -60.0):  # a profile face's keypoints: no rotation at all
        _, steep = _synthetic_face(deg)
        np.testing.assert_array_equal(crop_face(frame, Face(level.box, 0.9, steep.keypoints)), base)
    kp45 = level.keypoints.copy()
    kp45[:2] = [[80.0, 80.0], [120.0, 120.0]]  # exactly 45°: still plausible, rotated
    assert not np.array_equal(crop_face(frame, Face(level.box, 0.9, kp45)), base)


def test_vision_worker_counts_frames_and_faces():
    worker = VisionWorker(FaceDetector(DETECTOR), FerModel(FER_MODEL))
    try:
        blank = np.zeros((240, 320, 3), np.uint8)
        results = [worker.process(rgb)[0] for _, rgb in frames(PEXELS, 5)]
        results.append(worker.process(blank)[0])
        assert worker.frames == 6 and worker.faces_found == 5 and results[-1] is None
    finally:
        worker.close()


@pytest.mark.parametrize("w, h, zoom, expected", [
    (640, 480, 2, [(0, 0), (160, 0), (320, 0), (0, 160), (160, 160), (320, 160)]),
    (480, 640, 2, [(0, 0), (160, 0), (0, 160), (160, 160), (0, 320), (160, 320)]),
    (640, 640, 2, [(x, y) for y in (0, 160, 320) for x in (0, 160, 320)]),
    (1280, 720, 2, [(0, 0), (320, 0), (640, 0), (0, 80), (320, 80), (640, 80)]),
    (300, 100, 2, [(0, 0), (75, 0), (150, 0)]),  # a side shorter than the tile: whole
    (254, 254, 2, []),   # tiles under the detector's 128 px input: none
    (640, 480, 6, []),
])
def test_far_tiles_table(w, h, zoom, expected):
    tiles = far_tiles(w, h, zoom)
    assert [(x, y) for x, y, _, _ in tiles] == expected
    side = -(-max(w, h) // zoom)
    assert all((tw, th) == (min(side, w), min(side, h)) for _, _, tw, th in tiles)


@pytest.mark.parametrize("w, h, zoom", [(640, 480, 2), (640, 480, 4), (1920, 1080, 4),
                                        (333, 777, 3), (300, 100, 2)])
def test_far_tiles_hold_every_face_up_to_half_a_tile_whole(w, h, zoom):
    tiles = far_tiles(w, h, zoom)
    side = -(-max(w, h) // zoom)
    face = min(side // 2, w, h)
    for x in range(0, w - face + 1, max(1, face // 3)):
        for y in range(0, h - face + 1, max(1, face // 3)):
            assert any(tx <= x and ty <= y and x + face <= tx + tw and y + face <= ty + th
                       for tx, ty, tw, th in tiles), (x, y)


def test_far_tiles_refuse_nonsense():
    for args in ((0, 480, 2), (640, 0, 2), (640, 480, 1)):
        with pytest.raises(ValueError):
            far_tiles(*args)
    with pytest.raises(ValueError):
        FarFaceSearch(-1)


def _f(x, score):
    return Face((x, 0.0, 10.0, 10.0), score, np.zeros((6, 2), np.float32))


@pytest.mark.parametrize("faces, kept", [
    ([], []),
    ([_f(0, 0.9)], [0.9]),
    ([_f(0, 0.8), _f(1, 0.9)], [0.9]),                # the same face from two tiles: the best
    ([_f(0, 0.8), _f(20, 0.9)], [0.9, 0.8]),          # two faces
    ([_f(0, 0.9), _f(5, 0.8), _f(10, 0.7)], [0.9, 0.7]),  # IoU 1/3 > 0.3 goes, 0 stays
])
def test_merge_faces_table(faces, kept):
    assert [f.score for f in merge_faces(faces)] == kept


def test_a_far_face_is_found_in_tiles_and_followed_frame_after_frame():
    """The single-face clip's man, 4 times farther away (a 42 px face in a 640 x 360 frame):
    the whole frame shows the detector nothing; the worker searching one tile a frame finds
    him within the six tiles' round and then on every frame, where the whole, unshrunk frame
    has him (box scaled by 1/4 around the centre)."""
    det, fer = FaceDetector(DETECTOR), FerModel(FER_MODEL)
    clip = [rgb for _, rgb in frames(SINGLE_FACE, 30)]
    near = det.detect(clip[0])[0]
    far = [_far(rgb, 4) for rgb in clip]
    assert all(det.detect(rgb) == [] for rgb in far)
    assert all(r is None for r in (VisionWorker(det, fer, 0).process(rgb)[0] for rgb in far))
    worker = VisionWorker(det, fer, 1)
    got = [worker.process(rgb)[0] for rgb in far]
    first = next(i for i, r in enumerate(got) if r is not None)
    assert first < len(far_tiles(640, 360))
    assert all(r is not None for r in got[first:])
    h, w = clip[0].shape[:2]
    x, y, bw, bh = near.box
    expect = ((x - w / 2) / 4 + w / 2, (y - h / 2) / 4 + h / 2, bw / 4, bh / 4)
    assert iou(got[-1].face.box, expect) > 0.6, (got[-1].face.box, expect)
    assert got[-1].face.score >= 0.75 and got[-1].probs.shape == (7,)
    det.close()


def test_a_far_face_walking_across_tiles_is_followed():
    """The same man 4 times farther, walking across the whole frame and back at 15 px a frame
    (about 1 m/s at 2 m, 15 fps) through all three columns of tiles: once found he is followed
    on at least 95 % of the frames. Searching the tile that last held him first, rather than
    the tiles nearest to where he was, followed him on 92 % of these frames (100 % now). The
    boxes move with him."""
    det, fer = FaceDetector(DETECTOR), FerModel(FER_MODEL)
    clip = [rgb for _, rgb in frames(SINGLE_FACE, 72)]
    worker = VisionWorker(det, fer, 1)
    got = [worker.process(_far(rgb, 4, walking(i, 640, 4, 15)))[0]
           for i, rgb in enumerate(clip)]
    first = next(i for i, r in enumerate(got) if r is not None)
    seen = [r for r in got[first:] if r is not None]
    assert len(seen) >= 0.95 * len(got[first:]), (len(seen), len(got[first:]))
    xs = [r.face.box[0] for r in seen]
    assert max(xs) - min(xs) > 300  # he crossed the frame, and was followed across
    det.close()


def test_far_face_tiles_come_from_the_config_and_a_reload_applies_them():
    from redsg_edge.config import Config
    from redsg_edge.perception import Perception
    from redsg_edge.pipeline import is_live_key

    cfg = Config()
    assert cfg.vision.far_face_tiles == 1
    perception = Perception.load(cfg, face=True, voice=False)
    assert perception.vision.far.per_frame == 1
    off = cfg.model_copy(update={"vision": cfg.vision.model_copy(update={"far_face_tiles": 0})})
    perception.reconfigure(off)
    assert perception.vision.far.per_frame == 0 and is_live_key("vision.far_face_tiles")
    perception.close()


def test_replay_follows_a_far_person_through_the_perception_step(tmp_path):
    """End to end, as ``run`` and ``replay`` build it from the config: a 2 s clip of the
    single-face clip's man 4 times farther away gives face evidence on nearly every update
    with ``vision.far_face_tiles`` 1 (the first round of tiles may pass before he is found)
    and on none with 0."""
    from fractions import Fraction

    from redsg_edge.replay import replay

    from .conftest import make_config

    clip = tmp_path / "far.mp4"
    with av.open(str(clip), "w") as out:
        vs = out.add_stream("mpeg4", rate=Fraction(15))
        vs.width, vs.height, vs.pix_fmt = 640, 360, "yuv420p"
        for _, rgb in frames(SINGLE_FACE, 30):
            out.mux(vs.encode(av.VideoFrame.from_ndarray(_far(rgb, 4), format="rgb24")))
        out.mux(vs.encode(None))
    cfg = make_config()
    counts = {}
    for tiles in (1, 0):
        vision = cfg.vision.model_copy(update={"far_face_tiles": tiles})
        ups = [r for r in replay(cfg.model_copy(update={"vision": vision}), clip)
               if r["type"] == "update"]
        counts[tiles] = (sum(r["face"] is not None for r in ups), len(ups))
    seen, n = counts[1]
    assert n >= 25 and seen >= n - len(far_tiles(640, 360)), counts
    assert counts[0][0] == 0, counts
