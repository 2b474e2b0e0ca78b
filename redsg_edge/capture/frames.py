"""Letterboxing (fit an image into the configured frame size keeping its aspect ratio) and
frame-rate thinning.

Pure functions on arrays (OpenCV resize); shared by the camera backends so every frame in a
:class:`~redsg_edge.capture.rings.FrameRing` has the ring's size. :class:`FrameSchedule` is the
one rule that thins frames, used by the file camera and by ``perception.Perception``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["letterbox_geometry", "letterbox", "FrameSchedule"]


def letterbox_geometry(src_w: int, src_h: int, width: int, height: int
                       ) -> tuple[int, int, int, int]:
    """Where a src_w x src_h image goes inside width x height keeping its aspect ratio.

    All sizes in pixels (ints > 0). Returns ``(x, y, w, h)`` of the scaled image, centred, sizes
    >= 2 and even where possible.
    """
    scale = min(width / src_w, height / src_h)
    w = min(width, max(2, int(round(src_w * scale))))
    h = min(height, max(2, int(round(src_h * scale))))
    return (width - w) // 2, (height - h) // 2, w, h


def letterbox(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize uint8 (h, w, 3) to (height, width, 3) keeping the aspect ratio, black bars around.

    Letterboxing rather than stretching keeps faces their true shape for the detector and the
    FER crop (a 16:9 clip stretched to 4:3 makes every face 33 % taller). Returns a new uint8
    (height, width, 3) array, or ``rgb`` itself when it already has that size.
    """
    if rgb.shape[:2] == (height, width):
        return rgb
    import cv2
    x, y, w, h = letterbox_geometry(rgb.shape[1], rgb.shape[0], width, height)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    interp = cv2.INTER_AREA if w < rgb.shape[1] else cv2.INTER_LINEAR
    out[y:y + h, x:x + w] = cv2.resize(rgb, (w, h), interpolation=interp)
    return out


class FrameSchedule:
    """Thin a frame stream to at most ``max_fps`` frames per second of its own time stamps.

    The schedule steps by ``1 / max_fps`` instead of restarting at each kept frame, so 24 fps
    thinned to 15 keeps about 15 frames a second, not 12; a gap (a dropped or missing frame)
    restarts it. Pure and clock-free: the file camera (live) and :class:`Perception` (live and
    replay) apply the same rule, so both keep the same frames of the same media.
    """

    def __init__(self) -> None:
        self._next = -math.inf

    def keep(self, t: float, max_fps: float | None) -> bool:
        """Whether the frame at ``t`` (s) is kept; ``max_fps`` None or 0 keeps every frame."""
        if not max_fps:
            return True
        if t < self._next - 1e-3:
            return False
        step = 1.0 / max_fps
        self._next += step
        if self._next <= t:
            self._next = t + step
        return True
