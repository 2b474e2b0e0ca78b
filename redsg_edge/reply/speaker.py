"""Speaking one reply: sentences to Piper, PCM to the audio sink as soon as it is made.

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

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["Speaker", "PcmCache", "SynthesisRate", "Synthesize"]

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
