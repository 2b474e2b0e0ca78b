"""Emotion timeline plots of replay output (per-modality and fused probabilities, transitions).

Reads the replay JSON-lines records of docs/architecture.md (``update`` and ``transition``; other
types are ignored) and draws them with matplotlib's object API on the Agg canvas (no pyplot, no
global backend switch, no display needed)::

    python -m redsg_edge.timeline events.jsonl timeline.png [--truth scenario.json] [--title T]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from . import CLASSES
from .modalities import MODALITIES

#: One colour per class, the same in every panel and strip.
CLASS_COLORS: dict[str, str] = {
    "angry": "#d62728", "disgust": "#8c8c00", "fear": "#9467bd", "happy": "#ff9f0e",
    "sad": "#1f77b4", "surprise": "#17becf", "neutral": "#7f7f7f"}


def read_events(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines event file into a list of dicts (blank lines skipped).

    Raises FileNotFoundError, or ValueError naming the file and line of a malformed record.
    """
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
            if not isinstance(rec, dict) or "type" not in rec:
                raise ValueError(f"{path}:{n}: a record must be an object with a 'type'")
            out.append(rec)
    return out


def _matrix(updates: list[dict], key: str) -> np.ndarray:
    """(N, 7) float array of ``key`` probabilities per update, NaN where the record has null."""
    m = np.full((len(updates), len(CLASSES)), np.nan)
    for i, u in enumerate(updates):
        probs = u.get(key)
        if probs:
            m[i] = [probs.get(c, np.nan) for c in CLASSES]
    return m


def _spans(ax, spans: list[tuple[float, float, str]], label_text: bool) -> None:
    for start, end, label in spans:
        ax.axvspan(start, end, color=CLASS_COLORS.get(label, "white"), alpha=0.85, lw=0)
        if label_text and end - start > 0:
            ax.text((start + end) / 2, 0.5, label, ha="center", va="center", fontsize=8,
                    transform=ax.get_xaxis_transform(), clip_on=True)
    ax.set_yticks([])


def plot_timeline(events: list[dict], path: str | os.PathLike, title: str | None = None,
                  truth: list[dict] | None = None) -> Path:
    """Write :func:`timeline_figure` of ``events`` as a PNG to ``path`` (parent folders
    created) and return the path. Raises ValueError when ``events`` holds no ``update``
    record."""
    fig = timeline_figure(events, title, truth)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def timeline_figure(events: list[dict], title: str | None = None,
                    truth: list[dict] | None = None):
    """A Matplotlib ``Figure``: one panel of probabilities over time per modality of
    ``modalities.MODALITIES`` (face, voice, ...) and one for the fused vector (stacked, sharing
    the time axis, seconds), the fused emotion as a colour strip, transitions as labelled
    vertical lines, and, when ``truth`` is given (a list of ``{"start": s, "end": s, "label":
    name}``), a ground-truth strip. Raises ValueError when ``events`` holds no ``update``
    record."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    updates = sorted((e for e in events if e.get("type") == "update"), key=lambda e: e["t"])
    if not updates:
        raise ValueError("no 'update' records to plot")
    transitions = sorted((e for e in events if e.get("type") == "transition"), key=lambda e: e["t"])
    t = np.array([u["t"] for u in updates], dtype=float)
    t_end = float(t[-1])
    if truth:
        t_end = max(t_end, max(float(s["end"]) for s in truth))

    strips = 2 if truth else 1
    panels = [(m.name, m.label) for m in MODALITIES.values()] + [("fused", "fused (smoothed)")]
    n = len(panels)
    fig = Figure(figsize=(12, 2.5 * n + 0.5 * strips), dpi=100, layout="constrained")
    axes = fig.subplots(n + strips, 1, sharex=True,
                        gridspec_kw={"height_ratios": [3] * n + [0.45] * strips})
    for ax, (key, name) in zip(axes[:n], panels):
        m = _matrix(updates, key)
        for j, c in enumerate(CLASSES):
            ax.plot(t, m[:, j], color=CLASS_COLORS[c], lw=1.2, drawstyle="steps-post")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        coverage = np.mean(~np.isnan(m[:, 0]))
        ax.text(0.995, 0.95, f"{coverage:.0%} of updates", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="0.3",
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    for ax in axes[:n]:
        for tr in transitions:
            ax.axvline(tr["t"], color="black", lw=0.9, ls="--", alpha=0.8)
    for tr in transitions:
        axes[n - 1].annotate(f"{tr.get('from', '?')}→{tr.get('to', '?')}", (tr["t"], 1.0),
                         xytext=(2, -2), textcoords="offset points", fontsize=8, rotation=90,
                         va="top", ha="left")

    # Fused emotion as held between updates.
    bounds = list(t) + [t_end]
    fused_spans, start = [], 0
    for i in range(1, len(updates) + 1):
        if i == len(updates) or updates[i]["emotion"] != updates[start]["emotion"]:
            fused_spans.append((bounds[start], bounds[i], updates[start]["emotion"]))
            start = i
    _spans(axes[n], fused_spans, label_text=True)
    axes[n].set_ylabel("emotion", rotation=0, ha="right", va="center")
    if truth:
        _spans(axes[n + 1], [(float(s["start"]), float(s["end"]), s["label"]) for s in truth],
               True)
        axes[n + 1].set_ylabel("truth", rotation=0, ha="right", va="center")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(min(float(t[0]), 0.0), t_end)
    handles = [Line2D([], [], color=CLASS_COLORS[c], lw=3, label=c) for c in CLASSES]
    handles.append(Line2D([], [], color="black", ls="--", label="transition"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9,
               frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m redsg_edge.timeline", description=__doc__.split("\n")[0])
    ap.add_argument("events", type=Path, help="replay JSON-lines file")
    ap.add_argument("png", type=Path, help="output PNG")
    ap.add_argument("--truth", type=Path, help="scenario JSON with 'segments' (ground truth)")
    ap.add_argument("--title")
    args = ap.parse_args(argv)
    truth = json.loads(args.truth.read_text())["segments"] if args.truth else None
    plot_timeline(read_events(args.events), args.png, title=args.title or args.events.name,
                  truth=truth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
