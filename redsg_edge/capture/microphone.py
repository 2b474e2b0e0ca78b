"""Microphone backends: 16 kHz mono int16 blocks with the capture time of their first sample.

- :class:`SounddeviceMic`: a live input through sounddevice/PortAudio, a
  :class:`~redsg_edge.capture.sources.PushSource` (its callback writes into the ring),
  resampled with :class:`_StreamResampler` when the device cannot do 16 kHz mono itself.
- :class:`AudioFileMic`: an audio file or a video's audio track decoded with PyAV, a
  :class:`~redsg_edge.capture.sources.PullSource`.
- :func:`open_microphone`: the backend ``[microphone]`` in the config asks for, opened.

A microphone that is missing or cannot be opened raises :class:`~redsg_edge.errors.DeviceError`
(exit 69) naming the device and the config key to change.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import DeviceError
from .files import _FileReplay, _open_container, _until_damaged
from .rings import SAMPLE_RATE, AudioRing
from .sources import PushSource, Source, _fmt, _plausible_monotonic

if TYPE_CHECKING:  # pragma: no cover
    from ..config import CameraConfig, MicrophoneConfig

log = logging.getLogger(__name__)

__all__ = ["MicSource", "SounddeviceMic", "AudioFileMic", "open_microphone"]


class MicSource(Source):
    """One microphone backend: audio as ``(t_start, block)`` items.

    ``t_start``: capture time (s) of the block's first sample; ``block``: int16 (n,) at 16 kHz
    mono (``rate``). ``open()`` raises :class:`DeviceError`. A backend also declares how it
    delivers: a :class:`~redsg_edge.capture.sources.PullSource` (``read()`` returns the next
    item, None at the end of a non-looping file or after :meth:`interrupt`) or a
    :class:`~redsg_edge.capture.sources.PushSource` (``attach(ring)``, after which its callback
    writes into the ring directly).
    """

    name = "microphone"
    rate = SAMPLE_RATE


def _import_sounddevice(key: str = "microphone.source"):
    """The ``sounddevice`` module; DeviceError naming ``key`` when libportaudio2 is missing."""
    try:
        import sounddevice
    except OSError as exc:  # raised at import when libportaudio2 is missing
        raise DeviceError(f"no audio: PortAudio is not installed ({exc}); `sudo apt install "
                          f"libportaudio2`, or set {key} = \"none\"", key, None) from None
    return sounddevice


class _StreamResampler:
    """Stateful int16 (n, channels) at ``rate`` → 16 kHz mono int16, block by block (libsoxr).

    Used when an input device cannot capture at 16 kHz mono itself (many ALSA ``hw:`` devices
    only do 44.1/48 kHz stereo). The first two channels are averaged, then python-soxr's
    ``ResampleStream`` (libsoxr, high quality) keeps its filter state between blocks, so block
    edges are seamless; it holds back about 20 ms at 48 kHz. libsoxr rather than PyAV's swr:
    importing PyAV maps its FFmpeg libraries, 18.6 MB more resident memory for the daemon
    against 0.9 MB (measured on x86-64, after the daemon's other imports).
    """

    def __init__(self, rate: int, channels: int) -> None:
        import soxr
        self.rate, self.channels = int(rate), int(channels)
        self._stream = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="int16")

    def push(self, block: np.ndarray) -> np.ndarray:
        """int16 (n, channels) at ``rate`` in; the 16 kHz mono int16 (m,) ready so far out (m
        follows the rate ratio, less the filter delay at the start; 0 is possible)."""
        block = np.asarray(block, dtype=np.int16)
        if block.ndim == 2:
            block = block[:, :2].astype(np.int32).sum(axis=1) // min(block.shape[1], 2)
        return self._stream.resample_chunk(np.ascontiguousarray(block, dtype=np.int16))


class SounddeviceMic(MicSource, PushSource):
    """Live microphone through sounddevice/PortAudio: 16 kHz mono int16 blocks of ``block_ms``.

    ``device``: index or (part of) a name as sounddevice accepts it; None = the default input.
    When the device refuses 16 kHz mono, it is opened at its default rate (and up to 2 channels)
    and resampled with libsoxr (``_StreamResampler``). Block times come from PortAudio's
    ``inputBufferAdcTime`` mapped onto ``time.monotonic()`` through ``currentTime`` (the
    callback's own time in the same clock), or the callback time when the host API gives no
    ADC time. Input overflows are counted in
    ``overruns`` (and the attached ring's). Raises :class:`DeviceError` naming
    ``microphone.device`` (a device that was asked for) or ``microphone.source``.

    A push source: after :meth:`attach` the PortAudio callback writes into the ring. Without a
    ring, blocks queue up (64 at most, the rest counted as overruns) for :meth:`read`.
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
        """Start the PortAudio input stream (16 kHz mono, else the device's default rate with up
        to 2 channels, resampled). Raises DeviceError (exit 69) naming ``key`` when PortAudio is
        missing, there is no such input, or it cannot be opened at any of those settings."""
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
        """Make a waiting :meth:`read` return None (the stream keeps running until close)."""
        self._closing = True

    def close(self) -> None:
        """Abort and close the PortAudio stream; :meth:`read` returns None from now on."""
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

    def _track(self, container) -> Any:
        return container.streams.audio[0]

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
            declared = self._declared  # read from the header at open()
            got = n / SAMPLE_RATE
            if self.warning is None and declared - got > max(0.25, 0.1 * declared):
                # FFmpeg skips frames it cannot decode (a FLAC with damaged frames) silently
                self.warning = (f"{self.path}: decoded {got:.1f} s of audio of the "
                                f"{declared:.1f} s the file declares; the rest is damaged or "
                                "missing")
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
        """Next block ``(t_start, int16 (n,))``: t_start = media time (s) of its first sample in
        replay, ``clock_origin +`` that when realtime (released once its last sample is due).
        Returns None at the end (replay) or after :meth:`interrupt`; raises OSError when not
        open."""
        item = next(self._opened(), None)
        if item is None or not self.realtime:
            return item
        mt, block = item
        t = self.clock_origin + mt
        delay = t + block.shape[0] / SAMPLE_RATE - time.monotonic()
        if delay > 0 and self._wake.wait(delay):
            return None
        return t, block


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

