"""Replies to emotion transitions: streamed chat or offline templates, spoken by Piper.

Pure pieces (no clock, no I/O): ``split_sentences`` (incremental sentence splitter for a token
stream), ``clean_for_speech``, ``TemplatePicker`` (offline templates, no immediate repeats),
``build_messages`` (the prompt), ``is_local_url``. ``read_api_key`` reads the key.

``ReplyWorker`` runs the reply path in its own thread so nothing here can stall capture,
inference or the watchdog. ``submit(event)`` never blocks; per accepted transition the worker

1. asks the chat endpoint (official ``openai`` SDK, ``stream=True``, ``max_retries=0``) for a
   short reply, splits the token stream into sentences and hands each sentence to Piper as soon
   as it is complete, writing PCM to the sink while later tokens still arrive; or
2. speaks an offline template for the new emotion when chat is disabled, no key is set for a
   remote endpoint, the endpoint is unreachable or refuses the connection, answers 401/403/429/
   5xx, sends a malformed stream, misses the time to first token (``first_token_timeout_s``,
   which also bounds any later gap between tokens: a stalled stream) or the total timeout, or
   failed less than ``chat.retry_after_s`` ago (longer if a 429 gave Retry-After).

   If the stream fails after at least one sentence has been spoken, the reply ends there
   (``truncated``; the unfinished fragment is dropped rather than spoken half-way). A failure is
   logged once per outage (WARNING, with its cause); later failures of the same outage go to
   DEBUG (a change of cause to INFO) and the first success logs the recovery (INFO).

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

Privacy: the prompt holds only the transition (from, to, confidence, how long the previous
emotion lasted), the last ``chat.history`` transitions with the replies spoken for them and,
with ``speech.transcript.enabled``, the transcripts of the last ``prompt_utterances``
utterances (``add_utterance``; at most ``prompt_max_age_s`` old) with their SER emotion and
age. No probabilities, evidence, images, audio or identity leave the device. The API key comes from
``$CREDENTIALS_DIRECTORY/openai_api_key`` (systemd ``LoadCredential=``), else the environment
variable named by ``chat.api_key_env``; never from config.toml, and it is redacted from
anything this module logs. Endpoints on loopback, private or link-local addresses,
``localhost`` or ``*.local`` (llama.cpp server, Ollama) get the placeholder key
``sk-no-key-required`` when none is set, because the SDK needs a non-empty string; remote
endpoints without a key are never contacted.

Latency: Piper synthesises a whole sentence before its first sample, so the stream's first
sentence is cut early at a clause boundary (60 characters instead of 120), a period after a
plain word ends a sentence without waiting for the next token, and offline templates have
short first sentences whose PCM is cached (synthesised while idle after ``start``), so an
offline reply starts without any synthesis.

Per reply, ``on_event`` receives ``{"type": "reply", ...}`` (see ``ReplyWorker``) with
monotonic timestamps of each stage.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import random
import re
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import CLASSES
from .config import ChatConfig, Config, style_for
from .redact import register as register_secret
from .redact import scrub

log = logging.getLogger(__name__)

__all__ = ["split_sentences", "clean_for_speech", "TemplatePicker", "DEFAULT_TEMPLATES",
           "build_messages", "HistoryEntry", "read_api_key", "is_local_url", "LOCAL_PLACEHOLDER_KEY",
           "ReplyWorker"]

#: Seconds a chat reply waits at most for the transcript of the utterance that just ended
#: (speech-to-text of a 3 s utterance takes 60-85 ms on one core here, ~0.3-0.6 s on a Pi 4).
TRANSCRIPT_WAIT_S = 0.5

#: The key sent to a local endpoint when none is configured (llama.cpp's documented example).
LOCAL_PLACEHOLDER_KEY = "sk-no-key-required"

# --------------------------------------------------------------------------- sentence splitting

# Abbreviations after which a period never ends a sentence (titles, "e.g.") ...
_NEVER_END = frozenset("mr mrs ms mx dr prof rev sr jr st mt gen capt lt col sgt fr "
                       "e.g i.e cf vs viz approx ca fig".split())
# ... and those after which it may ("... and so on, etc. Then"): decided by the next character.
_MAYBE_END = frozenset("etc inc ltd co corp no".split())
# The lookbehind starts a match only at the first terminator of a run, so a long run of dots not
# followed by white space ("....x") is tried once, not once per dot (which is quadratic).
_TERM = re.compile(r"(?<![.!?\u2026])([.!?\u2026]+)([\"'\u201d\u2019)\]]*)(\s+|$)")
_CLAUSE = re.compile(r"[,;:](?=\s)|\s[-\u2013\u2014](?=\s)")


#: Characters before a terminator looked at for the word it follows: bounded, so that a text
#: with many terminators is split in linear time (a longer word is judged by its tail).
_WORD_LOOKBACK = 48


def _word_before(text: str, i: int) -> str:
    head = text[max(0, i - _WORD_LOOKBACK):i].rstrip()
    word = head.rsplit(None, 1)[-1] if head else ""
    return word.lstrip("\"'(\u201c\u2018[").lower()


def _is_boundary(text: str, m: re.Match, final: bool) -> bool | None:
    """True/False for a terminator match; None when only the next characters can tell."""
    term = m.group(1)
    if "!" in term or "?" in term:
        return True
    nxt_i = m.end()
    word = _word_before(text, m.start())
    if nxt_i >= len(text):  # nothing after the terminator yet
        if final:
            return True
        # Decide now when the period can only end a sentence (a plain word, not a number that
        # may go on "3.|5", not an abbreviation): saves waiting one token for the next capital.
        if (term == "." and len(word) > 1 and word[-1].isalpha() and "." not in word
                and word not in _NEVER_END and word not in _MAYBE_END and not m.group(2)):
            return True
        return None
    nxt = text[nxt_i]
    if nxt.islower():  # sentences start upper-case: "e.g. this", "well... maybe", "etc. and"
        return False
    if term == ".":
        if word in _NEVER_END:
            return False
        if len(word) == 1 and word.isalpha():  # an initial: "J. Smith"
            return False
        if word == "no" and nxt.isdigit():  # "No. 5"
            return False
    return True


def _split_line(text: str, final: bool) -> tuple[list[str], str]:
    out: list[str] = []
    start = 0
    for m in _TERM.finditer(text):
        b = _is_boundary(text, m, final)
        if b is None:
            break
        if b:
            out.append(text[start:m.start(3)])
            start = m.end()
    return out, text[start:]


def split_sentences(buffer: str, *, final: bool = False, soft_limit: int = 120,
                    hard_limit: int = 200, min_clause: int = 20) -> tuple[list[str], str]:
    """Split the text received so far into complete sentences and an unfinished remainder.

    Pure and incremental: call it with ``remainder + new_tokens`` each time. A sentence ends at
    ``. ! ? …`` (runs like ``?!`` or ``...`` included, closing quotes/brackets kept) followed by
    white space and, for a period or ellipsis, not by a lower-case letter, and never after
    ``Dr.``/``e.g.``/an initial; a period inside a number (``3.5``) does not end one. A newline
    ends a sentence. Because "is the next character lower-case?" is undecidable at the end of
    the buffer, a terminator there is kept in the remainder until more text arrives (or
    ``final``). A remainder longer than ``soft_limit`` characters is cut after its last comma,
    semicolon, colon or dash that leaves at least ``min_clause`` characters, and one longer than
    ``hard_limit`` at its last space, so speech can start before a long clause ends. No sentence
    is longer than ``hard_limit`` (a longer one is cut the same way), and the time is linear in
    ``len(buffer)``: a 1 MiB token from a hostile endpoint is split in well under a second.

    ``final=True`` (end of stream) returns everything, the remainder as a last sentence.
    Returns ``(sentences, remainder)``: sentences stripped, those without a letter or digit
    dropped; remainder unstripped (to be prefixed to the next tokens).
    """
    sentences: list[str] = []
    *lines, tail = buffer.split("\n")
    for line in lines:
        got, rest = _split_line(line, True)
        sentences += got + [rest]
    got, tail = _split_line(tail, final)
    sentences += got
    if final:
        sentences.append(tail)
        tail = ""
    capped: list[str] = []
    for s in sentences:  # a sentence longer than hard_limit is cut like a long remainder
        if len(s) > hard_limit:
            pieces, rest = _cut_long(s, hard_limit, hard_limit, min_clause)
            capped += pieces + [rest]
        else:
            capped.append(s)
    pieces, tail = _cut_long(tail, soft_limit, hard_limit, min_clause)
    capped += pieces
    return [s.strip() for s in capped if any(c.isalnum() for c in s)], tail


def _cut_long(text: str, soft_limit: int, hard_limit: int, min_clause: int) -> tuple[list[str], str]:
    """Cut ``text`` while more than ``soft_limit`` characters remain: after the last clause mark
    within the next ``hard_limit`` characters that leaves at least ``min_clause``, else (when more
    than ``hard_limit`` remain) at the last space before ``hard_limit``, else at ``hard_limit``.
    Each cut looks at ``hard_limit`` characters only, so the time is linear in ``len(text)``."""
    out: list[str] = []
    pos, n = 0, len(text)
    while n - pos > soft_limit:
        end = min(n, pos + hard_limit)
        cut = None
        # +1: the clause pattern looks one character ahead (the white space after the mark)
        for m in _CLAUSE.finditer(text, pos + min_clause, min(n, end + 1)):
            if m.end() <= end:
                cut = m.end()
        if cut is None and n - pos > hard_limit:
            cut = text.rfind(" ", pos + min_clause, end)
            cut = cut if cut > pos else end
        if cut is None:
            break
        out.append(text[pos:cut])
        pos = cut
    return out, text[pos:]


_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_CHARS = re.compile(r"[*_`#~|<>]+")


def clean_for_speech(text: str) -> str:
    """Drop what a TTS voice should not read out: markdown marks and links, emoji/symbols."""
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_CHARS.sub("", text)
    text = "".join(c for c in text if unicodedata.category(c) not in ("So", "Cs", "Co")
                   and c not in "\ufe0f\u200d")
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------- offline templates

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
class HistoryEntry:
    """One past transition and what was said for it (``reply`` None: not answered)."""
    t: float
    from_emotion: str
    to_emotion: str
    confidence: float
    previous_duration_s: float
    reply: str | None = None
    answered: bool = False


def _describe(e: Any) -> str:
    return (f"{e.from_emotion} -> {e.to_emotion} (confidence {float(e.confidence):.2f}; "
            f"{e.from_emotion} had lasted {float(e.previous_duration_s):.0f} s)")


def build_messages(system_prompt: str, event: Any, history: Sequence[HistoryEntry] = (),
                   utterances: Sequence[Any] = ()) -> list[dict[str, str]]:
    """Chat messages for ``event`` (anything with ``t, from_emotion, to_emotion, confidence,
    previous_duration_s``): the system prompt and ONE user message with the recent history
    (oldest first), what the person said (``utterances``: ``stt.Utterance``-like, ``t_end``,
    ``text``, ``emotion``; oldest first) and the new transition. One user message, not
    alternating turns, because some local chat templates reject two user turns in a row.
    Nothing else (no evidence, probabilities, images or audio) is included.
    """
    lines = []
    if history:
        lines.append("Recent emotion changes (oldest first):")
        for h in history:
            said = (f' You said: "{h.reply}"' if h.reply else " You did not reply.")
            lines.append(f"- {max(0.0, float(event.t) - h.t):.0f} s ago: {_describe(h)}.{said}")
    if utterances:
        lines.append("What they said (oldest first, with the emotion in their voice):")
        for u in utterances:
            lines.append(f"- {max(0.0, float(event.t) - float(u.t_end)):.0f} s ago"
                         f"{f' ({u.emotion})' if u.emotion else ''}: \"{u.text}\"")
    lines.append(f"Now: {_describe(event)}. Reply to this change"
                 f"{' and to what they said' if utterances else ''}.")
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": "\n".join(lines)}]


# --------------------------------------------------------------------------- key and endpoint

def read_api_key(chat: ChatConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key: ``$CREDENTIALS_DIRECTORY/openai_api_key`` if present and non-empty, else the
    environment variable ``chat.api_key_env``; None when neither is set. Whitespace stripped."""
    environ = os.environ if environ is None else environ
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / "openai_api_key"
        try:
            key = path.read_text(encoding="utf-8").strip()
            if key:
                return key
        except OSError:
            pass
    return (environ.get(chat.api_key_env) or "").strip() or None


