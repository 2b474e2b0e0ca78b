"""Typed events of the pipeline and the subscriber list that carries them.

Data flows one way: perception → fusion → :class:`EventBus` → subscribers. The pipeline (live)
and ``replay`` publish:

- ``fusion.FusedUpdate`` (type ``"update"``): every fusion step, ~15–40 per second;
- :class:`Transition` (``"transition"``): a change of the fused emotion (hysteresis and dwell
  passed, see ``fusion``);
- :class:`Reply` (``"reply"``): what the device said in answer to a transition;
- :class:`Utterance` (``"utterance"``): what the person said (speech-to-text), when enabled.

Every event has ``type`` (a class constant), ``t`` (seconds; capture time live, media time in
replay) and ``to_json()``, the record written to the event log (docs/architecture.md). The
reply worker, event log, status file, journald, MQTT and the tuning page are subscribers; a new
publisher subscribes in one line (``bus.subscribe(fn, types=("transition",))``) and edits
nothing else.

This module is pure: no I/O, no clocks, no imports of the rest of the package.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Protocol

log = logging.getLogger(__name__)

__all__ = ["Event", "Transition", "Reply", "Utterance", "EventBus", "Subscriber"]


class Event(Protocol):
    """What every published event offers: a ``type`` name, a time ``t`` (s) and its record."""

    type: ClassVar[str]
    t: float

    def to_json(self) -> dict:
        """The event-log record of the event (JSON-able dict with a ``type`` key)."""


@dataclass(frozen=True)
class Transition:
    """A change of the fused emotion, produced only by the fusion state machine.

    ``t`` seconds; ``confidence`` the smoothed fused probability of ``to_emotion`` (0..1);
    ``previous_duration_s`` how long ``from_emotion`` was held (since the previous transition, or
    since the first evidence); ``evidence`` modality → ``{"probs": {name: p}, "age_s": s,
    "weight": w}`` for the modalities that contributed to this update.
    """

    type: ClassVar[str] = "transition"
    t: float
    from_emotion: str
    to_emotion: str
    confidence: float
    previous_duration_s: float
    evidence: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The event-log record ``{"type": "transition", "t", "from", "to", "confidence",
        "previous_duration_s", "evidence"}``."""
        return {"type": "transition", "t": round(self.t, 4), "from": self.from_emotion,
                "to": self.to_emotion, "confidence": round(self.confidence, 6),
                "previous_duration_s": round(self.previous_duration_s, 4),
                "evidence": self.evidence}


@dataclass(frozen=True)
class Reply:
    """What the device said (or tried to say) in answer to ``transition``.

    ``source`` ``"chat"`` or ``"offline"`` (templates); ``cause`` why it is offline (None, or
    ``"chat_disabled"``, ``"no_api_key"``, ``"unreachable"``, ``"timeout"``, ``"http_401"``,
    ``"http_429"``, ``"http_5xx"``, ``"malformed_stream"``, ``"first_token_timeout"``, ``"stall"``,
    ``"total_timeout"``, ``"empty_reply"``, ...); ``skipped`` True when the endpoint was not
    contacted because of a recent failure; ``truncated`` True when the reply was cut at its
    length or time limit; ``text`` what was spoken ("" when nothing); ``sentences`` how many;
    ``audio_s`` seconds of speech; ``timestamps`` stage → monotonic seconds (or None) for the
    stages ``reply.STAGES``; ``latency_s`` stage → seconds after ``submitted`` (or None).
    """

    type: ClassVar[str] = "reply"
    transition: Transition
    source: str
    cause: str | None = None
    text: str = ""
    skipped: bool = False
    truncated: bool = False
    sentences: int = 0
    audio_s: float = 0.0
    timestamps: dict[str, float | None] = field(default_factory=dict)
    latency_s: dict[str, float | None] = field(default_factory=dict)

    @property
    def t(self) -> float:
        """The answered transition's time (s)."""
        return self.transition.t

    @property
    def first_audio_s(self) -> float | None:
        """Seconds from the transition's submission to its first audio: at the sink when the
        sink reports it, else Piper's first PCM; None when nothing was spoken."""
        lat = self.latency_s
        return lat.get("first_sample") if lat.get("first_sample") is not None \
            else lat.get("first_pcm")

    def to_json(self) -> dict:
        """The event-log record ``{"type": "reply", "t", "from", "to", "source", "cause",
        "skipped", "truncated", "text", "sentences", "audio_s", "timestamps", "latency_s"}``."""
        return {"type": "reply", "t": float(self.t), "from": self.transition.from_emotion,
                "to": self.transition.to_emotion, "source": self.source, "cause": self.cause,
                "skipped": self.skipped, "truncated": self.truncated, "text": self.text,
                "sentences": self.sentences, "audio_s": round(self.audio_s, 3),
                "timestamps": dict(self.timestamps), "latency_s": dict(self.latency_s)}


