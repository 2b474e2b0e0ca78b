"""Resident memory of a long-running process that runs the speech models (Piper, Moonshine).

Three controls, each measured on this machine (x86-64, glibc 2.36, onnxruntime 1.32):

- **onnxruntime's CPU arena, emptied after each run** (``shrink_run_options``,
  ``ShrinkingSession``). Without an arena every tensor is a plain ``malloc``; with one that is
  never emptied, resident memory keeps the high-water mark of the longest sentence (234 -> 717
  MB over sentences of 15 to 90 words). With the arena on and its shrinkage after every
  ``run`` (``memory.enable_memory_arena_shrinkage``), a run reuses its own buffers and hands
  them back at the end. With the fixed threshold below, against no arena and glibc's defaults:
  Piper's high-water mark over a 7 s sentence 241-243 against 316-328 MB at the same CPU time
  (real-time factor 0.107-0.112 against 0.110-0.112); Moonshine's 3 s utterance 82-84 against
  87-92 ms of CPU, and a 10 s one +18 against +82 MB of high-water mark. (No arena with the
  fixed threshold alone costs Piper 30 % more CPU: every large tensor is then a fresh mapping.)
- **A fixed glibc mmap threshold** (``tune_heap``). glibc serves a block of
  ``M_MMAP_THRESHOLD`` bytes or more with its own ``mmap`` and unmaps it on ``free``, but the
  threshold is dynamic: each such block freed raises it to that block's size (up to 32 MiB),
  after which the arena's chunks and the largest activations land in the heaps and stay there.
  Fixing it (which also stops the dynamic adjustment) at 1 MiB sends them back at once when
  the heap has no free room for them (glibc serves a request from free heap space first);
  ``M_TRIM_THRESHOLD`` goes up to 64 MiB at the same time so the heaps are not shrunk and
  re-faulted after every free (``release_free_memory`` trims after each reply and utterance).
  ``M_ARENA_MAX`` caps glibc's malloc arenas at 2 (default: 8 per core, each keeping its own
  free pages; the daemon has about 20 threads).
- **``malloc_trim(0)``** after each reply and transcribed utterance (``release_free_memory``).

All three in the daemon (``redsg-edge bench daemon``, 600 s, speech-to-text on): peak RSS
482-491 MB against 510-512 MB with the last one alone (docs/benchmarks.md).

``tune_heap`` leaves a setting alone when the environment already sets it
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX`` or
``GLIBC_TUNABLES``), so a systemd drop-in can still choose. Where the C library is not glibc
(musl, macOS) nothing is done. Sources: glibc ``mallopt(3)``, ``malloc/arena.c``;
onnxruntime ``run_options_config_keys.h``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["tune_heap", "release_free_memory", "shrink_run_options", "ShrinkingSession",
           "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ARENA_MAX", "SHRINK_KEY"]

#: Bytes from which a malloc gets its own mapping, returned to the OS at ``free``.
MMAP_THRESHOLD = 1024 * 1024
#: Free bytes at the top of a heap before glibc shrinks it by itself.
TRIM_THRESHOLD = 64 * 1024 * 1024
#: glibc malloc arenas at most.
ARENA_MAX = 2
#: onnxruntime run option: free the arena's unused chunks when ``run`` ends ("cpu:0": CPU).
SHRINK_KEY = "memory.enable_memory_arena_shrinkage"

# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        libc.mallopt  # noqa: B018 - AttributeError where there is none
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune or trim
        return None


def tune_heap(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD,
              arena_max: int = ARENA_MAX,
              environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes) and ``M_ARENA_MAX``,
    each unless ``environ`` (default ``os.environ``) already sets it; return ``{environment
    variable name: value}`` of what was set (empty where the C library has no ``mallopt``).

    Process-wide: call it once, early, before worker threads start (``M_ARENA_MAX`` does not
    merge arenas that already exist). ``redsg-edge run`` does. Raises ValueError for an mmap
    threshold outside 0..32 MiB, a negative trim threshold or ``arena_max`` < 1 (glibc would
    ignore them silently)."""
    if not 0 <= mmap_threshold <= 32 * 1024 * 1024:
        raise ValueError(f"mmap_threshold must be 0..33554432 bytes, got {mmap_threshold}")
    if not 0 <= trim_threshold < 2 ** 31:
        raise ValueError(f"trim_threshold must be 0..2147483647 bytes, got {trim_threshold}")
    if arena_max < 1:
        raise ValueError(f"arena_max must be >= 1, got {arena_max}")
    env = os.environ if environ is None else environ
    libc = _libc()
    if libc is None:
        return {}
    tunables = env.get("GLIBC_TUNABLES", "")
    done: dict[str, int] = {}
    for name, param, value, tunable in (
            ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, mmap_threshold,
             "glibc.malloc.mmap_threshold"),
            ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, trim_threshold,
             "glibc.malloc.trim_threshold"),
            ("MALLOC_ARENA_MAX", _M_ARENA_MAX, arena_max, "glibc.malloc.arena_max")):
        if name in env or tunable in tunables:
            continue
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            done[name] = value
        else:  # pragma: no cover - glibc takes all three within the bounds checked above
            log.warning("mallopt(%d, %d) refused", param, value)
    log.debug("heap settings: %s", done or "left to the environment")
    return done


def release_free_memory() -> None:
    """Hand the heap memory that synthesis or transcription freed back to the OS (glibc
    ``malloc_trim(0)``: the free top of every heap and the free pages inside them). A no-op
    where the C library has no ``malloc_trim``."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def shrink_run_options(ort: Any) -> Any:
    """``onnxruntime.RunOptions`` that empty the CPU arena when the run ends."""
    ro = ort.RunOptions()
    ro.add_run_config_entry(SHRINK_KEY, "cpu:0")
    return ro


class ShrinkingSession:
    """An ``onnxruntime.InferenceSession`` whose ``run`` always passes ``run_options`` (for code
    that calls ``session.run(names, feeds)`` itself, as piper-tts does). Everything else is the
    wrapped session's (``get_inputs``, ``get_session_options``, ...); ``session`` is it."""

    def __init__(self, session: Any, run_options: Any) -> None:
        self.session = session
        self.run_options = run_options

    def run(self, output_names, input_feed, run_options=None):
        """``InferenceSession.run`` (output names, ``{input name: array}``) with this wrapper's
        ``run_options`` unless others are given; returns the list of output arrays."""
        return self.session.run(output_names, input_feed, run_options or self.run_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)