def is_local_url(url: str) -> bool:
    """True for loopback, private (RFC 1918, ULA), link-local, ``localhost`` and ``*.local``
    hosts: a llama.cpp or Ollama server on this box or the LAN. No DNS lookup is made."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or host.endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


# --------------------------------------------------------------------------- chat stream

_READ_TIMEOUT_SLACK_S = 1.0  # SDK read timeout beyond first_token_timeout_s
#: Piper's synthesis time per character assumed before the first sentence was timed (a 2-core
#: box under load: ~0.015 s; a Pi 4 is slower): used to decide whether a sentence still fits
#: before ``total_timeout_s``.
_SYNTH_PRIOR_S_PER_CHAR = 0.02


def max_reply_chars(chat: ChatConfig) -> int:
    """Characters of reply text read from one stream at most: 16 per requested token (tokens
    average about 4), at least 2048. More ends the stream as ``oversized_stream``, so an
    endpoint that ignores ``max_tokens`` or sends one huge token cannot flood the worker."""
    return max(2048, 16 * chat.max_tokens)


#: Headers the SDK adds to every request that describe this machine or the SDK's internals
#: (OS, CPU architecture, Python version, SDK version, retry count, read timeout). None of them
#: is sent: only the transition leaves the device (README "Privacy").
_SDK_HEADERS = ("X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS",
                "X-Stainless-Arch", "X-Stainless-Runtime", "X-Stainless-Runtime-Version",
                "X-Stainless-Async", "X-Stainless-Retry-Count", "X-Stainless-Read-Timeout")


def _omit() -> Any:
    """The SDK's marker that removes a header (``openai.Omit``; ``openai._types`` in old 1.x)."""
    import openai

    omit = getattr(openai, "Omit", None)
    if omit is None:  # pragma: no cover - openai < 1.5x
        from openai._types import Omit as omit
    return omit()


