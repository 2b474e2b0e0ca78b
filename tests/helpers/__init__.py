"""Helpers only the tests and scripts/ use, kept out of the runtime package: a process-wide
default Piper voice (here), stand-in classifier files (``models``) and the golden predictions
(``goldens``). The loopback chat server and the NOTIFY_SOCKET listener serve the benches too,
so they live in ``redsg_edge.bench.chat_server`` and ``redsg_edge.bench.notify``.

Imported as ``tests.helpers`` (pytest puts the repository root on ``sys.path`` because
``tests/`` is a package; scripts insert it themselves)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def shared_voice():
    """The default ``Voice`` (en_US-joe-medium), loaded once per process (~1 s) and warmed."""
    from redsg_edge.voice import Voice

    voice = Voice()
    voice.warm()
    return voice
