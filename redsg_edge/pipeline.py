"""The daemon's loop: capture → rings → perception → fusion → event bus → subscribers.

``Pipeline`` wires the parts for a live run: capture threads fill preallocated rings; one vision
and one speech thread hand the newest data to the shared ``perception.Perception`` step; a lock
serialises fusion updates; updates, transitions, replies and utterances go out on the
``events.EventBus`` (the reply worker subscribes to transitions; its queue never blocks).
``replay.replay`` drives the very same perception step from media time instead of the wall clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from .capture import (AudioRing, CaptureThread, DeviceError, FrameRing, open_camera,
                      open_microphone)
from . import CLASSES
from .config import Config
from .errors import ModelError
from .events import EventBus, Utterance
from .features import SAMPLE_RATE
from .fusion import Evidence, FusedUpdate, Fusion
from .modalities import MODALITIES
from .perception import Perception, deliver, fuse_and_publish
from .speech import SpeechOutput
from .vad import CHUNK

log = logging.getLogger("redsg_edge.pipeline")

#: Utterances between saves of the running voice normalisation (``speech.norm_state``).
NORM_SAVE_EVERY = 20

#: Config keys a reload (SIGHUP) can apply to a running pipeline; others need a restart.
LIVE_KEYS = ("fusion", "reply", "voice.default_style", "voice.style", "voice.mic_gate_tail_s",
             "speech.vad_threshold", "speech.vad_gain_max_db", "speech.min_utterance_s",
             "speech.hangover_s", "speech.padding_s", "speech.max_utterance_s", "speech.hop_s",
             "speech.rolling_after_s", "speech.rolling_utterance_weight",
             "speech.utterance_weight", "vision.max_fps", "vision.fer_prior_shift",
             "vision.far_face_tiles",
             "service.status_interval_s", "service.heartbeat_timeout_s", "service.log_level",
             "service.event_log")


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


class Pipeline:
    """The live daemon loop.

    Construction opens the devices first (a missing camera or microphone is reported within
    seconds, before models load), honouring ``service.allow_degraded``, then loads the models.
    Raises DeviceError (exit 69) or ModelError (exit 70). ``reply``: run the reply worker (chat
    + voice). ``progress(msg)`` hears the start-up phases. ``on_evidence(t, evidence or None)``
    sees every input to the fusion, as in :func:`replay`.

    Everything the loop produces is published on :attr:`bus` (``events.EventBus``): every
    ``fusion.FusedUpdate`` (``"update"``), each ``events.Transition``, ``events.Reply`` and
    ``events.Utterance``. The reply worker is itself a subscriber of ``"transition"``; the
    service adds the event log and journald, and MQTT or the tuning page subscribe the same way.
    """

    def __init__(self, cfg: Config, *, reply: bool = True,
                 progress: Callable[[str], None] | None = None,
                 on_evidence: Callable[[float, Evidence | None], None] | None = None) -> None:
        self.cfg = cfg
        self.on_evidence = on_evidence
        self.boot_cfg = cfg  # what the devices and models were opened with
        self.bus = EventBus()
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
        self.perception = Perception.load(cfg, self.camera is not None, self.mic is not None)
        self.fusion = Fusion(cfg.fusion)
        self._fusion_lock = threading.Lock()
        self.frames = FrameRing(cfg.camera.ring_frames, cfg.camera.height, cfg.camera.width)
        self.audio = AudioRing(cfg.microphone.ring_s, SAMPLE_RATE)
        self.last_update: FusedUpdate | None = None
        self.last_transition: dict | None = None
        self.last_reply: dict | None = None
        self.bus.subscribe(self._remember, types=("transition", "reply"), name="status")
        self.reply = None
        if reply and cfg.reply.enabled:
            say("loading voice")
            from .reply import ReplyWorker
            self.reply = ReplyWorker(cfg, on_event=self.bus.publish)
            self.bus.subscribe(self.reply.submit, types=("transition",), name="reply")
        self.transcripts = None
        if self.reply is not None and self.perception.speech is not None:
            self.transcripts = self._load_transcripts(cfg, say)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._captures: list[CaptureThread] = []
        self._beats: dict[str, float] = {}
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

    def _on_transcript(self, u: Utterance) -> None:
        self.reply.add_utterance(u)
        self.bus.publish(u)

    def _on_utterance(self, out: SpeechOutput) -> None:
        sp = self.perception.speech
        if sp is not None and sp.utterances % NORM_SAVE_EVERY == 0:
            self.perception.save_norm()  # a power cut loses at most this many utterances
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

    def _remember(self, event) -> None:
        rec = event.to_json()
        if event.type == "transition":
            self.last_transition = {k: rec[k] for k in ("t", "from", "to", "confidence")}
        else:
            self.last_reply = {k: rec.get(k) for k in ("source", "cause", "text", "latency_s")}

    # ------------------------------------------------------------------ state for the service
    @property
    def vision(self):
        """The vision worker (``vision.VisionWorker``), or None without a camera."""
        return self.perception.vision

    @property
    def speech(self):
        """The speech step (``speech.SpeechPerception``), or None without a microphone."""
        return self.perception.speech

    @property
    def notes(self) -> list[str]:
        """What the service logs once it is up (and puts in the status file)."""
        return [f"{what} unavailable, running without it: {why}"
                for what, why in self.unavailable.items()]

    @property
    def modalities(self) -> dict[str, str]:
        """Modality name → ``"on"`` when the capture device that feeds it is open, else
        ``"off"``; one entry per row of ``modalities.MODALITIES``."""
        devices = {"camera": self.camera, "microphone": self.mic}
        return {name: "on" if devices.get(m.device) is not None else "off"
                for name, m in MODALITIES.items()}

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
        """The loop's part of the status file (docs/architecture.md, ``redsg-edge status``):

        ``modalities`` {name: "on" | "off"}; ``emotion`` the fused emotion; ``probs`` {class:
        p} smoothed fused probabilities (None before the first update); ``evidence`` {modality:
        {"top": class, "p": probability, "age_s": s} | None} of the latest update (None: no
        fresh evidence); ``fps`` classified frames per second (exponential average);
        ``frames`` {captured, dropped, classified, with_face}; ``audio`` {samples, overruns,
        dropped (samples lost to a full ring), windows, voiced_windows, utterances,
        gated_windows}; ``last_transition`` {t, from, to, confidence} | None; ``last_reply``
        {source, cause, text, latency_s} | None; ``uptime_s``; ``notes`` [str];
        ``subscribers`` [name] of the event bus and ``subscriber_errors`` {name: count}.
        """
        st = self.fusion.state
        upd = self.last_update
        vision, speech = self.vision, self.speech
        return {
            "modalities": self.modalities,
            "emotion": st.emotion,
            "probs": st.to_json()["probs"],
            "evidence": {m: _top(upd, m) for m in MODALITIES},
            "fps": round(self._fps, 1),
            "frames": {"captured": self.frames.written, "dropped": self.frames.dropped,
                       "classified": vision.frames if vision else 0,
                       "with_face": vision.faces_found if vision else 0},
            "audio": {"samples": self.audio.written_samples, "overruns": self.audio.overruns,
                      "dropped": self.audio.dropped,
                      "windows": speech.ticks if speech else 0,
                      "voiced_windows": speech.speech_ticks if speech else 0,
                      "utterances": speech.utterances if speech else 0,
                      "gated_windows": self.gated_windows},
            "last_transition": self.last_transition,
            "last_reply": self.last_reply,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "notes": self.notes,
            "subscribers": self.bus.subscribers,
            "subscriber_errors": dict(self.bus.errors),
        }

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        """Start the capture threads, the vision and speech workers, reply and speech-to-text."""
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
        """Stop every thread within ``timeout`` seconds in all (best effort) and close the
        models; idempotent."""
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
        self.perception.save_norm()
        self.perception.close()

    def reconfigure(self, cfg: Config) -> list[str]:
        """Apply a reloaded config; returns the keys that differ from what is running and need
        a restart (compared with the config the process started with, so they are reported at
        every reload until the restart)."""
        # Perception first: it is the part that can refuse (a FER prior shift the model cannot
        # take), and a refused reload must leave everything as it was.
        self.perception.reconfigure(
            cfg, [k.split(".", 1)[1] for k in LIVE_KEYS if k.startswith("speech.")])
        with self._fusion_lock:
            self.fusion.reconfigure(cfg.fusion)
        if self.reply is not None:
            self.reply.reload(cfg)
        self.cfg = cfg
        return [k for k in changed_keys(self.boot_cfg, cfg) if not is_live_key(k)]

    def observe(self, t: float, ev: Evidence | None) -> FusedUpdate:
        """One fusion update at ``t`` (s) with ``ev`` (or None): what every perception output
        goes through, public so that another evidence producer (a registered modality) can
        feed the same fusion. Publishes the update and any transition on :attr:`bus`."""
        upd = fuse_and_publish(self.fusion, self.bus, t, ev, self.on_evidence, self._fusion_lock)
        self.last_update = upd
        return upd

    def _vision_loop(self) -> None:
        seq, last_t = -1, None
        while not self._stop.is_set():
            self._beats["vision"] = time.monotonic()
            item = self.frames.wait(seq, timeout=0.5)
            if item is None:
                continue
            seq, t, frame = item
            percepts = self.perception.frame(t, frame)
            if not percepts:
                continue
            if last_t is not None and t > last_t:
                self._fps = 0.9 * self._fps + 0.1 / (t - last_t) if self._fps else 1 / (t - last_t)
            last_t = t
            deliver(percepts, self.observe)

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
            deliver(self.perception.audio(t_first, pcm, gated), self.observe, self._on_utterance)


def _top(upd: FusedUpdate | None, modality: str) -> dict | None:
    probs = upd.model_output(modality) if upd is not None else None
    if probs is None:
        return None
    i = int(np.argmax(probs))
    return {"top": CLASSES[i], "p": round(float(probs[i]), 4),
            "age_s": round(upd.evidence[modality].age_s, 3)}
