"""The plain-text tables every section prints and the PNG bar charts of ``docs/benchmarks.md``.

matplotlib is imported inside ``write_charts`` only (``python -m redsg_edge.bench charts
RESULT.json OUTDIR``): running a bench never loads it. Latencies in milliseconds, CPU in % of
one core, memory in MB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .common import PHOTO_H, PHOTO_W, TARGETS


def _f(v, nd=2) -> str:  # a number with nd decimals, "-" for None
    return "-" if v is None else f"{v:.{nd}f}"


def _target_lines(res: dict) -> list[str]:  # "target NAME: value vs limit -> MET" lines
    out = []
    for name, t in (res.get("targets") or {}).items():
        if "limit" in t:
            out.append(f"  target {name}: {t['value']} vs {t['limit']} -> "
                       f"{'MET' if t['met'] else 'NOT MET'}")
        else:
            out.append(f"  target {name}: {'MET' if t['met'] else 'NOT MET'} ({t['value']})")
    return out


STAGE_LABELS = {"face_detection": "face detection 640x480", "crop_preprocess": "crop + preprocess",
                "fer": "FER int8 (48x48)", "vision_frame": "= frame: detect+crop+FER",
                "vision_frame_no_face": "no face: detect+far tile",
                "mfcc": "MFCC 2.5 s window", "ser": "SER int8", "speech_window":
                "= window: MFCC+SER", "vad_chunk": "VAD (input gain + Silero) per 32 ms",
                "stt_utterance_3s": "speech-to-text, 3 s utterance",
                "utterance_ser_2_5s": "utterance SER, 2.5 s utterance",
                "utterance_ser_5s": "utterance SER, 5 s (rolling label's most)",
                "srmr_2_5s": "reverberation (SRMR), 2.5 s utterance",
                "fusion_update": "fusion update"}


def format_stages(res: dict) -> str:
    """The table for a ``stages`` result: p50/p95 ms per stage, one core and all cores;
    then the target lines."""
    lines = [f"stages: p50 / p95 ms over {res['calls']} calls (warm-up {res['warmup']} excluded)",
             f"{'stage':<28} {'1 core p50':>10} {'p95':>8}   {'all cores p50':>13} {'p95':>8}"]
    one, allc = res["modes"]["one_core"]["stages"], res["modes"]["all_cores"]["stages"]
    for k, label in STAGE_LABELS.items():
        if k not in one:  # a stage of a part the config turns off
            continue
        lines.append(f"{label:<28} {_f(one[k]['p50_ms'], 3):>10} {_f(one[k]['p95_ms'], 3):>8}   "
                     f"{_f(allc[k]['p50_ms'], 3):>13} {_f(allc[k]['p95_ms'], 3):>8}")
    lines.append(f"face found in {res['modes']['one_core']['detection_rate']:.1%} of clip frames")
    return "\n".join(lines + _target_lines(res))


def format_loop(res: dict) -> str:
    """The table for a ``loop`` result: max fps per mode and frame → fused latency (ms);
    then the target lines."""
    lines = [f"vision loop, 640x480, {res['frames']} frames; FER num_threads=1 as the daemon",
             f"{'':<38} {'1 core':>10} {'all cores':>10}"]
    o, a = res["modes"]["one_core"], res["modes"]["all_cores"]
    for k, label in (("decode_excluded", "max fps, decode excluded"),
                     ("decode_included_serial", "max fps, decode included (serial)"),
                     ("decode_included_pipelined", "max fps, decode included (2 threads)")):
        lines.append(f"{label:<38} {o['max_fps'][k]['fps']:>10.1f} {a['max_fps'][k]['fps']:>10.1f}")
    for k, label in (("p50_ms", "frame -> fused update at 15 fps, p50 ms"),
                     ("p95_ms", "frame -> fused update at 15 fps, p95 ms")):
        lines.append(f"{label:<38} {_f(o['latency_15fps']['frame_to_fused'][k]):>10} "
                     f"{_f(a['latency_15fps']['frame_to_fused'][k]):>10}")
    return "\n".join(lines + _target_lines(res))


def format_daemon(res: dict) -> str:
    """The table for a ``daemon`` result: CPU % of one core, RSS MB and slope, drops;
    then the target lines."""
    c, r = res["cpu_pct_one_core"], res["rss_mb"]
    st = res.get("status") or {}
    fr, au = st.get("frames") or {}, st.get("audio") or {}
    lines = [f"daemon at 15 fps for {res['duration_s']:.0f} s ({res['python']}); "
             f"ready after {res.get('ready_s')} s",
             f"  CPU % of one core: mean {c['mean']}, p50 {c['p50']}, p95 {c['p95']}, max {c['max']}",
             f"  RSS MB: first {r['first']}, peak {r['peak']} ({r.get('peak_source', '1 s samples')}"
             f"; 1 s samples: {r.get('sampled_peak', r['peak'])}; start-up {r.get('load_peak')}), "
             f"end {r['end']}, slope "
             f"{r['slope_mb_per_min']} MB/min ({r['slope_method']} from "
             f"{r['slope_fit_from_s']:.0f} s; least squares {r['slope_lsq_mb_per_min']})",
             f"  of which anonymous MB: peak {r.get('anon_peak')}, p50 {r.get('anon_p50')}; "
             f"mapped files (libraries, clean) p50 {r.get('file_p50')}",
             f"  transitions {res['transitions']}, replies {res['replies']}, threads "
             f"{res.get('threads')}, exit code after SIGTERM {res.get('exit_code')}",
             (f"  drops (status file): frames captured {fr.get('captured')}, dropped "
              f"{fr.get('dropped')}, classified {fr.get('classified')}; audio overruns "
              f"{au.get('overruns')}, samples dropped {au.get('dropped')}; fps {st.get('fps')}"
              if st.get("source") != "unavailable" else "  drops: status file unavailable")]
    return "\n".join(lines + _target_lines(res))


def format_coldstart(res: dict) -> str:
    """The table for a ``coldstart`` result: seconds to READY=1 and the phases;
    then the target lines."""
    lines = [f"cold start to READY=1 ({res['python']}): median {res['ready_s_median']} s over "
             f"{len(res['runs'])} run(s): " + ", ".join(str(r["ready_s"]) for r in res["runs"])]
    if res["runs"]:
        lines.append("  phases (s after spawn): " + "; ".join(
            f"{t} {msg}" for t, msg in res["runs"][-1]["phases"]))
    return "\n".join(lines + _target_lines(res))


def format_peers(res: dict) -> str:
    """The table for a ``peers`` result: accuracy per feeding, latency (ms), speed-up;
    then the target lines."""
    if "skipped" in res:
        return f"peers: skipped: {res['skipped']}"
    acc, lat = res["accuracy"], res["latency_one_core"]
    lines = [f"peers: fer {res['versions']['fer'].get('fer')} vs redsg-edge; images "
             f"{res['images']}; one core (CPU {res['pinned_cpus']})",
             f"{'pipeline / feeding':<34} {'FER13 acc':>9} {'found':>6} {'CK+ 6w':>7} "
             f"{'CK+ 7w':>7} {'found':>6}"]
    for k, label in (("ours_crop", "redsg-edge, given crop"),
                     ("ours_photo", "redsg-edge, photo (BlazeFace)"),
                     ("fer_crop_offsets_0", "fer, given crop, offsets=(0,0)"),
                     ("fer_crop_default", "fer, given crop, default offsets"),
                     ("fer_photo_default", "fer, photo (Haar), default"),
                     ("fer_photo_offsets_0", "fer, photo (Haar), offsets=(0,0)")):
        f, c = acc[k]["fer2013_private_test"], acc[k]["ck48"]
        lines.append(f"{label:<34} {f['acc_7way']:>9.4f} {f['face_found']:>6.3f} "
                     f"{c['acc_6way']:>7.4f} {c['acc_7way']:>7.4f} {c['face_found']:>6.3f}")
    lines.append(f"{'latency ms (one core)':<34} {'p50':>9} {'p95':>9}")
    for k, label in (("ours_photo_pipeline", "redsg-edge photo: detect+crop+FER"),
                     ("fer_photo_pipeline", "fer photo: detect_emotions(photo)"),
                     ("ours_classifier", "redsg-edge classifier alone"),
                     ("fer_classifier_api", "fer classifier, box given (API)"),
                     ("fer_classifier_bare", "fer bare TFLite invoke"),
                     ("fer_haar_detect", "fer Haar find_faces alone")):
        lines.append(f"{label:<34} {_f(lat[k]['p50_ms'], 3):>9} {_f(lat[k]['p95_ms'], 3):>9}")
    la = res["latency_all_cores"]
    lines.append(f"{'all cores, photo pipeline p50':<34} ours {_f(la['ours_photo_pipeline']['p50_ms'], 3)}"
                 f", fer {_f(la['fer_photo_pipeline']['p50_ms'], 3)}")
    lines.append(f"speed-up p50: photo pipeline {res['speedup_p50']['photo_pipeline']}x, "
                 f"classifier alone {res['speedup_p50']['classifier']}x")
    return "\n".join(lines + _target_lines(res))


FORMATTERS = {"stages": format_stages, "loop": format_loop, "daemon": format_daemon,
              "coldstart": format_coldstart, "peers": format_peers}


# ================================================================================ charts

def write_charts(result: dict, out_dir: Path) -> list[Path]:
    """Bar charts (PNG) of a saved result: peer accuracy, peer latency, stage latency.
    ``result``: an ``all`` result or a single section keyed by name; ``out_dir`` is created.
    Returns the PNG files written (100 dpi, about 750 px wide)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    secs = result.get("sections", result)
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)
    peers = secs.get("peers")
    if peers and "accuracy" in peers:
        acc = peers["accuracy"]
        groups = [("ours_crop", "redsg-edge\ngiven crop"), ("ours_photo", "redsg-edge\nphoto"),
                  ("fer_crop_offsets_0", "fer\ncrop, offsets 0"),
                  ("fer_crop_default", "fer\ncrop, default"),
                  ("fer_photo_default", "fer\nphoto, default")]
        fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=100)
        x = np.arange(len(groups))
        for j, (ds, lab, col) in enumerate((("fer2013_private_test", "FER2013 PrivateTest (7 cl.)",
                                             "#4477aa"), ("ck48", "CK+48 (6 cl.)", "#ee6677"))):
            v = [acc[k][ds]["acc"] * 100 for k, _ in groups]
            b = ax.bar(x + (j - 0.5) * 0.38, v, 0.38, label=lab, color=col)
            ax.bar_label(b, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(x, [g[1] for g in groups], fontsize=8)
        ax.set_ylabel("accuracy %")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title("Accuracy on the same images (no face found = wrong)", fontsize=10)
        save(fig, "bench_peers_accuracy.png")

        lat = peers["latency_one_core"]
        items = [("ours_photo_pipeline", "redsg-edge photo\n(BlazeFace+FER)", "#4477aa"),
                 ("fer_photo_pipeline", "fer photo\n(Haar+mini-XCEPTION)", "#ee6677"),
                 ("ours_classifier", "redsg-edge\nclassifier alone", "#88aadd"),
                 ("fer_classifier_api", "fer classifier\n(box given)", "#f4a6b4")]
        fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=100)
        v = [lat[k]["p50_ms"] for k, _, _ in items]
        b = ax.bar(range(len(items)), v, color=[c for _, _, c in items])
        ax.bar_label(b, fmt="%.2f ms", fontsize=8, padding=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(items)), [lab for _, lab, _ in items], fontsize=8)
        ax.set_ylabel("p50 ms per photo / face (log)")
        ax.set_title(f"Latency on one core, {PHOTO_W}x{PHOTO_H} photos", fontsize=10)
        ax.set_ylim(min(v) / 2, max(v) * 3)
        save(fig, "bench_peers_latency.png")
    stages = secs.get("stages")
    if stages and "modes" in stages:
        keys = list(STAGE_LABELS)
        fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=100)
        y = np.arange(len(keys))
        for j, (mode, lab, col) in enumerate((("one_core", "1 core, 1 thread", "#4477aa"),
                                              ("all_cores", "all cores", "#ccbb44"))):
            v = [stages["modes"][mode]["stages"][k]["p50_ms"] for k in keys]
            b = ax.barh(y + (j - 0.5) * 0.38, v, 0.38, label=lab, color=col)
            ax.bar_label(b, fmt="%.3f", fontsize=7, padding=2)
        ax.set_yticks(y, [STAGE_LABELS[k] for k in keys], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("p50 ms")
        ax.set_xlim(0, max(max(stages["modes"][m]["stages"][k]["p50_ms"] for k in keys)
                           for m in ("one_core", "all_cores")) * 1.3)
        ax.legend(fontsize=8, loc="best")
        ax.set_title("Per-stage latency", fontsize=10)
        save(fig, "bench_stages.png")
    daemon = secs.get("daemon")
    if daemon and "samples" in daemon:
        s = daemon["samples"]
        fig, ax = plt.subplots(figsize=(7.5, 2.6), dpi=100)
        ax.plot(np.array(s["t_s"]) / 60, s["rss_mb"], color="#4477aa", lw=1.2)
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS MB", color="#4477aa")
        ax2 = ax.twinx()
        ax2.plot(np.array(s["t_s"]) / 60, s["cpu_pct"], color="#ccbb44", lw=0.6, alpha=0.8)
        ax2.set_ylabel("CPU % of one core", color="#998822")
        ax.axhline(TARGETS["daemon_rss_mb"], color="#4477aa", ls="--", lw=0.8)
        ax2.axhline(TARGETS["daemon_cpu_pct_one_core"], color="#998822", ls="--", lw=0.8)
        ax.set_ylim(0, max(max(s["rss_mb"]), TARGETS["daemon_rss_mb"]) * 1.25)
        ax2.set_ylim(0, max(50, max(s["cpu_pct"]) * 1.1))
        ax.set_title("Daemon at 15 fps: resident memory and CPU (dashed: targets)", fontsize=10)
        save(fig, "bench_daemon.png")
    return written


def charts_main(argv: list[str]) -> int:
    """``python -m redsg_edge.bench charts RESULT.json OUTDIR``: draw ``write_charts`` and print
    each file. Returns 0, or 2 (usage) without exactly two arguments."""
    if len(argv) != 2:
        print("usage: python -m redsg_edge.bench charts RESULT.json OUTDIR", file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    for p in write_charts(doc, Path(argv[1])):
        print(p)
    return 0
