"""The reply path in its own thread: transition → text (chat or template) → Piper → sink.

Nothing here can stall capture, inference or the watchdog: ``submit`` never blocks, and the
worker's heartbeat moves while it waits for tokens, synthesises or drains the sink. Per
accepted transition the worker

1. asks the chat endpoint for a short reply (``speaker.speak_chat_stream``) and speaks each sentence as
   soon as it is complete, writing PCM to the sink while later tokens still arrive; or
2. speaks an offline template for the new emotion when chat is disabled, no key is set for a
   remote endpoint, the endpoint fails (see ``chat``) or failed less than
   ``chat.retry_after_s`` ago. If the stream fails after at least one sentence has been spoken,
   the reply ends there (``truncated``; the unfinished fragment is dropped rather than spoken
   half-way).

Rules (documented in the README "Replies and voice" section):

- At most one reply in flight (from ``submit`` until the sink has played it out), and
  ``reply.cooldown_s`` from the end of one reply to the next accepted transition.
- **A transition that arrives while a reply is being prepared or spoken, or during the
  cooldown, is not answered**: ``submit`` returns False and the current utterance finishes
  (no barge-in, no backlog). The transition still enters the rolling history, so the next
  prompt knows about it. Why: fusion has already applied its dwell and refractory time, so a
  change during speech is often the person's reaction to the device itself; answering it would
  talk over the device's own sentence or answer an emotion that is already stale, and could
  start a feedback loop. Cutting a sentence off mid-word sounds broken.
- The microphone is gated (``mic_gated(t)``) from the first sample handed to the sink until
  the later of the sink finishing and the audio's own duration, plus ``voice.mic_gate_tail_s``;
  it answers for past capture times too, so a speech worker can drop windows that overlap.

Latency: Piper synthesises a whole sentence before its first sample, so the stream's first
sentence is cut early at a clause boundary, and offline templates have short first sentences
whose PCM is cached (synthesised while idle after ``start``), so an offline reply starts
without any synthesis.

Per reply, ``on_event`` receives an ``events.Reply`` with monotonic timestamps of each stage.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .. import CLASSES
from ..config import Config, style_for
from ..events import Reply, Transition
from ..worker import WorkerThread
from .chat import ChatEndpoint
from .prompt import Exchange, TemplatePicker, build_messages
from .speaker import PcmCache, Speaker, SynthesisRate, speak_chat_stream
from .text import clean_for_speech, split_sentences

log = logging.getLogger(__name__)

__all__ = ["ReplyWorker", "STAGES", "TRANSCRIPT_WAIT_S"]

#: Seconds a chat reply waits at most for the transcript of the utterance that just ended
#: (speech-to-text of a 3 s utterance takes 60-85 ms on one core here, ~0.3-0.6 s on a Pi 4).
TRANSCRIPT_WAIT_S = 0.5

#: The stages of a reply, in order, stamped in ``Reply.timestamps``: ``transition`` (the
#: transition's own ``t``), ``submitted``, ``chat_request``, ``first_token``,
#: ``first_sentence``, ``first_pcm`` (Piper output), ``first_sample`` (at the sink), ``done``
#: (sink drained).
STAGES = ("transition", "submitted", "chat_request", "first_token", "first_sentence",
          "first_pcm", "first_sample", "done")


class ReplyWorker(WorkerThread):
    """The reply path in its own thread: transition -> text (chat or template) -> Piper -> sink.

    ``cfg`` the whole ``Config`` (reads ``reply``, ``reply.chat``, ``voice``,
    ``speech.transcript``). ``voice`` a loaded ``redsg_edge.voice.Voice`` (default:
    ``Voice.from_config(cfg.voice)``, ~1 s; raises what it raises); ``sink`` a ``Sink`` (default
    ``make_sink(cfg.voice)``); the worker owns and closes the sink. ``on_event(reply)`` gets one
    ``events.Reply`` per answered transition, called from the worker thread (exceptions are
    logged and ignored); its ``timestamps`` are ``clock`` seconds per stage of :data:`STAGES`
    (``transition`` is the transition's ``t``, media time in replay), its ``latency_s`` count
    from ``submitted``.

    ``rng`` seeds template choice; ``clock`` seconds, monotonic; ``environ`` replaces
    ``os.environ`` for the key lookup (read again at every :meth:`reload`).
    ``cache_templates``: keep the PCM of offline-template sentences (per style) and, after
    ``start``, synthesise every template's first sentence while idle, so an offline reply's
    first audio needs no synthesis (~2 MB for the built-in templates).
    """

    _CACHE_MAX = 128  # sentences

    def __init__(self, cfg: Config, *, voice: Any = None, sink: Any = None,
                 on_event: Callable[[Reply], None] | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None, cache_templates: bool = True) -> None:
        from ..voice import Voice, make_sink

        super().__init__("reply", clock)
        self._voice = voice if voice is not None else Voice.from_config(cfg.voice)
        self._sink = sink if sink is not None else make_sink(cfg.voice, self._voice.sample_rate, clock)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._picker = TemplatePicker(cfg.reply.templates, rng)
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._history: deque[Exchange] = deque(maxlen=64)
        self._utterances: deque[Any] = deque(maxlen=20)  # transcripts, for the prompt only
        #: ``wait(timeout_s) -> bool`` for transcripts still being made (``TranscriptWorker.
        #: wait_idle``): a transition fired by an utterance's end comes before its words do.
        self.transcripts_idle: Callable[[float], bool] | None = None
        self._busy = False
        self._cooldown_until = float("-inf")
        self._muted_until = float("-inf")
        # mic gate: speaking intervals (start, end) and the start of the current one
        self._gate: deque[tuple[float, float]] = deque(maxlen=16)
        self._speaking_since: float | None = None
        self._chat = ChatEndpoint(clock, environ)
        #: counts of ``submitted``, ``accepted``, ``dropped_busy``, ``dropped_cooldown``,
        #: ``dropped_disabled``, ``dropped_muted``, ``chat``, ``offline``, ``truncated``,
        #: ``errors``, ``said`` and ``say_dropped`` (:meth:`say`)
        self.stats = {"submitted": 0, "accepted": 0, "dropped_busy": 0, "dropped_cooldown": 0,
                      "dropped_disabled": 0, "dropped_muted": 0, "chat": 0, "offline": 0,
                      "truncated": 0, "errors": 0, "said": 0, "say_dropped": 0}
        self._cache_templates = cache_templates
        self._synth_rate = SynthesisRate()
        self._pcm_cache = PcmCache(self._voice.synthesize, self._CACHE_MAX)  # worker thread only
        self._prefill: list[tuple[str, Any]] = []
        self._prefill_enabled = False  # start(warm=True) turns it on
        self._prefill_stale = False     # (re)plan on the worker thread: cache cleared, plan rebuilt
        self._planning = False
        self._cfg = cfg
        self._chat.configure(cfg.reply.chat)

    # ----------------------------------------------------------------- public API
    @property
    def voice(self) -> Any:
        """The ``voice.Voice`` that speaks."""
        return self._voice

    @property
    def sink(self) -> Any:
        """The audio sink replies are written to (owned: closed by :meth:`stop`)."""
        return self._sink

    def start(self, warm: bool = True) -> ReplyWorker:
        """Start the thread; returns the worker. ``warm``: first run one short synthesis
        (~0.1-0.3 s) so the first reply does not pay onnxruntime's first-run cost, then (with
        ``cache_templates``) synthesise the templates' first sentences in the worker's idle
        time. Raises RuntimeError when already started."""
        if self._thread is not None:
            raise RuntimeError("worker 'reply' already started")
        if warm:
            self._voice.warm()
            self._prefill_enabled = self._prefill_stale = self._cache_templates
        return super().start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread (an utterance in progress is cut) and close the sink; True when the
        thread ended within ``timeout`` seconds."""
        ok = super().stop(timeout)
        try:
            self._sink.close()
        except Exception as exc:
            log.warning("closing the audio sink failed: %s", exc)
        return ok

    def _wake(self) -> None:
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass

    def submit(self, transition: Transition) -> bool:
        """Offer a transition; never blocks.

        Returns True when accepted, False when dropped: replies disabled, stopping, a reply in
        flight, or within ``reply.cooldown_s`` of the end of the last one. Dropped transitions
        still enter the prompt history. Raises TypeError for anything but an
        ``events.Transition``.
        """
        if not isinstance(transition, Transition):
            raise TypeError(f"ReplyWorker.submit takes an events.Transition, "
                            f"got {type(transition).__name__}")
        now = self._clock()
        entry = Exchange(transition)
        with self._lock:
            self.stats["submitted"] += 1
            self._history.append(entry)
            if not self._cfg.reply.enabled or self._stop.is_set():
                reason = "dropped_disabled"
            elif self._busy:
                reason = "dropped_busy"
            elif now < self._muted_until:
                reason = "dropped_muted"
            elif now < self._cooldown_until:
                reason = "dropped_cooldown"
            else:
                self._busy = True
                self.stats["accepted"] += 1
                self._q.put_nowait((now, entry))  # cannot be full: _busy guards it
                return True
            self.stats[reason] += 1
        log.debug("transition %s -> %s not answered (%s)", transition.from_emotion,
                  transition.to_emotion, reason)
        return False

    def mute(self, seconds: float) -> None:
        """Answer no transition for ``seconds`` from now (0 unmutes; a reply in progress
        finishes). Never blocks: safe from any thread (MQTT's network thread). Raises
        ValueError for a negative or non-finite duration."""
        seconds = float(seconds)
        if not (seconds >= 0.0 and seconds != float("inf")):
            raise ValueError(f"mute: seconds must be finite and >= 0, got {seconds}")
        with self._lock:
            self._muted_until = self._clock() + seconds if seconds > 0 else float("-inf")
        if seconds:
            log.info("replies muted for %.0f s", seconds)
        else:
            log.info("replies unmuted")

    @property
    def muted(self) -> bool:
        """True while :meth:`mute` keeps transitions unanswered."""
        return self._clock() < self._muted_until

    def say(self, text: str) -> bool:
        """Speak ``text`` (cleaned for speech, in the default style) on the worker thread, as a
        reply would be, with the microphone gated; never blocks. Returns False (counted in
        ``say_dropped``) while a reply is in flight or the worker is stopping. Raises
        ValueError for text with nothing to say."""
        text = clean_for_speech(str(text))
        if not text:
            raise ValueError("say: nothing to say (empty text)")
        with self._lock:
            if self._busy or self._stop.is_set():
                self.stats["say_dropped"] += 1
                return False
            self._busy = True
            self._q.put_nowait(("say", text))  # cannot be full: _busy guards it
        return True

    def add_utterance(self, utterance: Any) -> None:
        """Keep a transcribed utterance (``t_start``, ``t_end`` on the transitions' clock (s),
        ``text``, ``emotion``: ``events.Utterance`` or ``stt.Utterance``) for the next chat
        prompts; never blocks. ``TranscriptWorker``'s ``on_transcript``. Ignored unless
        ``speech.transcript.enabled``; never logged, never used by the offline templates."""
        with self._lock:
            if self._cfg.speech.transcript.enabled:
                self._utterances.append(utterance)

    def mic_gated(self, now: float) -> bool:
        """True when audio captured at ``now`` (``clock`` seconds) may contain the device's own
        voice: from the first sample of a reply until it has been played out (at least its
        audio duration) plus ``voice.mic_gate_tail_s``."""
        tail = self._cfg.voice.mic_gate_tail_s
        with self._lock:
            if self._speaking_since is not None and now >= self._speaking_since:
                return True
            return any(s <= now <= e + tail for s, e in self._gate)

    @property
    def prefill_pending(self) -> int:
        """Template sentences still to be synthesised ahead of need (see ``start``)."""
        return (len(self._prefill) + int(self._planning)
                + int(self._prefill_stale and self._prefill_enabled))

    @property
    def speaking(self) -> bool:
        """True from a reply's first PCM until it has been played out."""
        return self._speaking_since is not None

    def reload(self, cfg: Config) -> None:
        """Apply a new config live: chat settings and key, templates, styles, cooldown, mic tail.
        A reply in progress finishes with the old settings. ``voice.model``/``sink``/``device``/
        ``wav_dir`` need a restart (a warning says so)."""
        with self._lock:
            old, self._cfg = self._cfg, cfg
            self._picker.set_templates(cfg.reply.templates)
            self._prefill_stale = True
        self._chat.configure(cfg.reply.chat)
        ov, nv = old.voice, cfg.voice
        if (ov.model, ov.sink, ov.device, ov.wav_dir) != (nv.model, nv.sink, nv.device, nv.wav_dir):
            log.warning("voice.model/sink/device/wav_dir changes take effect at the next restart")

    # ----------------------------------------------------------------- thread
    def _plan_prefill(self) -> None:
        """Queue the first sentence of every template, in each emotion's style (worker thread)."""
        with self._lock:
            cfg, self._prefill_stale = self._cfg, False
            self._planning = True
        self._pcm_cache.clear()
        plan = []
        for emotion in (CLASSES if self._prefill_enabled else ()):
            style = style_for(cfg.voice, emotion)
            for text in self._picker.candidates(emotion):
                first = split_sentences(text, final=True)[0][:1]
                plan += [(s, style) for s in first]
        self._prefill = plan
        self._planning = False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            if self._prefill_stale:
                self._plan_prefill()
            try:
                job = self._q.get(timeout=0.0 if self._prefill else 0.25)
            except queue.Empty:
                if self._prefill:  # idle: synthesise one template sentence ahead of need
                    sentence, style = self._prefill[0]
                    for _ in self._pcm_cache.synthesize(sentence, style, False):
                        pass
                    self._prefill.pop(0)  # after: prefill_pending counts the one in progress
                continue
            if job is None:
                break
            try:
                if job[0] == "say":
                    self._say(job[1])
                else:
                    self._reply(*job)
            except Exception:  # the worker must survive anything one reply throws
                log.exception("reply failed")
                try:  # close a half-written utterance so the next reply starts clean
                    self._sink.drain(1.0)
                except Exception:
                    pass
                with self._lock:
                    self.stats["errors"] += 1
                    self._busy = False
                    self._end_speaking(self._clock(), 0.0)

    def _start_speaking(self, t: float) -> None:
        with self._lock:
            if self._speaking_since is None:
                self._speaking_since = t

    def _end_speaking(self, end: float, audio_s: float) -> None:
        # caller holds self._lock
        if self._speaking_since is not None:
            self._gate.append((self._speaking_since, max(end, self._speaking_since + audio_s)))
            self._speaking_since = None

    def _say(self, text: str) -> None:
        """Speak a :meth:`say` request (worker thread): no chat, no history, no cooldown."""
        with self._lock:
            style = self._cfg.voice.default_style
        ts: dict[str, float | None] = dict.fromkeys(STAGES)
        sp = Speaker(self._voice.synthesize, self._sink, style, ts,
                     sample_rate=self._voice.sample_rate, beat=self.beat,
                     stopped=self._stop.is_set, on_first_pcm=self._start_speaking,
                     rate=self._synth_rate, cache=None)
        for sentence in split_sentences(text, final=True)[0]:
            sp.speak(sentence)
        while not self._sink.drain(0.25):
            self.beat()
            if self._stop.is_set():
                self._sink.close()
                break
        with self._lock:
            self._end_speaking(self._clock(), sp.audio_s)
            self._busy = False
            self.stats["said"] += 1
        log.info("said on request: %d sentence(s), %.1f s of audio", len(sp.sentences), sp.audio_s)

    def _reply(self, t_submit: float, entry: Exchange) -> None:
        clock, event = self._clock, entry.transition
        wait = self.transcripts_idle
        if wait is not None and self._cfg.reply.chat.enabled and self._chat.client is not None:
            wait(TRANSCRIPT_WAIT_S)
        client, retry_at, outage_cause = self._chat.state()
        with self._lock:
            cfg, picker = self._cfg, self._picker
            history = [h for h in self._history if h is not entry and h.transition.t <= event.t]
            tc = cfg.speech.transcript
            said = [u for u in self._utterances if tc.enabled
                    and float(u.t_end) >= event.t - tc.prompt_max_age_s]
        said = said[-tc.prompt_utterances:] if tc.prompt_utterances else []
        chat = cfg.reply.chat
        history = history[-chat.history:] if chat.history else []
        style = style_for(cfg.voice, event.to_emotion)
        ts: dict[str, float | None] = dict.fromkeys(STAGES)
        ts["transition"], ts["submitted"] = float(event.t), t_submit
        sp = Speaker(self._voice.synthesize, self._sink, style, ts,
                     sample_rate=self._voice.sample_rate, beat=self.beat,
                     stopped=self._stop.is_set, on_first_pcm=self._start_speaking,
                     rate=self._synth_rate, cache=self._pcm_cache if self._cache_templates else None)
        source, cause, truncated, skipped = "offline", None, False, False

        if not chat.enabled:
            cause = "chat_disabled"
        elif client is None:
            cause = "no_api_key"
        elif clock() < retry_at:
            cause, skipped = outage_cause or "recent_failure", True
        else:
            messages = build_messages(chat.system_prompt, event, history, said)
            failure = speak_chat_stream(client, chat, messages, sp, clock=clock, beat=self.beat,
                                        stopped=self._stop.is_set, redact=self._chat.redact)
            if failure is None:
                source = "chat"
                self._chat.succeeded(chat)
            else:
                if failure.cause != "stopped":
                    self._chat.failed(failure, chat)
                cause = failure.cause
                if sp.sentences:
                    source, truncated = "chat", True
        if not sp.sentences and not self._stop.is_set():
            source = "offline"
            text = picker.pick(event.to_emotion)
            for s in split_sentences(text, final=True)[0]:
                if ts["first_sentence"] is None:
                    ts["first_sentence"] = clock()
                sp.speak(s, cached=True)
        audio_s = sp.audio_s
        while not self._sink.drain(0.25):  # SounddeviceSink: until played out
            self.beat()
            if self._stop.is_set():
                self._sink.close()
                break
        done = clock()
        ts["done"] = done
        ts["first_sample"] = self._sink.first_sample_t if sp.samples else None
        text = " ".join(sp.sentences)
        with self._lock:
            self._end_speaking(done, audio_s)
            entry.reply, entry.answered = text or None, True
            self._busy = False
            self._cooldown_until = done + cfg.reply.cooldown_s
            self.stats[source] += 1
            self.stats["truncated"] += int(truncated)
        reply = Reply(event, source, cause, text=text, skipped=skipped, truncated=truncated,
                      sentences=len(sp.sentences), audio_s=audio_s, timestamps=ts,
                      latency_s={k: (None if ts[k] is None else round(ts[k] - t_submit, 4))
                                 for k in STAGES[2:]})
        log.info("reply (%s%s) to %s -> %s: %r", source, f", {cause}" if cause else "",
                 event.from_emotion, event.to_emotion, text)
        if self._on_event is not None:
            try:
                self._on_event(reply)
            except Exception:
                log.exception("on_event callback failed")
        from ..memory import release_free_memory
        release_free_memory()  # what synthesis freed goes back to the OS, not to a high-water mark
