"""Camera backends: ``read()`` gives ``(t, rgb)``, t in seconds, rgb uint8 (height, width, 3).

- :class:`Picamera2Camera`: Raspberry Pi, picamera2/libcamera.
- :class:`OpenCVCamera`: a V4L2 index or path, or a GStreamer pipeline string (Jetson CSI).
- :class:`VideoFileCamera`: a video file decoded with PyAV (replay, or live ``source = "file"``).
- :func:`open_camera`: the backend ``[camera]`` in the config asks for, opened.

All are :class:`~redsg_edge.capture.sources.PullSource` s. A camera that is missing or cannot be
opened raises :class:`~redsg_edge.errors.DeviceError` (exit 69) within ``OPEN_TIMEOUT_S``, naming
the device and the config key to change.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import DeviceError
from .devices import _picamera2_cameras
from .files import _FileReplay, _open_container, _until_damaged
from .frames import FrameSchedule, letterbox, letterbox_geometry
from .sources import OPEN_TIMEOUT_S, PullSource, _call_with_timeout, _fmt, _plausible_monotonic

if TYPE_CHECKING:  # pragma: no cover
    from ..config import CameraConfig

log = logging.getLogger(__name__)

__all__ = ["CameraSource", "Picamera2Camera", "OpenCVCamera", "VideoFileCamera", "open_camera"]


class CameraSource(PullSource):
    """One camera backend. ``read()`` gives ``(t, rgb)``: t in seconds, rgb uint8 (H, W, 3).

    ``open()`` raises :class:`DeviceError`; ``read()`` returns None at the end of a non-looping
    file (or after :meth:`interrupt`) and raises OSError when a live device fails to deliver.
    ``live`` is True for real devices (timestamps on ``time.monotonic()``).
    """

    name = "camera"


class Picamera2Camera(CameraSource):
    """Raspberry Pi camera through picamera2/libcamera (``apt install python3-picamera2``).

    ``index``: camera number in ``Picamera2.global_camera_info()``. Frames come from the main
    stream configured as ``RGB888`` at width x height: despite its name, libcamera's RGB888 is
    laid out as [B, G, R] bytes in memory (what OpenCV calls BGR), so channels are reversed here.
    Timestamps: the frame's ``SensorTimestamp`` (ns, kernel buffer time) when it matches
    ``time.monotonic()``, else the time the frame arrived.
    """

    def __init__(self, index: int = 0, width: int = 640, height: int = 480, fps: float = 15.0,
                 key: str = "camera.source") -> None:
        self.index, self.width, self.height, self.fps, self.key = index, width, height, fps, key
        self.name = f"picamera2:{index}"
        self._cam = None

    def open(self) -> None:
        """Configure and start camera ``index``. Raises DeviceError (exit 69) when picamera2 is
        not importable (key ``key``), the camera is not listed or does not start within
        ``OPEN_TIMEOUT_S`` (key ``camera.device``)."""
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise DeviceError(
                f"no camera: picamera2 is not importable ({exc}) (camera.source = \"picamera2\"); "
                "on Raspberry Pi OS `apt install python3-picamera2` and create the venv with "
                "--system-site-packages, or set camera.source = \"opencv\"", self.key,
                self.name) from None
        try:
            info = Picamera2.global_camera_info()
        except Exception as exc:  # noqa: BLE001 - libcamera errors have no common base
            info, why = [], str(exc)
        else:
            why = "libcamera lists no camera"
        if self.index >= len(info):
            raise DeviceError(
                f"no camera: Raspberry Pi camera {self.index} not found ({why}; camera.device = "
                f"{self.index}); check the ribbon cable and `rpicam-hello --list-cameras`, or set "
                "camera.source = \"none\" to run voice-only", "camera.device", self.name)

        def start():
            cam = Picamera2(self.index)
            try:
                config = cam.create_video_configuration(
                    main={"size": (self.width, self.height), "format": "RGB888"},
                    controls={"FrameRate": float(self.fps)}, buffer_count=4)
                cam.configure(config)
                cam.start()
            except Exception:
                cam.close()
                raise
            return cam

        try:
            self._cam = _call_with_timeout(start, OPEN_TIMEOUT_S, self.name)
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(f"no camera: Raspberry Pi camera {self.index} cannot be started: "
                              f"{exc} (camera.device = {self.index}); is another program using "
                              "it? set camera.source = \"none\" to run voice-only",
                              "camera.device", self.name) from None

    def read(self) -> tuple[float, np.ndarray] | None:
        """Next frame ``(t, rgb)``: t = sensor time on ``time.monotonic()`` (s), rgb uint8
        (height, width, 3). Blocks until libcamera delivers; raises OSError when not open."""
        if self._cam is None:
            raise OSError(f"{self.name} is not open")
        request = self._cam.capture_request()
        try:
            bgr = request.make_array("main")  # a copy; the buffer goes back to libcamera below
            ts_ns = request.get_metadata().get("SensorTimestamp")
        finally:
            request.release()
        now = time.monotonic()
        t = _plausible_monotonic(ts_ns / 1e9 if ts_ns else None, now)
        rgb = bgr[:, :, 2::-1]  # [B, G, R] -> RGB (drops a padding channel if any)
        return t, letterbox(np.ascontiguousarray(rgb), self.width, self.height)

    def close(self) -> None:
        """Stop and release the camera (libcamera allows one user at a time)."""
        if self._cam is not None:
            try:
                self._cam.stop()
            finally:
                self._cam.close()
                self._cam = None


class OpenCVCamera(CameraSource):
    """A camera through OpenCV's VideoCapture.

    ``device``: int ``n`` or ``"/dev/videoN"`` → V4L2 (``CAP_V4L2``); any other string → a
    GStreamer pipeline ending in ``appsink`` (``CAP_GSTREAMER``; Jetson CSI cameras via
    ``nvarguscamerasrc``, needs JetPack's OpenCV, the PyPI wheels have no GStreamer). Frames are
    converted BGR → RGB and letterboxed to width x height if the driver gives another size.
    ``open()`` reads a first frame and raises :class:`DeviceError` within ``OPEN_TIMEOUT_S``
    when the device cannot be opened or delivers nothing.
    """

    def __init__(self, device: int | str = 0, width: int = 640, height: int = 480,
                 fps: float = 15.0, key: str = "camera.device") -> None:
        self.device, self.width, self.height, self.fps, self.key = device, width, height, fps, key
        self._v4l2_path = (f"/dev/video{device}" if isinstance(device, int)
                           else device if str(device).startswith("/dev/") else None)
        self.name = f"opencv:{self._v4l2_path or 'gstreamer'}"
        self._cap = None
        self._first: tuple[float, np.ndarray] | None = None

    def _hint(self) -> str:
        return ('set camera.source = "none" to run voice-only or "file" with camera.file; '
                "`redsg-edge devices` lists cameras")

    def _fail(self, why: str) -> DeviceError:
        shown = self._v4l2_path or f"GStreamer pipeline {self.device!r}"
        return DeviceError(f"no camera: {shown} {why} (camera.device = {_fmt(self.device)}); "
                           + self._hint(), self.key, self.device)

    def open(self) -> None:
        """Open the device and read a first frame (kept for the first :meth:`read`). Raises
        DeviceError (exit 69) naming ``key`` when it does not exist, is not permitted, busy,
        delivers nothing or takes longer than ``OPEN_TIMEOUT_S``."""
        import cv2
        if self._v4l2_path is None and not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise self._fail("cannot be used: this OpenCV build has no GStreamer support (the PyPI "
                             "wheels have none; on a Jetson use JetPack's python3-opencv with a "
                             "--system-site-packages venv)")

        def start():
            if self._v4l2_path is not None:
                target = self.device if isinstance(self.device, int) else self._v4l2_path
                cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
                if cap.isOpened():
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
                    cap.set(cv2.CAP_PROP_FPS, self.fps)
                    cap.set(cv2.CAP_PROP_BUFFERSIZE, 2)  # fresher frames, less queued latency
            else:
                cap = cv2.VideoCapture(str(self.device), cv2.CAP_GSTREAMER)
            if not cap.isOpened():
                return None, None
            ok, bgr = cap.read()
            return cap, (bgr if ok else None)

        def quiet_start():
            # OpenCV logs its own WARN lines for a missing device; our DeviceError says more.
            # cv2.setLogLevel is in every wheel since 4.5 (cv2.utils.logging is not); 2 = ERROR.
            quiet = hasattr(cv2, "setLogLevel") and hasattr(cv2, "getLogLevel")
            old = cv2.getLogLevel() if quiet else None
            if quiet:
                cv2.setLogLevel(2)
            try:
                return start()
            finally:
                if quiet:
                    cv2.setLogLevel(old)

        try:
            cap, bgr = _call_with_timeout(quiet_start, OPEN_TIMEOUT_S, self.name)
        except TimeoutError:
            raise self._fail(f"did not open within {OPEN_TIMEOUT_S:g} s") from None
        if cap is None:
            path = self._v4l2_path
            if path and not os.path.exists(path):
                raise self._fail("does not exist")
            if path and not os.access(path, os.R_OK | os.W_OK):
                raise self._fail("cannot be opened: permission denied (add the user to the "
                                 "'video' group)")
            raise self._fail("cannot be opened (busy, or not a video capture node)")
        if bgr is None:
            cap.release()
            raise self._fail("opened but delivered no frame")
        self._cap = cap
        self._first = self._convert(bgr, cap)

    def _convert(self, bgr: np.ndarray, cap) -> tuple[float, np.ndarray]:
        import cv2
        now = time.monotonic()
        t = now
        if self._v4l2_path is not None:
            # V4L2 buffer timestamps are CLOCK_MONOTONIC, i.e. time.monotonic(), in ms here.
            t = _plausible_monotonic(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, now)
        if bgr.ndim == 2:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return t, letterbox(rgb, self.width, self.height)

    def read(self) -> tuple[float, np.ndarray] | None:
        """Next frame ``(t, rgb)``: t = the V4L2 buffer time on ``time.monotonic()`` (s; arrival
        time for GStreamer), rgb uint8 (height, width, 3). Raises OSError when not open or when
        the device gives no frame (unplugged)."""
        if self._first is not None:
            item, self._first = self._first, None
            return item
        if self._cap is None:
            raise OSError(f"{self.name} is not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise OSError(f"{self.name}: no frame (camera disconnected?)")
        return self._convert(bgr, self._cap)

    def close(self) -> None:
        """Release the VideoCapture."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileCamera(_FileReplay, CameraSource):
    """Frames of a video file decoded with PyAV, as RGB uint8 (height, width, 3).

    Each frame is scaled (by FFmpeg's swscale, in the same pass as the RGB conversion) to fit
    width x height keeping its aspect ratio, centred with black bars (letterbox; see
    :func:`letterbox` for why not stretch). A display-rotation tag (phone videos) is applied.

    ``realtime=False`` (replay): every frame, as fast as decoding goes, ``t`` = media time (pts, s);
    ``read()`` returns None at the end. ``realtime=True`` (live ``camera.source = "file"``): frames
    are released at ``clock_origin + media time`` on ``time.monotonic()`` (origin = the time of
    :meth:`open` unless given), the file loops forever (each loop shifted by the container's
    duration), and at most ``max_fps`` frames per second are converted (others are skipped).
    Raises :class:`DeviceError` naming ``key`` for a missing or undecodable file.
    """

    def __init__(self, path: str | os.PathLike | None, width: int = 640, height: int = 480,
                 realtime: bool = False, max_fps: float | None = None,
                 clock_origin: float | None = None, key: str = "camera.file") -> None:
        super().__init__(path, realtime, clock_origin, key)
        self.width, self.height, self.max_fps = width, height, max_fps
        self.decoded = 0  # frames decoded (including skipped ones)
        self._geom: tuple | None = None
        self._schedule = FrameSchedule()

    def _open_container(self):
        container = _open_container(self.path, self.key, "camera")
        if not container.streams.video:
            container.close()
            raise DeviceError(f"no camera: {self.path} has no video track ({self.key} = "
                              f"{_fmt(self.path)})", self.key, str(self.path))
        container.streams.video[0].thread_type = "AUTO"  # frame threads: ~2x faster decoding
        return container

    def _track(self, container) -> Any:
        return container.streams.video[0]

    def _decode(self) -> Iterator[tuple[float, Any]]:
        offset = 0.0
        while True:
            container = self._container
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 25)
            last = None
            i = 0
            for frame in _until_damaged(container.decode(stream),
                                        lambda exc: self._damaged(last or 0.0, exc)):
                mt = frame.time if frame.time is not None else i / rate
                i += 1
                last = mt
                self.decoded += 1
                yield offset + mt, frame
            declared = self._declared  # read from the header at open()
            if (self.warning is None and last is not None
                    and declared - last > max(1.0, 0.1 * declared)):
                self.warning = (f"{self.path}: video ends at {last:.1f} s of the {declared:.1f} s "
                                "the file declares; the rest is damaged or missing")
                log.warning("%s", self.warning)
            if not self.realtime or last is None:
                return
            period = container.duration / 1e6 if container.duration else last + 1 / rate
            offset += max(period, last + 1 / rate)
            container.close()
            self._container = self._open_container()

    def _to_rgb(self, frame) -> np.ndarray:
        rot = int(round((frame.rotation or 0) / 90)) % 4  # ffmpeg's own autorotation, CCW
        key = (frame.width, frame.height, rot)
        if self._geom is None or self._geom[0] != key:
            sw, sh = (frame.height, frame.width) if rot % 2 else (frame.width, frame.height)
            self._geom = (key, letterbox_geometry(sw, sh, self.width, self.height))
        x, y, w, h = self._geom[1]
        dw, dh = (h, w) if rot % 2 else (w, h)
        img = frame.to_ndarray(format="rgb24", width=dw, height=dh)
        if rot:
            img = np.rot90(img, rot)
        if (w, h) == (self.width, self.height):
            return np.ascontiguousarray(img)
        out = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        out[y:y + h, x:x + w] = img
        return out

    def read(self) -> tuple[float, np.ndarray] | None:
        """Next frame ``(t, rgb)``: t = media time (s) in replay, ``clock_origin +`` media time
        when realtime (released no earlier than that instant); rgb uint8 (height, width, 3).
        Returns None at the end (replay) or after :meth:`interrupt`; raises OSError when not
        open."""
        for mt, frame in self._opened():
            if self.realtime:
                if not self._schedule.keep(mt, self.max_fps):
                    continue
                t = self.clock_origin + mt
                delay = t - time.monotonic()
                if delay > 0 and self._wake.wait(delay):
                    return None
                return t, self._to_rgb(frame)
            return mt, self._to_rgb(frame)
        return None


