"""Replies to emotion transitions: streamed chat or offline templates, spoken by Piper.

One concern per module:

- :mod:`.text`: ``split_sentences`` (incremental sentence splitter for a token stream) and
  ``clean_for_speech``. Pure.
- :mod:`.prompt`: ``TemplatePicker`` and ``DEFAULT_TEMPLATES`` (offline replies),
  ``build_messages`` (the chat prompt) and ``Exchange`` (one transition of its history and
  what was said for it). Pure.
- :mod:`.chat`: the API key (``read_api_key``), local endpoints (``is_local_url``,
  ``LOCAL_PLACEHOLDER_KEY``), the request headers, ``quiet_http_loggers``, the endpoint's
  client and outage state (``ChatEndpoint``), one streamed request (``ChatStream``) and its
  failure causes (``ChatFailure``).
- :mod:`.speaker`: ``Speaker`` (one reply's sentences to Piper and the sink),
  ``speak_chat_stream`` (a chat stream spoken sentence by sentence under its deadlines), the
  template PCM cache and the synthesis-rate estimate.
- :mod:`.worker`: ``ReplyWorker``, the thread that answers ``events.Transition`` with an
  ``events.Reply`` (the rules: one reply in flight, cooldown, no barge-in, the mic gate).

Privacy: the prompt holds only the transition (from, to, confidence, how long the previous
emotion lasted), the last ``chat.history`` transitions with the replies spoken for them and,
with ``speech.transcript.enabled``, the transcripts of the last ``prompt_utterances``
utterances (``ReplyWorker.add_utterance``; at most ``prompt_max_age_s`` old) with their SER
emotion and age. No probabilities, evidence, images, audio or identity leave the device. The
API key is never read from config.toml and never logged (see :mod:`.chat`).
"""

from __future__ import annotations

from .chat import (HTTP_LOGGER_PREFIXES, LOCAL_PLACEHOLDER_KEY, is_local_url, max_reply_chars,
                   quiet_http_loggers, read_api_key)
from .prompt import DEFAULT_TEMPLATES, Exchange, TemplatePicker, build_messages
from .text import clean_for_speech, split_sentences
from .worker import STAGES, TRANSCRIPT_WAIT_S, ReplyWorker

__all__ = ["split_sentences", "clean_for_speech", "TemplatePicker", "DEFAULT_TEMPLATES",
           "build_messages", "Exchange", "read_api_key", "is_local_url", "LOCAL_PLACEHOLDER_KEY",
           "quiet_http_loggers", "HTTP_LOGGER_PREFIXES", "max_reply_chars", "ReplyWorker",
           "STAGES", "TRANSCRIPT_WAIT_S"]
