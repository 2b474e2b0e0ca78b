"""Test and bench helpers shipped with the package: a loopback OpenAI-compatible chat server
(``redsg_edge.testing.chat_server``) and a process-wide default Piper voice."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def shared_voice():
    """The default ``Voice`` (en_US-joe-medium), loaded once per process (~1 s) and warmed."""
    from ..voice import Voice

    voice = Voice()
    voice.warm()
    return voice
