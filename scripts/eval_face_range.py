#!/usr/bin/env python3
"""How far away the device still finds a face: BlazeFace short range on the whole frame, and with
the far-face search of ``vision.FarFaceSearch`` / ``analyze.FAR_ZOOMS``.

Three measurements, all with the shipped detector and FER:

1. **Real video, moved away.** Every frame of the two clips in ``av_clips/`` (real people, real
   rooms; 544 frames), shrunk by a factor k around its centre (1, 2, 3, 4: the person k times
   farther) into a frame of its own size whose border repeats the shrunk frame's edge pixels.
   Face coverage (frames with a face) on the whole frame, with every zoom-2 tile (``far_tiles``),
   and as the live loop runs it: ``VisionWorker`` with ``far_face_tiles`` tiles a frame, in
   order, so a face is followed from frame to frame; also with the shrunk picture walking
   across the frame and back (``--pan`` px a frame).
2. **Many faces, small.** FER2013 faces (``--split``: ``val`` = PublicTest, the default,
   ``test`` = PrivateTest) scaled to S px (``--sizes``) at a random place (``--seed``) in a
   640 x 480 frame of mid-grey with sensor noise (σ 4 grey levels): faces found, and FER
   accuracy over all faces (a face not found counts as wrong), whole frame vs with the zoom-2
   tiles.
3. **No face.** 300 photos without a face (flat grey, uniform and Gaussian noise, gradients,
   48–640 px, ``--seed``) and the face-free edges of the av_clips frames (left and right 150 px
   of every 20th frame, the other half of them for an odd seed, 640 x 480): detections whole
   and with every tile of zooms 2 and 4. The tiles' score threshold (``vision.FAR_MIN_SCORE``)
   was set on seed 0; seed 1 is the check.

    python scripts/eval_face_range.py [--split val] [--sizes 40,56,72,96,128] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.config import load_config  # noqa: E402
from redsg_edge.datasets import DATA_ROOT, load_fer2013  # noqa: E402
from redsg_edge.vision import (FaceDetector, FerModel, VisionWorker, crop_face,  # noqa: E402
                               detect_in, far_tiles)

CLIPS = ("pyfeat_single_face.mp4", "pyfeat_WolfgangLanger_Pexels.mp4")


def clip_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video as (H, W, 3) uint8 RGB (PyAV, display rotation not applied)."""
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def moved_away(rgb: np.ndarray, k: float, left: int | None = None) -> np.ndarray:
    """``rgb`` shrunk by ``k`` inside a frame of its own size, the border repeating the shrunk
    frame's edge pixels (no second copy of the face): centred, or ``left`` px from the left
    edge (clamped to the frame)."""
    import cv2
    if k == 1:
        return rgb
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (round(w / k), round(h / k)), interpolation=cv2.INTER_AREA)
    top = (h - small.shape[0]) // 2
    room = w - small.shape[1]
    left = room // 2 if left is None else min(max(int(left), 0), room)
    return cv2.copyMakeBorder(small, top, h - small.shape[0] - top, left, room - left,
                              cv2.BORDER_REPLICATE)


def walking(i: int, width: int, k: float, px_per_frame: float) -> int:
    """Left edge of frame ``i``'s shrunk picture for a person walking across the frame and back
    at ``px_per_frame``: a ping-pong over the ``width - width / k`` px there is room for."""
    room = width - round(width / k)
    x = (px_per_frame * i) % (2 * room) if room else 0
    return int(x if x <= room else 2 * room - x)


def video_range(det: FaceDetector, fer: FerModel, clips_dir: Path, factors, per_frame: int,
                pan: float):
    clips = [clip_frames(clips_dir / c) for c in CLIPS]
    near = []  # the FER label of each frame as recorded, the face found whole
    for frames in clips:
        worker = VisionWorker(det, fer, 0)
        near += [None if r is None else int(r.probs.argmax())
                 for r in (worker.process(rgb)[0] for rgb in frames)]
    out = {}
    for k in factors:
        whole = tiled = live = n = same = 0
        for frames in clips:
            worker = VisionWorker(det, fer, per_frame)
            for rgb in frames:
                img = moved_away(rgb, k)
                h, w = img.shape[:2]
                has = bool(det.detect(img))
                whole += has
                tiled += has or bool(detect_in(det, img, far_tiles(w, h)))
                r = worker.process(img)[0]
                live += r is not None
                same += r is not None and int(r.probs.argmax()) == near[n]
                n += 1
        walked = 0
        for frames in clips:
            worker = VisionWorker(det, fer, per_frame)
            for i, rgb in enumerate(frames):
                img = moved_away(rgb, k, walking(i, rgb.shape[1], k, pan))
                walked += worker.process(img)[0] is not None
        out[str(k)] = {"frames": n, "whole": whole / n, "tiles": tiled / n, "live": live / n,
                       "live_same_label": same / max(live, 1), "live_walking": walked / n}
        print(f"  moved {k}x away: faces in {whole / n:6.1%} of {n} frames whole, "
              f"{tiled / n:6.1%} with every tile, {live / n:6.1%} live ({per_frame} tile a "
              f"frame); FER label as near in {same / max(live, 1):6.1%} of those; walking "
              f"across at {pan:g} px a frame, live {walked / n:6.1%}")
    return out


