#!/usr/bin/env python3
"""CPU cost of the live tuning page with nobody watching (issue 19: at most 2 % of a core).

    python scripts/measure_web_cost.py [--seconds 20] [--repeats 5] [--rate-hz 30]
                                       [--replay VIDEO] [--watched] [--json-out FILE]

Each measurement is a fresh child process that publishes the same load on an
``events.EventBus`` in real time, with the page server off, on (listening on 127.0.0.1, no
client) or, with ``--watched``, also watched (one WebSocket client in another process, not
counted), and reports its own CPU time (``time.process_time``: user + system, all threads)
over the run divided by the wall time, in % of one core. The settings alternate (in a
rotating order), ``--repeats`` each; the medians and the differences from "off" are printed
(and written as JSON).

Load: by default the real ``fusion.Fusion`` fed scripted face evidence at ``--rate-hz`` (the
live fusion runs at 15-40 Hz) and voice evidence every 0.5 s, its updates and transitions
published as the pipeline does. With ``--replay VIDEO``, ``replay.replay(..., bus=)`` of
the clip paced to real time by ``web.Pacer`` (heavier and noisier: the models run too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


#: The watching page, in its own process: reads every message until the server closes.
CLIENT = """
import sys
from websockets.sync.client import connect
with connect(sys.argv[1]) as ws:
    for _ in ws:
        pass
"""


def child(mode: str, seconds: float, rate_hz: float, replay_video: str | None) -> dict:
    """One measurement in this process (``mode`` off, on or watched): CPU % of one core over
    ``seconds`` of load."""
    web = mode != "off"
    sys.path.insert(0, str(REPO))
    import numpy as np

    from redsg_edge import CLASSES
    from redsg_edge.config import parse_config
    from redsg_edge.events import EventBus
    from redsg_edge.fusion import Evidence, Fusion
    from redsg_edge.web import Pacer, TuningServer

    cfg = parse_config({"reply": {"enabled": False}, "voice": {"sink": "null"}})
    bus = EventBus()
    seen = {"n": 0}
    bus.subscribe(lambda e: seen.__setitem__("n", seen["n"] + 1), name="counter")
    server = TuningServer(bus, dict, lambda: cfg.fusion, "127.0.0.1", 0).start() if web else None
    client = None
    if mode == "watched":
        client = subprocess.Popen([sys.executable, "-c", CLIENT,
                                   f"ws://127.0.0.1:{server.port}/ws"])
        while server.clients == 0:
            time.sleep(0.05)
    time.sleep(0.5)  # the server thread settles in select()
    wall0, cpu0 = time.monotonic(), time.process_time()
    if replay_video:
        from redsg_edge.replay import replay
        pacer = Pacer()
        bus.subscribe(pacer, types=("update",), name="pacing")
        replay(cfg, Path(replay_video), bus=bus)
    else:
        fusion = Fusion(cfg.fusion)
        labels = ["neutral", "happy", "sad", "angry"]
        n = int(seconds * rate_hz)
        for i in range(n):
            t = i / rate_hz
            p = np.full(len(CLASSES), 0.02, dtype=np.float32)
            p[CLASSES.index(labels[int(t // 4) % len(labels)])] = 0.88
            upd = fusion.update(t, Evidence("face", t, p))
            if i % max(1, int(rate_hz / 2)) == 0:
                upd = fusion.update(t, Evidence("voice", t, p))
            bus.publish(upd)
            if upd.transition is not None:
                bus.publish(upd.transition)
            delay = wall0 + (i + 1) / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    if server is not None:
        assert server.clients == (mode == "watched")
        server.close()
    if client is not None:
        client.wait(timeout=10)
    return {"mode": mode, "wall_s": round(wall, 3), "cpu_s": round(cpu, 4),
            "cpu_pct_core": round(100.0 * cpu / wall, 3), "events": seen["n"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="load per run (s), default 20")
    ap.add_argument("--repeats", type=int, default=5, help="runs per setting, default 5")
    ap.add_argument("--rate-hz", type=float, default=30.0, help="fusion updates per second")
    ap.add_argument("--replay", metavar="VIDEO", help="replay this clip instead (real time)")
    ap.add_argument("--watched", action="store_true", help="also measure with a page open")
    ap.add_argument("--json-out", type=Path, help="write the runs and medians here")
    ap.add_argument("--child", choices=["off", "on", "watched"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.rate_hz, args.replay)))
        return 0
    runs = []
    modes = ("off", "on", "watched") if args.watched else ("off", "on")
    for r in range(args.repeats):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:  # no setting always first
            cmd = [sys.executable, __file__, "--child", mode, "--seconds", str(args.seconds),
                   "--rate-hz", str(args.rate_hz)] + (["--replay", args.replay]
                                                      if args.replay else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(f"run {r + 1} {mode}: {runs[-1]['cpu_pct_core']:.2f} % of a core "
                  f"({runs[-1]['events']} events)", file=sys.stderr)
    med = {m: statistics.median(x["cpu_pct_core"] for x in runs if x["mode"] == m)
           for m in modes}
    result = {"load": f"replay {args.replay}" if args.replay else
              f"fusion at {args.rate_hz:g} Hz, {args.seconds:g} s",
              "repeats": args.repeats, "median_cpu_pct_core": med,
              "difference_pct_core": {m: round(med[m] - med["off"], 3) for m in modes[1:]},
              "runs": runs}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
