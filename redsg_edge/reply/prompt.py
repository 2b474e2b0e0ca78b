"""What a reply says: the offline templates and the chat prompt with its history.

Pure: no clock, no I/O. :class:`TemplatePicker` chooses an offline reply per emotion (never the
same one twice in a row); :func:`build_messages` writes the chat prompt for a transition from
the rolling history (:class:`Exchange`: each earlier transition and what the device said for
it) and what the person said (speech-to-text).

Privacy: the prompt holds only the transitions (from, to, confidence, how long the previous
emotion lasted), the replies spoken for them and, when given, the transcripts with their SER
emotion and age. No probabilities, evidence, images, audio or identity.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..events import Transition

__all__ = ["DEFAULT_TEMPLATES", "TemplatePicker", "Exchange", "build_messages"]

#: Built-in offline replies. First sentences are short on purpose: Piper synthesises a whole
#: sentence before the first sample, so a short first sentence starts speech sooner.
DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "angry": ["I hear you. Let's take a slow breath together.",
              "Okay. That sounds really frustrating.",
              "I'm here. Take all the time you need."],
    "disgust": ["Oh, not nice. Let's put that aside.",
                "Yuck. That didn't sit well, did it.",
                "Fair enough. Let's move on to something better."],
    "fear": ["It's okay. You're safe here.",
             "I'm right here. Breathe in slowly, and out.",
             "Easy now. One step at a time."],
    "happy": ["That's lovely. Your smile lights up the room.",
              "Nice! It's good to see you happy.",
              "Oh, I like that. Enjoy the moment."],
    "sad": ["I'm here with you.",
            "That sounds hard. Take your time.",
            "I'm sorry. I'm right here if you need me."],
    "surprise": ["Oh! That was unexpected.",
                 "Wow. I didn't see that coming either.",
                 "Whoa. Quite a moment."],
    "neutral": ["I'm here if you need me.",
                "All calm. That's nice.",
                "Okay. Just let me know if you want to talk."],
}


class TemplatePicker:
    """Offline replies per emotion, never the same one twice in a row for an emotion.

    ``templates`` maps emotion -> candidate replies (``reply.templates``); emotions missing or
    empty there use ``DEFAULT_TEMPLATES`` (unknown emotions those of neutral). Deterministic
    for a seeded ``rng``. Thread-safe.
    """

    def __init__(self, templates: Mapping[str, Sequence[str]] | None = None,
                 rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}
        self.set_templates(templates or {})

    def set_templates(self, templates: Mapping[str, Sequence[str]]) -> None:
        """Replace the table (reload); the memory of the last reply per emotion is kept."""
        table = {k: [t.strip() for t in v if t and t.strip()] for k, v in templates.items()}
        with self._lock:
            self._table = {k: v for k, v in table.items() if v}

    def candidates(self, emotion: str) -> list[str]:
        """The replies ``emotion`` may get: its configured ones, else the built-in ones, else
        (an emotion without either) neutral's built-in ones. Never empty."""
        return (self._table.get(emotion) or DEFAULT_TEMPLATES.get(emotion)
                or DEFAULT_TEMPLATES["neutral"])

    def pick(self, emotion: str) -> str:
        """A reply for ``emotion`` other than the previous one picked for it (if there are two+)."""
        with self._lock:
            options = self.candidates(emotion)
            last = self._last.get(emotion)
            if len(options) > 1 and last in options:
                options = [o for o in options if o != last]
            choice = self._rng.choice(options)
            self._last[emotion] = choice
            return choice


# --------------------------------------------------------------------------- prompt

@dataclass
class Exchange:
    """One transition of the rolling history and what the device said for it.

    ``transition``: the transition itself (as published); ``reply``: the text spoken for it,
    None when nothing was (dropped while busy or in the cooldown, still in progress, or nothing
    could be said); ``answered``: True once the reply worker finished answering it. Mutable:
    the worker fills ``reply`` and ``answered`` when the reply ends.
    """
    transition: Transition
    reply: str | None = None
    answered: bool = False


def _describe(e: Transition) -> str:
    return (f"{e.from_emotion} -> {e.to_emotion} (confidence {float(e.confidence):.2f}; "
            f"{e.from_emotion} had lasted {float(e.previous_duration_s):.0f} s)")


def build_messages(system_prompt: str, transition: Transition, history: Sequence[Exchange] = (),
                   utterances: Sequence[Any] = ()) -> list[dict[str, str]]:
    """Chat messages (``[{"role": "system", ...}, {"role": "user", ...}]``) for ``transition``.

    The system prompt and ONE user message with the recent ``history`` (oldest first; each line
    gives its age in whole seconds before ``transition.t``, the change and what was said for
    it), what the person said (``utterances``: ``events.Utterance``-like with ``t_end`` (s),
    ``text``, ``emotion``; oldest first) and the new transition. One user message, not
    alternating turns, because some local chat templates reject two user turns in a row.
    Nothing else (no evidence, probabilities, images or audio) is included.
    """
    lines = []
    t = float(transition.t)
    if history:
        lines.append("Recent emotion changes (oldest first):")
        for h in history:
            said = (f' You said: "{h.reply}"' if h.reply else " You did not reply.")
            lines.append(f"- {max(0.0, t - float(h.transition.t)):.0f} s ago: "
                         f"{_describe(h.transition)}.{said}")
    if utterances:
        lines.append("What they said (oldest first, with the emotion in their voice):")
        for u in utterances:
            lines.append(f"- {max(0.0, t - float(u.t_end)):.0f} s ago"
                         f"{f' ({u.emotion})' if u.emotion else ''}: \"{u.text}\"")
    lines.append(f"Now: {_describe(transition)}. Reply to this change"
                 f"{' and to what they said' if utterances else ''}.")
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": "\n".join(lines)}]
