"""``redsg-edge analyze`` on videos: the clip's summary (table-driven) and real clips through the
real detector and models."""

from __future__ import annotations

import json

import pytest

from redsg_edge import CLASSES
from redsg_edge.analyze import summarize_replay
from redsg_edge.replay import replay

from .conftest import ACTOR_24, SINGLE_FACE, make_config, write_config
from .helpers import video_only_copy, video_with_sound
from .test_pipeline import cli

UTTERANCE = ACTOR_24 / "03-01-04-02-01-01-24.flac"  # sad, strong


def one_hot(name: str) -> dict:
    return {c: float(c == name) for c in CLASSES}


def update(t, fused, face=None, emotion="neutral"):
    return {"type": "update", "t": t, "face": face and one_hot(face), "voice": None,
            "fused": one_hot(fused), "emotion": emotion}


@pytest.mark.parametrize("records,t_end,label,fused_sad,face,emotions", [
    ([], 3.0, None, None, None, []),
    # happy for 1 s with a face, then sad for 3 s without one; a transition at 1 s
    ([update(0.0, "happy", "happy"), update(1.0, "sad", None, "sad"),
      {"type": "transition", "t": 1.0, "from": "neutral", "to": "sad"}], 4.0,
     "sad", 0.75, ("happy", 0.25), [(0.0, 1.0, "neutral"), (1.0, 4.0, "sad")]),
    # the clip's end before the last update: that update ends the summary
    ([update(0.5, "sad", "angry"), update(2.0, "happy", "angry")], 1.0,
     "sad", 1.0, ("angry", 1.0), [(0.5, 2.0, "neutral")]),
    # one update at the very end is the whole summary
    ([update(2.0, "fear")], 2.0, "fear", 0.0, None, [(2.0, 2.0, "neutral")]),
])
def test_summarize_replay(records, t_end, label, fused_sad, face, emotions):
    s = summarize_replay(records, t_end)
    assert s["label"] == label
    assert [(e["start_s"], e["end_s"], e["emotion"]) for e in s["emotions"]] == emotions
    if label is None:
        assert s["probs"] is None and s["face"] is None
        return
    assert s["probs"]["sad"] == pytest.approx(fused_sad)
    assert sum(s["probs"].values()) == pytest.approx(1.0)
    if face is None:
        assert s["face"] is None
    else:
        assert (s["face"]["label"], s["face"]["coverage"]) == face


def test_analyze_video_reports_face_voice_and_their_fusion(tmp_path):
    """A phone clip of a smiling face with a sad voice: the face, the voice and the fused state
    over time, each from the same code as ``replay`` and as ``analyze`` of a recording; a clip
    without sound reads the face alone; an .mp4 with only sound is a recording."""
    clip = video_with_sound(SINGLE_FACE, UTTERANCE, tmp_path / "talking.mp4")
    silent = video_only_copy(SINGLE_FACE, tmp_path / "silent.mp4")
    cfg = write_config(tmp_path / "c.toml")
    r = cli("analyze", "--json", "-c", cfg, clip, silent, UTTERANCE)
    assert r.returncode == 0, r.stderr
    talking, quiet, recording = map(json.loads, r.stdout.splitlines())

    assert talking["kind"] == "video" and talking["label"] in CLASSES
    assert talking["label"] == max(talking["probs"], key=talking["probs"].get)
    # the face is neutral, then smiles from about 1 s (held after the picture ends at 2.4 s)
    face = talking["face"]
    assert face["label"] in ("neutral", "happy") and face["coverage"] >= 0.95
    assert face["probs"]["neutral"] + face["probs"]["happy"] >= 0.8
    assert talking["voice"]["label"] == recording["label"] == "sad"
    assert len(talking["utterances"]) == len(recording["utterances"]) == 1
    u, v = talking["utterances"][0], recording["utterances"][0]
    assert abs(u["start_s"] - v["start_s"]) < 0.1 and abs(u["end_s"] - v["end_s"]) < 0.1
    # the fused state over the clip, without gaps, to its end: the smile wins over the voice
    ems = talking["emotions"]
    assert all(a["end_s"] == b["start_s"] for a, b in zip(ems, ems[1:]))
    assert ems[-1]["end_s"] == pytest.approx(talking["duration_s"], abs=0.1)
    assert [e["emotion"] for e in ems][:2] == ["neutral", "happy"]
    assert 0.8 <= ems[1]["start_s"] <= 1.5
    # one perception path: the same as a replay of the clip, summarised
    again = summarize_replay(replay(make_config(), clip), talking["duration_s"])
    assert {k: talking[k] for k in again} == json.loads(json.dumps(again))

    assert quiet["kind"] == "video" and quiet["face"]["coverage"] >= 0.95
    assert quiet["voice"] is None and quiet["utterances"] == []
    assert quiet["speech_prob_max"] is None
    assert [e["emotion"] for e in quiet["emotions"]] == ["neutral", "happy"]

    memo = tmp_path / "memo.mp4"
    import av
    with av.open(str(clip)) as inp, av.open(str(memo), "w") as out:
        s = out.add_stream_from_template(inp.streams.audio[0])
        for pkt in inp.demux(inp.streams.audio[0]):
            if pkt.dts is not None:
                pkt.stream = s
                out.mux(pkt)
    r = cli("analyze", "-c", cfg, memo)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{memo}: sad (") and "utterance(s)" in r.stdout
