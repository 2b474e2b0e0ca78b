#!/usr/bin/env python3
"""Replay composed scenarios through the daemon and score the fused emotion against ground truth.

For each ``NAME.json`` in ``--scenarios`` (written by ``scripts/make_scenario.py``), runs
``redsg_edge.replay.replay(cfg, NAME.mp4, audio=NAME.wav, out=OUT/NAME.jsonl)`` (or, with
``--events-dir``, reads existing ``NAME.jsonl`` replay output), draws ``OUT/NAME.png`` (timeline
with the ground-truth strip) and reports, per scenario and over all of them:

- **accuracy**: the fraction of scored time where the fused emotion equals the ground-truth label.
  Each ``update`` record holds until the next one (the last until the scenario's end); scoring
  starts at the first update. Face-only and voice-only accuracy use the argmax of the ``face`` /
  ``voice`` probabilities in the same records; time where a modality is ``null`` (no fresh
  evidence) counts as wrong, and accuracy where present and coverage are given beside it.
- **transition latency**: for every ground-truth change (a segment boundary whose label differs
  from the previous one; also the start, when the first label differs from the fusion's initial
  ``neutral``), the time to the first fused transition *to the new label* within
  ``--match-window`` seconds (and before the next change); p50/p95 over matched changes, and
  the number of missed changes.
- **spurious transitions per minute**: fused transitions that matched no change, per minute of
  scored time.
- **one modality alone**: the same fusion (smoothing, hysteresis, dwell, refractory period) run
  over the same evidence with the other modality's evidence taken out, i.e. a device with the
  microphone or the camera off; its accuracy and spurious transitions are scored like the fused
  emotion's. The face-only and voice-only accuracies above are per-update argmaxes, with no
  state machine: they change label many times a minute (``*_label_changes_per_min``), which no
  device could speak from, so both comparisons are reported.

Acceptance (issue 3): fused accuracy above each single modality, latency p50 ≤ 1.5 s, spurious
≤ 1 per minute. Prints a table and writes the JSON summary (``--json``, default
``OUT/summary.json``). Outputs go under ``runs/`` (git-ignored).

    python scripts/eval_scenarios.py --scenarios runs/scenarios --config config.toml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.fusion import Fusion  # noqa: E402
from redsg_edge.modalities import MODALITIES  # noqa: E402

INITIAL = "neutral"  # Fusion's initial emotion (redsg_edge.fusion.Fusion default)


def _argmax_label(probs: dict | None) -> str | None:
    if not probs:
        return None
    return max(CLASSES, key=lambda c: probs.get(c, -1.0))


def _segments(truth: dict | list[dict]) -> list[dict]:
    segs = truth["segments"] if isinstance(truth, dict) else truth
    segs = sorted(({"start": float(s["start"]), "end": float(s["end"]), "label": s["label"]}
                   for s in segs), key=lambda s: s["start"])
    if not segs:
        raise ValueError("ground truth has no segments")
    for s in segs:
        if s["label"] not in CLASSES or not s["end"] > s["start"]:
            raise ValueError(f"bad ground-truth segment {s}")
    return segs


def truth_changes(segs: list[dict], initial: str = INITIAL) -> list[tuple[float, str, str]]:
    """Ground-truth changes ``(t, from, to)`` in seconds: label changes between consecutive
    segments, plus the start when the first label differs from ``initial``."""
    out = []
    if segs[0]["label"] != initial:
        out.append((segs[0]["start"], initial, segs[0]["label"]))
    for a, b in zip(segs, segs[1:]):
        if b["label"] != a["label"]:
            out.append((b["start"], a["label"], b["label"]))
    return out


def fusion_records(fusion_cfg, evidence: list, only: str | None = None) -> list[dict]:
    """The update and transition records of a fresh ``Fusion(fusion_cfg)`` over ``evidence``
    ([(t, Evidence | None)], every input the replay's fusion saw, in order), as the replay writes
    them. ``only`` a modality name: a device that has only that one, any other modality's
    evidence turned into a tick (None)."""
    fusion, out = Fusion(fusion_cfg), []
    for t, ev in evidence:
        if only is not None and ev is not None and ev.modality != only:
            ev = None
        u = fusion.update(t, ev)
        out.append(u.to_json())  # as the replay writes it (times rounded alike)
        if u.transition is not None:
            out.append(u.transition.to_json())
    return out


def score_alone(score: dict, fusion_cfg, evidence: list, truth,
                match_window_s: float = 5.0) -> None:
    """Add to ``score`` (of :func:`score_scenario`) each modality alone through the same fusion
    (:func:`fusion_records` with ``only``): ``<modality>_alone_accuracy``,
    ``<modality>_alone_spurious_per_min``, and the sums :func:`summarize` pools."""
    score["_alone"] = {}
    for m in MODALITIES:
        a = score_scenario(fusion_records(fusion_cfg, evidence, m), truth, match_window_s)
        score["_alone"][m] = {"correct": a["_correct"]["fused"], "spurious": a["spurious"]}
        score[f"{m}_alone_accuracy"] = a["fused_accuracy"]
        score[f"{m}_alone_spurious_per_min"] = a["spurious_per_min"]


def score_scenario(records: list[dict], truth: dict | list[dict], match_window_s: float = 5.0,
                   initial: str = INITIAL) -> dict:
    """Score one scenario's replay records against its ground truth.

    ``records``: replay JSONL records (``update`` and ``transition``; others ignored), times in
    seconds of media time. ``truth``: the scenario dict (with ``segments``) or the segment list
    ``[{"start": s, "end": s, "label": name}]``. Returns a JSON-serialisable dict: scored
    ``duration_s``; ``fused_accuracy``, ``face_accuracy``, ``voice_accuracy`` (0..1, null time
    counts as wrong), ``face_coverage``, ``voice_coverage``, ``face_accuracy_present``,
    ``voice_accuracy_present``; ``face_accuracy_held``, ``voice_accuracy_held`` (each
    modality's latest label held until its next one: what a fusion that followed that modality
    alone could reach); ``face_label_changes_per_min``, ``voice_label_changes_per_min`` (how
    often that argmax changes); ``changes``, ``matched``, ``missed``, ``latencies_s`` (one per
    matched change), ``transitions``, ``spurious``, ``spurious_per_min``. Raises ValueError when
    there is no update record inside the ground-truth span or the truth is malformed.
    """
    segs = _segments(truth)
    t_end = segs[-1]["end"]
    updates = sorted((r for r in records if r.get("type") == "update"), key=lambda r: r["t"])
    updates = [u for u in updates if u["t"] < t_end]
    if not updates:
        raise ValueError("no update records inside the ground-truth time span")
    t_start = max(float(updates[0]["t"]), segs[0]["start"])

    keys = ("fused", *MODALITIES)
    correct = dict.fromkeys(keys, 0.0)
    present = dict.fromkeys(keys, 0.0)
    held: dict[str, str | None] = dict.fromkeys(MODALITIES)
    correct_held = dict.fromkeys(MODALITIES, 0.0)
    flips = dict.fromkeys(MODALITIES, 0)  # changes of each modality's argmax label
    total = 0.0
    for i, u in enumerate(updates):
        a = max(float(u["t"]), t_start)
        b = float(updates[i + 1]["t"]) if i + 1 < len(updates) else t_end
        if b <= a:
            continue
        labels = {"fused": u.get("emotion"),
                  **{m: _argmax_label(u.get(m)) for m in MODALITIES}}
        for m in MODALITIES:
            if labels[m] is not None:
                flips[m] += held[m] is not None and labels[m] != held[m]
                held[m] = labels[m]
        for s in segs:  # split the interval at ground-truth boundaries
            overlap = min(b, s["end"]) - max(a, s["start"])
            if overlap <= 0:
                continue
            total += overlap
            for k in keys:
                if labels[k] is not None:
                    present[k] += overlap
                    correct[k] += overlap * (labels[k] == s["label"])
            for m in MODALITIES:
                correct_held[m] += overlap * (held[m] == s["label"])

    changes = truth_changes(segs, initial)
    transitions = sorted((r for r in records if r.get("type") == "transition"
                          and t_start <= float(r["t"]) < t_end), key=lambda r: r["t"])
    matched_idx: set[int] = set()
    latencies = []
    for k, (tc, _, to) in enumerate(changes):
        limit = tc + match_window_s
        if k + 1 < len(changes):
            limit = min(limit, changes[k + 1][0])
        for j, tr in enumerate(transitions):
            if j not in matched_idx and tr.get("to") == to and tc <= float(tr["t"]) <= limit:
                matched_idx.add(j)
                latencies.append(float(tr["t"]) - tc)
                break
    spurious = len(transitions) - len(matched_idx)

    def ratio(x: float, y: float) -> float | None:
        return x / y if y > 0 else None

    per_modality = {}
    for m in MODALITIES:
        per_modality[f"{m}_accuracy"] = ratio(correct[m], total)
        per_modality[f"{m}_coverage"] = ratio(present[m], total)
        per_modality[f"{m}_accuracy_present"] = ratio(correct[m], present[m])
        per_modality[f"{m}_accuracy_held"] = ratio(correct_held[m], total)
        per_modality[f"{m}_label_changes_per_min"] = ratio(flips[m], total / 60.0)
    return {
        "duration_s": total,
        "updates": len(updates),
        "fused_accuracy": ratio(correct["fused"], total),
        **per_modality,
        "changes": len(changes),
        "matched": len(latencies),
        "missed": len(changes) - len(latencies),
        "latencies_s": latencies,
        "transitions": len(transitions),
        "spurious": spurious,
        "spurious_per_min": ratio(spurious, total / 60.0),
        # kept for summarize(): time-weighted sums
        "_correct": correct, "_present": present, "_held": correct_held, "_flips": flips,
    }


def summarize(scores: list[dict]) -> dict:
    """Pool per-scenario scores: time-weighted accuracies, latency p50/p95 over all matched
    changes, spurious transitions per minute over all scored time, and the issue-3 checks."""
    total = sum(s["duration_s"] for s in scores)
    out: dict = {"scenarios": len(scores), "duration_s": total}
    for k in ("fused", *MODALITIES):
        out[f"{k}_accuracy"] = sum(s["_correct"][k] for s in scores) / total if total else None
    for k in MODALITIES:
        out[f"{k}_coverage"] = sum(s["_present"][k] for s in scores) / total if total else None
        out[f"{k}_accuracy_held"] = sum(s["_held"][k] for s in scores) / total if total else None
        out[f"{k}_label_changes_per_min"] = (sum(s["_flips"][k] for s in scores) / (total / 60.0)
                                             if total else None)
        if total and all("_alone" in s for s in scores):
            out[f"{k}_alone_accuracy"] = sum(s["_alone"][k]["correct"] for s in scores) / total
            out[f"{k}_alone_spurious_per_min"] = (sum(s["_alone"][k]["spurious"] for s in scores)
                                                  / (total / 60.0))
    lat = [x for s in scores for x in s["latencies_s"]]
    out["changes"] = sum(s["changes"] for s in scores)
    out["matched"] = len(lat)
    out["missed"] = out["changes"] - len(lat)
    out["latency_p50_s"] = float(np.percentile(lat, 50)) if lat else None
    out["latency_p95_s"] = float(np.percentile(lat, 95)) if lat else None
    out["transitions"] = sum(s["transitions"] for s in scores)
    out["spurious"] = sum(s["spurious"] for s in scores)
    out["spurious_per_min"] = out["spurious"] / (total / 60.0) if total else None
    fa, fc, vo = out["fused_accuracy"], out["face_accuracy"], out["voice_accuracy"]
    out["checks"] = {
        "fused_above_face": fa is not None and fc is not None and fa > fc,
        "fused_above_voice": fa is not None and vo is not None and fa > vo,
        "latency_p50_le_1.5s": out["latency_p50_s"] is not None and out["latency_p50_s"] <= 1.5,
        "spurious_le_1_per_min": out["spurious_per_min"] is not None and out["spurious_per_min"] <= 1.0,
    }
    return out


def summarize_kinds(scores: list[dict]) -> dict:
    """``summarize`` per scenario kind (``kind`` of each score; issue 14's kinds a–d), each with
    the check that the fused emotion is at least as accurate as each single modality."""
    out = {}
    for kind in sorted({s["kind"] for s in scores}):
        k = summarize([s for s in scores if s["kind"] == kind])
        fa = k["fused_accuracy"]
        k["checks"]["fused_ge_each_modality"] = fa is not None and all(
            k[f"{m}_accuracy"] is None or fa >= k[f"{m}_accuracy"] for m in MODALITIES)
        if all(f"{m}_alone_accuracy" in k for m in MODALITIES):
            k["checks"]["fused_ge_each_modality_alone"] = fa is not None and all(
                fa >= k[f"{m}_alone_accuracy"] for m in MODALITIES)
        out[kind] = k
    return out


def print_kinds(by_kind: dict) -> None:
    """Per kind: fused, per-update argmax of each modality, and (when the evidence was at hand)
    each modality alone through the same fusion, with spurious transitions per minute."""
    alone = all("face_alone_accuracy" in k for k in by_kind.values())
    print(f"{'kind':<12}{'scn':>5}{'fused%':>8}{'face%':>7}{'voice%':>8}{'lat p50':>8}"
          f"{'spur/min':>9}  fused >= each"
          + ("  | alone: face% spur  voice% spur  fused >= each" if alone else ""))
    for kind, k in by_kind.items():
        line = (f"{kind:<12}{k['scenarios']:>5}{_fmt(k['fused_accuracy'], True):>8}"
                f"{_fmt(k['face_accuracy'], True):>7}{_fmt(k['voice_accuracy'], True):>8}"
                f"{_fmt(k['latency_p50_s']):>8}{_fmt(k['spurious_per_min']):>9}  "
                f"{'yes' if k['checks']['fused_ge_each_modality'] else 'NO':<13}")
        if alone:
            line += (f"  | {_fmt(k['face_alone_accuracy'], True):>12}"
                     f"{_fmt(k['face_alone_spurious_per_min']):>5}"
                     f"{_fmt(k['voice_alone_accuracy'], True):>8}"
                     f"{_fmt(k['voice_alone_spurious_per_min']):>5}  "
                     f"{'yes' if k['checks']['fused_ge_each_modality_alone'] else 'NO'}")
        print(line)


def _public(score: dict) -> dict:
    return {k: v for k, v in score.items() if not k.startswith("_")}


def _fmt(x, pct=False, nd=2) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.{nd}f}"


def print_table(rows: list[tuple[str, dict]], summary: dict) -> None:
    head = (f"{'scenario':<16}{'dur s':>7}{'fused%':>8}{'face%':>7}{'voice%':>8}{'face cov':>9}"
            f"{'voice cov':>10}{'chg':>5}{'hit':>5}{'lat p50':>8}{'spur':>6}{'spur/min':>9}")
    print(head)
    print("-" * len(head))
    for name, s in rows:
        lat = float(np.median(s["latencies_s"])) if s["latencies_s"] else None
        print(f"{name:<16}{s['duration_s']:>7.1f}{_fmt(s['fused_accuracy'], True):>8}"
              f"{_fmt(s['face_accuracy'], True):>7}{_fmt(s['voice_accuracy'], True):>8}"
              f"{_fmt(s['face_coverage'], True):>9}{_fmt(s['voice_coverage'], True):>10}"
              f"{s['changes']:>5}{s['matched']:>5}{_fmt(lat):>8}{s['spurious']:>6}"
              f"{_fmt(s['spurious_per_min']):>9}")
    s = summary
    print("-" * len(head))
    print(f"{'ALL':<16}{s['duration_s']:>7.1f}{_fmt(s['fused_accuracy'], True):>8}"
          f"{_fmt(s['face_accuracy'], True):>7}{_fmt(s['voice_accuracy'], True):>8}"
          f"{_fmt(s['face_coverage'], True):>9}{_fmt(s['voice_coverage'], True):>10}"
          f"{s['changes']:>5}{s['matched']:>5}{_fmt(s['latency_p50_s']):>8}{s['spurious']:>6}"
          f"{_fmt(s['spurious_per_min']):>9}")
    print(f"latency p50 {_fmt(s['latency_p50_s'])} s, p95 {_fmt(s['latency_p95_s'])} s; "
          f"missed changes {s['missed']}/{s['changes']}")
    print("per-update argmax label changes a minute: " + ", ".join(
        f"{m} {_fmt(s[f'{m}_label_changes_per_min'], nd=1)}" for m in MODALITIES))
    if all(f"{m}_alone_accuracy" in s for m in MODALITIES):
        print("one modality alone through the same fusion: " + ", ".join(
            f"{m} {_fmt(s[f'{m}_alone_accuracy'], True)} % ({_fmt(s[f'{m}_alone_spurious_per_min'])}"
            " spurious/min)" for m in MODALITIES))
    for k, ok in s["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {k}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", type=Path, nargs="+", default=[ROOT / "runs" / "scenarios"],
                    help="folder(s) of NAME.json/.mp4/.wav from make_scenario.py (one per kind: "
                         "results are also summarised per scenario kind)")
    ap.add_argument("--config", type=Path, default=ROOT / "config.toml",
                    help="daemon config (models, fusion parameters) used for the replay")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "eval",
                    help="replay output per scenario (NAME.jsonl, NAME.png)")
    ap.add_argument("--events-dir", type=Path,
                    help="score existing NAME.jsonl files from this folder instead of replaying")
    ap.add_argument("--json", type=Path, help="summary JSON (default OUT/summary.json)")
    ap.add_argument("--match-window", type=float, default=5.0,
                    help="seconds after a ground-truth change within which a transition matches it")
    ap.add_argument("--no-plot", action="store_true", help="do not draw NAME.png timelines")
    ap.add_argument("--limit", type=int, help="only the first N scenarios")
    args = ap.parse_args(argv)

    files = sorted(p for d in args.scenarios for p in d.glob("*.json") if p.name != "index.json")
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"{' '.join(map(str, args.scenarios))}: no scenario JSON files (run "
              f"scripts/make_scenario.py)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    cfg = replay = None
    if args.events_dir is None:
        from redsg_edge.config import ConfigError, load_config
        from redsg_edge.replay import replay
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 78

    from tqdm import tqdm
    rows, per = [], {}
    for path in tqdm(files, desc="scenarios", unit="scn", disable=len(files) < 2):
        truth = json.loads(path.read_text())
        name = path.stem if len(args.scenarios) == 1 else f"{path.parent.name}/{path.stem}"
        wall = None
        if args.events_dir is not None:
            from redsg_edge.timeline import read_events
            records = read_events(args.events_dir / f"{path.stem}.jsonl")
        else:
            video = path.parent / truth.get("video", f"{name}.mp4")
            audio = path.parent / truth.get("audio", f"{name}.wav")
            t0 = time.perf_counter()
            (args.out / name).parent.mkdir(parents=True, exist_ok=True)
            evidence: list = []
            records = replay(cfg, video, audio=audio if audio.is_file() else None,
                             out=args.out / f"{name}.jsonl",
                             on_evidence=lambda t, e: evidence.append((t, e)))
            wall = time.perf_counter() - t0
        if not args.no_plot:  # drawn here rather than by replay, to add the ground-truth strip
            from redsg_edge.timeline import plot_timeline
            plot_timeline(records, args.out / f"{name}.png", title=name, truth=truth["segments"])
        s = score_scenario(records, truth, args.match_window)
        if args.events_dir is None:
            score_alone(s, cfg.fusion, evidence, truth, args.match_window)
        if wall is not None:
            s["replay_wall_s"] = wall
            s["realtime_factor"] = truth.get("duration_s", s["duration_s"]) / wall
        s["kind"] = truth.get("kind", "expressive")
        rows.append((name, s))
        per[name] = _public(s)

    summary = summarize([s for _, s in rows])
    summary["by_kind"] = summarize_kinds([s for _, s in rows])
    walls = [s["replay_wall_s"] for _, s in rows if "replay_wall_s" in s]
    if walls:
        summary["replay_realtime_factor"] = summary["duration_s"] / sum(walls)
    print_table(rows, summary)
    print_kinds(summary["by_kind"])
    if "replay_realtime_factor" in summary:
        print(f"replay speed: {summary['replay_realtime_factor']:.1f}x real time")
    out_json = args.json or args.out / "summary.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"summary": summary, "scenarios": per,
                                    "match_window_s": args.match_window,
                                    "config": str(args.config) if cfg is not None else None},
                                   indent=1))
    print(f"summary → {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
