"""The ``reply`` section: latency of the reply path, transition -> first audio.

Runs ``n`` synthetic transitions one after another through the real ``ReplyWorker`` (real Piper
voice, real sink, cooldown 0), first with offline templates, then (when ``ttft_s`` is given)
with streamed chat from the loopback ``ChatServer`` answering after ``ttft_s`` seconds. Reports
p50/p95 of transition -> first PCM chunk out of Piper and -> first sample written to the sink,
in milliseconds, against the targets (offline <= 300 ms p50; chat <= TTFT + 250 ms p50).
"""

from __future__ import annotations

import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import CLASSES
from .common import affinity_cpus, loadavg

__all__ = ["bench_reply", "bench_reply_main", "run_section", "format_table", "OFFLINE_TARGET_MS",
           "CHAT_MARGIN_MS"]

OFFLINE_TARGET_MS = 300.0
CHAT_MARGIN_MS = 250.0
#: What the loopback server streams: a first sentence of ordinary length, then more.
BENCH_REPLY = ("It's good to see you smiling. I'm glad to be here with you, and I hope the rest "
               "of your day stays this bright.")


def _pct(values: list[float]) -> dict[str, float | None]:  # seconds in, ms summary out
    if not values:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=np.float64) * 1000.0
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1), "mean": round(float(a.mean()), 1),
            "max": round(float(a.max()), 1)}


def _run(cfg: Any, voice: Any, n: int, sink_kind: str, wav_dir: Path, seed: int,
         timeout_s: float, cache_templates: bool = True) -> list[dict]:
    import random

    from ..events import Transition
    from ..reply import ReplyWorker
    from ..voice import NullSink, WavSink

    sink = WavSink(wav_dir) if sink_kind == "wav" else NullSink()
    events: list[dict] = []
    got = threading.Event()

    def on_event(reply) -> None:  # events.Reply
        events.append(reply.to_json())
        got.set()

    worker = ReplyWorker(cfg, voice=voice, sink=sink, on_event=on_event, rng=random.Random(seed),
                         cache_templates=cache_templates)
    worker.start(warm=True)
    try:
        t0 = time.monotonic()
        while worker.prefill_pending and time.monotonic() - t0 < 120:  # as a daemon would be
            time.sleep(0.05)
        for i in range(n):
            to = CLASSES[i % len(CLASSES)]
            frm = CLASSES[(i + 3) % len(CLASSES)]
            got.clear()
            ev = Transition(time.monotonic(), frm, to, 0.7, 5.0)
            if not worker.submit(ev):
                raise RuntimeError(f"transition {i} was not accepted: {worker.stats}")
            if not got.wait(timeout_s):
                raise RuntimeError(f"no reply to transition {i} within {timeout_s} s")
    finally:
        worker.stop(5.0)
    return events


def _summary(events: list[dict]) -> dict:  # reply records → per-stage ms summaries
    def lat(stage: str) -> list[float]:
        return [e["timestamps"][stage] - e["timestamps"]["transition"] for e in events
                if e["timestamps"][stage] is not None]

    sources: dict[str, int] = {}
    for e in events:
        k = e["source"] + (f":{e['cause']}" if e["cause"] else "")
        sources[k] = sources.get(k, 0) + 1
    audio = [e["audio_s"] for e in events]
    return {"replies": len(events), "sources": sources,
            "first_token_ms": _pct(lat("first_token")), "first_sentence_ms": _pct(lat("first_sentence")),
            "first_pcm_ms": _pct(lat("first_pcm")), "first_sample_ms": _pct(lat("first_sample")),
            "done_ms": _pct(lat("done")), "audio_s_mean": round(float(np.mean(audio)), 2) if audio else None}


