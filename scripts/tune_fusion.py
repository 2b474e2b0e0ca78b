#!/usr/bin/env python3
"""Tune the fusion parameters on development scenarios (never on the reported set).

The models run once per scenario (``pipeline.replay`` with ``on_evidence``); the pure ``Fusion``
object then re-runs over the cached evidence for every point of a small grid, scored with
``eval_scenarios.score_scenario``. Prints the grid points that meet the issue's
limits (latency p50 ≤ 1.5 s, spurious transitions ≤ 1 per minute) by fused accuracy, then the
rest, so the chosen values can go into config.toml.

    python scripts/make_scenario.py --count 8 --seed 101 --out runs/scenarios_dev
    python scripts/tune_fusion.py --scenarios runs/scenarios_dev runs/scenarios_dev2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_scenarios import score_scenario, summarize  # noqa: E402
from redsg_edge.config import load_config  # noqa: E402
from redsg_edge.fusion import Fusion  # noqa: E402
from redsg_edge.pipeline import replay  # noqa: E402

GRID = {"smoothing_tau_s": [0.3, 0.5, 0.8], "min_dwell_s": [0.4, 0.7, 1.0],
        "enter_threshold": [0.35, 0.45], "exit_threshold": [0.3],
        "voice_weight": [0.5, 0.8], "refractory_s": [4.0, 8.0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", type=Path, nargs="+", default=[Path("runs/scenarios_dev")])
    ap.add_argument("--config", type=Path, default=Path("config.toml"))
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--grid", type=json.loads, default=GRID,
                    help='JSON {FusionConfig key: [values]}, default %(default)s')
    args = ap.parse_args()
    cfg = load_config(args.config)
    streams = []
    for meta in sorted(m for d in args.scenarios for m in d.glob("*.json")):
        truth = json.loads(meta.read_text())
        if "segments" not in truth:
            continue
        evs: list = []
        replay(cfg, meta.with_suffix(".mp4"), meta.with_suffix(".wav"), use_video_audio=False,
               on_evidence=lambda t, e: evs.append((t, e)))
        streams.append((truth, evs))
        print(f"{meta.stem}: {len(evs)} fusion inputs", file=sys.stderr)
    rows = []
    keys = list(args.grid)
    for values in itertools.product(*args.grid.values()):
        params = dict(zip(keys, values))
        if params.get("exit_threshold", cfg.fusion.exit_threshold) > params.get(
                "enter_threshold", cfg.fusion.enter_threshold):
            continue
        fcfg = cfg.fusion.model_copy(update=params)
        scores = []
        for truth, evs in streams:
            fusion = Fusion(fcfg)
            recs = []
            for t, e in evs:
                u = fusion.update(t, e)
                recs.append(u.to_json())
                if u.transition is not None:
                    recs.append(u.transition.to_json())
            scores.append(score_scenario(recs, truth))
        s = summarize(scores)
        ok = (s.get("latency_p50_s") or 99) <= 1.5 and s["spurious_per_min"] <= 1.0
        objective = s["fused_accuracy"] + (1.0 if ok else 0.0)
        rows.append((objective, params, s))
    rows.sort(key=lambda r: -r[0])
    for obj, params, s in rows[:args.top]:
        print(f"{obj:.3f} {params} fused {s['fused_accuracy']:.3f} face {s['face_accuracy']:.3f} "
              f"voice {s['voice_accuracy']:.3f} p50 {s.get('latency_p50_s')} "
              f"spurious/min {s['spurious_per_min']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