def _request_headers() -> dict[str, Any]:
    """``default_headers`` for the client: ``openai.Omit()`` removes each SDK header (the SDK
    merges headers case-insensitively and drops Omit values); a plain User-Agent replaces
    ``OpenAI/Python <version>``. What is sent: Authorization, Accept, Content-Type, User-Agent,
    Host, Content-Length, Connection, Accept-Encoding and the JSON body (model, messages,
    max_tokens, temperature, stream)."""
    from . import __version__

    headers: dict[str, Any] = {h: _omit() for h in _SDK_HEADERS}
    headers["User-Agent"] = f"redsg-edge/{__version__}"
    return headers


#: Logger-name prefixes of HTTP client libraries (any fork or major version: httpx, httpx2,
#: httpcore, httpcore2, ...). At INFO they log a line per request, at DEBUG headers that may
#: echo the key.
HTTP_LOGGER_PREFIXES = ("httpx", "httpcore", "openai", "h11", "h2", "hpack", "urllib3")


def quiet_http_loggers(*extra_roots: str, level: int = logging.WARNING) -> list[str]:
    """Set ``level`` on every existing logger whose name starts with one of
    ``HTTP_LOGGER_PREFIXES`` or ``extra_roots`` (e.g. the top-level module of the client's
    transport, found at run time), and on those roots themselves, so loggers created later
    under them inherit it. Returns the names set."""
    roots = {r.split(".")[0] for r in extra_roots if r} | set(HTTP_LOGGER_PREFIXES)
    names = [n for n in list(logging.root.manager.loggerDict)
             if any(n == r or n.startswith(r) for r in roots)]
    for name in sorted(set(names) | roots):
        logging.getLogger(name).setLevel(level)
    return sorted(set(names) | roots)


