"""The daemon's loop: capture → rings → vision and speech workers → fusion → reply.

``Pipeline`` wires the parts for a live run (capture threads fill preallocated rings; one vision
and one speech thread classify the newest data; a lock serialises fusion updates; transitions go
to the reply worker's queue, which never blocks). ``replay`` drives the very same workers from
media time instead of the wall clock: deterministic, and as fast as the CPU allows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .capture import (AudioRing, CaptureThread, DeviceError, FrameRing, open_camera,
                      open_microphone)
from . import CLASSES
from .config import Config
from .errors import ModelError
from .features import SAMPLE_RATE
from .fusion import Evidence, FusedUpdate, Fusion, face_reliability
from .speech import SerModel, SpeechOutput, SpeechPerception
from .vad import CHUNK
from .vision import FaceDetector, FerModel, VisionWorker

log = logging.getLogger("redsg_edge.pipeline")

#: Config keys a reload (SIGHUP) can apply to a running pipeline; others need a restart.
LIVE_KEYS = ("fusion", "reply", "voice.default_style", "voice.style", "voice.mic_gate_tail_s",
             "speech.vad_threshold", "speech.min_utterance_s", "speech.hangover_s",
             "speech.padding_s", "speech.max_utterance_s", "speech.hop_s",
             "vision.max_fps", "service.status_interval_s", "service.heartbeat_timeout_s",
             "service.log_level", "service.event_log")


def is_live_key(key: str) -> bool:
    """Whether a reload applies ``key`` (dotted) without a restart."""
    return any(key == p or key.startswith(p + ".") for p in LIVE_KEYS)


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys (section.key, reply/fusion as whole sections) whose values differ."""
    out = []
    for section in type(old).model_fields:
        a, b = getattr(old, section), getattr(new, section)
        if a == b:
            continue
        if section in ("fusion", "reply"):
            out.append(section)
            continue
        for key in type(a).model_fields:
            if getattr(a, key) != getattr(b, key):
                out.append(f"{section}.{key}")
    return out