def small_faces(det: FaceDetector, fer: FerModel, split: str, sizes, limit: int | None,
                seed: int):
    import cv2
    x, y, _ = load_fer2013(split)
    if limit:
        x, y = x[:limit], y[:limit]
    rng = np.random.default_rng(seed)
    out = {}
    for s in sizes:
        found = {"whole": 0, "tiles": 0}
        right = {"whole": 0, "tiles": 0}
        for img, label in zip(x, y):
            frame = np.clip(128 + rng.normal(0, 4, (480, 640)), 0, 255).astype(np.uint8)
            fx, fy = int(rng.integers(0, 640 - s)), int(rng.integers(0, 480 - s))
            frame[fy:fy + s, fx:fx + s] = cv2.resize(img, (s, s), interpolation=cv2.INTER_LINEAR)
            rgb = np.repeat(frame[..., None], 3, axis=2)
            whole = det.detect(rgb)
            tiled = whole or detect_in(det, rgb, far_tiles(640, 480))
            hit = None  # the FER of the face found, if any (the same face for both when whole)
            if tiled:
                face = max(tiled, key=lambda f: f.area)
                hit = int(fer.predict(crop_face(rgb, face)).argmax()) == int(label)
            for how, faces in (("whole", whole), ("tiles", tiled)):
                if faces:
                    found[how] += 1
                    right[how] += hit
        n = len(x)
        out[str(s)] = {"faces": n, **{f"found_{h}": found[h] / n for h in found},
                       **{f"accuracy_{h}": right[h] / n for h in right}}
        print(f"  {s:4d} px faces ({n}): found {found['whole'] / n:6.1%} whole, "
              f"{found['tiles'] / n:6.1%} with tiles; FER right {right['whole'] / n:6.1%} / "
              f"{right['tiles'] / n:6.1%}")
    return out


def no_faces(det: FaceDetector, clips_dir: Path, seed: int):
    import cv2
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(300):
        side = int(rng.integers(48, 641))
        h, w = side, int(side * rng.uniform(0.75, 1.34))
        kind = i % 4
        if kind == 0:
            img = np.full((h, w, 3), int(rng.integers(0, 256)), np.uint8)
        elif kind == 1:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == 2:
            img = np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        else:
            ramp = np.linspace(0, 255, w)[None, :] * rng.uniform(0.2, 1) + rng.uniform(0, 60)
            img = np.repeat(np.clip(np.repeat(ramp, h, 0), 0, 255)[..., None], 3, 2)
            img = img.astype(np.uint8)
        photos.append(img)
    for c in CLIPS:
        for rgb in clip_frames(clips_dir / c)[10 * (seed % 2)::20]:
            for strip in (rgb[:, :150], rgb[:, -150:]):
                photos.append(cv2.resize(strip, (640, 480), interpolation=cv2.INTER_LINEAR))
    whole = tiled = 0
    for img in photos:
        h, w = img.shape[:2]
        a = bool(det.detect(img))
        whole += a
        tiled += a or any(detect_in(det, img, far_tiles(w, h, z)) for z in (2, 4))
    n = len(photos)
    print(f"  no face ({n} photos: 300 synthetic, {n - 300} room edges): a face found in "
          f"{whole} whole, {tiled} with every tile of zooms 2 and 4")
    return {"photos": n, "found_whole": whole, "found_tiles": tiled}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "config.toml",
                    help="config.toml (default: the repository's)")
    ap.add_argument("--split", default="val", choices=("val", "test"),
                    help="FER2013 split of the small faces (val = PublicTest)")
    ap.add_argument("--sizes", default="40,56,72,96,128", help="face sizes, px in 640 x 480")
    ap.add_argument("--factors", default="1,2,3,4", help="how many times farther (video)")
    ap.add_argument("--pan", type=float, default=15.0,
                    help="px a frame the far person walks across the frame (video)")
    ap.add_argument("--limit", type=int, default=None, help="first N FER2013 faces only")
    ap.add_argument("--seed", type=int, default=0,
                    help="places of the small faces; the photos without a face (an odd seed "
                         "takes the other half of the room-edge frames)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)
    det = FaceDetector(cfg.vision.detector_model, cfg.vision.min_detection_confidence)
    fer = FerModel.from_config(cfg.vision)
    t0 = time.perf_counter()
    res = {"classes": CLASSES}
    print("real video:")
    res["video"] = video_range(det, fer, DATA_ROOT / "av_clips",
                               [float(k) for k in args.factors.split(",")],
                               max(1, cfg.vision.far_face_tiles), args.pan)
    print(f"FER2013 {args.split} faces in a 640x480 frame:")
    res["small_faces"] = small_faces(det, fer, args.split,
                                     [int(s) for s in args.sizes.split(",")], args.limit, args.seed)
    print("false faces:")
    res["no_face"] = no_faces(det, DATA_ROOT / "av_clips", args.seed)
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
