"""``redsg-edge analyze`` on videos: the clip's summary (table-driven) and real clips through the
real detector and models."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from redsg_edge import CLASSES
from redsg_edge.analyze import clip_fusion, summarize_replay
from redsg_edge.replay import replay

from .conftest import ACTOR_23, ACTOR_24, REPO, SINGLE_FACE, make_config, write_config
from .helpers import video_only_copy, video_with_sound
from .test_pipeline import cli

sys.path.insert(0, str(REPO / "scripts"))

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
    assert [(e["start_s"], e["end_s"], e["emotion"]) for e in s["emotions"]] == emotions
    if label is None:
        assert s["fused_over_time"] is None and s["face"] is None
        return
    fused = s["fused_over_time"]
    assert fused["label"] == label
    assert fused["probs"]["sad"] == pytest.approx(fused_sad)
    assert sum(fused["probs"].values()) == pytest.approx(1.0)
    if face is None:
        assert s["face"] is None
    else:
        assert (s["face"]["label"], s["face"]["coverage"]) == face


def test_clip_fusion_lets_a_clear_voice_speak_over_a_neutral_face():
    """The clip-level combination uses the fusion's own rules: a face reading neutral while
    someone speaks weighs only its non-neutral share, so a clear voice decides; an expressive
    face keeps its weight; one modality alone is passed through; none gives None."""
    cfg = make_config().fusion
    neutral = {c: (0.85 if c == "neutral" else 0.025) for c in CLASSES}
    angry_voice = {c: (0.7 if c == "angry" else 0.05) for c in CLASSES}
    happy_face = {c: (0.85 if c == "happy" else 0.025) for c in CLASSES}
    mixed = clip_fusion(cfg, neutral, angry_voice)
    assert max(mixed, key=mixed.get) == "angry"
    mixed = clip_fusion(cfg, happy_face, angry_voice)
    assert max(mixed, key=mixed.get) == "happy"
    assert clip_fusion(cfg, None, angry_voice) == pytest.approx(angry_voice, abs=1e-6)
    assert clip_fusion(cfg, None, None) is None


def test_analyze_video_hears_the_voice_of_a_neutral_face(tmp_path):
    """Issue 14's real clips: a neutral face (the first 0.6 s of a real video, looped) while an
    angry voice speaks (a held-out speaker). The fused state cannot move within the 3.5 s clip
    (the voice's first label comes after 1.25 s of speech and its probability stays under
    ``fusion.enter_threshold``), but the clip's own label, face and voice combined, is angry."""
    import eval_voice
    import soundfile as sf

    x, rate = sf.read(ACTOR_23 / "03-01-05-02-01-01-23.flac", dtype="float32")  # angry, strong
    clip = tmp_path / "clip.mkv"
    eval_voice.face_video(x, rate, clip)  # the face clip's first 0.6 s (neutral), looped
    r = cli("analyze", "--json", "-c", write_config(tmp_path / "c.toml"), clip)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["face"]["label"] == "neutral" and got["voice"]["label"] == "angry"
    assert got["label"] == "angry" and got["fused_over_time"]["label"] == "neutral"
    assert [e["emotion"] for e in got["emotions"]] == ["neutral"]


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
    assert talking["probs"] == clip_fusion(make_config().fusion, talking["face"]["probs"],
                                           talking["voice"]["probs"])
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
    assert quiet["speech_prob_max"] is None and quiet["label"] == quiet["face"]["label"]
    assert [e["emotion"] for e in quiet["emotions"]] == ["neutral", "happy"]

    memo = tmp_path / "memo.mp4"
    import av
    with av.open(str(clip)) as inp, av.open(str(memo), "w") as out:
        s = out.add_stream_from_template(inp.streams.audio[0])
        for pkt in inp.demux(inp.streams.audio[0]):
            if pkt.dts is not None:
                pkt.stream = s
                out.mux(pkt)
    cut = tmp_path / "cut.mp4"  # the first 30 kB: FFmpeg cannot open it
    cut.write_bytes(clip.read_bytes()[:30_000])
    r = cli("analyze", "-c", cfg, memo, cut)
    assert r.returncode == 1, r.stderr
    memo_line, cut_line = [ln for ln in r.stdout.splitlines() if not ln.startswith(" ")]
    assert memo_line.startswith(f"{memo}: sad (") and "utterance(s)" in memo_line
    assert cut_line.startswith(f"{cut}: error: ") and "neither a video nor a recording" in cut_line


