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

Modules:

- ``rings``: :class:`FrameRing`, :class:`AudioRing`, ``SAMPLE_RATE``.
- ``frames``: :func:`letterbox` (fit a frame to the configured size, aspect kept) and
  :class:`FrameSchedule` (the one frame-thinning rule).
- ``sources``: the contracts :class:`Source`, :class:`PullSource`, :class:`PushSource`.
- ``files``: the PyAV file-replay base shared by the file camera and the file microphone.
- ``camera``: :class:`Picamera2Camera` (Raspberry Pi, libcamera), :class:`OpenCVCamera` (V4L2
  index or path, or a GStreamer pipeline string for Jetson CSI cameras), :class:`VideoFileCamera`
  (PyAV), :func:`open_camera`.
- ``microphone``: :class:`SounddeviceMic` (PortAudio), :class:`AudioFileMic` (PyAV: an audio
  file, or the audio track of a video file), :func:`open_microphone`.
- ``devices``: :func:`list_devices`, :func:`format_devices` (``redsg-edge devices``).
- ``thread``: :class:`CaptureThread`.

A device that is missing or cannot be opened raises :class:`DeviceError`, whose message names the
device and the config key to change and whose ``exit_code`` is 69 (EX_UNAVAILABLE).

How to add a capture source:

1. Subclass :class:`CameraSource` or :class:`MicSource` (what the data is) and exactly one of
   :class:`PullSource` or :class:`PushSource` (how it arrives); cameras are pull sources already.
2. Pull: implement ``open()`` (raise :class:`DeviceError` naming the config key), ``read()``
   (block until the next ``(t, data)``; None at the end; OSError on a device failure) and
   ``close()``; ``interrupt()`` if ``read`` can sleep. Push: ``open()``, ``close()``,
   ``attach(ring)`` (the callback then writes ``ring.write(block, t_end)``), the ``active``
   property, and keep ``last_callback`` / ``blocks`` up to date for the heartbeat.
3. Give ``read`` frames of the ring's size (use :func:`letterbox`) or 16 kHz mono int16 blocks,
   and ``time.monotonic()`` seconds when ``live``.
4. Add the ``source`` name to ``config.py`` and a branch in :func:`open_camera` /
   :func:`open_microphone`. :class:`CaptureThread` needs no change: it dispatches on the kind.
"""

from ..errors import EX_UNAVAILABLE, DeviceError
from .camera import (CameraSource, OpenCVCamera, Picamera2Camera, VideoFileCamera,
                     open_camera)
from .devices import format_devices, list_devices
from .frames import FrameSchedule, letterbox, letterbox_geometry
from .microphone import AudioFileMic, MicSource, SounddeviceMic, open_microphone
from .rings import SAMPLE_RATE, AudioRing, FrameRing
from .sources import OPEN_TIMEOUT_S, PullSource, PushSource, Source
from .thread import CaptureThread

__all__ = [
    "EX_UNAVAILABLE", "SAMPLE_RATE", "OPEN_TIMEOUT_S", "DeviceError", "FrameRing", "AudioRing",
    "Source", "PullSource", "PushSource", "CameraSource", "Picamera2Camera", "OpenCVCamera",
    "VideoFileCamera", "MicSource", "SounddeviceMic", "AudioFileMic", "open_camera",
    "open_microphone", "CaptureThread", "FrameSchedule", "letterbox", "letterbox_geometry",
    "list_devices", "format_devices",
]
