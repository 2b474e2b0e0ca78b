"""Letterboxing: fit an image into the configured frame size keeping its aspect ratio.

Pure functions on arrays (OpenCV resize); shared by the camera backends so every frame in a
:class:`~redsg_edge.capture.rings.FrameRing` has the ring's size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["letterbox_geometry", "letterbox"]


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