class _ChatFailure(Exception):
    def __init__(self, cause: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(cause, detail)
        self.cause, self.detail, self.retry_after = cause, detail, retry_after


class _Malformed(Exception):
    pass


def _classify(exc: BaseException) -> _ChatFailure:
    """Map an SDK/transport exception to an offline-fallback cause."""
    import openai

    if isinstance(exc, _ChatFailure):
        return exc
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        retry = None
        if code == 429:
            try:
                retry = float(exc.response.headers.get("retry-after", ""))
            except ValueError:
                retry = None
        cause = f"http_{code}" if code < 500 else "http_5xx"
        return _ChatFailure(cause, f"HTTP {code}: {exc.message}", retry)
    if isinstance(exc, openai.APITimeoutError):
        return _ChatFailure("timeout", "connect or read timeout")
    if isinstance(exc, openai.APIConnectionError):
        root: BaseException = exc
        for _ in range(8):  # the transport error the SDK wrapped, e.g. "[Errno 111] Connection refused"
            nxt = root.__cause__ or root.__context__
            if nxt is None:
                break
            root = nxt
        return _ChatFailure("unreachable", f"{exc.message} ({type(root).__name__}: {root})")
    if isinstance(exc, (_Malformed, json.JSONDecodeError, ValueError, AttributeError, TypeError,
                        KeyError, IndexError)):
        return _ChatFailure("malformed_stream", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return _ChatFailure("stream_error", str(exc))
    return _ChatFailure("error", f"{type(exc).__name__}: {exc}")


def _chunk_text(chunk: Any) -> str:
    """The content delta of one ChatCompletionChunk; raise _Malformed when it is not one."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise _Malformed(f"chunk without choices: {str(chunk)[:80]!r}")
    if not choices:
        return ""  # e.g. a usage-only chunk
    delta = getattr(choices[0], "delta", None)
    content = getattr(delta, "content", None) if delta is not None else None
    if content is None:
        return ""
    if not isinstance(content, str):
        raise _Malformed(f"non-text content {type(content).__name__}")
    return content


class _ChatStream:
    """Runs one streamed request in a short-lived thread and queues its tokens, so the worker
    can enforce wall-clock deadlines (the SDK's read timeout only bounds gaps between bytes;
    a server that sends a role-only chunk at once and then nothing would never trip it)."""

    def __init__(self, client: Any, chat: ChatConfig, messages: list[dict[str, str]],
                 clock: Callable[[], float]) -> None:
        self._client, self._chat, self._messages, self._clock = client, chat, messages, clock
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="reply-chat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream = None
        try:
            stream = self._client.chat.completions.create(
                model=self._chat.model, messages=self._messages, max_tokens=self._chat.max_tokens,
                temperature=self._chat.temperature, stream=True,
                # these two are added per request unless the request itself omits them
                extra_headers={h: _omit() for h in _SDK_HEADERS[-2:]})
            self._stream = stream
            budget = max_reply_chars(self._chat)
            for chunk in stream:
                if self._cancel.is_set():
                    return
                text = _chunk_text(chunk)
                if len(text) > budget:  # a hostile or broken endpoint: keep what fits, stop
                    if budget:
                        self.q.put(("token", text[:budget], self._clock()))
                    self.q.put(("error", _ChatFailure(
                        "oversized_stream", f"reply longer than {max_reply_chars(self._chat)} "
                        "characters"), self._clock()))
                    return
                if text:
                    budget -= len(text)
                    self.q.put(("token", text, self._clock()))
            self.q.put(("end", None, self._clock()))
        except BaseException as exc:  # noqa: BLE001 - handed to the worker, which classifies
            if not self._cancel.is_set():
                self.q.put(("error", exc, self._clock()))
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    pass

    def cancel(self) -> None:
        """Abandon the request; the thread ends at its next chunk or its read timeout."""
        self._cancel.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass


# --------------------------------------------------------------------------- worker

STAGES = ("transition", "submitted", "chat_request", "first_token", "first_sentence",
          "first_pcm", "first_sample", "done")


class ReplyWorker:
    """The reply path in its own thread: transition -> text (chat or template) -> Piper -> sink.

    ``cfg`` the whole ``Config`` (reads ``reply``, ``reply.chat``, ``voice``). ``voice`` a loaded
    ``redsg_edge.voice.Voice`` (default: ``Voice.from_config(cfg.voice)``, ~1 s); ``sink`` a
    ``Sink`` (default ``make_sink(cfg.voice)``); the worker owns and closes the sink. ``on_event``
    gets one dict per reply, called from the worker thread (exceptions are logged and ignored):

    ``{"type": "reply", "t": event.t, "from", "to", "source": "chat" | "offline",
    "cause": None | "chat_disabled" | "no_api_key" | "unreachable" | "timeout" | "http_401" |
    "http_403" | "http_429" | "http_5xx" | ... | "malformed_stream" | "stream_error" |
    "first_token_timeout" | "stall" | "total_timeout" | "empty_reply", "skipped": bool (offline
    without contacting the endpoint because of a recent failure), "truncated": bool, "text",
    "sentences": int, "audio_s": float, "timestamps": {stage: s | None}, "latency_s": {stage:
    s | None}}``; stages ``transition`` (event.t), ``submitted``, ``chat_request``,
    ``first_token``, ``first_sentence``, ``first_pcm`` (Piper output), ``first_sample`` (at the
    sink), ``done`` (sink drained), monotonic seconds from ``clock``; ``latency_s`` counts from
    ``submitted`` (the same clock as the rest, also in replay where event.t is media time).

    ``rng`` seeds template choice; ``environ`` replaces ``os.environ`` for the key lookup.
    ``cache_templates``: keep the PCM of offline-template sentences (per style) and, after
    ``start``, synthesise every template's first sentence while idle, so an offline reply's
    first audio needs no synthesis (~2 MB for the built-in templates).
    """

    _CACHE_MAX = 128  # sentences

    def __init__(self, cfg: Config, *, voice: Any = None, sink: Any = None,
                 on_event: Callable[[dict], None] | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None, cache_templates: bool = True) -> None:
        from .voice import Voice, make_sink

        self._clock = clock
        self._environ = environ
        self._voice = voice if voice is not None else Voice.from_config(cfg.voice)
        self._sink = sink if sink is not None else make_sink(cfg.voice, self._voice.sample_rate, clock)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._picker = TemplatePicker(cfg.reply.templates, rng)
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._history: deque[HistoryEntry] = deque(maxlen=64)
        self._utterances: deque[Any] = deque(maxlen=20)  # stt.Utterance, for the prompt only
        #: ``wait(timeout_s) -> bool`` for transcripts still being made (``TranscriptWorker.
        #: wait_idle``): a transition fired by an utterance's end comes before its words do.
        self.transcripts_idle: Callable[[float], bool] | None = None
        self._busy = False
        self._cooldown_until = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = clock()
        # mic gate: speaking intervals (start, end) and the start of the current one
        self._gate: deque[tuple[float, float]] = deque(maxlen=16)
        self._speaking_since: float | None = None
        # chat endpoint state
        self._client: Any = None
        self._key: str | None = None
        self._chat_ident: tuple | None = None
        self._outage: dict | None = None
        self._retry_at = float("-inf")
        self.stats = {"submitted": 0, "accepted": 0, "dropped_busy": 0, "dropped_cooldown": 0,
                      "dropped_disabled": 0, "chat": 0, "offline": 0, "truncated": 0, "errors": 0}
        self._cache_templates = cache_templates
        self._synth_s_per_char: float | None = None  # recent Piper synthesis time per character
        self._pcm_cache: OrderedDict[tuple, list] = OrderedDict()  # worker thread only
        self._prefill: list[tuple[str, Any]] = []
        self._prefill_enabled = False  # start(warm=True) turns it on
        self._prefill_stale = False     # (re)plan on the worker thread: cache cleared, plan rebuilt
        self._planning = False
        self._cfg = cfg
        self._configure_chat(cfg, None)

    # ----------------------------------------------------------------- public API
    @property
    def heartbeat(self) -> float:
        """``clock()`` time of the worker loop's latest sign of life (watchdog input)."""
        return self._heartbeat

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def voice(self) -> Any:
        return self._voice

    @property
    def sink(self) -> Any:
        return self._sink

    def start(self, warm: bool = True) -> None:
        """Start the thread. ``warm``: first run one short synthesis (~0.1-0.3 s) so the first
        reply does not pay onnxruntime's first-run cost, then (with ``cache_templates``)
        synthesise the templates' first sentences in the worker's idle time."""
        if self._thread is not None:
            raise RuntimeError("already started")
        if warm:
            self._voice.warm()
            self._prefill_enabled = self._prefill_stale = self._cache_templates
        self._heartbeat = self._clock()
        self._thread = threading.Thread(target=self._run, name="reply", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread (an utterance in progress is cut) and close the sink; True when the
        thread ended within ``timeout`` seconds."""
        self._stop.set()
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass
        ok = True
        if self._thread is not None:
            self._thread.join(timeout)
            ok = not self._thread.is_alive()
        try:
            self._sink.close()
        except Exception as exc:
            log.warning("closing the audio sink failed: %s", exc)
        return ok

    def submit(self, event: Any) -> bool:
        """Offer a transition (duck-typed ``TransitionEvent``); never blocks.

        Returns True when accepted, False when dropped: replies disabled, a reply in flight,
        or within ``reply.cooldown_s`` of the end of the last one. Dropped transitions still
        enter the prompt history.
        """
        now = self._clock()
        entry = HistoryEntry(float(event.t), str(event.from_emotion), str(event.to_emotion),
                             float(event.confidence), float(event.previous_duration_s))
        with self._lock:
            self.stats["submitted"] += 1
            self._history.append(entry)
            if not self._cfg.reply.enabled or self._stop.is_set():
                reason = "dropped_disabled"
            elif self._busy:
                reason = "dropped_busy"
            elif now < self._cooldown_until:
                reason = "dropped_cooldown"
            else:
                self._busy = True
                self.stats["accepted"] += 1
                self._q.put_nowait((event, now, entry))  # cannot be full: _busy guards it
                return True
            self.stats[reason] += 1
        log.debug("transition %s -> %s not answered (%s)", entry.from_emotion, entry.to_emotion, reason)
        return False

    def add_utterance(self, utterance: Any) -> None:
        """Keep a transcribed utterance (``stt.Utterance``: ``t_start``, ``t_end`` on the
        transitions' clock, ``text``, ``emotion``) for the next chat prompts; never blocks.
        ``TranscriptWorker``'s ``on_transcript``. Ignored unless ``speech.transcript.enabled``;
        never logged, never used by the offline templates."""
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
        return self._speaking_since is not None

    def reload(self, cfg: Config) -> None:
        """Apply a new config live: chat settings and key, templates, styles, cooldown, mic tail.
        A reply in progress finishes with the old settings. ``voice.model``/``sink``/``device``/
        ``wav_dir`` need a restart (a warning says so)."""
        with self._lock:
            old, self._cfg = self._cfg, cfg
            self._picker.set_templates(cfg.reply.templates)
            self._prefill_stale = True
        self._configure_chat(cfg, old)
        ov, nv = old.voice, cfg.voice
        if (ov.model, ov.sink, ov.device, ov.wav_dir) != (nv.model, nv.sink, nv.device, nv.wav_dir):
            log.warning("voice.model/sink/device/wav_dir changes take effect at the next restart")

    # ----------------------------------------------------------------- chat endpoint
    def _redact(self, text: str) -> str:
        key = self._key
        if key and key in text:
            text = text.replace(key, "[redacted]")
        return scrub(text)  # and any other registered secret

    def _configure_chat(self, cfg: Config, old: Config | None) -> None:
        """(Re)build the OpenAI client when the endpoint, key or timeouts changed. An unchanged
        endpoint keeps its client (and keep-alive connection) and its outage state."""
        chat = cfg.reply.chat
        key = read_api_key(chat, self._environ)
        register_secret(key)  # every log handler scrubs it from here on (redsg_edge.redact)
        ident = (chat.enabled, chat.base_url, key, chat.connect_timeout_s, chat.first_token_timeout_s)
        if old is not None and ident == getattr(self, "_chat_ident", None):
            return
        self._chat_ident = ident
        client = None
        local = is_local_url(chat.base_url)
        if chat.enabled and (key or local):
            import openai

            # The worker's own wall-clock deadlines name the cause (first_token_timeout, stall);
            # read= is only the backstop that ends the stream thread, so it is set a little
            # later: at the same instant, a loaded CPU let it win the race as a bare "timeout".
            timeout = openai.Timeout(connect=chat.connect_timeout_s,
                                     read=chat.first_token_timeout_s + _READ_TIMEOUT_SLACK_S,
                                     write=chat.connect_timeout_s, pool=chat.connect_timeout_s)
            client = openai.OpenAI(base_url=chat.base_url, api_key=key or LOCAL_PLACEHOLDER_KEY,
                                   timeout=timeout, max_retries=0,
                                   default_headers=_request_headers())
            quiet_http_loggers(type(client._client).__module__)
        with self._lock:
            # The old client is not closed here: a reply may still be streaming through it.
            self._client, self._key = client, key
            self._outage, self._retry_at = None, float("-inf")
        if not chat.enabled:
            log.info("chat disabled (reply.chat.enabled = false): offline replies only")
        elif client is None:
            log.warning("no API key for %s (file $CREDENTIALS_DIRECTORY/openai_api_key or env %s): "
                        "offline replies only", chat.base_url, chat.api_key_env)
        else:
            log.info("chat endpoint %s, model %s%s", chat.base_url, chat.model,
                     "" if key else " (local, placeholder key)")

    def _chat_failed(self, f: _ChatFailure, chat: ChatConfig) -> None:
        now = self._clock()
        detail = self._redact(f.detail)
        with self._lock:
            o = self._outage
            if o is None:
                self._outage = {"cause": f.cause, "since": now, "failures": 1}
                log.warning("chat endpoint %s failed (%s: %s); speaking offline replies until it "
                            "answers again", chat.base_url, f.cause, detail)
            else:
                o["failures"] += 1
                if f.cause != o["cause"]:
                    log.info("chat endpoint still failing, now %s: %s", f.cause, detail)
                    o["cause"] = f.cause
                else:
                    log.debug("chat endpoint still failing (%s, %d failures)", f.cause, o["failures"])
            self._retry_at = now + max(chat.retry_after_s, min(f.retry_after or 0.0, 3600.0))

    def _chat_ok(self, chat: ChatConfig) -> None:
        with self._lock:
            o, self._outage = self._outage, None
        if o is not None:
            log.info("chat endpoint %s answering again after %d failed request(s) over %.0f s "
                     "(last cause %s)", chat.base_url, o["failures"], self._clock() - o["since"], o["cause"])

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

    def _cached_synthesis(self, sentence: str, style: Any, pause_before: bool) -> Iterable[tuple[Any, int]]:
        """Yield ``voice.synthesize`` chunks, from/into the template cache (worker thread)."""
        key = (sentence, style.length_scale, style.volume, style.sentence_pause_s, pause_before)
        hit = self._pcm_cache.get(key)
        if hit is not None:
            self._pcm_cache.move_to_end(key)
            yield from hit
            return
        chunks = []
        for chunk in self._voice.synthesize(sentence, style, pause_before=pause_before):
            chunks.append(chunk)
            yield chunk
        self._pcm_cache[key] = chunks
        while len(self._pcm_cache) > self._CACHE_MAX:
            self._pcm_cache.popitem(last=False)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._heartbeat = self._clock()
            if self._prefill_stale:
                self._plan_prefill()
            try:
                job = self._q.get(timeout=0.0 if self._prefill else 0.25)
            except queue.Empty:
                if self._prefill:  # idle: synthesise one template sentence ahead of need
                    sentence, style = self._prefill[0]
                    for _ in self._cached_synthesis(sentence, style, False):
                        pass
                    self._prefill.pop(0)  # after: prefill_pending counts the one in progress
                continue
            if job is None:
                break
            try:
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

    def _end_speaking(self, end: float, audio_s: float) -> None:
        # caller holds self._lock
        if self._speaking_since is not None:
            self._gate.append((self._speaking_since, max(end, self._speaking_since + audio_s)))
            self._speaking_since = None

    def _reply(self, event: Any, t_submit: float, entry: HistoryEntry) -> None:
        clock = self._clock
        wait = self.transcripts_idle
        if wait is not None and self._cfg.reply.chat.enabled and self._client is not None:
            wait(TRANSCRIPT_WAIT_S)
        with self._lock:
            cfg, client, picker = self._cfg, self._client, self._picker
            history = [h for h in self._history if h is not entry and h.t <= entry.t]
            retry_at, outage = self._retry_at, self._outage
            tc = cfg.speech.transcript
            said = [u for u in self._utterances if tc.enabled
                    and float(u.t_end) >= entry.t - tc.prompt_max_age_s]
        said = said[-tc.prompt_utterances:] if tc.prompt_utterances else []
        chat = cfg.reply.chat
        history = history[-chat.history:] if chat.history else []
        style = style_for(cfg.voice, entry.to_emotion)
        ts: dict[str, float | None] = dict.fromkeys(STAGES)
        ts["transition"], ts["submitted"] = float(event.t), t_submit
        sp = _Speaker(self, style, ts)
        source, cause, truncated, skipped = "offline", None, False, False

        if not chat.enabled:
            cause = "chat_disabled"
        elif client is None:
            cause = "no_api_key"
        elif clock() < retry_at:
            cause, skipped = (outage or {}).get("cause", "recent_failure"), True
        else:
            failure = self._chat_reply(client, chat, build_messages(chat.system_prompt, event,
                                                                    history, said), sp)
            if failure is None:
                source = "chat"
                self._chat_ok(chat)
            else:
                if failure.cause != "stopped":
                    self._chat_failed(failure, chat)
                cause = failure.cause
                if sp.sentences:
                    source, truncated = "chat", True
        if not sp.sentences and not self._stop.is_set():
            source = "offline"
            text = picker.pick(entry.to_emotion)
            for s in split_sentences(text, final=True)[0]:
                if ts["first_sentence"] is None:
                    ts["first_sentence"] = clock()
                sp.speak(s, cached=self._cache_templates)
        audio_s = sp.samples / float(self._voice.sample_rate)
        while not self._sink.drain(0.25):  # SounddeviceSink: until played out
            self._heartbeat = clock()
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
        rec = {"type": "reply", "t": float(event.t), "from": entry.from_emotion, "to": entry.to_emotion,
               "source": source, "cause": cause, "skipped": skipped, "truncated": truncated,
               "text": text, "sentences": len(sp.sentences), "audio_s": round(audio_s, 3),
               "timestamps": ts,
               "latency_s": {k: (None if ts[k] is None else round(ts[k] - t_submit, 4))
                             for k in STAGES[2:]}}
        log.info("reply (%s%s) to %s -> %s: %r", source, f", {cause}" if cause else "",
                 entry.from_emotion, entry.to_emotion, text)
        if self._on_event is not None:
            try:
                self._on_event(rec)
            except Exception:
                log.exception("on_event callback failed")
        from .voice import release_free_memory
        release_free_memory()  # what synthesis freed goes back to the OS, not to a high-water mark

    def _chat_reply(self, client: Any, chat: ChatConfig, messages: list[dict[str, str]],
                    sp: "_Speaker") -> _ChatFailure | None:
        """Stream one reply, speaking each sentence as it completes. None on success."""
        clock, ts = self._clock, sp.ts
        t_req = ts["chat_request"] = clock()
        cs = _ChatStream(client, chat, messages, clock)
        total_deadline = t_req + chat.total_timeout_s
        last_token = None
        buf = ""
        while True:
            if self._stop.is_set():
                cs.cancel()
                return _ChatFailure("stopped")
            now = self._heartbeat = clock()
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
                    return _ChatFailure(why, f"reply not complete after {chat.total_timeout_s:g} s"
                                        if why == "total_timeout" else
                                        f"no token for {deadline - (last_token or t_req):.1f} s")
                continue
            if kind == "error":
                return _classify(payload)
            if clock() >= total_deadline:  # tokens that keep coming do not extend the reply
                cs.cancel()
                return _ChatFailure("total_timeout",
                                    f"reply not complete after {chat.total_timeout_s:g} s")
            if kind == "token":
                if ts["first_token"] is None:
                    ts["first_token"] = t
                last_token = t  # arrival time: a gap in the stream, not our synthesis time
                buf = self._redact(buf + payload)
                # the first sentence is cut earlier at a comma: a shorter first synthesis
                soft = 60 if not sp.sentences else 120
                done, buf = split_sentences(buf, soft_limit=soft)
            else:  # end of stream
                done, buf = split_sentences(buf, final=True)
            for s in done:
                s = self._redact(clean_for_speech(self._redact(s)))
                if not s:
                    continue
                # The whole reply, synthesis included, ends by total_timeout_s: a sentence whose
                # synthesis (estimated from the recent rate) would end later is not started, as
                # a sentence is never cut mid-way. Its audio is capped at total_timeout_s too.
                eta = len(s) * (self._synth_s_per_char or _SYNTH_PRIOR_S_PER_CHAR)
                if (clock() + eta >= total_deadline
                        or sp.samples >= chat.total_timeout_s * self._voice.sample_rate):
                    cs.cancel()
                    return _ChatFailure("total_timeout", f"reply not complete after "
                                        f"{chat.total_timeout_s:g} s (or that much audio)")
                if ts["first_sentence"] is None:
                    ts["first_sentence"] = clock()
                sp.speak(s)
                if self._stop.is_set():
                    break
            if kind == "end":
                return None if sp.sentences else _ChatFailure("empty_reply", "the stream had no text")


class _Speaker:
    """Synthesises sentences one by one into the worker's sink, stamping first PCM / sample."""

    def __init__(self, worker: ReplyWorker, style: Any, ts: dict) -> None:
        self.w, self.style, self.ts = worker, style, ts
        self.sentences: list[str] = []
        self.samples = 0

    def speak(self, sentence: str, cached: bool = False) -> None:
        w = self.w
        pause_before = bool(self.sentences)
        chunks = (w._cached_synthesis(sentence, self.style, pause_before) if cached
                  else w._voice.synthesize(sentence, self.style, pause_before=pause_before))
        t0 = w._clock()
        for pcm, rate in chunks:
            now = w._heartbeat = w._clock()
            if self.ts["first_pcm"] is None:
                self.ts["first_pcm"] = now
            if w._speaking_since is None:
                with w._lock:
                    w._speaking_since = now
            w._sink.write(pcm, rate)
            self.samples += len(pcm)
            if w._stop.is_set():
                break
        if not cached and sentence:
            per_char = (w._clock() - t0) / len(sentence)
            old = w._synth_s_per_char
            w._synth_s_per_char = per_char if old is None else 0.7 * old + 0.3 * per_char
        self.sentences.append(sentence)
