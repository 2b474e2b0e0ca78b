"""Speaking one reply: sentences to Piper, PCM to the audio sink as soon as it is made.

:func:`speak_chat_stream` speaks a streamed chat reply sentence by sentence, each as soon as it
is complete, under the reply's deadlines.

:class:`Speaker` speaks the sentences of one reply in order (a pause before every sentence but
the first), writing each chunk of Piper's output to the sink at once and stamping the reply's
first PCM. It is given what it needs, not the worker: the synthesis function, the sink, the
heartbeat, the stop flag and a callback for the start of speech (the microphone gate).

:class:`PcmCache` keeps the PCM of sentences spoken often (the offline templates' first
sentences), so an offline reply starts without any synthesis; :class:`SynthesisRate` is the
recent synthesis time per character, which tells a chat reply whether one more sentence still
fits in its time budget.

No clock of its own: times come from the ``beat`` function it is given.
"""

from __future__ import annotations

import queue
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..config import ChatConfig
from .chat import ChatFailure, ChatStream, classify_failure
from .text import clean_for_speech, split_sentences

__all__ = ["Speaker", "PcmCache", "SynthesisRate", "Synthesize", "speak_chat_stream"]

#: ``synthesize(sentence, style, pause_before=bool)`` yielding ``(pcm, sample_rate)`` chunks:
#: ``voice.Voice.synthesize`` (pcm (N,) int16 mono).
Synthesize = Callable[..., Iterable[tuple[Any, int]]]


class SynthesisRate:
    """Piper's recent synthesis time per character (s): an exponential moving average of the
    sentences timed so far (weight 0.3 on the newest), :attr:`PRIOR_S_PER_CHAR` before the first.
    Worker thread only."""

    #: Assumed before a sentence was timed (a 2-core box under load: ~0.015 s; a Pi 4 is slower).
    PRIOR_S_PER_CHAR = 0.02

    def __init__(self) -> None:
        #: seconds per character, None until a sentence was timed
        self.s_per_char: float | None = None

    def update(self, chars: int, seconds: float) -> None:
        """Add one synthesis of ``chars`` characters that took ``seconds`` (ignored for 0 chars)."""
        if chars <= 0:
            return
        per_char = seconds / chars
        old = self.s_per_char
        self.s_per_char = per_char if old is None else 0.7 * old + 0.3 * per_char

    def estimate(self, text: str) -> float:
        """Seconds Piper is expected to need for ``text``."""
        return len(text) * (self.s_per_char or self.PRIOR_S_PER_CHAR)


class PcmCache:
    """The PCM of synthesised sentences, least recently used dropped beyond ``max_sentences``.

    ``synthesize``: see :data:`Synthesize`. A key is the sentence with the style's
    ``length_scale``, ``volume`` and ``sentence_pause_s`` and ``pause_before``; iterating yields
    the keys (sentence first). ~16 kB per second of speech at 22.05 kHz; the built-in templates'
    first sentences take ~2 MB. Not thread-safe: the reply worker's thread only.
    """

    def __init__(self, synthesize: Synthesize, max_sentences: int = 128) -> None:
        self._synthesize = synthesize
        self._max = max_sentences
        self._pcm: OrderedDict[tuple, list] = OrderedDict()

    def synthesize(self, sentence: str, style: Any, pause_before: bool) -> Iterator[tuple[Any, int]]:
        """Yield the chunks of ``sentence`` in ``style``: from the cache, else from Piper while
        storing them (a sentence abandoned half-way is not stored)."""
        key = (sentence, style.length_scale, style.volume, style.sentence_pause_s, pause_before)
        hit = self._pcm.get(key)
        if hit is not None:
            self._pcm.move_to_end(key)
            yield from hit
            return
        chunks = []
        for chunk in self._synthesize(sentence, style, pause_before=pause_before):
            chunks.append(chunk)
            yield chunk
        self._pcm[key] = chunks
        while len(self._pcm) > self._max:
            self._pcm.popitem(last=False)

    def clear(self) -> None:
        """Drop everything (the templates or styles changed)."""
        self._pcm.clear()

    def __len__(self) -> int:
        return len(self._pcm)

    def __iter__(self) -> Iterator[tuple]:
        return iter(list(self._pcm))