def open_camera(cfg: CameraConfig, realtime: bool = True,
                clock_origin: float | None = None) -> CameraSource | None:
    """Open the camera ``cfg`` describes; None for ``source = "none"``.

    ``auto``: picamera2 when it is importable and libcamera lists a camera, else OpenCV with
    ``cfg.device``. ``file``: :class:`VideoFileCamera` over ``cfg.file`` (``realtime`` paces and
    loops it, at most ``cfg.fps``; ``clock_origin`` as there). Returns an opened source; raises
    :class:`DeviceError` (exit code 69) naming the config key to change.
    """
    src = cfg.source
    if src == "none":
        return None
    if src == "file":
        cam: CameraSource = VideoFileCamera(cfg.file, cfg.width, cfg.height, realtime=realtime,
                                            max_fps=cfg.fps if realtime else None,
                                            clock_origin=clock_origin, key="camera.file")
    elif src == "picamera2":
        cam = Picamera2Camera(cfg.device if isinstance(cfg.device, int) else 0, cfg.width,
                              cfg.height, cfg.fps)
    elif src == "opencv":
        cam = OpenCVCamera(cfg.device, cfg.width, cfg.height, cfg.fps)
    else:  # auto
        pi, note = _picamera2_cameras() if isinstance(cfg.device, int) else (None, "")
        if pi:
            index = cfg.device if cfg.device < len(pi) else 0  # type: ignore[operator]
            cam = Picamera2Camera(index, cfg.width, cfg.height, cfg.fps, key="camera.source")
        else:
            cam = OpenCVCamera(cfg.device, cfg.width, cfg.height, cfg.fps)
            try:
                cam.open()
            except DeviceError as exc:
                if pi is not None:  # picamera2 is installed, so this is likely a Pi: say so
                    raise DeviceError(f"{exc} [and no Raspberry Pi camera: "
                                      f"{note or 'libcamera lists none'}]", exc.key,
                                      exc.device) from None
                raise
            return cam
    cam.open()
    return cam

