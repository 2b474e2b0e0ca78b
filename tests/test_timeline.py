"""The timeline plot renders real fusion output (records in the replay JSONL format)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from redsg_edge import CLASSES
from redsg_edge.config import FusionConfig
from redsg_edge.fusion import Evidence, Fusion
from redsg_edge.timeline import CLASS_COLORS, plot_timeline, read_events


def _records() -> list[dict]:
    """Replay-format records from the real Fusion object: face at 15 Hz, voice at 2 Hz while
    'speaking', a neutral → happy → sad story with a face dropout."""
    rng = np.random.default_rng(0)
    fusion = Fusion(FusionConfig(refractory_s=2.0))
    out = []
    story = [(0, 5, "neutral"), (5, 10, "happy"), (10, 15, "sad")]
    events = []
    for t0, t1, label in story:
        for t in np.arange(t0, t1, 1 / 15):
            if not 7.0 <= t < 8.0:  # no face for a second
                p = rng.dirichlet(np.ones(7)) * 0.4
                p[CLASSES.index(label)] += 0.6
                events.append((float(t), "face", p))
        for t in np.arange(t0 + 1.5, t1, 0.5):
            p = rng.dirichlet(np.ones(7)) * 0.6
            p[CLASSES.index(label)] += 0.4
            events.append((float(t), "voice", p))
    for t, m, p in sorted(events, key=lambda e: e[0]):
        u = fusion.update(t, Evidence(m, t, p))
        out.append(u.to_json())
        if u.transition:
            out.append(u.transition.to_json())
    return out


def test_read_and_plot(tmp_path):
    records = _records()
    assert sum(r["type"] == "transition" for r in records) >= 2
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    events = read_events(jsonl)
    assert events == json.loads(json.dumps(records))
    truth = [{"start": 0, "end": 5, "label": "neutral"}, {"start": 5, "end": 10, "label": "happy"},
             {"start": 10, "end": 15, "label": "sad"}]
    png = plot_timeline(events, tmp_path / "sub" / "timeline.png", title="test", truth=truth)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 700
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    # the class colours of the story appear in the drawing
    for c in ("neutral", "happy", "sad"):
        ref = np.array([int(CLASS_COLORS[c][i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(rgb - ref).sum(axis=1) < 30).sum() > 500, c


def test_plot_without_truth(tmp_path):
    png = plot_timeline(_records()[:40], tmp_path / "t.png")
    assert png.stat().st_size > 10_000


def test_errors(tmp_path):
    with pytest.raises(ValueError):
        plot_timeline([{"type": "transition", "t": 1.0}], tmp_path / "x.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "update", "t": 0}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_events(bad)
