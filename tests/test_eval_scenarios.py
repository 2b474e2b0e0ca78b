"""score_scenario / summarize of scripts/eval_scenarios.py on a hand-made record list."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from redsg_edge import CLASSES

_spec = importlib.util.spec_from_file_location(
    "eval_scenarios", Path(__file__).resolve().parent.parent / "scripts" / "eval_scenarios.py")
ev = importlib.util.module_from_spec(_spec)
sys.modules["eval_scenarios"] = ev  # dataclasses look their module up
_spec.loader.exec_module(ev)

TRUTH = {"segments": [{"start": 0, "end": 10, "label": "neutral"},
                      {"start": 10, "end": 20, "label": "happy"},
                      {"start": 20, "end": 30, "label": "sad"}]}


def onehot(name: str) -> dict:
    return {c: (1.0 if c == name else 0.0) for c in CLASSES}


def truth_at(t: float) -> str:
    return "neutral" if t < 10 else "happy" if t < 20 else "sad"


def records() -> list[dict]:
    """Updates every second 0..29; transitions at 11 (→happy, 1 s late), 15 (→fear, spurious),
    16 (→happy, spurious: that change is already matched), 23 (→sad, 3 s late)."""
    fused = {11: "happy", 15: "fear", 16: "happy", 23: "sad"}
    out, emotion = [], "neutral"
    for t in range(30):
        if t in fused:
            out.append({"type": "transition", "t": float(t), "from": emotion, "to": fused[t],
                        "confidence": 0.6, "previous_duration_s": 1.0, "evidence": {}})
            emotion = fused[t]
        face = None if 5 <= t < 8 else onehot("angry" if t == 12 else truth_at(t))
        voice = None
        if 2 <= t < 4 or 12 <= t < 15 or 22 <= t < 26:
            voice = onehot("sad" if t == 14 else truth_at(t))
        out.append({"type": "update", "t": float(t), "face": face, "voice": voice,
                    "fused": onehot(emotion), "emotion": emotion})
    out.append({"type": "reply", "t": 12.0})  # other record types are ignored
    return out


def test_score_hand_made():
    s = ev.score_scenario(records(), TRUTH)
    assert s["duration_s"] == pytest.approx(30.0)
    # fused wrong on [10,11), [15,16), [20,23): 25 of 30 s
    assert s["fused_accuracy"] == pytest.approx(25 / 30)
    # face: null for 3 s, wrong at 12 → 26/30; present 27 s
    assert s["face_accuracy"] == pytest.approx(26 / 30)
    assert s["face_coverage"] == pytest.approx(27 / 30)
    assert s["face_accuracy_present"] == pytest.approx(26 / 27)
    # voice: present 9 s, wrong at 14
    assert s["voice_accuracy"] == pytest.approx(8 / 30)
    assert s["voice_accuracy_present"] == pytest.approx(8 / 9)
    # held until the next label: the face's 3 s gap keeps neutral (right); the voice is
    # missing for 2 s, keeps neutral into happy for 2 s and "sad" (14) through happy for 6 s
    assert s["face_accuracy_held"] == pytest.approx(29 / 30)
    assert s["voice_accuracy_held"] == pytest.approx(20 / 30)
    assert ev.summarize([s, s])["voice_accuracy_held"] == pytest.approx(20 / 30)
    assert (s["changes"], s["matched"], s["missed"]) == (2, 2, 0)
    assert s["latencies_s"] == pytest.approx([1.0, 3.0])
    assert (s["transitions"], s["spurious"]) == (4, 2)
    assert s["spurious_per_min"] == pytest.approx(4.0)
    # argmax changes: face neutral→happy→angry→happy→sad, voice neutral→happy→sad (the 3 s
    # gap and the null stretches are not changes), over 30 s
    assert s["face_label_changes_per_min"] == pytest.approx(8.0)
    assert s["voice_label_changes_per_min"] == pytest.approx(4.0)
    json.dumps({k: v for k, v in s.items() if not k.startswith("_")})


def test_fusion_records_of_one_modality_alone():
    import numpy as np

    from redsg_edge.config import FusionConfig
    from redsg_edge.fusion import Evidence

    def probs(name):
        return np.array([0.9 if c == name else 0.1 / 6 for c in CLASSES], np.float32)

    # a happy face at 10 Hz for 6 s; a sad voice every 0.5 s from 1 s; ticks between
    evidence = []
    for k in range(60):
        t = k / 10
        evidence.append((t, Evidence("face", t, probs("happy"))))
        if k >= 10 and k % 5 == 0:
            evidence.append((t, Evidence("voice", t, probs("sad"))))
        if k % 7 == 0:
            evidence.append((t, None))
    cfg = FusionConfig(voice_weight=5.0)
    face = ev.fusion_records(cfg, evidence, "face")
    voice = ev.fusion_records(cfg, evidence, "voice")
    for recs in (face, voice):
        assert sum(r["type"] == "update" for r in recs) == len(evidence)
    assert [r["to"] for r in face if r["type"] == "transition"] == ["happy"]
    assert [r["to"] for r in voice if r["type"] == "transition"] == ["sad"]
    both = ev.fusion_records(cfg, evidence)  # with both, the heavier voice wins
    assert [r["to"] for r in both if r["type"] == "transition"][-1] == "sad"
    truth = [{"start": 0, "end": 6, "label": "happy"}]
    assert ev.score_scenario(face, truth)["fused_accuracy"] > 0.9
    assert ev.score_scenario(voice, truth)["fused_accuracy"] == 0.0


def test_match_window():
    s = ev.score_scenario(records(), TRUTH, match_window_s=2.0)
    assert (s["matched"], s["missed"], s["spurious"]) == (1, 1, 3)
    assert s["latencies_s"] == pytest.approx([1.0])


def test_initial_emotion_change_counts():
    truth = [{"start": 0, "end": 10, "label": "happy"}, {"start": 10, "end": 20, "label": "sad"}]
    recs = [{"type": "update", "t": 0.0, "face": None, "voice": None, "fused": onehot("neutral"),
             "emotion": "neutral"},
            {"type": "transition", "t": 1.5, "from": "neutral", "to": "happy"},
            {"type": "update", "t": 1.5, "face": None, "voice": None, "fused": onehot("happy"),
             "emotion": "happy"}]
    s = ev.score_scenario(recs, truth)
    assert (s["changes"], s["matched"], s["spurious"]) == (2, 1, 0)
    assert s["latencies_s"] == [1.5]
    assert s["fused_accuracy"] == pytest.approx(8.5 / 20)
    assert s["face_accuracy"] == 0.0 and s["face_coverage"] == 0.0
    assert s["face_accuracy_present"] is None


def test_summarize_pools_time_weighted():
    a = ev.score_scenario(records(), TRUTH)
    b = ev.score_scenario(records()[:10], TRUTH)  # updates only to t=8 → holds to 30 s
    summ = ev.summarize([a, b])
    assert summ["duration_s"] == pytest.approx(60.0)
    assert summ["fused_accuracy"] == pytest.approx(
        (a["fused_accuracy"] * 30 + b["fused_accuracy"] * 30) / 60)
    assert summ["latency_p50_s"] == pytest.approx(2.0)
    assert summ["checks"]["fused_above_voice"] is True
    assert summ["checks"]["latency_p50_le_1.5s"] is False


def test_errors():
    with pytest.raises(ValueError):
        ev.score_scenario([{"type": "transition", "t": 1.0, "to": "happy"}], TRUTH)
    with pytest.raises(ValueError):
        ev.score_scenario(records(), [{"start": 0, "end": 10, "label": "bored"}])


def test_main_on_existing_events(tmp_path, capsys):
    scn, events = tmp_path / "scn", tmp_path / "events"
    scn.mkdir(), events.mkdir()
    (scn / "s1.json").write_text(json.dumps(TRUTH))
    (events / "s1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    rc = ev.main(["--scenarios", str(scn), "--events-dir", str(events), "--out", str(tmp_path / "o")])
    assert rc == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["summary"]["fused_accuracy"] == pytest.approx(25 / 30)
    assert summary["scenarios"]["s1"]["spurious"] == 2
    assert "ALL" in capsys.readouterr().out
