"""Face-crop augmentation for FER training: what a cheap camera, a room and a person do to a face.

FER2013 faces are web photos, mostly lit and framed for a picture. The device's crops are not:
the room is dark or backlit, the sensor is noisy, the stream is compressed, the face is small in
the frame (the crop is upscaled from few pixels), and a hand or glasses cover part of it. Each
transform here takes and returns one (48, 48) float32 grey image in [0, 255], is pure (the
random state is an argument) and is measurable (tests/test_fer_augment.py checks each claim):

1. ``gamma``: pixel = 255 (pixel / 255) ** g, g log-uniform in 0.5–2 (under- and over-exposure;
   the keras stage already varies brightness ±20 % and contrast ±25 %);
2. ``low_resolution``: down to 12–32 px with area averaging, back up bilinearly (a face 12–32
   px wide in the camera frame, as at 1.5–4 m with a 640-px wide-angle camera);
3. ``sensor_noise``: additive Gaussian noise of 2–10 grey levels standard deviation (at 0.5–2 %
   of full scale, the read noise of small sensors in dim light), clipped to [0, 255];
4. ``jpeg``: a JPEG round trip at quality 15–75 (Pillow's libjpeg: MJPEG webcams, streams);
5. ``occlude``: a hand (a filled half ellipse of one grey level, 8–24 % of the crop, from the
   bottom or a side), glasses (two ellipse rims and a bridge at eye height) or a random
   rectangle (cutout, DeVries & Taylor 2017) of 8–40 % of the crop.

``Augmenter`` chains them the way ``scripts/train_fer.py --augment heavy`` uses them, each with
its own probability, on top of the geometric and brightness/contrast stage inside the keras
graph. numpy and Pillow only (both are runtime dependencies), so the tests run without the
``[train]`` extra.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIDE = 48
OCCLUDERS = ("hand", "glasses", "cutout")


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    """(48, 48) float32 in [0, 255] → the same with each pixel p mapped to 255 (p / 255) ** g."""
    return (255.0 * (np.clip(img, 0, 255) / 255.0) ** g).astype(np.float32)


def low_resolution(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` seen through a ``side`` x ``side`` sensor patch: box-filtered down, bilinear back up."""
    small = Image.fromarray(img.astype(np.float32), mode="F").resize((side, side), Image.BOX)
    return np.asarray(small.resize(img.shape[::-1], Image.BILINEAR), np.float32)


def sensor_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` plus Gaussian noise of standard deviation ``sigma`` grey levels, clipped to [0, 255]."""
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG encode/decode round trip of ``img`` (rounded to uint8) at ``quality`` (1–95)."""
    buf = io.BytesIO()
    Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32)


def occlusion_mask(kind: str, rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """(side, side) bool mask of an occluder of ``kind`` (one of OCCLUDERS), placed at random.

    hand: the half of an ellipse (0.6–1.0 of the side long, 0.35–0.6 wide) centred on the
    bottom, left or right edge (8–24 % of the crop); glasses: two elliptic rims 2 px thick around the eyes (the FER2013
    framing puts them near 0.4 of the height, 0.3 and 0.7 of the width) and a bridge; cutout: an
    axis-aligned rectangle of 8–40 % of the crop.
    """
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "hand":
        long_, short = side * rng.uniform(0.6, 1.0), side * rng.uniform(0.35, 0.6)
        edge = rng.choice(["bottom", "left", "right"])
        c = side * rng.uniform(0.25, 0.75)
        if edge == "bottom":
            box = (c - short / 2, side - long_ / 2, c + short / 2, side + long_ / 2)
        elif edge == "left":
            box = (-long_ / 2, c - short / 2, long_ / 2, c + short / 2)
        else:
            box = (side - long_ / 2, c - short / 2, side + long_ / 2, c + short / 2)
        draw.ellipse(box, fill=255)
    elif kind == "glasses":
        y, w, h = side * rng.uniform(0.33, 0.45), side * rng.uniform(0.28, 0.36), side * rng.uniform(0.15, 0.22)
        for cx in (side * 0.3, side * 0.7):
            draw.ellipse((cx - w / 2, y - h / 2, cx + w / 2, y + h / 2), outline=255, width=2)
        draw.line((side * 0.3 + w / 2, y, side * 0.7 - w / 2, y), fill=255, width=2)
    elif kind == "cutout":
        area = rng.uniform(0.08, 0.40) * side * side
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        w = min(side, np.sqrt(area * aspect))
        h = min(side, area / w)
        x0, y0 = rng.uniform(0, side - w), rng.uniform(0, side - h)
        draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=255)
    else:
        raise ValueError(f"occluder {kind!r}: expected one of {OCCLUDERS}")
    return np.asarray(canvas) > 0


def occlude(img: np.ndarray, mask: np.ndarray, level: float, texture: float,
            rng: np.random.Generator) -> np.ndarray:
    """``img`` with the ``mask`` pixels set to grey ``level`` plus Gaussian texture of std ``texture``."""
    out = img.copy()
    out[mask] = np.clip(level + rng.normal(0, texture, int(mask.sum())), 0, 255)
    return out


@dataclass(frozen=True)
class Augmenter:
    """The ``--augment heavy`` chain: each transform applied with its own probability, in order.

    ``__call__(batch, rng)``: (N, 48, 48) or (N, 48, 48, 1) float32 in [0, 255] → the same shape,
    each image augmented independently.
    """

    p_gamma: float = 0.4
    p_low_resolution: float = 0.25
    p_noise: float = 0.3
    p_jpeg: float = 0.3
    p_occlude: float = 0.25

    def one(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.p_gamma:
            img = gamma(img, float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))))
        if rng.random() < self.p_low_resolution:
            img = low_resolution(img, int(rng.integers(12, 33)))
        if rng.random() < self.p_noise:
            img = sensor_noise(img, rng.uniform(2.0, 10.0), rng)
        if rng.random() < self.p_jpeg:
            img = jpeg(img, int(rng.integers(15, 76)))
        if rng.random() < self.p_occlude:
            kind = OCCLUDERS[int(rng.integers(len(OCCLUDERS)))]
            level = rng.uniform(0, 255) if kind != "glasses" else rng.uniform(0, 60)
            img = occlude(img, occlusion_mask(kind, rng), level, rng.uniform(0, 12), rng)
        return img

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = np.asarray(batch, np.float32)
        flat = x.reshape(-1, SIDE, SIDE)
        return np.stack([self.one(im, rng) for im in flat]).reshape(x.shape).astype(np.float32)
