#!/usr/bin/env python3
"""Tune the fusion parameters on development scenarios (never on the reported set).

The models run once per scenario (``replay.replay`` with ``on_evidence``); the pure ``Fusion``
object then re-runs over the cached evidence for every point of a small grid, scored with
``eval_scenarios.score_scenario``. Prints the grid points that meet the issue's limits (latency
p50 ≤ 1.5 s; spurious transitions ≤ ``--max-spurious`` per minute) by fused accuracy averaged
over the scenario kinds, then the rest, so the chosen values can go into config.toml. When no
point meets them, the one with the fewest spurious transitions within ``--tie`` of the best
mean accuracy is printed first. Last, the first point's kinds beside each modality alone
through the same fusion (as eval_scenarios.py reports them).

    for kind in expressive talking; do for seed in 101 202; do
        python scripts/make_scenario.py --count 10 --seed $seed --kind $kind --out runs/dev_${kind}_$seed
    done; done
    for kind in noisy silent; do
        python scripts/make_scenario.py --count 10 --seed 101 --kind $kind --out runs/dev_${kind}_101
    done
    python scripts/tune_fusion.py --scenarios runs/dev_*
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_scenarios import (fusion_records, print_kinds, score_alone,  # noqa: E402
                            score_scenario, summarize, summarize_kinds)
from redsg_edge.calibration import sidecar_path  # noqa: E402
from redsg_edge.config import load_config  # noqa: E402
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.fusion import Evidence  # noqa: E402
from redsg_edge.replay import replay  # noqa: E402

# The neighbourhood of the shipped defaults (a random search over all FusionConfig keys, then a
# coordinate search, led here: light smoothing and a short refractory). With the talking-face
# weight factor (issue 14) the voice's weight, the evidence age and the factor were searched with
# the thresholds; the uniform prior is searched around the setting that search chose.
GRID = {"min_dwell_s": [0.2], "enter_threshold": [0.45, 0.5, 0.55],
        "voice_weight": [0.5], "max_age_s": [6.0], "talking_face_neutral": [0.0],
        "uniform_weight": [0.0, 0.1, 0.15, 0.2, 0.3]}


def scenario_evidence(cfg, meta: Path, cache: Path) -> list:
    """[(t, Evidence | None)] the models give on one scenario (``replay.replay`` with
    ``on_evidence``), cached under ``cache`` by scenario and the FER/SER/detector file hashes."""
    # The version string changes whenever the evidence the code produces changes (v2: Silero
    # VAD utterances, evidence reliability), so a cache from older code is never reused.
    # (v3: the utterance SER pooled in at each utterance's end, with its weight; v4: the
    # whole [speech] section, since every key of it changes what the speech step emits.)
    key = hashlib.sha256(b"evidence-v4" + meta.read_bytes()
                         + cfg.speech.model_dump_json().encode())
    models = [cfg.vision.fer_model, cfg.speech.ser_model, cfg.vision.detector_model,
              cfg.speech.vad_model]
    for model in models + ([cfg.speech.utterance_model] if cfg.speech.utterance_model else []):
        key.update(Path(model).read_bytes())
        side = sidecar_path(model)  # the model's calibration changes its evidence too
        key.update(side.read_bytes() if side.is_file() else b"")
    path = cache / f"{meta.stem}-{key.hexdigest()[:16]}.npz"
    if path.is_file():
        z = np.load(path)
        return [(float(t), None if m == "" else Evidence(str(m), float(et), p, float(r)))
                for t, m, et, p, r in zip(z["t"], z["modality"], z["evidence_t"], z["probs"],
                                          z["reliability"])]
    evs: list = []
    replay(cfg, meta.with_suffix(".mp4"), meta.with_suffix(".wav"), use_video_audio=False,
           on_evidence=lambda t, e: evs.append((t, e)))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, t=np.array([t for t, _ in evs]),
             modality=np.array(["" if e is None else e.modality for _, e in evs]),
             evidence_t=np.array([np.nan if e is None else e.t for _, e in evs]),
             reliability=np.array([1.0 if e is None else e.reliability for _, e in evs]),
             probs=np.stack([np.zeros(len(CLASSES), np.float32) if e is None else e.probs
                             for _, e in evs]))
    return evs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", type=Path, nargs="+", default=[Path("runs/scenarios_dev")])
    ap.add_argument("--config", type=Path, default=Path("config.toml"))
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--max-spurious", type=float, default=0.85,
                    help="spurious transitions per minute allowed on the development set "
                         "(below the issue's 1.0, as a margin for the reported set)")
    ap.add_argument("--tie", type=float, default=0.005,
                    help="when no point meets the limits, the points within this much mean "
                         "accuracy of the best are ranked by spurious transitions (default "
                         "%(default)s)")
    ap.add_argument("--cache", type=Path, default=Path(".cache/fusion_evidence"),
                    help="evidence per scenario and model pair, so a new grid reruns no model")
    ap.add_argument("--grid", type=json.loads, default=GRID,
                    help='JSON {FusionConfig key: [values]}, default %(default)s')
    args = ap.parse_args()
    cfg = load_config(args.config)
    streams = []
    metas = sorted(m for d in args.scenarios for m in d.glob("*.json"))
    for meta in tqdm(metas, desc="evidence", unit="scenario"):
        truth = json.loads(meta.read_text())
        if "segments" not in truth:
            continue
        streams.append((truth, scenario_evidence(cfg, meta, args.cache)))
    rows = []
    keys = list(args.grid)
    for values in itertools.product(*args.grid.values()):
        params = dict(zip(keys, values))
        if params.get("exit_threshold", cfg.fusion.exit_threshold) > params.get(
                "enter_threshold", cfg.fusion.enter_threshold):
            continue
        fcfg = cfg.fusion.model_copy(update=params)
        scores = [score_scenario(fusion_records(fcfg, evs), truth) for truth, evs in streams]
        for sc, (truth, _evs) in zip(scores, streams):
            sc["kind"] = truth.get("kind", "expressive")
        s = summarize(scores)
        kinds = summarize_kinds(scores)
        ok = ((s.get("latency_p50_s") or 99) <= 1.5
              and s["spurious_per_min"] <= args.max_spurious)
        # Every kind counts the same, whatever its share of the media: the device must do well
        # on a talking face and in silence, not only where face and voice agree.
        objective = float(np.mean([k["fused_accuracy"] for k in kinds.values()])) + (1.0 if ok else 0.0)
        rows.append((objective, params, s, kinds, scores))
    rows.sort(key=lambda r: -r[0])
    if rows and rows[0][0] < 1.0:
        # Nothing meets the limits: of the points within --tie of the best mean accuracy, the
        # one with the fewest spurious transitions leads (the device talks on each transition).
        near = [r for r in rows if r[0] >= rows[0][0] - args.tie]
        best = min(near, key=lambda r: r[2]["spurious_per_min"])
        rows.remove(best)
        rows.insert(0, best)
        print(f"no point meets the limits; chosen: the fewest spurious transitions within "
              f"{args.tie} of the best mean accuracy")
    for obj, params, s, kinds, _scores in rows[:args.top]:
        per_kind = " ".join(f"{k}={v['fused_accuracy']:.3f}/{v['face_accuracy']:.3f}/"
                            f"{v['voice_accuracy']:.3f}/{v['spurious_per_min']:.2f}"
                            for k, v in kinds.items())
        print(f"{obj:.3f} {params} fused {s['fused_accuracy']:.3f} face {s['face_accuracy']:.3f} "
              f"voice {s['voice_accuracy']:.3f} p50 {s.get('latency_p50_s')} "
              f"spurious/min {s['spurious_per_min']:.2f} "
              f"[kind fused/face/voice/spurious: {per_kind}]")
    if rows:
        _, params, _, _, scores = rows[0]
        fcfg = cfg.fusion.model_copy(update=params)
        for sc, (truth, evs) in zip(scores, streams):
            score_alone(sc, fcfg, evs, truth)
        print(f"\n{params} beside each modality alone through the same fusion:")
        print_kinds(summarize_kinds(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