class Speaker:
    """Speaks one reply, sentence by sentence, into ``sink`` (``write(pcm, rate)``).

    ``synthesize``: Piper (see :data:`Synthesize`); ``style``: a ``config.StyleConfig``
    object (``length_scale``, ``volume``, ``sentence_pause_s``); ``ts``: the reply's stage
    timestamps, whose ``"first_pcm"`` it sets (seconds, the ``beat`` clock); ``sample_rate``: Hz
    of Piper's output. ``beat()``: records the caller's heartbeat and returns the clock (s), called
    for every chunk, so a long synthesis never looks like a hung worker. ``stopped()``: True when
    speech must end (checked after every chunk; the sentence in progress is cut).
    ``on_first_pcm(t)``: called once, before the reply's first chunk is written, with its time
    (the worker starts its microphone gate there). ``rate``: updated with every uncached
    synthesis. ``cache``: where :meth:`speak` with ``cached=True`` reads and stores PCM (None:
    no cache).

    After speaking, :attr:`sentences` lists what was spoken and :attr:`samples` counts the
    samples written.
    """

    def __init__(self, synthesize: Synthesize, sink: Any, style: Any, ts: dict[str, float | None],
                 *, sample_rate: int, beat: Callable[[], float], stopped: Callable[[], bool],
                 on_first_pcm: Callable[[float], None], rate: SynthesisRate,
                 cache: PcmCache | None = None) -> None:
        self._synthesize, self._sink, self.style, self.ts = synthesize, sink, style, ts
        self.sample_rate = sample_rate
        self._beat, self._stopped, self._on_first_pcm = beat, stopped, on_first_pcm
        self.rate, self._cache = rate, cache
        self.sentences: list[str] = []
        self.samples = 0

    @property
    def audio_s(self) -> float:
        """Seconds of audio written so far."""
        return self.samples / float(self.sample_rate)

    def synthesis_s(self, sentence: str) -> float:
        """Seconds the synthesis of ``sentence`` is expected to take (recent rate)."""
        return self.rate.estimate(sentence)

    def speak(self, sentence: str, cached: bool = False) -> None:
        """Synthesise ``sentence`` and write it to the sink chunk by chunk. ``cached``: use the
        PCM cache (offline templates); a chat sentence is not cached but timed. Exceptions of
        Piper or the sink propagate (the worker ends the reply)."""
        pause_before = bool(self.sentences)
        use_cache = cached and self._cache is not None
        chunks = (self._cache.synthesize(sentence, self.style, pause_before) if use_cache
                  else self._synthesize(sentence, self.style, pause_before=pause_before))
        t0 = self._beat()
        for pcm, rate in chunks:
            now = self._beat()
            if self.ts["first_pcm"] is None:
                self.ts["first_pcm"] = now
                self._on_first_pcm(now)
            self._sink.write(pcm, rate)
            self.samples += len(pcm)
            if self._stopped():
                break
        if not use_cache and sentence:
            self.rate.update(len(sentence), self._beat() - t0)
        self.sentences.append(sentence)


# --------------------------------------------------------------------------- a chat reply

def speak_chat_stream(client: Any, chat: ChatConfig, messages: list[dict[str, str]], sp: Speaker, *,
                 clock: Callable[[], float], beat: Callable[[], float],
                 stopped: Callable[[], bool], redact: Callable[[str], str]) -> ChatFailure | None:
    """Stream one reply from ``client`` (``chat.ChatStream``) and speak each sentence through
    ``sp`` as it completes, while later tokens still arrive.

    ``clock``: seconds, monotonic; ``beat()``: the worker's heartbeat (returns ``clock()``);
    ``stopped()``: True when the worker stops (ends as ``"stopped"``); ``redact``: applied to
    the text before it is split and to every sentence before it is spoken. Stamps
    ``chat_request``, ``first_token`` and ``first_sentence`` in ``sp.ts``. The first sentence
    is cut early at a clause (60 characters instead of 120): a shorter first synthesis.
    The deadlines: ``chat.first_token_timeout_s`` to the first token and between tokens
    (``first_token_timeout``, ``stall``) and ``chat.total_timeout_s`` for the whole reply,
    synthesis included (``total_timeout``): a sentence whose synthesis would end later is not
    started (a sentence is never cut mid-way), and audio stops at that many seconds.
    Returns None when the stream ended and something was spoken, else the
    ``chat.ChatFailure`` (sentences spoken before it stay in ``sp.sentences``).
    """
    ts = sp.ts
    t_req = ts["chat_request"] = clock()
    cs = ChatStream(client, chat, messages, clock)
    total_deadline = t_req + chat.total_timeout_s
    last_token = None
    buf = ""
    while True:
        if stopped():
            cs.cancel()
            return ChatFailure("stopped")
        now = beat()
        if last_token is None:
            deadline, why = t_req + chat.first_token_timeout_s, "first_token_timeout"
        else:
            deadline, why = last_token + chat.first_token_timeout_s, "stall"
        if total_deadline <= deadline:
            deadline, why = total_deadline, "total_timeout"
        try:  # tokens that arrived while we were synthesising count as on time
            kind, payload, t = cs.q.get(timeout=max(0.0, min(0.25, deadline - now)))
        except queue.Empty:
            if clock() >= deadline:
                cs.cancel()
                return ChatFailure(why, f"reply not complete after {chat.total_timeout_s:g} s"
                                   if why == "total_timeout" else
                                   f"no token for {deadline - (last_token or t_req):.1f} s")
            continue
        if kind == "error":
            return classify_failure(payload)
        if clock() >= total_deadline:  # tokens that keep coming do not extend the reply
            cs.cancel()
            return ChatFailure("total_timeout", f"reply not complete after {chat.total_timeout_s:g} s")
        if kind == "token":
            if ts["first_token"] is None:
                ts["first_token"] = t
            last_token = t  # arrival time: a gap in the stream, not our synthesis time
            buf = redact(buf + payload)
            # the first sentence is cut earlier at a comma: a shorter first synthesis
            soft = 60 if not sp.sentences else 120
            done, buf = split_sentences(buf, soft_limit=soft)
        else:  # end of stream
            done, buf = split_sentences(buf, final=True)
        for s in done:
            s = redact(clean_for_speech(redact(s)))
            if not s:
                continue
            # The whole reply, synthesis included, ends by total_timeout_s: a sentence whose
            # synthesis (estimated from the recent rate) would end later is not started, as
            # a sentence is never cut mid-way. Its audio is capped at total_timeout_s too.
            if clock() + sp.synthesis_s(s) >= total_deadline or sp.audio_s >= chat.total_timeout_s:
                cs.cancel()
                return ChatFailure("total_timeout", f"reply not complete after "
                                   f"{chat.total_timeout_s:g} s (or that much audio)")
            if ts["first_sentence"] is None:
                ts["first_sentence"] = clock()
            sp.speak(s)
            if stopped():
                break
        if kind == "end":
            return None if sp.sentences else ChatFailure("empty_reply", "the stream had no text")
