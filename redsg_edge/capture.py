"""Camera and microphone backends, and the preallocated rings between capture and inference.

Data flow: a *source* produces timestamped frames (``(t, rgb)``, RGB uint8 (H, W, 3)) or audio
blocks (``(t_start, int16 (n,))``, 16 kHz mono); a :class:`CaptureThread` copies them into a
:class:`FrameRing` or :class:`AudioRing`; the vision and speech workers read the newest data from
the rings. Rings never allocate after construction and count what they drop.

Timestamps are seconds. Live sources stamp with ``time.monotonic()`` (the sensor/ADC time mapped
onto it where the driver gives one). File sources give media time (the stream's pts in seconds)
with ``realtime=False`` (replay, as fast as decoding goes, ends at the end of the file), and
``clock_origin + media time`` with ``realtime=True`` (live ``source = "file"``: paced to the wall
clock, looped forever), so a file behaves like a camera or microphone.

Backends:

- camera: :class:`Picamera2Camera` (Raspberry Pi, libcamera), :class:`OpenCVCamera` (V4L2 index
  or path, or a GStreamer pipeline string for Jetson CSI cameras), :class:`VideoFileCamera` (PyAV).
- microphone: :class:`SounddeviceMic` (PortAudio), :class:`AudioFileMic` (PyAV: an audio file, or
  the audio track of a video file).

A device that is missing or cannot be opened raises :class:`DeviceError`, whose message names the
device and the config key to change and whose ``exit_code`` is 69 (EX_UNAVAILABLE).
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .errors import EX_UNAVAILABLE, DeviceError

if TYPE_CHECKING:  # pragma: no cover
    from .config import CameraConfig, MicrophoneConfig

log = logging.getLogger(__name__)


def _until_damaged(frames: Iterator[Any], on_damage: Callable[[Exception], None]) -> Iterator[Any]:
    """PyAV's decoded frames until the end, or until the first decoding error: a truncated or
    corrupt file is kept up to the damage, and ``on_damage(exc)`` says where it stopped."""
    import av
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            on_damage(exc)
            return
        yield frame

SAMPLE_RATE = 16000  # Hz; every audio path in the project runs at 16 kHz mono int16
OPEN_TIMEOUT_S = 5.0  # a device that has not opened (or given a first frame) by then is missing

__all__ = [
    "EX_UNAVAILABLE", "SAMPLE_RATE", "DeviceError", "FrameRing", "AudioRing", "CameraSource",
    "Picamera2Camera", "OpenCVCamera", "VideoFileCamera", "MicSource", "SounddeviceMic",
    "AudioFileMic", "open_camera", "open_microphone", "CaptureThread", "letterbox",
    "list_devices", "format_devices",
]


# --------------------------------------------------------------------------------------- rings

class FrameRing:
    """Preallocated ring of RGB frames with capture timestamps and sequence numbers.

    ``capacity`` slots of uint8 (height, width, 3). One producer calls :meth:`put`; one consumer
    calls :meth:`latest` or :meth:`wait`, which return the *newest* frame (older ones are skipped:
    the vision worker wants the freshest face, not a backlog).

    Counters: ``written`` frames put; ``dropped`` frames that were never handed to the consumer,
    counted when their slot is overwritten (so a frame skipped by ``latest`` counts once the ring
    wraps over it).
    """

    def __init__(self, capacity: int, height: int, width: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.shape = (int(height), int(width), 3)
        self.frames = np.zeros((self.capacity, *self.shape), dtype=np.uint8)
        self.times = np.zeros(self.capacity, dtype=np.float64)
        self.seqs = np.full(self.capacity, -1, dtype=np.int64)
        self._taken = np.ones(self.capacity, dtype=bool)  # empty slots count as taken
        self._cond = threading.Condition()
        self._closed = False
        self.written = 0
        self.dropped = 0

    def put(self, frame: np.ndarray, t: float) -> int:
        """Copy ``frame`` (uint8 (H, W, 3), exactly the ring's size) into the next slot.

        ``t``: capture time in seconds. Returns the frame's sequence number (0, 1, ...).
        Raises ValueError on a shape mismatch (resizing is the source's job).
        """
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} != ring shape {self.shape}")
        with self._cond:
            seq = self.written
            slot = seq % self.capacity
            if not self._taken[slot]:
                self.dropped += 1
            np.copyto(self.frames[slot], frame)
            self.times[slot] = t
            self.seqs[slot] = seq
            self._taken[slot] = False
            self.written = seq + 1
            self._cond.notify_all()
            return seq

    def _take(self, after_seq: int, out: np.ndarray | None):
        if self.written == 0 or self.written - 1 <= after_seq:
            return None
        seq = self.written - 1
        slot = seq % self.capacity
        self._taken[slot] = True
        if out is None:
            out = self.frames[slot].copy()
        else:
            np.copyto(out, self.frames[slot])
        return seq, float(self.times[slot]), out

    def latest(self, after_seq: int = -1, out: np.ndarray | None = None
               ) -> tuple[int, float, np.ndarray] | None:
        """The newest frame if its sequence number is greater than ``after_seq``, else None.

        Returns ``(seq, t, frame)``; ``frame`` is a copy (into ``out`` when given, a preallocated
        uint8 (H, W, 3) array), so the producer may overwrite the slot at once.
        """
        with self._cond:
            return self._take(after_seq, out)

    def wait(self, after_seq: int = -1, timeout: float | None = None,
             out: np.ndarray | None = None) -> tuple[int, float, np.ndarray] | None:
        """Like :meth:`latest`, but blocks up to ``timeout`` seconds for a newer frame.

        Returns None on timeout, or once :meth:`close` was called and no newer frame is left.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self.written - 1 > after_seq, timeout)
            return self._take(after_seq, out)

    def close(self) -> None:
        """Wake every waiter; later ``wait`` calls return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "dropped": self.dropped}


class AudioRing:
    """Preallocated ring of 16 kHz mono int16 audio addressed by absolute sample position.

    Sample ``p`` (0 = the first sample ever written) is held while
    ``written_samples - capacity <= p < written_samples``. Each :meth:`write` gives the capture
    time of its block's last sample; the time of any held sample is extrapolated from the newest
    one at ``rate`` (:meth:`time_at`).

    Counters: ``written_samples``; ``overruns`` (input overflows reported by the driver, counted by
    the microphone source); ``dropped`` (samples overwritten before :meth:`read_since` read them;
    counted only once a reader has called ``read_since``).
    """

    def __init__(self, seconds: float, rate: int = SAMPLE_RATE) -> None:
        self.rate = int(rate)
        self.capacity = int(round(seconds * rate))
        if self.capacity < 1:
            raise ValueError("ring must hold at least one sample")
        self.buf = np.zeros(self.capacity, dtype=np.int16)
        self._cond = threading.Condition()
        self._closed = False
        self._reader_pos: int | None = None
        self.t_end = 0.0  # capture time (s) of the newest sample
        self.written_samples = 0
        self.overruns = 0
        self.dropped = 0

    def write(self, block: np.ndarray, t_end: float) -> None:
        """Append ``block`` (int16 (n,) or (n, 1)); ``t_end`` = capture time of its last sample, s.

        A block longer than the ring keeps only its newest ``capacity`` samples.
        """
        block = np.asarray(block).reshape(-1)
        n = block.shape[0]
        if n == 0:
            return
        with self._cond:
            w = self.written_samples
            oldest_before = max(0, w - self.capacity)
            oldest_after = max(0, w + n - self.capacity)
            if self._reader_pos is not None:
                self.dropped += max(0, oldest_after - max(oldest_before, self._reader_pos))
            src = block[-self.capacity:] if n > self.capacity else block
            start = (w + n - src.shape[0]) % self.capacity
            first = min(src.shape[0], self.capacity - start)
            self.buf[start:start + first] = src[:first]
            self.buf[:src.shape[0] - first] = src[first:]
            self.written_samples = w + n
            self.t_end = float(t_end)
            self._cond.notify_all()

    def _copy(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        out = np.empty(n, dtype=np.int16)
        a = start % self.capacity
        first = min(n, self.capacity - a)
        out[:first] = self.buf[a:a + first]
        out[first:] = self.buf[:n - first]
        return out

    def read_last(self, n: int) -> tuple[np.ndarray, float]:
        """The newest ``n`` samples and the capture time (s) of the last of them.

        Returns int16 (m,) with ``m = min(n, written_samples)`` (shorter only right after start).
        Raises ValueError when ``n`` exceeds the ring's capacity.
        """
        if n > self.capacity:
            raise ValueError(f"read_last({n}) exceeds ring capacity {self.capacity}")
        with self._cond:
            w = self.written_samples
            return self._copy(max(0, w - n), w), self.t_end

    def read_since(self, pos: int) -> tuple[np.ndarray, int, float]:
        """Every held sample from absolute position ``pos`` to the newest.

        Returns ``(samples int16 (m,), start_pos, t_end)``: ``start_pos`` is the position of
        ``samples[0]`` (greater than ``pos`` when the ring already overwrote those samples),
        ``t_end`` the capture time of the newest sample. Marks everything read for ``dropped``.
        """
        with self._cond:
            w = self.written_samples
            start = min(max(pos, w - self.capacity, 0), w)
            self._reader_pos = w
            return self._copy(start, w), start, self.t_end

    def time_at(self, pos: int) -> float:
        """Capture time (s) of the sample at absolute position ``pos`` (extrapolated at ``rate``)."""
        with self._cond:
            return self.t_end - (self.written_samples - 1 - pos) / self.rate

    def wait(self, pos: int, timeout: float | None = None) -> bool:
        """Block until sample ``pos`` has been written; False on timeout or after :meth:`close`."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._closed or self.written_samples > pos, timeout)
            return bool(ok) and self.written_samples > pos

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        return {"written_samples": self.written_samples, "overruns": self.overruns,
                "dropped": self.dropped}


# ------------------------------------------------------------------------------------ helpers

def letterbox_geometry(src_w: int, src_h: int, width: int, height: int
                       ) -> tuple[int, int, int, int]:
    """Where a src_w x src_h image goes inside width x height keeping its aspect ratio.

    Returns ``(x, y, w, h)`` of the scaled image, centred, sizes >= 2 and even where possible.
    """
    scale = min(width / src_w, height / src_h)
    w = min(width, max(2, int(round(src_w * scale))))
    h = min(height, max(2, int(round(src_h * scale))))
    return (width - w) // 2, (height - h) // 2, w, h


def letterbox(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize uint8 (h, w, 3) to (height, width, 3) keeping the aspect ratio, black bars around.

    Letterboxing rather than stretching keeps faces their true shape for the detector and the
    FER crop (a 16:9 clip stretched to 4:3 makes every face 33 % taller).
    """
    if rgb.shape[:2] == (height, width):
        return rgb
    import cv2
    x, y, w, h = letterbox_geometry(rgb.shape[1], rgb.shape[0], width, height)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    interp = cv2.INTER_AREA if w < rgb.shape[1] else cv2.INTER_LINEAR
    out[y:y + h, x:x + w] = cv2.resize(rgb, (w, h), interpolation=interp)
    return out


def _plausible_monotonic(ts: float | None, now: float, window: float = 2.0) -> float:
    """``ts`` if it looks like a time.monotonic() reading from the last ``window`` s, else ``now``."""
    if ts is not None and now - window <= ts <= now + 0.01:
        return ts
    return now


def _call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a helper thread; raise TimeoutError naming ``what`` if it takes longer.

    Opening some devices (a GStreamer pipeline with a missing CSI camera, a wedged USB camera)
    can block for a long time; the daemon must fail within seconds instead. The hung call is left
    behind in a daemon thread.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    th = threading.Thread(target=run, name=f"open {what}", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise TimeoutError(f"{what} did not open within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _fmt(value: object) -> str:
    return f'"{value}"' if isinstance(value, (str, Path)) else repr(value)


def _missing_file_error(path: Path | None, key: str, what: str) -> DeviceError:
    if path is None:
        return DeviceError(f"no {what}: {key} is not set; set {key} to a media file", key, None)
    return DeviceError(f"no {what}: {path} does not exist ({key} = {_fmt(path)}); set {key} to "
                       "an existing media file", key, str(path))


def _open_container(path: Path | None, key: str, what: str):
    import av
    if path is None or not Path(path).is_file():
        raise _missing_file_error(path, key, what)
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise DeviceError(f"no {what}: {path} cannot be decoded: {exc} ({key} = {_fmt(path)})",
                          key, str(path)) from None


class _Source:
    """What camera and microphone backends share: open/read/close, iteration until ``read()``
    returns None, and use as a context manager (open on enter, close on exit)."""

    name = "source"
    live = True

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[float, np.ndarray] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def interrupt(self) -> None:
        """Wake a pacing sleep inside :meth:`read` (realtime files); read then returns None."""

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        while (item := self.read()) is not None:
            yield item

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _FileReplay:
    """What the file camera and file microphone share: an open PyAV container, the decode
    generator ``_decode()`` that subclasses provide, the realtime clock origin (set at
    :meth:`open` unless given) and the event that wakes a pacing sleep. Not a live device."""

    live = False

    def __init__(self, path: str | os.PathLike | None, realtime: bool,
                 clock_origin: float | None, key: str) -> None:
        self.path = Path(path) if path is not None else None
        self.realtime, self.clock_origin, self.key = realtime, clock_origin, key
        self.name = f"file:{self.path}"
        self._container = None
        self._items: Iterator | None = None
        self._wake = threading.Event()
        #: Set when the file is damaged: decoding stopped early (a truncated or corrupt file is
        #: read up to the damage, not given up on), or much less audio decoded than declared.
        self.warning: str | None = None

    def _damaged(self, where: float, exc: BaseException) -> None:
        msg = (f"{self.path}: decoding stopped at {where:.1f} s of "
               f"{self._declared_s():.1f} s: {exc}; the rest of the file is damaged or missing")
        if self.warning is None:
            log.warning("%s", msg)
        self.warning = msg

    def _declared_s(self, stream: Any = None) -> float:
        """Seconds the file declares: ``stream``'s own duration, else the container's."""
        if stream is not None and stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        c = self._container
        return c.duration / 1e6 if c is not None and c.duration else float("nan")

    def _open_container(self):
        raise NotImplementedError

    def _decode(self) -> Iterator:
        raise NotImplementedError

    def open(self) -> None:
        self._container = self._open_container()
        if self.clock_origin is None:
            self.clock_origin = time.monotonic()
        self._wake.clear()
        self._items = self._decode()

    def _opened(self) -> Iterator:
        if self._items is None:
            raise OSError(f"{self.name} is not open")
        return self._items

    def interrupt(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._items = None
        if self._container is not None:
            self._container.close()
            self._container = None


# ------------------------------------------------------------------------------------ cameras

class CameraSource(_Source):
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
        self._next_keep = -1e18

    def _open_container(self):
        container = _open_container(self.path, self.key, "camera")
        if not container.streams.video:
            container.close()
            raise DeviceError(f"no camera: {self.path} has no video track ({self.key} = "
                              f"{_fmt(self.path)})", self.key, str(self.path))
        container.streams.video[0].thread_type = "AUTO"  # frame threads: ~2x faster decoding
        return container

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
            declared = self._declared_s(stream)
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
        for mt, frame in self._opened():
            if self.realtime:
                if self.max_fps:
                    if mt < self._next_keep - 1e-3:
                        continue
                    # Step the schedule rather than restart it from mt, so that 24 fps thinned
                    # to 15 fps keeps about 15 frames a second, not 12.
                    step = 1.0 / self.max_fps
                    self._next_keep += step
                    if self._next_keep <= mt:
                        self._next_keep = mt + step
                t = self.clock_origin + mt
                delay = t - time.monotonic()
                if delay > 0 and self._wake.wait(delay):
                    return None
                return t, self._to_rgb(frame)
            return mt, self._to_rgb(frame)
        return None


# -------------------------------------------------------------------------------- microphones

class MicSource(_Source):
    """One microphone backend: ``read()`` gives ``(t_start, block)``.

    ``t_start``: capture time (s) of the block's first sample; ``block``: int16 (n,) at 16 kHz
    mono. ``open()`` raises :class:`DeviceError`; ``read()`` returns None at the end of a
    non-looping file or after :meth:`interrupt`. Push sources (a live stream with a callback)
    also have ``attach(ring)``, after which their callback writes into the ring directly.
    """

    name = "microphone"
    rate = SAMPLE_RATE


def _import_sounddevice(key: str = "microphone.source"):
    try:
        import sounddevice
    except OSError as exc:  # raised at import when libportaudio2 is missing
        raise DeviceError(f"no audio: PortAudio is not installed ({exc}); `sudo apt install "
                          f"libportaudio2`, or set {key} = \"none\"", key, None) from None
    return sounddevice


class _StreamResampler:
    """Stateful int16 (n, channels) at ``rate`` → 16 kHz mono int16, block by block (PyAV/swr).

    Used when an input device cannot capture at 16 kHz mono itself (many ALSA ``hw:`` devices
    only do 44.1/48 kHz stereo); swr keeps its filter state, so block edges are seamless.
    """

    def __init__(self, rate: int, channels: int) -> None:
        import av
        self.rate, self.channels = int(rate), int(channels)
        self._layout = "mono" if channels == 1 else "stereo"
        self._av = av
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def push(self, block: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(block[:, :2] if block.ndim == 2 else block[:, None],
                                     dtype=np.int16)
        frame = self._av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16",
                                                 layout=self._layout)
        frame.sample_rate = self.rate
        outs = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(outs) if outs else np.zeros(0, dtype=np.int16)


class SounddeviceMic(MicSource):
    """Live microphone through sounddevice/PortAudio: 16 kHz mono int16 blocks of ``block_ms``.

    ``device``: index or (part of) a name as sounddevice accepts it; None = the default input.
    When the device refuses 16 kHz mono, it is opened at its default rate (and up to 2 channels)
    and resampled with PyAV. Block times come from PortAudio's ``inputBufferAdcTime`` mapped onto
    ``time.monotonic()`` through ``currentTime`` (the callback's own time in the same clock), or
    the callback time when the host API gives no ADC time. Input overflows are counted in
    ``overruns`` (and the attached ring's). Raises :class:`DeviceError` naming
    ``microphone.device`` (a device that was asked for) or ``microphone.source``.
    """

    def __init__(self, device: int | str | None = None, block_ms: int = 100,
                 source: str = "auto") -> None:
        self.device, self.block_ms, self.source = device, block_ms, source
        self.key = "microphone.device" if device is not None else "microphone.source"
        self.name = f"sounddevice:{'default' if device is None else device}"
        self.overruns = 0
        self.blocks = 0
        self.last_callback = 0.0  # time.monotonic() of the newest callback
        self.stream = None
        self._ring: AudioRing | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._resampler: _StreamResampler | None = None
        self._channels = 1
        self._stream_rate = SAMPLE_RATE
        self._closing = False

    def attach(self, ring: AudioRing) -> None:
        """Write blocks straight into ``ring`` from the audio callback (instead of :meth:`read`)."""
        self._ring = ring

    def _fail(self, why: str) -> DeviceError:
        hint = ("pick an input with microphone.device (see `redsg-edge devices`), or set "
                "microphone.source = \"none\" to run face-only (or \"file\"/\"video\")")
        shown = "default input" if self.device is None else f"input {self.device!r}"
        return DeviceError(f"no microphone: {shown}: {why} ({self.key} = "
                           f"{_fmt(self.device if self.device is not None else self.source)}); "
                           f"{hint}",
                           self.key, self.device)

    def _resolve(self, sd) -> tuple[int, dict]:
        try:
            devices = sd.query_devices()
        except Exception as exc:  # noqa: BLE001 - PortAudioError and friends
            raise self._fail(f"PortAudio cannot list devices: {exc}") from None
        inputs = [d for d in devices if d["max_input_channels"] > 0]
        if not inputs:
            raise self._fail("PortAudio finds no audio input device")
        if self.device is None:
            idx = sd.default.device[0]
            if idx is None or idx < 0:
                idx = inputs[0]["index"]  # no default configured: the first input
            info = sd.query_devices(idx)
        else:
            try:
                info = sd.query_devices(self.device, kind="input")
            except (ValueError, sd.PortAudioError) as exc:
                names = ", ".join(f"{d['index']}: {d['name']}" for d in inputs)
                raise self._fail(f"{exc} (inputs: {names})") from None
        if info["max_input_channels"] < 1:
            raise self._fail(f"{info['name']!r} has no input channels")
        return info["index"], info

    def open(self) -> None:
        sd = _import_sounddevice(self.key)
        idx, info = self._resolve(sd)
        native = int(info["default_samplerate"] or 48000)
        candidates = [(SAMPLE_RATE, 1), (native, 1),
                      (native, min(2, int(info["max_input_channels"])))]
        last_exc: Exception | None = None
        for rate, channels in dict.fromkeys(candidates):
            try:
                sd.check_input_settings(device=idx, channels=channels, dtype="int16",
                                        samplerate=rate)
            except Exception as exc:  # noqa: BLE001
                last_exc = exc
                continue
            self._stream_rate, self._channels = rate, channels
            break
        else:
            raise self._fail(f"{info['name']!r} supports neither 16 kHz mono nor its default "
                             f"rate: {last_exc}")
        if (self._stream_rate, self._channels) != (SAMPLE_RATE, 1):
            self._resampler = _StreamResampler(self._stream_rate, self._channels)
            log.info("microphone %s: capturing %d Hz x%d, resampling to 16 kHz mono",
                     info["name"], self._stream_rate, self._channels)
        blocksize = int(round(self._stream_rate * self.block_ms / 1000))
        self._closing = False
        try:
            self.stream = sd.InputStream(device=idx, samplerate=self._stream_rate,
                                         channels=self._channels, dtype="int16",
                                         blocksize=blocksize, callback=self._callback)
            self.stream.start()
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise self._fail(f"{info['name']!r} cannot be opened: {exc}") from None
        self.name = f"sounddevice:{info['name']}"

    def _callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        now = time.monotonic()
        if status.input_overflow:
            self.overruns += 1
            if self._ring is not None:
                self._ring.overruns += 1
        if self._resampler is not None:
            block = self._resampler.push(indata)
        else:
            block = indata[:, 0]
        t_end = now
        adc, cur = time_info.inputBufferAdcTime, time_info.currentTime
        if adc and cur:
            # Both are on the stream's clock: the sample was captured (cur - adc) s before now.
            t_end = _plausible_monotonic(now - (cur - adc) + (frames - 1) / self._stream_rate,
                                         now)
        self.last_callback = now
        self.blocks += 1
        if self._ring is not None:
            self._ring.write(block, t_end)
        else:
            try:
                self._queue.put_nowait((t_end - (len(block) - 1) / SAMPLE_RATE, block.copy()))
            except queue.Full:
                self.overruns += 1

    @property
    def active(self) -> bool:
        """True while the PortAudio stream runs (False after an unplug or a host error)."""
        return bool(self.stream is not None and self.stream.active)

    def read(self, timeout: float = 2.0) -> tuple[float, np.ndarray] | None:
        """Next block when not attached to a ring; raises OSError after ``timeout`` s of silence."""
        if self._closing:
            return None
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            if self._closing:
                return None
            raise OSError(f"{self.name}: no audio for {timeout:g} s") from None

    def interrupt(self) -> None:
        self._closing = True

    def close(self) -> None:
        self._closing = True
        if self.stream is not None:
            try:
                self.stream.abort(ignore_errors=True)
                self.stream.close(ignore_errors=True)
            finally:
                self.stream = None


class AudioFileMic(_FileReplay, MicSource):
    """Audio of a file (wav, flac, mp3, ... or a video's audio track) as 16 kHz mono int16 blocks.

    Decoded and resampled with PyAV (``av.AudioResampler(format="s16", layout="mono",
    rate=16000)``); blocks hold ``block_ms`` of audio (the last block of a non-looping file may be
    shorter). ``t_start`` of a block = media time of its first sample (s); with ``realtime=True``
    it is ``clock_origin +`` that, each block is released when its last sample is "captured",
    and the file loops forever, padded with silence to the container's duration so audio and
    video of one file stay aligned across loops. Raises :class:`DeviceError` for a missing or
    undecodable file (naming ``key``) and for a file without an audio track (naming
    ``microphone.source``).
    """

    def __init__(self, path: str | os.PathLike | None, block_ms: int = 100,
                 realtime: bool = False, clock_origin: float | None = None,
                 key: str = "microphone.file") -> None:
        super().__init__(path, realtime, clock_origin, key)
        self.block_ms = block_ms
        self.block_samples = int(round(SAMPLE_RATE * block_ms / 1000))

    def _open_container(self):
        container = _open_container(self.path, self.key, "microphone")
        if not container.streams.audio:
            container.close()
            if not self.key.startswith(("microphone.", "camera.")):  # analyze, replay: no config key
                raise DeviceError(f"no audio: {self.path} has no audio track ({self.key} = "
                                  f"{_fmt(self.path)})", self.key, str(self.path))
            raise DeviceError(
                f"no microphone: {self.path} has no audio track (microphone.source uses it); set "
                "microphone.source = \"none\" to run face-only, or \"file\" with microphone.file",
                "microphone.source", str(self.path))
        return container

    def _samples(self) -> Iterator[tuple[float, np.ndarray]]:
        """(media time of the first sample, int16 chunk) for the whole stream, looping if live."""
        import av
        offset = 0.0
        while True:
            container = self._container
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            t_first: float | None = None
            n = 0
            for frame in _until_damaged(container.decode(stream), lambda exc: self._damaged(
                    (t_first or 0.0) + n / SAMPLE_RATE, exc)):
                if t_first is None:
                    t_first = frame.time or 0.0
                for out in resampler.resample(frame):
                    x = out.to_ndarray().reshape(-1)
                    yield offset + t_first + n / SAMPLE_RATE, x
                    n += x.shape[0]
            for out in resampler.resample(None):
                x = out.to_ndarray().reshape(-1)
                yield offset + (t_first or 0.0) + n / SAMPLE_RATE, x
                n += x.shape[0]
            declared = self._declared_s(stream)
            got = n / SAMPLE_RATE
            if self.warning is None and declared - got > max(0.25, 0.1 * declared):
                # FFmpeg skips frames it cannot decode (a FLAC with damaged frames) silently
                self.warning = (f"{self.path}: decoded {got:.1f} s of audio of the "
                                f"{declared:.1f} s the file declares; the rest is damaged")
                log.warning("%s", self.warning)
            if not self.realtime or n == 0:
                return
            period_n = int(round(container.duration / 1e6 * SAMPLE_RATE)) if container.duration else n
            if period_n > n:  # silence up to the container's length keeps A/V aligned per loop
                yield offset + (t_first or 0.0) + n / SAMPLE_RATE, np.zeros(period_n - n, np.int16)
                n = period_n
            offset += n / SAMPLE_RATE
            container.close()
            self._container = self._open_container()

    def _decode(self) -> Iterator[tuple[float, np.ndarray]]:
        """(t_start, block of block_samples) over _samples(); the last one may be shorter."""
        bn = self.block_samples
        pending = np.zeros(0, dtype=np.int16)
        t0: float | None = None
        pos = 0  # samples yielded; the stream is continuous, so t = t0 + pos / rate exactly
        for t, x in self._samples():
            if t0 is None:
                t0 = t
            pending = np.concatenate([pending, x]) if pending.shape[0] else x
            while pending.shape[0] >= bn:
                yield t0 + pos / SAMPLE_RATE, pending[:bn].copy()
                pending = pending[bn:]
                pos += bn
        if pending.shape[0]:
            yield (t0 or 0.0) + pos / SAMPLE_RATE, pending.copy()

    def read(self) -> tuple[float, np.ndarray] | None:
        item = next(self._opened(), None)
        if item is None or not self.realtime:
            return item
        mt, block = item
        t = self.clock_origin + mt
        delay = t + block.shape[0] / SAMPLE_RATE - time.monotonic()
        if delay > 0 and self._wake.wait(delay):
            return None
        return t, block


# ---------------------------------------------------------------------------------- factories

def _picamera2_cameras() -> tuple[list[dict] | None, str]:
    """(cameras, note): cameras None when picamera2 is not importable."""
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, f"picamera2 not importable ({exc})"
    try:
        return list(Picamera2.global_camera_info()), ""
    except Exception as exc:  # noqa: BLE001
        return [], f"libcamera error: {exc}"


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


def open_microphone(cfg: MicrophoneConfig, camera_cfg: CameraConfig | None = None,
                    realtime: bool = True, clock_origin: float | None = None
                    ) -> MicSource | None:
    """Open the microphone ``cfg`` describes; None for ``source = "none"``.

    ``auto``/``sounddevice``: :class:`SounddeviceMic` (``cfg.device``, ``cfg.block_ms``).
    ``file``: :class:`AudioFileMic` over ``cfg.file``; ``video``: over ``camera_cfg.file`` (the
    video's audio track). ``realtime``/``clock_origin`` as for :func:`open_camera` (pass the same
    origin to both so a video's picture and sound share one clock). Returns an opened source;
    raises :class:`DeviceError` naming the config key to change.
    """
    src = cfg.source
    if src == "none":
        return None
    if src in ("auto", "sounddevice"):
        mic: MicSource = SounddeviceMic(cfg.device, cfg.block_ms, source=src)
    elif src == "file":
        mic = AudioFileMic(cfg.file, cfg.block_ms, realtime, clock_origin, key="microphone.file")
    else:  # video
        path = camera_cfg.file if camera_cfg is not None else None
        if path is None:
            raise DeviceError('no microphone: microphone.source = "video" takes the audio track of '
                              'camera.file, which is not set; set camera.file (with camera.source '
                              '= "file") or microphone.source = "file" with microphone.file',
                              "microphone.source", None)
        mic = AudioFileMic(path, cfg.block_ms, realtime, clock_origin, key="camera.file")
    mic.open()
    return mic


# ----------------------------------------------------------------------------- capture thread

class CaptureThread:
    """Pumps a live source into its ring on a daemon thread.

    ``source``: a :class:`CameraSource` (into a :class:`FrameRing`) or a :class:`MicSource` (into
    an :class:`AudioRing`; push sources such as :class:`SounddeviceMic` are attached to the ring
    and this thread only watches them). ``heartbeat``: ``time.monotonic()`` of the newest frame
    or block (stale = capture is stuck). Read errors are counted in ``errors`` (``last_error``
    keeps the message); after ``reopen_after`` consecutive errors the source is closed and
    reopened, with back-off. ``ended`` is set when a non-looping source reaches its end.
    :meth:`stop` returns within ``timeout`` (1 s) unless a driver call is blocked.
    """

    def __init__(self, source: CameraSource | MicSource, ring: FrameRing | AudioRing,
                 name: str | None = None, reopen_after: int = 10) -> None:
        self.source, self.ring = source, ring
        self.name = name or f"capture {source.name}"
        self.reopen_after = reopen_after
        self.heartbeat = time.monotonic()
        self.items = 0
        self.errors = 0
        self.reopens = 0
        self.last_error: str | None = None
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> CaptureThread:
        if hasattr(self.source, "attach"):
            self.source.attach(self.ring)  # type: ignore[union-attr]
        self._thread.start()
        return self

    def _error(self, exc: BaseException, consecutive: int) -> int:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        consecutive += 1
        if consecutive == 1 or consecutive % 50 == 0:
            log.warning("%s: %s (%d consecutive)", self.name, self.last_error, consecutive)
        if consecutive >= self.reopen_after and consecutive % self.reopen_after == 0:
            self.reopens += 1
            try:
                self.source.close()
                self.source.open()
                log.info("%s: reopened", self.name)
            except Exception as exc2:  # noqa: BLE001
                self.last_error = f"reopen failed: {exc2}"
        self._stop.wait(min(0.05 * consecutive, 1.0))
        return consecutive

    def _run(self) -> None:
        push = hasattr(self.source, "attach")
        is_audio = isinstance(self.ring, AudioRing)
        consecutive = 0
        while not self._stop.is_set():
            if push:
                src = self.source
                if self._stop.wait(0.2):
                    break
                if src.last_callback:  # type: ignore[union-attr]
                    self.heartbeat = max(self.heartbeat, src.last_callback)  # type: ignore[union-attr]
                    self.items = src.blocks  # type: ignore[union-attr]
                if not src.active:  # type: ignore[union-attr]
                    consecutive = self._error(OSError(f"{src.name}: stream stopped"), consecutive)
                    if src.active:  # type: ignore[union-attr]
                        consecutive = 0
                continue
            try:
                item = self.source.read()
            except Exception as exc:  # noqa: BLE001 - counted, the thread keeps going
                if self._stop.is_set():
                    break
                consecutive = self._error(exc, consecutive)
                continue
            if item is None:
                if not self._stop.is_set():
                    self.ended.set()
                break
            consecutive = 0
            t, data = item
            if is_audio:
                self.ring.write(data, t + (data.shape[0] - 1) / SAMPLE_RATE)  # type: ignore[call-arg]
            else:
                self.ring.put(data, t)  # type: ignore[union-attr]
            self.items += 1
            self.heartbeat = time.monotonic()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop pumping and close the source; True when the thread ended within ``timeout`` s."""
        self._stop.set()
        self.source.interrupt()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            self.source.close()
        elif hasattr(self.source, "attach"):
            self.source.close()
        return not alive

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {"source": self.source.name, "items": self.items, "errors": self.errors,
                "reopens": self.reopens, "last_error": self.last_error,
                "heartbeat_age_s": round(time.monotonic() - self.heartbeat, 3),
                **self.ring.stats()}


# ------------------------------------------------------------------------------------ devices

_VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
_V4L2_CAP_VIDEO_CAPTURE = 0x00000001
_V4L2_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
_V4L2_CAP_DEVICE_CAPS = 0x80000000


def _v4l2_capture(path: str) -> bool | None:
    """Whether a /dev/video node can capture video (UVC cameras add metadata-only nodes)."""
    import fcntl
    import struct
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buf = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, buf)
        caps, device_caps = struct.unpack_from("=II", buf, 84)
        if caps & _V4L2_CAP_DEVICE_CAPS:
            caps = device_caps
        return bool(caps & (_V4L2_CAP_VIDEO_CAPTURE | _V4L2_CAP_VIDEO_CAPTURE_MPLANE))
    except OSError:
        return None
    finally:
        os.close(fd)


def list_devices() -> dict[str, Any]:
    """Cameras and audio devices visible to this process, for ``redsg-edge devices``.

    Returns ``{"cameras": [...], "camera_notes": [str], "audio_inputs": [...],
    "audio_outputs": [...], "audio_error": str | None}``. A V4L2 camera is
    ``{"kind": "v4l2", "device": "/dev/video0", "index": 0, "name": str, "capture": bool|None,
    "config": 'camera.device = 0'}``; a Pi camera ``{"kind": "picamera2", "index": n,
    "name": model, "id": str, "config": ...}``; an audio device ``{"index", "name", "hostapi",
    "channels", "default_samplerate", "default": bool, "config": ...}``.
    """
    cameras: list[dict[str, Any]] = []
    notes: list[str] = []

    def node_index(p: str) -> int:
        m = re.search(r"(\d+)$", p)
        return int(m.group(1)) if m else -1

    for path in sorted(glob.glob("/dev/video*"), key=node_index):
        idx = node_index(path)
        try:
            name = Path(f"/sys/class/video4linux/{Path(path).name}/name").read_text().strip()
        except OSError:
            name = "?"
        cameras.append({"kind": "v4l2", "device": path, "index": idx, "name": name,
                        "capture": _v4l2_capture(path),
                        "config": f'camera.source = "opencv", camera.device = {idx}'})
    if not cameras:
        notes.append("no /dev/video* nodes")
    pi, note = _picamera2_cameras()
    if note:
        notes.append(note)
    for i, info in enumerate(pi or []):
        cameras.append({"kind": "picamera2", "index": i, "name": info.get("Model", "?"),
                        "id": info.get("Id", ""),
                        "config": f'camera.source = "picamera2", camera.device = {i}'})

    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    audio_error = None
    try:
        sd = _import_sounddevice()
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        try:
            default_in, default_out = sd.default.device
        except Exception:  # noqa: BLE001
            default_in = default_out = -1
        for d in devices:
            base = {"index": d["index"], "name": d["name"],
                    "hostapi": hostapis[d["hostapi"]]["name"],
                    "default_samplerate": d["default_samplerate"]}
            if d["max_input_channels"] > 0:
                inputs.append({**base, "channels": d["max_input_channels"],
                               "default": d["index"] == default_in,
                               "config": f"microphone.device = {d['index']}"})
            if d["max_output_channels"] > 0:
                outputs.append({**base, "channels": d["max_output_channels"],
                                "default": d["index"] == default_out,
                                "config": f"voice.device = {d['index']}"})
    except DeviceError as exc:
        audio_error = str(exc)
    except Exception as exc:  # noqa: BLE001 - PortAudio errors
        audio_error = f"PortAudio error: {exc}"
    return {"cameras": cameras, "camera_notes": notes, "audio_inputs": inputs,
            "audio_outputs": outputs, "audio_error": audio_error}


def format_devices(d: dict[str, Any]) -> str:
    """Human-readable text of :func:`list_devices`' result (the config line to use per device)."""
    lines = ["Cameras:"]
    for c in d["cameras"]:
        if c["kind"] == "v4l2":
            tag = {True: "", False: "  (not a capture node)", None: "  (cannot query)"}[c["capture"]]
            lines.append(f"  {c['device']:<13} {c['name']}{tag}  ->  {c['config']}")
        else:
            lines.append(f"  picamera2 {c['index']:<3} {c['name']} {c['id']}  ->  {c['config']}")
    if not d["cameras"]:
        lines.append("  (none)")
    lines += [f"  note: {n}" for n in d["camera_notes"]]
    for title, key in (("Audio inputs:", "audio_inputs"), ("Audio outputs:", "audio_outputs")):
        lines.append(title)
        for a in d[key]:
            mark = "*" if a["default"] else " "
            lines.append(f" {mark}{a['index']:>3} {a['name']} ({a['hostapi']}, {a['channels']} ch, "
                         f"{a['default_samplerate']:g} Hz)  ->  {a['config']}")
        if not d[key]:
            lines.append("  (none)" if not d["audio_error"] else "  (unknown)")
    if d["audio_error"]:
        lines.append(f"  audio: {d['audio_error']}")
    lines.append("(* = default device)")
    return "\n".join(lines)
