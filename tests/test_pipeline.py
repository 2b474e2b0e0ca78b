"""Replay, analyze and run on real media through the real detector and models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from redsg_edge import CLASSES
from redsg_edge.replay import replay

from .conftest import ACTOR_24, PEXELS, REPO, SINGLE_FACE, make_config, write_config

UTTERANCE = ACTOR_24 / "03-01-04-02-01-01-24.flac"  # sad, strong


def cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "redsg_edge", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_replay_is_deterministic_and_writes_jsonl_and_plot(tmp_path):
    cfg = make_config()
    out, png = tmp_path / "events.jsonl", tmp_path / "timeline.png"
    a = replay(cfg, SINGLE_FACE, UTTERANCE, out=out, plot=png)
    b = replay(cfg, SINGLE_FACE, UTTERANCE)
    assert a == b  # media time, not the wall clock
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == a
    updates = [r for r in a if r["type"] == "update"]
    faces = [r for r in updates if r["face"] is not None]
    voices = [r for r in updates if r["voice"] is not None]
    assert len(faces) >= 0.95 * 36  # 2.4 s at 15 fps, face in (nearly) every frame
    assert voices, "the sad utterance must give voiced SER windows"
    for r in updates:
        assert set(r["fused"]) == set(CLASSES)
        assert abs(sum(r["fused"].values()) - 1) < 1e-3
    assert png.stat().st_size > 10_000


def test_replay_pexels_finds_the_face_and_shows_the_change_to_the_smile():
    recs = replay(make_config(), PEXELS, use_video_audio=False)
    updates = [r for r in recs if r["type"] == "update"]
    rate = np.mean([r["face"] is not None for r in updates])
    assert len(updates) > 200 and rate >= 0.95  # 23.976 fps thinned to 12 (every other frame)

    def face_top(t0, t1):  # the face's leading class, mean probabilities over [t0, t1) s
        ps = [[r["face"][c] for c in CLASSES] for r in updates
              if r["face"] is not None and t0 <= r["t"] < t1]
        return CLASSES[int(np.argmax(np.mean(ps, axis=0)))]

    # The crying start reads as sad, the smile (from ~9.6 s) as happy; the fused emotion
    # follows the smile once, and does not flicker on the way.
    assert face_top(0.0, 6.0) == "sad"
    assert face_top(11.0, 19.0) == "happy"
    transitions = [r for r in recs if r["type"] == "transition"]
    to_happy = [r for r in transitions if r["to"] == "happy"]
    assert len(to_happy) == 1 and 9.0 <= to_happy[0]["t"] <= 11.5
    assert updates[-1]["emotion"] == "happy" and len(transitions) <= 4


def test_analyze_json_images_and_audio(tmp_path):
    import av
    with av.open(str(PEXELS)) as c:
        frame = next(c.decode(video=0)).to_image()
    photo = tmp_path / "photos" / "woman.jpg"
    photo.parent.mkdir()
    frame.save(photo)
    (tmp_path / "photos" / "blank.png").write_bytes(_blank_png())
    cfg = write_config(tmp_path / "c.toml")
    r = cli("analyze", "--json", "-c", cfg, tmp_path / "photos", UTTERANCE,
            "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    by = {os.path.basename(x["path"]): x for x in rows}
    assert by["woman.jpg"]["kind"] == "image" and by["woman.jpg"]["label"] in CLASSES
    assert len(by["woman.jpg"]["faces"]) == 1
    assert by["blank.png"]["label"] is None and by["blank.png"]["faces"] == []
    audio = by[UTTERANCE.name]
    assert audio["kind"] == "audio" and audio["label"] in CLASSES and audio["utterances"]
    assert all(0 <= u["start_s"] < u["end_s"] <= audio["duration_s"] for u in audio["utterances"])
    assert abs(sum(audio["probs"].values()) - 1) < 1e-3
    assert (tmp_path / "ann" / "woman_annotated.png").is_file()


def _blank_png() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buf, "PNG")
    return buf.getvalue()


def test_run_without_camera_exits_69_naming_the_key(tmp_path):
    cfg = write_config(tmp_path / "c.toml", '[camera]\nsource = "opencv"\ndevice = 7\n'
                       '[microphone]\nsource = "none"\n[service]\nallow_degraded = false\n')
    t0 = time.monotonic()
    r = cli("run", "-c", cfg, "--no-reply", timeout=30)
    assert r.returncode == 69, r.stderr
    assert time.monotonic() - t0 < 5 + 3  # + interpreter start and imports
    assert "camera.device" in r.stderr


def test_run_with_no_devices_at_all_exits_69(tmp_path):
    cfg = write_config(tmp_path / "c.toml", '[camera]\nsource = "none"\n'
                       '[microphone]\nsource = "none"\n')
    r = cli("run", "-c", cfg, "--no-reply", timeout=30)
    assert r.returncode == 69
    assert "camera.source" in r.stderr and "microphone.source" in r.stderr


def test_run_with_both_devices_missing_names_each_and_its_key(tmp_path):
    cfg = write_config(tmp_path / "c.toml", f'[camera]\nsource = "file"\nfile = "{tmp_path}/cam.mp4"\n'
                       f'[microphone]\nsource = "file"\nfile = "{tmp_path}/mic.wav"\n')
    r = cli("run", "-c", cfg, "--no-reply", timeout=30)
    assert r.returncode == 69
    assert "cam.mp4" in r.stderr and "camera.file" in r.stderr
    assert "mic.wav" in r.stderr and "microphone.file" in r.stderr


def test_bad_config_exits_78_with_file_and_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[fusion]\nmin_dwel_s = 1\n")
    r = cli("replay", SINGLE_FACE, "-c", cfg)
    assert r.returncode == 78
    assert f"{cfg}: fusion.min_dwel_s:" in r.stderr