@dataclass(frozen=True)
class Utterance:
    """One transcribed utterance.

    ``t_start``/``t_end`` seconds on the caller's clock (capture time live, media time in
    replay); ``text`` the transcript ("" is never published); ``emotion`` the SER label of the
    utterance (or None); ``audio_s``/``compute_s`` seconds of audio and of transcription.
    ``keep_text``: whether the words may leave the process (``speech.transcript.log_transcripts``);
    without it :meth:`to_json` carries the word count only, so no subscriber that writes records
    can leak what was said.
    """

    type: ClassVar[str] = "utterance"
    t_start: float
    t_end: float
    text: str
    emotion: str | None = None
    audio_s: float = 0.0
    compute_s: float = 0.0
    keep_text: bool = False

    @property
    def t(self) -> float:
        """The end of the utterance (s)."""
        return self.t_end

    def to_json(self) -> dict:
        """``{"type": "utterance", "t_start", "t_end", "emotion", "audio_s", "words"}`` and
        ``"transcript"`` only when ``keep_text``."""
        rec = {"type": "utterance", "t_start": round(self.t_start, 3),
               "t_end": round(self.t_end, 3), "emotion": self.emotion,
               "audio_s": round(self.audio_s, 3), "words": len(self.text.split())}
        if self.keep_text:
            rec["transcript"] = self.text
        return rec


Subscriber = Callable[[Any], None]


class EventBus:
    """The subscriber list: every published event goes to each subscriber that wants its type,
    in subscription order, in the publishing thread.

    Subscribers must return quickly (queue anything slow, e.g. network I/O). An exception in one
    subscriber is logged (once per subscriber until it succeeds again) and counted in
    :attr:`errors`; the other subscribers still get the event and the publisher never sees it.
    Thread-safe: subscribing and publishing may happen from any thread.
    """

    def __init__(self) -> None:
        self._subs: tuple[tuple[str, frozenset[str] | None, Subscriber], ...] = ()
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        #: subscriber name → number of events it raised on
        self.errors: dict[str, int] = {}

    def subscribe(self, fn: Subscriber, types: Iterable[str] | None = None,
                  name: str | None = None) -> Callable[[], None]:
        """Call ``fn(event)`` for every published event whose ``type`` is in ``types`` (all
        types when None). ``name`` identifies it in logs and :attr:`errors` (default: the
        function's qualified name). Returns a function that unsubscribes it."""
        label = name or getattr(fn, "__qualname__", repr(fn))
        entry = (label, None if types is None else frozenset(types), fn)
        with self._lock:
            self._subs = self._subs + (entry,)

        def unsubscribe() -> None:
            with self._lock:
                self._subs = tuple(s for s in self._subs if s is not entry)
        return unsubscribe

    @property
    def subscribers(self) -> list[str]:
        """The names of the current subscribers, in call order."""
        return [label for label, _t, _f in self._subs]

    def wants(self, type_: str) -> bool:
        """Whether any subscriber takes events of ``type_`` (lets a publisher skip building
        events nobody reads)."""
        return any(types is None or type_ in types for _l, types, _f in self._subs)

    def publish(self, event: Any) -> None:
        """Hand ``event`` (anything with a ``type``) to each subscriber of its type."""
        kind = event.type
        for label, types, fn in self._subs:  # a snapshot: the tuple is replaced, never mutated
            if types is not None and kind not in types:
                continue
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - one bad subscriber never costs the others
                with self._lock:
                    self.errors[label] = self.errors.get(label, 0) + 1
                    first = label not in self._failing
                    self._failing.add(label)
                if first:
                    log.exception("event subscriber %s failed on a %s event", label, kind)
            else:
                if label in self._failing:
                    with self._lock:
                        self._failing.discard(label)
