#!/usr/bin/env python3
"""Recompute the speech-to-text figures of models/README.md ("Speech-to-text").

- WER: Moonshine tiny-en on the 120 RAVDESS files of actors 23 and 24 (the SER model's
  held-out speakers; statement 01 "Kids are talking by the door", 02 "Dogs are sitting by the
  door"), with jiwer after lower-casing and removing punctuation; per actor and per emotion too.
- Latency: p50 / p90 of ``Transcriber.transcribe`` on a 3.0 s utterance (RAVDESS files cut or
  padded to 3.0 s), onnxruntime ``intra_op_num_threads = 1``, after ``--warmup`` calls; with
  ``--pin`` the process is pinned to one core. Wall time, and the calling thread's CPU time
  (with one intra-op thread the work runs on it): on a machine shared with other jobs the CPU
  time is what an idle core would take. This is the time from the utterance's end to its
  transcript when the worker is idle. Real-time factor over the 120 files.
- Memory (with the daemon's glibc heap settings, ``redsg_edge.memory.tune_heap``, unless
  ``--glibc-defaults``): resident set size (psutil) after loading and running the Piper voice (the daemon
  has it, and with it onnxruntime's kernels; ``--no-piper``: after importing onnxruntime and
  tokenizers only), after loading the model, and the peak while transcribing everything: the
  difference is what speech-to-text adds to the daemon.

    python scripts/eval_stt.py [--models models] [--data ../shared/data] [--runs 40]
                               [--pin] [--json runs/eval_stt.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from redsg_edge.datasets import DATA_ROOT, load_ravdess_index  # noqa: E402

SENTENCES = {1: "kids are talking by the door", 2: "dogs are sitting by the door"}
ACTORS = (23, 24)
SR = 16000


def rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def norm(text: str) -> str:
    """Lower case, letters and apostrophes only; an apostrophe at either end of a word is a
    quotation mark ("'What" → "what"), inside it a contraction ("I'm")."""
    words = re.sub(r"[^a-z' ]", " ", text.lower()).split()
    return " ".join(w for w in (w.strip("'") for w in words) if w)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--data", type=Path, default=DATA_ROOT)
    ap.add_argument("--runs", type=int, default=40, help="timed 3 s transcriptions")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--decoder", default="moonshine-tiny-en-decoder-shared.onnx",
                    help="decoder file in --models: the shared-weights copy fetch-models derives "
                         "(default) or the fetched moonshine-tiny-en-decoder.ort")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pin", action="store_true", help="pin the process to one core")
    ap.add_argument("--no-piper", action="store_true",
                    help="baseline without the Piper voice loaded and run first")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="leave glibc's malloc settings as they are (default: the daemon's, "
                         "redsg_edge.memory.tune_heap)")
    args = ap.parse_args(argv)
    if not args.glibc_defaults:
        from redsg_edge.memory import tune_heap
        tune_heap()  # as `redsg-edge run` does before anything is loaded
    if args.pin:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})

    import jiwer
    import onnxruntime  # noqa: F401  (imported before the baseline: the daemon has it already)
    import soundfile as sf
    import tokenizers  # noqa: F401

    from redsg_edge.stt import Transcriber
    from redsg_edge.memory import release_free_memory

    if not args.no_piper:
        # The daemon has Piper loaded and has run it: onnxruntime's kernels are already in
        # memory, so they are not part of what speech-to-text adds.
        from tests.helpers import shared_voice
        voice = shared_voice()
        for _ in voice.synthesize("Hello there, I am here with you."):
            pass
        release_free_memory()
    rss_base = rss_mb()
    t0 = time.perf_counter()
    stt = Transcriber(args.models / "moonshine-tiny-en-encoder.ort",
                      args.models / args.decoder,
                      args.models / "moonshine-tokenizer.json", threads=args.threads)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()

    files = [r for r in load_ravdess_index(args.data / "ravdess") if r.actor in ACTORS]
    refs, hyps, rows = [], [], []
    audio_s = compute_s = 0.0
    peak = rss_loaded
    for r in files:
        pcm, rate = sf.read(r.path, dtype="int16")
        if rate != SR or pcm.ndim != 1:
            raise SystemExit(f"{r.path}: expected 16 kHz mono, got {rate} Hz {pcm.shape}")
        statement = int(r.path.stem.split("-")[4])
        t = time.perf_counter()
        text = stt.transcribe(pcm)
        compute_s += time.perf_counter() - t
        audio_s += len(pcm) / SR
        peak = max(peak, rss_mb())
        release_free_memory()  # as TranscriptWorker does after each utterance
        refs.append(SENTENCES[statement])
        hyps.append(norm(text))
        rows.append({"file": r.path.name, "actor": r.actor, "emotion": r.emotion,
                     "ref": refs[-1], "hyp": text})

    def wer(idx):
        return round(float(jiwer.wer([refs[i] for i in idx], [hyps[i] for i in idx])), 4)

    all_idx = range(len(refs))
    per_actor = {a: wer([i for i in all_idx if rows[i]["actor"] == a]) for a in ACTORS}
    emotions = sorted({r["emotion"] for r in rows})
    per_emotion = {e: wer([i for i in all_idx if rows[i]["emotion"] == e]) for e in emotions}
    errors = [rows[i] for i in all_idx if hyps[i] != refs[i]]

    # latency on exactly 3.0 s: each file cut (or zero-padded) to 3.0 s from its start
    three = []
    for r in files[: max(1, args.runs)]:
        pcm = sf.read(r.path, dtype="int16")[0][: 3 * SR]
        three.append(np.pad(pcm, (0, 3 * SR - len(pcm))))
    for pcm in three[: args.warmup]:
        stt.transcribe(pcm)
    lat, cpu = [], []
    for i in range(args.runs):
        t, c = time.perf_counter(), time.thread_time()
        stt.transcribe(three[i % len(three)])
        lat.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)  # one intra-op thread: all the work is this thread's
    peak = max(peak, rss_mb())

    out = {"files": len(refs), "wer": wer(all_idx), "wer_per_actor": per_actor,
           "wer_per_emotion": per_emotion, "sentences_wrong": len(errors),
           "errors": [{k: e[k] for k in ("file", "emotion", "hyp")} for e in errors],
           "latency_3s_ms": {"p50": round(float(np.percentile(lat, 50)) * 1e3, 1),
                             "p90": round(float(np.percentile(lat, 90)) * 1e3, 1),
                             "runs": len(lat),
                             "cpu_p50": round(float(np.percentile(cpu, 50)) * 1e3, 1),
                             "cpu_p90": round(float(np.percentile(cpu, 90)) * 1e3, 1)},
           "rtf": round(compute_s / audio_s, 4), "audio_s": round(audio_s, 1),
           "threads": args.threads, "pinned": bool(args.pin), "load_s": round(load_s, 2),
           "rss_mb": {"baseline": round(rss_base, 1), "loaded": round(rss_loaded, 1),
                      "peak": round(peak, 1), "added_loaded": round(rss_loaded - rss_base, 1),
                      "added_peak": round(peak - rss_base, 1)}}
    print(f"WER {out['wer'] * 100:.2f} % on {len(refs)} files (actor 23: "
          f"{per_actor[23] * 100:.2f} %, actor 24: {per_actor[24] * 100:.2f} %), "
          f"{len(errors)} sentences not exact")
    for e in errors:
        print(f"  {e['file']} ({e['emotion']}): {e['hyp']!r}")
    print("WER per emotion: " + ", ".join(f"{e} {v * 100:.1f} %" for e, v in per_emotion.items()))
    print(f"3 s utterance, {args.threads} thread(s){' pinned' if args.pin else ''}: "
          f"p50 {out['latency_3s_ms']['p50']} ms, p90 {out['latency_3s_ms']['p90']} ms "
          f"wall; CPU time p50 {out['latency_3s_ms']['cpu_p50']} ms, p90 "
          f"{out['latency_3s_ms']['cpu_p90']} ms (what an idle core would take; {len(lat)} "
          f"runs); real-time factor {out['rtf']} over {out['audio_s']} s; load average "
          f"{os.getloadavg()[0]:.1f}")
    m = out["rss_mb"]
    print(f"RSS: {m['baseline']} MB {'with onnxruntime + tokenizers imported' if args.no_piper else 'with Piper loaded and run'}, {m['loaded']} MB "
          f"loaded (+{m['added_loaded']}), peak {m['peak']} MB (+{m['added_peak']}); "
          f"load {out['load_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
