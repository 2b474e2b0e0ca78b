"""Replay: recorded media through the live loop's perception step and fusion, in media time.

``redsg-edge replay`` and the evaluation scripts (scripts/eval_scenarios.py, tune_fusion.py)
call :func:`replay`; it publishes the same events as the live ``pipeline.Pipeline`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import CLASSES
from .capture import DeviceError
from .config import Config
from .eventlog import EventLog
from .events import EventBus, Utterance
from .fusion import Evidence, Fusion
from .perception import Perception, deliver, fuse_and_publish
from .speech import SpeechOutput

log = logging.getLogger("redsg_edge.replay")

__all__ = ["replay"]


def _merge(frames: Iterator, blocks: Iterator) -> Iterator[tuple[str, float, np.ndarray]]:
    """Merge video frames (t, rgb) and audio blocks (t_start, pcm) in media-time order."""
    f = next(frames, None)
    b = next(blocks, None)
    while f is not None or b is not None:
        if b is None or (f is not None and f[0] <= b[0]):
            yield "frame", f[0], f[1]
            f = next(frames, None)
        else:
            yield "audio", b[0], b[1]
            b = next(blocks, None)


def _common_length(cam, mic, window_s: float, warnings: list[str] | None) -> float:
    """Where a replay of a video and a separate audio file of different lengths (declared, over
    1 s apart) stops: the end of the shorter plus one SER window, so that speech at the very
    end of the shorter still counts; inf when the lengths agree or one is unknown."""
    v = cam.declared_duration_s
    a = mic.declared_duration_s
    end = min(v, a) + window_s
    if not (abs(v - a) > 1.0) or end >= max(v, a):  # also when a length is unknown (nan)
        return float("inf")
    msg = (f"the video {cam.path} lasts {v:.1f} s and the audio {mic.path} {a:.1f} s: replaying "
           f"the first {end:.1f} s (the shorter plus one {window_s:g} s speech window)")
    log.warning("%s", msg)
    if warnings is not None:
        warnings.append(msg)
    return end


def replay(cfg: Config, video: Path | None, audio: Path | None = None, out: Path | None = None,
           plot: Path | None = None, *, use_video_audio: bool = True,
           progress: bool = False,
           on_evidence: Callable[[float, Evidence | None], None] | None = None,
           append: bool = False, warnings: list[str] | None = None,
           transcriber=None, bus: EventBus | None = None) -> list[dict]:
    """Run recorded media through the same perception step and fusion as the live loop, in
    media time: deterministic, and as fast as the CPU allows.

    video: a video file (or None for audio only); audio: a separate audio file; otherwise the
    video's own audio track is used when it has one (``use_video_audio``). Writes JSON lines to
    ``out`` and a timeline PNG to ``plot`` when given. ``on_evidence(t, evidence or None)`` sees
    every input to the fusion (for offline tuning of its parameters, scripts/tune_fusion.py).
    ``bus``: publish every ``fusion.FusedUpdate``, ``events.Transition`` and
    ``events.Utterance`` on it as the live loop does (``replay --serve``, MQTT tests).
    ``out`` is started empty unless ``append``. A damaged or truncated file is replayed up to
    the damage; a separate ``audio`` whose length differs from the video's by more than a
    second is replayed only to the end of the shorter plus ``speech.window_s``. Each such
    problem is logged and appended to ``warnings`` (when given) as one sentence. With a
    ``transcriber`` (``stt.Transcriber``), each utterance the VAD closes adds a record
    ``{"type": "utterance", "t_start", "t_end", "emotion", "audio_s", "words", "transcript"}``
    (``redsg-edge replay --transcribe``).
    Returns the records, oldest first (docs/architecture.md).
    Raises DeviceError for unreadable media, ModelError for bad models.
    """
    from .capture import AudioFileMic, VideoFileCamera

    cam = mic = None
    if video is not None:
        cam = VideoFileCamera(video, cfg.camera.width, cfg.camera.height, realtime=False,
                              max_fps=cfg.vision.max_fps, key="replay VIDEO")
        cam.open()
    audio_path = audio if audio is not None else (video if use_video_audio else None)
    if audio_path is not None:
        mic = AudioFileMic(audio_path, cfg.microphone.block_ms, realtime=False,
                           key="replay --audio")
        try:
            mic.open()
        except DeviceError:
            if audio is not None:
                raise
            mic = None  # the video has no audio track: face only
    end_t = float("inf")
    if cam is not None and mic is not None and audio is not None:
        end_t = _common_length(cam, mic, cfg.speech.window_s, warnings)
    perception = Perception.load(cfg, cam is not None, mic is not None)
    fusion = Fusion(cfg.fusion)
    bus = bus if bus is not None else EventBus()
    records: list[dict] = []
    sink = EventLog(out, append=append)

    def record(event) -> None:
        rec = event.to_json()
        records.append(rec)
        sink.write(rec)
    unsubscribe = bus.subscribe(record, name="replay records")

    def fuse(t: float, ev: Evidence | None) -> None:
        fuse_and_publish(fusion, bus, t, ev, on_evidence)

    def said(out: SpeechOutput) -> None:
        if transcriber is None:
            return
        text = transcriber.transcribe(out.audio)
        bus.publish(Utterance(out.start_s, out.end_s, text, CLASSES[int(np.argmax(out.probs))],
                              (out.end_s - out.start_s), keep_text=True))

    frames = iter(cam) if cam is not None else iter(())
    blocks = iter(mic) if mic is not None else iter(())
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit="s media", desc="replay", bar_format="{desc}: {n:.1f} {unit} [{elapsed}]")
    try:
        for kind, t, data in _merge(frames, blocks):
            if t >= end_t:
                break
            if kind == "frame":
                deliver(perception.frame(t, data), fuse)
                if bar is not None:
                    bar.n = t
                    bar.refresh()
                continue
            deliver(perception.audio(t, data), fuse, said)
        deliver(perception.finish(), fuse, said)  # a recording ends; a live stream does not
    finally:
        unsubscribe()
        if bar is not None:
            bar.close()
        sink.close()
        if cam is not None:
            cam.close()
        if mic is not None:
            mic.close()
        perception.close()
    for src in (cam, mic):
        if src is not None and src.warning and warnings is not None:
            warnings.append(src.warning)
    if sink.lost_total and warnings is not None:
        warnings.append(f"{out}: {sink.lost_total} record(s) could not be written")
    if plot is not None:
        from .timeline import plot_timeline
        plot_timeline(records, plot, title=Path(video or audio).name)
    return records
