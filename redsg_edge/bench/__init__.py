"""``redsg-edge bench``: every stage measured, the daemon's own cost, and the ``fer`` peer side by side.

Not on the daemon's path: only ``cli.cmd_bench`` imports this package, inside the command.
Modules: ``common`` (paths, sizes, targets, machine info, timing, inputs, worker plumbing),
``workers`` (stages, loop, our side of peers), ``daemon`` (coldstart, daemon), ``peers``,
``reply``, ``report`` (tables, charts: the only user of matplotlib), ``notify`` (a
``NOTIFY_SOCKET`` listener) and ``chat_server`` (a loopback OpenAI-compatible server), the last
two shared with the tests.

Subcommands (``redsg-edge bench WHAT [--quick] [--json-out PATH]``); each prints a plain-text
table and writes JSON (default ``runs/bench/WHAT.json``, ``WHAT-quick.json`` in quick mode):

- ``stages``: per-stage latency, p50/p95 over ``STAGE_CALLS`` calls (quick: 50) after a warm-up,
  in a worker process pinned to **one core** with ``num_threads=1`` interpreters, then in one
  with **all cores** and ``num_threads`` = cores. Inputs are real: 640x480 frames of the Pexels
  clip (letterboxed from 640x360 as the camera path does), RAVDESS Actor_23/24 speech.
- ``loop``: the vision loop (detect → choose face → crop → FER → fusion update) at its maximum
  frame rate on 640x480 video, with decoding excluded (frames decoded beforehand), included
  serially (one thread decodes then processes, as ``replay`` does) and included pipelined (a
  decoder thread feeds the vision thread, as the daemon's capture/vision threads do); and the
  frame → fused-update latency of the real ``Pipeline`` fed at 15 fps in real time.
- ``daemon``: the real daemon (``python -m redsg_edge run``) as a subprocess, camera = the clip
  replayed in real time at 15 fps, microphone = RAVDESS Actor_23/24 speech, replies on (offline
  templates, default voice, null sink); CPU % of one core and RSS sampled every second with
  psutil for 600 s (quick: 10 s), the RSS slope from 60 s by Theil-Sen; drops from its status
  file.
- ``coldstart``: process start → ``READY=1`` received on a real ``NOTIFY_SOCKET`` datagram socket
  bound by the bench (models loaded, voice loaded, first frame and audio block); median of 3.
- ``peers``: the ``fer`` package (its own API, bundled mini-XCEPTION TFLite + Haar cascade, in
  the separate ``.venv-peers`` or ``--peer-python``, via ``scripts/peer_fer.py``) and this
  project's pipeline on the same images in one run: FER2013 PrivateTest and CK+48 accuracy,
  per-photo pipeline latency and classifier-alone latency, both pinned to one core.
- ``reply``: ``reply.bench_reply_main`` (transition → first audio).
- ``all``: all of the above; writes one combined JSON too.

Latencies are ``time.perf_counter_ns`` deltas reported in milliseconds as numpy percentiles;
CPU in percent of one core; memory in MB (10^6 bytes). Figures taken while other work loads the
machine are meaningless: every section records the load average and the other processes' CPU
use before it starts, and flags itself ``contended``.

Inputs outside the repository come from ``--data DIR`` (default ``$REDSG_DATA`` or
``../shared/data``), ``--detector PATH``, ``--peer-python PATH`` and ``--daemon-python PATH``
(see ``common.BenchPaths``); a section whose files are missing fails with a message naming the
flag, and the other sections still run.

``python -m redsg_edge.bench charts RESULT.json OUTDIR`` draws the PNG bar charts of
``docs/benchmarks.md`` from a saved ``all``/``peers`` result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

#: The sections of ``redsg-edge bench all``, in running order.
SECTIONS = ("stages", "loop", "reply", "peers", "coldstart", "daemon")


def main(args) -> int:
    """``redsg-edge bench WHAT``: run, print the table(s), write JSON. ``args``: the parsed
    ``redsg-edge bench`` arguments (``what``, ``config``, ``quick``, ``json_out``, ``ttft`` and
    the path flags of ``common.BenchPaths.from_args``). Returns 0 when the run completed
    (targets met or not: see the table), 1 when a section failed, 78 bad config; raises
    ModelError (exit 70 via the CLI) when a model file is missing."""
    from ..config import load_config
    from ..errors import ConfigError, ModelError
    from . import daemon, peers, reply, workers
    from .common import (DEFAULT_OUT, BenchPaths, affinity_cpus, machine_info, model_info,
                         resolve_models)
    from .report import FORMATTERS

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 78
    paths = BenchPaths.from_args(args)
    quick = bool(args.quick)
    what = args.what
    sections = SECTIONS if what == "all" else (what,)
    out_path = args.json_out or DEFAULT_OUT / f"{what}{'-quick' if quick else ''}.json"
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    models = None
    if any(s != "reply" for s in sections):
        models = resolve_models(cfg, paths)  # ModelError → exit 70 via the CLI
    info = {"machine": machine_info(), "quick": quick, "config": str(cfg.source_path),
            "data": str(paths.data), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": {k: model_info(v) for k, v in (models or {}).items()}}
    print(f"redsg-edge bench {what}{' --quick' if quick else ''} on {info['machine']['cpu_model']}"
          f", {len(affinity_cpus())} CPUs, Python {info['machine']['python']}", flush=True)
    runners = {"stages": workers.bench_stages, "loop": workers.bench_loop,
               "daemon": daemon.bench_daemon, "coldstart": daemon.bench_coldstart,
               "peers": peers.bench_peers}
    results: dict[str, Any] = {}
    failed = []
    for sec in sections:
        t0 = time.monotonic()
        try:
            if sec == "reply":
                code, r = reply.run_section(cfg, quick, args.ttft, out_dir)
                if r is not None:
                    r["provisional"] = quick
                results[sec] = r or {"error": f"bench reply exited {code}"}
                if code not in (0, 1):
                    failed.append(sec)
                continue
            print(f"[{sec}]", flush=True)
            missing = paths.missing_data(sec)
            if missing:
                raise FileNotFoundError(missing)
            r = runners[sec](cfg, models, paths, quick, out_dir)
        except (RuntimeError, OSError, subprocess.SubprocessError, ModelError) as exc:
            print(f"bench {sec}: FAILED: {exc}", file=sys.stderr, flush=True)
            results[sec] = {"error": str(exc)}
            failed.append(sec)
            continue
        r["wall_s"] = round(time.monotonic() - t0, 1)
        loads = [v for k, v in r.items() if k.startswith("load_before")]
        r["contended"] = any(v.get("contended") for v in loads)
        r["provisional"] = quick or r["contended"]
        results[sec] = r
        print(FORMATTERS[sec](r), flush=True)
        if r["contended"]:
            print(f"  WARNING: other processes were using the CPU ({loads[0]}); these figures "
                  "are not valid measurements", flush=True)
        if what == "all":
            part = out_dir / f"{sec}{'-quick' if quick else ''}.json"
            part.write_text(json.dumps({**info, "section": sec, "result": r}, indent=1) + "\n")
    doc = {**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": results}
    out_path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"JSON: {out_path}")
    return 1 if failed else 0
