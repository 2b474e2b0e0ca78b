"""What the file camera and the file microphone share: opening a media file with PyAV (with a
:class:`~redsg_edge.errors.DeviceError` that names the file and the config key), decoding up to
the first damage, and :class:`_FileReplay`, the base of
:class:`~redsg_edge.capture.camera.VideoFileCamera` and
:class:`~redsg_edge.capture.microphone.AudioFileMic`.

File sources give media time (the stream's pts, seconds) with ``realtime=False`` (replay: as fast
as decoding goes, ends at the end of the file), and ``clock_origin + media time`` with
``realtime=True`` (live ``source = "file"``: paced to the wall clock, looped forever), so a file
behaves like a camera or a microphone.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DeviceError
from .sources import PullSource, _fmt

log = logging.getLogger(__name__)


def wav_declared_s(path: str | os.PathLike | None) -> float:
    """Seconds of audio a WAV file's header declares (its data chunk's size, read by Python's
    ``wave``): FFmpeg derives a WAV's duration from the file's size, so only the header tells a
    recording cut short (an interrupted copy or recorder). nan for another file, a format
    ``wave`` does not read (float, extensible) or a size left open (streamed WAVs write 0 or
    the largest size)."""
    if path is None or Path(path).suffix.lower() != ".wav":
        return float("nan")
    import wave
    try:
        with wave.open(str(path), "rb") as w:
            frames, rate = w.getnframes(), w.getframerate()
            size = frames * w.getsampwidth() * w.getnchannels()
    except (wave.Error, EOFError, OSError, ValueError):
        return float("nan")
    if frames <= 0 or rate <= 0 or size >= 0xFFFFFF00:
        return float("nan")
    return frames / rate


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


def _missing_file_error(path: Path | None, key: str, what: str) -> DeviceError:
    if path is None:
        return DeviceError(f"no {what}: {key} is not set; set {key} to a media file", key, None)
    return DeviceError(f"no {what}: {path} does not exist ({key} = {_fmt(path)}); set {key} to "
                       "an existing media file", key, str(path))


def _open_container(path: Path | None, key: str, what: str):
    """``av.open(path)``; raises DeviceError naming ``key`` when the file is unset, missing or
    cannot be decoded (``what``: "camera" or "microphone", the start of the message)."""
    import av
    if path is None or not Path(path).is_file():
        raise _missing_file_error(path, key, what)
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise DeviceError(f"no {what}: {path} cannot be decoded: {exc} ({key} = {_fmt(path)})",
                          key, str(path)) from None


class _FileReplay(PullSource):
    """What the file camera and file microphone share: an open PyAV container, the decode
    generator ``_decode()`` that subclasses provide, the realtime clock origin (set at
    :meth:`open` unless given) and the event that wakes a pacing sleep. Not a live device.

    Subclasses provide ``_open_container()`` (the opened container, DeviceError when the track is
    missing), ``_track(container)`` (the stream they decode) and ``_decode()``.
    """

    live = False

    def __init__(self, path: str | os.PathLike | None, realtime: bool,
                 clock_origin: float | None, key: str) -> None:
        self.path = Path(path) if path is not None else None
        self.realtime, self.clock_origin, self.key = realtime, clock_origin, key
        self.name = f"file:{self.path}"
        self._container = None
        self._items: Iterator | None = None
        self._wake = threading.Event()
        self._declared = float("nan")
        #: Set when the file is damaged: decoding stopped early (a truncated or corrupt file is
        #: read up to the damage, not given up on), or much less audio decoded than declared.
        self.warning: str | None = None

    @property
    def declared_duration_s(self) -> float:
        """Seconds the file declares for the track this source decodes (the first video track of
        a camera, the first audio track of a microphone): the track's own duration, else the
        container's. A float; nan when the file declares neither, or before the first
        :meth:`open` (it keeps its value after :meth:`close`). What the file *says*, read from
        its header: damaged files decode less (see :attr:`warning`)."""
        return self._declared

    def _damaged(self, where: float, exc: BaseException) -> None:
        msg = (f"{self.path}: decoding stopped at {where:.1f} s of "
               f"{self._declared_s():.1f} s: {exc}; the rest of the file is damaged or missing")
        if self.warning is None:
            log.warning("%s", msg)
        self.warning = msg

    def _declared_s(self, stream: Any = None) -> float:
        """Seconds the file declares: a WAV header's data size where it says more
        (:func:`wav_declared_s`), else ``stream``'s own duration, else the container's."""
        header = wav_declared_s(self.path)
        if stream is not None and stream.duration and stream.time_base:
            own = float(stream.duration * stream.time_base)
        else:
            c = self._container
            own = c.duration / 1e6 if c is not None and c.duration else float("nan")
        return header if header > own or math.isnan(own) else own

    def _open_container(self):
        raise NotImplementedError

    def _track(self, container) -> Any:
        raise NotImplementedError

    def _decode(self) -> Iterator:
        raise NotImplementedError

    def open(self) -> None:
        """Open the file and start decoding from its beginning; sets the realtime clock origin to
        ``time.monotonic()`` unless one was given. Raises DeviceError naming ``key`` for a
        missing or undecodable file or a missing track."""
        self._container = self._open_container()
        self._declared = self._declared_s(self._track(self._container))
        if self.clock_origin is None:
            self.clock_origin = time.monotonic()
        self._wake.clear()
        self._items = self._decode()

    def _opened(self) -> Iterator:
        if self._items is None:
            raise OSError(f"{self.name} is not open")
        return self._items

    def interrupt(self) -> None:
        """Wake a pacing sleep in :meth:`read` (realtime files); that ``read`` returns None."""
        self._wake.set()

    def close(self) -> None:
        """Close the container; :meth:`read` raises OSError until the next :meth:`open`."""
        self._items = None
        if self._container is not None:
            self._container.close()
            self._container = None