def bench_reply(cfg: Any, n: int = 50, ttft_s: float | None = None, *, inter_token_s: float = 0.02,
                sink: str = "wav", seed: int = 0, voice: Any = None, cold: bool = True,
                out: Callable[[str], None] | None = print) -> dict:
    """Measure transition -> first PCM / first sample at the sink over ``n`` transitions.

    ``cfg``: a ``Config`` (its voice model and styles are used; cooldown, chat endpoint and
    sink are overridden). ``ttft_s``: None = offline templates only; a number also runs streamed
    chat against the loopback server with that time to first token and ``inter_token_s``
    between tokens. ``sink``: ``"wav"`` (files in a temporary directory) or ``"null"``.
    ``voice``: a loaded ``Voice`` to reuse. ``cold``: also run offline with the template PCM
    cache off (each first sentence synthesised on demand). ``out``: where the table lines go.

    Returns a JSON-able dict: ``{"n", "machine", "voice", "voice_load_s", "runs": {"offline":
    {...}, "offline_cold": {...}, "chat": {...}}, "targets": {...}, "pass": {...}}``, each run with per-stage
    ``{"n", "p50", "p95", "mean", "max"}`` in milliseconds from the transition.
    """
    from ..voice import Voice
    from .chat_server import ChatServer

    if voice is None:
        voice = Voice.from_config(cfg.voice)
    base = cfg.model_copy(deep=True)
    base.reply.enabled = True
    base.reply.cooldown_s = 0.0
    result: dict[str, Any] = {
        "n": n, "sink": sink, "seed": seed, "loadavg_before": loadavg(),
        "machine": {"python": platform.python_version(), "machine": platform.machine(),
                    "processor": platform.processor() or None, "cpus": len(affinity_cpus())},
        "voice": voice.model_path.name, "voice_load_s": round(getattr(voice, "load_s", 0.0), 3),
        "runs": {}, "targets": {"offline_first_sample_p50_ms": OFFLINE_TARGET_MS}, "pass": {}}
    timeout = base.reply.chat.total_timeout_s + 30.0
    with tempfile.TemporaryDirectory(prefix="redsg-bench-") as tmp:
        off = base.model_copy(deep=True)
        off.reply.chat.enabled = False
        result["runs"]["offline"] = _summary(_run(off, voice, n, sink, Path(tmp) / "offline", seed, timeout))
        p50 = result["runs"]["offline"]["first_sample_ms"]["p50"]
        result["pass"]["offline"] = p50 is not None and p50 <= OFFLINE_TARGET_MS
        if cold:  # the same without the template cache: every sentence synthesised on demand
            result["runs"]["offline_cold"] = _summary(
                _run(off, voice, n, sink, Path(tmp) / "cold", seed, timeout, cache_templates=False))
            result["targets"]["offline_cold_first_sample_p50_ms"] = OFFLINE_TARGET_MS
            p50 = result["runs"]["offline_cold"]["first_sample_ms"]["p50"]
            result["pass"]["offline_cold"] = p50 is not None and p50 <= OFFLINE_TARGET_MS
        if ttft_s is not None:
            with ChatServer(reply=BENCH_REPLY, ttft_s=ttft_s, inter_token_s=inter_token_s) as srv:
                ch = base.model_copy(deep=True)
                ch.reply.chat.enabled = True
                ch.reply.chat.base_url = srv.base_url
                ch.reply.chat.retry_after_s = 0.0
                ch.reply.chat.first_token_timeout_s = max(ch.reply.chat.first_token_timeout_s, ttft_s + 2.0)
                run = _summary(_run(ch, voice, n, sink, Path(tmp) / "chat", seed, timeout))
            run.update(ttft_s=ttft_s, inter_token_s=inter_token_s)
            result["runs"]["chat"] = run
            target = ttft_s * 1000.0 + CHAT_MARGIN_MS
            result["targets"]["chat_first_sample_p50_ms"] = target
            p50 = run["first_sample_ms"]["p50"]
            result["pass"]["chat"] = p50 is not None and p50 <= target and "chat" in run["sources"]
    result["loadavg_after"] = loadavg()
    if out is not None:
        out(format_table(result))
    return result


def format_table(result: dict) -> str:
    """The human-readable table ``bench_reply`` prints: per run and stage, p50/p95/max in ms
    from the transition, and PASS/FAIL against the first-sample target."""
    lines = [f"reply latency, {result['n']} transitions, voice {result['voice']}, sink {result['sink']} "
             f"(ms from transition); load average {result.get('loadavg_before')} -> "
             f"{result.get('loadavg_after')} on {result['machine']['cpus']} CPUs",
             f"{'run':<12} {'stage':<15} {'p50':>8} {'p95':>8} {'max':>8}  target"]
    for name, run in result["runs"].items():
        target = result["targets"].get(f"{name}_first_sample_p50_ms")
        for stage in ("first_token", "first_sentence", "first_pcm", "first_sample", "done"):
            s = run[f"{stage}_ms"]
            if not s["n"]:
                continue
            tgt = f"p50 <= {target:.0f}  {'PASS' if result['pass'].get(name) else 'FAIL'}" \
                if stage == "first_sample" and target else ""
            lines.append(f"{name:<12} {stage:<15} {s['p50']:>8.1f} {s['p95']:>8.1f} {s['max']:>8.1f}  {tgt}")
        lines.append(f"{name:<12} sources: {run['sources']}, mean audio {run['audio_s_mean']} s")
    return "\n".join(lines)


def bench_reply_main(cfg: Any, n: int = 50, ttft_s: float | None = 0.5,
                     out_json: str | Path | None = None) -> int:
    """``redsg-edge bench reply``: run ``bench_reply``; write the dict to ``out_json`` if given.
    Returns 0 when the offline and chat targets are met (``offline_cold`` is reported, not
    judged), 1 when not, the error's exit code (``errors.exit_code_for``: 70 for the voice
    model, 69 for the audio output) when the voice cannot be used."""
    import sys

    from ..errors import VoiceError, exit_code_for

    try:
        result = bench_reply(cfg, n=n, ttft_s=ttft_s)
    except VoiceError as exc:
        print(f"bench reply: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    if out_json:
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    # offline_cold is a diagnostic (the cache switched off), not a target of the product
    return 0 if result["pass"].get("offline") and result["pass"].get("chat", True) else 1


def run_section(cfg: Any, quick: bool, ttft_s: float, out_dir: Path) -> tuple[int, dict | None]:
    """``redsg-edge bench reply`` as a section of ``main``: 5 transitions when ``quick`` else 50,
    chat with ``ttft_s`` seconds to first token; the JSON goes to ``out_dir/reply[-quick].json``.
    Returns (``bench_reply_main``'s exit code, the result dict or None when none was written)."""
    path = out_dir / ("reply-quick.json" if quick else "reply.json")
    code = bench_reply_main(cfg, n=5 if quick else 50, ttft_s=ttft_s, out_json=path)
    return code, (json.loads(path.read_text()) if path.is_file() else None)