def test_analyze_finds_a_face_that_fills_the_photo(tmp_path):
    """Face sets ship cropped faces. BlazeFace misses these three FER2013 PublicTest crops as
    they are; ``analyze`` finds each on a padded copy, with its box inside the photo. A plain
    grey photo still has no face."""
    import io
    import zipfile

    from PIL import Image

    from redsg_edge.datasets import DATA_ROOT
    from redsg_edge.vision import FaceDetector

    members = ["val/angry/PublicTest_12700974.jpg", "val/angry/PublicTest_12919755.jpg",
               "val/angry/PublicTest_17487264.jpg"]
    cfg = make_config()
    det = FaceDetector(cfg.vision.detector_model, cfg.vision.min_detection_confidence)
    with zipfile.ZipFile(DATA_ROOT / "fer2013.zip") as z:
        for i, m in enumerate(members):
            im = Image.open(io.BytesIO(z.read(m))).convert("RGB")
            assert det.detect(np.asarray(im)) == []  # why the fallback exists
            im.save(tmp_path / f"crop{i}.png")
    det.close()
    Image.new("RGB", (256, 256), (90, 90, 90)).save(tmp_path / "grey.png")
    r = cli("analyze", "--json", "-c", write_config(tmp_path / "c.toml"), tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {json.loads(x)["path"].rsplit("/", 1)[-1]: json.loads(x) for x in r.stdout.splitlines()}
    for i in range(3):
        got = rows[f"crop{i}.png"]
        assert got["label"] in CLASSES and len(got["faces"]) == 1, got
        x, y, w, h = got["faces"][0]["box"]
        assert 0 <= x and 0 <= y and w > 20 and h > 20 and x + w <= 48.01 and y + h <= 48.01
    assert rows["grey.png"]["label"] is None and rows["grey.png"]["faces"] == []


def test_analyze_listens_again_for_a_scream(tmp_path):
    """Actor 24's second strong fearful sentence, as recorded, never reaches the VAD's 0.5 for
    long enough to make an utterance (Silero reads screaming as less speech-like). ``analyze``
    listens to it again at ``RELISTEN_VAD_THRESHOLD`` and labels it, saying so; the real room
    noise of the face clip, 20 dB louder, stays below that and gets no label."""
    import av
    import soundfile as sf

    from redsg_edge.analyze import RELISTEN_VAD_THRESHOLD

    scream = ACTOR_24 / "03-01-06-02-02-02-24.flac"
    with av.open(str(SINGLE_FACE)) as c:
        r = av.AudioResampler(format="s16", layout="mono", rate=16000)
        room = np.concatenate([o.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0])
                               for o in r.resample(f)])
    noise = tmp_path / "room.wav"
    sf.write(noise, np.clip(room.astype(np.int32) * 10, -32768, 32767).astype(np.int16), 16000)
    cfg = write_config(tmp_path / "c.toml")
    r = cli("analyze", "--json", "-c", cfg, "--no-calibrate", scream, noise)
    assert r.returncode == 0, r.stderr
    got, quiet = map(json.loads, r.stdout.splitlines())
    assert got["vad_threshold"] == RELISTEN_VAD_THRESHOLD < got["speech_prob_max"] < 0.5
    assert got["label"] in CLASSES and got["utterances"]
    assert quiet["label"] is None and "vad_threshold" not in quiet
    assert quiet["speech_prob_max"] < RELISTEN_VAD_THRESHOLD
    line = cli("analyze", "-c", cfg, "--no-calibrate", scream).stdout.splitlines()[0]
    assert f"(speech found at VAD threshold {RELISTEN_VAD_THRESHOLD:g})" in line


def test_analyze_finds_a_face_far_away_in_a_photo(tmp_path):
    """A photo of the single-face clip's man 4 times farther away (a 42 px face in 640 x 360)
    shows BlazeFace no face whole; ``analyze`` finds him in its zoom-2 tiles, with his box where
    the near photo has it (scaled by 1/4 around the centre). Uniform noise, where the tiles see
    faces under ``vision.FAR_MIN_SCORE``, still has none."""
    import av
    from PIL import Image

    from redsg_edge.vision import FaceDetector, detect_in, far_tiles, iou

    from eval_face_range import moved_away

    with av.open(str(SINGLE_FACE)) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    far = moved_away(rgb, 4)
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cfg = make_config()
    det = FaceDetector(cfg.vision.detector_model, cfg.vision.min_detection_confidence)
    x, y, bw, bh = det.detect(rgb)[0].box
    assert det.detect(far) == []  # why the tiles exist
    # why their threshold exists: at the whole frame's 0.5 the zoom-4 tiles see faces in noise
    assert det.detect(noise) == [] and detect_in(det, noise, far_tiles(640, 480, 4), 0.5)
    det.close()
    Image.fromarray(far).save(tmp_path / "far.png")
    Image.fromarray(noise).save(tmp_path / "noise.png")
    r = cli("analyze", "--json", "-c", write_config(tmp_path / "c.toml"), tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {json.loads(x)["path"].rsplit("/", 1)[-1]: json.loads(x) for x in r.stdout.splitlines()}
    got = rows["far.png"]
    assert got["label"] in CLASSES and len(got["faces"]) == 1, got
    expect = ((x - w / 2) / 4 + w / 2, (y - h / 2) / 4 + h / 2, bw / 4, bh / 4)
    assert iou(tuple(got["faces"][0]["box"]), expect) > 0.6, (got["faces"][0]["box"], expect)
    assert got["faces"][0]["score"] >= 0.75
    assert rows["noise.png"]["faces"] == []