class EventLog:
    """JSON-lines writer (one object per line) for replay output and the daemon's event log.

    Every record is whole or absent: a record is written with unbuffered ``os.write`` calls and,
    when one fails (a full disk: ENOSPC, a file size limit, an I/O error), the file is truncated
    back to where the record began, so no line is ever cut mid-JSON. A failed write never
    raises: ``write`` returns False, one WARNING names the first failure of an outage, and the
    first write that works again logs, at INFO, how many records the outage lost. ``close``
    never raises either (nothing is buffered).

    ``append``: add to an existing file (the daemon), or start it empty (replay ``--out``).
    Raises OSError only from the constructor (the file cannot be created or opened).
    """

    def __init__(self, path: Path | None, append: bool = True) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()
        #: records lost over the whole run, and in the current outage (None when writing works)
        self.lost_total = 0
        self._outage: dict | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            self._fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)

    @property
    def failing(self) -> bool:
        """True while writes fail (since the last failed write)."""
        return self._outage is not None

    def write(self, rec: dict) -> bool:
        """Append ``rec`` as one line; True when it was written. Raises TypeError/ValueError for
        a record that is not JSON-serialisable (a bug in the caller, not a disk problem)."""
        if self._fd is None:
            return False
        data = (_dumps(rec) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return False
            start = None
            try:
                start = os.lseek(self._fd, 0, os.SEEK_END)
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                if start is not None:
                    try:  # drop the part of the record that did fit
                        os.ftruncate(self._fd, start)
                    except OSError:
                        pass
                self.lost_total += 1
                if self._outage is None:
                    self._outage = {"since": time.monotonic(), "lost": 0}
                    log.warning("cannot write to the event log %s (%s); records are dropped "
                                "until it can be written again (the daemon keeps running)",
                                self.path, exc.strerror or exc)
                self._outage["lost"] += 1
                return False
            if self._outage is not None:
                o, self._outage = self._outage, None
                log.info("event log %s is written again after %.0f s; %d record(s) were lost",
                         self.path, time.monotonic() - o["since"], o["lost"])
            return True

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _dumps(rec: dict) -> str:
    """Compact, strict JSON (NaN and infinities become null: they are not JSON)."""
    try:
        return json.dumps(rec, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(rec), separators=(",", ":"), allow_nan=False)


def load_workers(cfg: Config, face: bool, voice: bool,
                 video_mode: bool = True) -> tuple[VisionWorker | None, SpeechPerception | None]:
    """Load the models each active modality needs. Raises ModelError naming the file."""
    vision = speech = None
    if face:
        vision = VisionWorker(FaceDetector(cfg.vision.detector_model,
                                           cfg.vision.min_detection_confidence, video=video_mode),
                              FerModel(cfg.vision.fer_model))
    if voice:
        speech = SpeechPerception(SerModel(cfg.speech.ser_model, cfg.speech.window_s), cfg.speech)
    return vision, speech


class Pipeline:
    """The live daemon loop.

    Construction opens the devices first (a missing camera or microphone is reported within
    seconds, before models load), honouring ``service.allow_degraded``, then loads the models.
    Raises DeviceError (exit 69) or ModelError. ``reply``: run the reply worker (chat + voice).
    ``on_record``: called with every transition and reply record (JSON-able dicts).
    ``on_evidence(t, evidence or None)``: sees every input to the fusion, as in :func:`replay`.
    """

    def __init__(self, cfg: Config, *, reply: bool = True,
                 on_record: Callable[[dict], None] | None = None,
                 progress: Callable[[str], None] | None = None,
                 on_evidence: Callable[[float, Evidence | None], None] | None = None) -> None:
        self.cfg = cfg
        self.on_evidence = on_evidence
        self.boot_cfg = cfg  # what the devices and models were opened with
        self.on_record = on_record
        self.started_at = time.monotonic()
        #: why each device that failed to open is missing ("camera"/"microphone" → message)
        self.unavailable: dict[str, str] = {}
        say = progress or (lambda _msg: None)
        origin = time.monotonic()
        self.camera = self._open("camera", lambda: open_camera(cfg.camera, True, origin))
        self.mic = self._open("microphone",
                              lambda: open_microphone(cfg.microphone, cfg.camera, True, origin))
        if self.camera is None and self.mic is None:
            why = ("; ".join(self.unavailable.values())
                   or 'camera.source and microphone.source are both "none"')
            raise DeviceError(f"nothing to observe: {why}", "camera.source")
        say("loading models")
        self.vision, self.speech = load_workers(cfg, self.camera is not None, self.mic is not None)
        self.fusion = Fusion(cfg.fusion)
        self._fusion_lock = threading.Lock()
        self.frames = FrameRing(cfg.camera.ring_frames, cfg.camera.height, cfg.camera.width)
        self.audio = AudioRing(cfg.microphone.ring_s, SAMPLE_RATE)
        self.reply = None
        if reply and cfg.reply.enabled:
            say("loading voice")
            from .reply import ReplyWorker
            self.reply = ReplyWorker(cfg, on_event=self._record)
        self.transcripts = None
        if self.reply is not None and self.speech is not None:
            self.transcripts = self._load_transcripts(cfg, say)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._captures: list[CaptureThread] = []
        self._beats: dict[str, float] = {}
        self.last_update: FusedUpdate | None = None
        self.last_transition: dict | None = None
        self.last_reply: dict | None = None
        self._fps = 0.0
        self._frame_t: float | None = None
        self.gated_windows = 0

    def _load_transcripts(self, cfg: Config, say: Callable[[str], None]):
        """The speech-to-text worker when the words are used (``stt.transcripts_wanted``), else
        None. A missing model raises ModelError, or with ``service.allow_degraded`` leaves
        speech-to-text off with a note."""
        from .stt import Transcriber, TranscriptWorker, transcripts_wanted
        if not transcripts_wanted(cfg):
            return None
        say("loading speech-to-text")
        tc = cfg.speech.transcript
        try:
            stt = Transcriber.from_config(tc)
        except ModelError as exc:
            if not cfg.service.allow_degraded:
                raise
            self.unavailable["speech-to-text"] = str(exc)
            return None
        worker = TranscriptWorker(stt, self._on_transcript, gate=self.reply.mic_gated,
                                  max_audio_s_per_minute=tc.max_audio_s_per_minute,
                                  log_transcripts=tc.log_transcripts)
        self.reply.transcripts_idle = worker.wait_idle
        return worker

    def _on_transcript(self, u) -> None:
        from .stt import utterance_record
        self.reply.add_utterance(u)
        self._record(utterance_record(u, self.cfg.speech.transcript.log_transcripts))

    def _on_utterance(self, out: SpeechOutput) -> None:
        if self.transcripts is not None:
            emotion = CLASSES[int(np.argmax(out.probs))] if out.probs is not None else None
            self.transcripts.submit(out.start_s, out.end_s, out.audio, emotion)

    def _open(self, what: str, opener):
        try:
            return opener()
        except DeviceError as exc:
            if not self.cfg.service.allow_degraded:
                raise
            self.unavailable[what] = str(exc)
            return None

    # ------------------------------------------------------------------ state for the service
    @property
    def notes(self) -> list[str]:
        """What the service logs once it is up (and puts in the status file)."""
        return [f"{what} unavailable, running without it: {why}"
                for what, why in self.unavailable.items()]

    @property
    def modalities(self) -> dict[str, str]:
        return {"face": "on" if self.camera else "off", "voice": "on" if self.mic else "off"}

    def ready(self) -> bool:
        """True once every active modality delivered its first frame or audio block."""
        return ((self.camera is None or self.frames.written > 0)
                and (self.mic is None or self.audio.written_samples > 0))

    def heartbeats(self) -> dict[str, float]:
        """Worker name → time.monotonic() of its latest sign of life (watchdog input)."""
        beats = dict(self._beats)
        for c in self._captures:
            beats[c.name] = c.heartbeat
        if self.reply is not None:
            beats["reply"] = self.reply.heartbeat
        if self.transcripts is not None:
            beats["transcripts"] = self.transcripts.heartbeat
        return beats

    def status(self) -> dict:
        st = self.fusion.state
        return {
            "modalities": self.modalities,
            "emotion": st.emotion,
            "probs": st.to_json()["probs"],
            "fps": round(self._fps, 1),
            "frames": {"captured": self.frames.written, "dropped": self.frames.dropped,
                       "classified": self.vision.frames if self.vision else 0,
                       "with_face": self.vision.faces_found if self.vision else 0},
            "audio": {"samples": self.audio.written_samples, "overruns": self.audio.overruns,
                      "dropped": self.audio.dropped,
                      "windows": self.speech.ticks if self.speech else 0,
                      "voiced_windows": self.speech.speech_ticks if self.speech else 0,
                      "utterances": self.speech.utterances if self.speech else 0,
                      "gated_windows": self.gated_windows},
            "last_transition": self.last_transition,
            "last_reply": self.last_reply,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "notes": self.notes,
        }

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        # File sources pace media time from one origin; take it now, after the models loaded,
        # or a looping file would "catch up" on the loading time in one burst of drops.
        origin = time.monotonic()
        for src in (self.camera, self.mic):
            if src is not None and getattr(src, "clock_origin", None) is not None:
                src.clock_origin = origin
        if self.camera is not None:
            self._captures.append(CaptureThread(self.camera, self.frames, "capture camera").start())
            self._spawn("vision", self._vision_loop)
        if self.mic is not None:
            self._captures.append(CaptureThread(self.mic, self.audio, "capture microphone").start())
            self._spawn("speech", self._speech_loop)
        if self.reply is not None:
            self.reply.start()
        if self.transcripts is not None:
            self.transcripts.start()

    def _spawn(self, name: str, target) -> None:
        self._beats[name] = time.monotonic()
        th = threading.Thread(target=self._guard, args=(name, target), name=name, daemon=True)
        self._threads.append(th)
        th.start()

    def _guard(self, name: str, target) -> None:
        try:
            target()
        except Exception:  # a dead worker stops the watchdog pings → systemd restarts us
            log.exception("%s worker died", name)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.frames.close()
        self.audio.close()
        deadline = time.monotonic() + timeout
        for c in self._captures:
            c.stop(max(0.1, deadline - time.monotonic()))
        for th in self._threads:
            th.join(max(0.1, deadline - time.monotonic()))
        if self.transcripts is not None:
            self.transcripts.stop(max(0.1, deadline - time.monotonic()))
        if self.reply is not None:
            self.reply.stop(max(0.1, deadline - time.monotonic()))
        for w in (self.vision,):
            if w is not None:
                w.close()

    def reconfigure(self, cfg: Config) -> list[str]:
        """Apply a reloaded config; returns the keys that differ from what is running and need
        a restart (compared with the config the process started with, so they are reported at
        every reload until the restart)."""
        with self._fusion_lock:
            self.fusion.reconfigure(cfg.fusion)
        if self.speech is not None:
            live = {k.split(".", 1)[1] for k in LIVE_KEYS if k.startswith("speech.")}
            self.speech.reconfigure(self.speech.cfg.model_copy(
                update={k: getattr(cfg.speech, k) for k in live}))
        if self.reply is not None:
            self.reply.reload(cfg)
        self.cfg = cfg
        return [k for k in changed_keys(self.boot_cfg, cfg) if not is_live_key(k)]

    def _record(self, rec: dict) -> None:
        if rec.get("type") == "reply":
            self.last_reply = {k: rec.get(k) for k in ("source", "cause", "text", "latency_s")}
        if self.on_record is not None:
            self.on_record(rec)

    def _fuse(self, t: float, ev: Evidence | None) -> None:
        if self.on_evidence is not None:
            self.on_evidence(t, ev)
        with self._fusion_lock:
            upd = self.fusion.update(t, ev)
            self.last_update = upd
        if upd.transition is not None:
            rec = upd.transition.to_json()
            self.last_transition = {k: rec[k] for k in ("t", "from", "to", "confidence")}
            log.info("transition %s → %s (confidence %.2f)", rec["from"], rec["to"],
                     rec["confidence"], extra={"redsg_event": "transition", "fields": {
                         "EMOTION_FROM": rec["from"], "EMOTION_TO": rec["to"],
                         "CONFIDENCE": f"{rec['confidence']:.3f}"}})
            self._record(rec)
            if self.reply is not None:
                self.reply.submit(upd.transition)

    def _vision_loop(self) -> None:
        seq, last_t = -1, None
        while not self._stop.is_set():
            self._beats["vision"] = time.monotonic()
            item = self.frames.wait(seq, timeout=0.5)
            if item is None:
                continue
            seq, t, frame = item
            if last_t is not None and t - last_t < 1.0 / self.cfg.vision.max_fps - 1e-3:
                continue
            if last_t is not None and t > last_t:
                self._fps = 0.9 * self._fps + 0.1 / (t - last_t) if self._fps else 1 / (t - last_t)
            last_t = t
            result, _faces = self.vision.process(t, frame)
            self._fuse(t, face_evidence(t, result, self.cfg))

    def _speech_loop(self) -> None:
        pos = 0  # absolute ring position of the next sample the speech step gets
        while not self._stop.is_set():
            self._beats["speech"] = time.monotonic()
            if not self.audio.wait(pos + CHUNK - 1, timeout=0.5):
                continue
            pcm, start, t_end = self.audio.read_since(pos)
            if start > pos:  # the ring overwrote unread audio: silence keeps the step's time
                pcm = np.concatenate([np.zeros(start - pos, np.int16), pcm])
            pos += len(pcm)
            t_first = t_end - (len(pcm) - 1) / SAMPLE_RATE
            # The device's own voice must never be classified: blocks that overlap it are
            # silenced inside the step (which keeps its time and state).
            gated = self.reply is not None and (self.reply.mic_gated(t_first)
                                                or self.reply.mic_gated(t_end))
            if gated:
                self.gated_windows += 1
            feed_speech(self.speech, t_first, pcm, self._fuse, gated, self._on_utterance)


def face_evidence(t: float, result, cfg: Config) -> Evidence | None:
    """The one way a frame's FER result becomes fusion evidence, live and in replay: None
    without a face; the face's reliability from its height (``fusion.face_full_size_px``)."""
    if result is None:
        return None
    return Evidence("face", t, result.probs,
                    face_reliability(result.face.box[3], cfg.fusion.face_full_size_px))


def feed_speech(step: SpeechPerception, t_first: float, pcm: np.ndarray,
                fuse: Callable[[float, Evidence | None], None], gated: bool = False,
                on_utterance: Callable[[SpeechOutput], None] | None = None) -> None:
    """The one way audio reaches fusion, live and in replay: every output of the speech step
    becomes one fusion update (with the voice evidence, or None for a tick); each closed
    utterance also goes to ``on_utterance`` (speech-to-text), just before its update."""
    deliver_speech(step.push(t_first, pcm, gated), fuse, on_utterance)


def deliver_speech(outputs, fuse: Callable[[float, Evidence | None], None],
                   on_utterance: Callable[[SpeechOutput], None] | None = None) -> None:
    """Hand each ``SpeechOutput`` to fusion, and each closed utterance to ``on_utterance``
    first: a transition the utterance fires can then wait for its words."""
    for out in outputs:
        if on_utterance is not None and out.kind == "utterance":
            on_utterance(out)
        fuse(*out.fusion_input())


# ---------------------------------------------------------------------------------- replay

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
    v = cam._declared_s(cam._container.streams.video[0])
    a = mic._declared_s(mic._container.streams.audio[0])
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
           transcriber=None) -> list[dict]:
    """Run recorded media through the same workers and fusion, in media time.

    video: a video file (or None for audio only); audio: a separate audio file; otherwise the
    video's own audio track is used when it has one (``use_video_audio``). Writes JSON lines to
    ``out`` and a timeline PNG to ``plot`` when given. ``on_evidence(t, evidence or None)`` sees
    every input to the fusion (for offline tuning of its parameters, scripts/tune_fusion.py).
    ``out`` is started empty unless ``append``. A damaged or truncated file is replayed up to
    the damage; a separate ``audio`` whose length differs from the video's by more than a
    second is replayed only to the end of the shorter plus ``speech.window_s``. Each such
    problem is logged and
    appended to ``warnings`` (when given) as one sentence. With a ``transcriber``
    (``stt.Transcriber``), each utterance the VAD closes adds a record ``{"type": "utterance",
    "t_start", "t_end", "label", "transcript"}`` (``redsg-edge replay --transcribe``).
    Returns the records (docs/architecture.md).
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
    vision, speech = load_workers(cfg, cam is not None, mic is not None)
    fusion = Fusion(cfg.fusion)
    records: list[dict] = []
    sink = EventLog(out, append=append)
    last_frame_t = None

    def fuse(t: float, ev: Evidence | None) -> None:
        if on_evidence is not None:
            on_evidence(t, ev)
        upd = fusion.update(t, ev)
        rec = upd.to_json()
        records.append(rec)
        sink.write(rec)
        if upd.transition is not None:
            tr = upd.transition.to_json()
            records.append(tr)
            sink.write(tr)

    def said(out: SpeechOutput) -> None:
        if transcriber is None:
            return
        rec = {"type": "utterance", "t_start": round(out.start_s, 4), "t_end": round(out.end_s, 4),
               "label": CLASSES[int(np.argmax(out.probs))],
               "transcript": transcriber.transcribe(out.audio)}
        records.append(rec)
        sink.write(rec)

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
                if last_frame_t is not None and t - last_frame_t < 1.0 / cfg.vision.max_fps - 1e-3:
                    continue
                last_frame_t = t
                result, _ = vision.process(t, data)
                fuse(t, face_evidence(t, result, cfg))
                if bar is not None:
                    bar.n = t
                    bar.refresh()
                continue
            feed_speech(speech, t, data, fuse, on_utterance=said)
        if speech is not None:  # a recording ends; a live stream does not
            deliver_speech(speech.finish(), fuse, said)
    finally:
        if bar is not None:
            bar.close()
        sink.close()
        if cam is not None:
            cam.close()
        if mic is not None:
            mic.close()
        if vision is not None:
            vision.close()
    for src in (cam, mic):
        if src is not None and src.warning and warnings is not None:
            warnings.append(src.warning)
    if sink.lost_total and warnings is not None:
        warnings.append(f"{out}: {sink.lost_total} record(s) could not be written")
    if plot is not None:
        from .timeline import plot_timeline
        plot_timeline(records, plot, title=Path(video or audio).name)
    return records
