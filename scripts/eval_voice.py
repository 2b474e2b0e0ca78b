#!/usr/bin/env python3
"""Issue 14's voice acceptance figures, through the shipped path: ``redsg-edge analyze --json``.

The 104 non-calm files of the held-out RAVDESS speakers (Actor_23, Actor_24) go through
``analyze`` (trained VAD → utterances → SER, the daemon's own speech code) in six conditions:

- ``original``: the files as recorded;
- ``minus20db``: 20 dB quieter (a quieter microphone, a speaker farther away);
- ``plus10db_clipped``: 10 dB louder, clipped to int16 (an over-driven input);
- ``white_snr10``: white Gaussian noise added at 10 dB SNR, where the signal power is the mean
  power of the file's active 25 ms frames (those within 30 dB of its loudest frame), an
  approximation of the active speech level of ITU-T P.56;
- ``babble_snr10``: babble at 10 dB SNR (the same signal power): six talkers at once, each a
  continuous stream of RAVDESS speech by actors 1-22 (their active frames only, so the babble
  has no pauses), each talker at the same power. Those actors are the SER's training speakers:
  summed six at a time they are not one intelligible voice, but the figure is not a
  cross-speaker one for the babble itself;
- ``reverb_rt60_0.6``: a living room, the talker about at the critical distance: the file
  convolved with a room impulse response of Polack's statistical model (a direct path, then
  exponentially decaying Gaussian noise from 2.5 ms on; J.-D. Polack, "Playing billiards in the
  concert hall: the mathematical foundations of geometrical room acoustics", Applied Acoustics
  38, 1993), reverberation time RT60 0.6 s, direct-to-reverberant ratio 0 dB, then scaled back
  to the file's active level. Its rooms are not the image-source shoeboxes the SERs train on
  (``ser_augment.room_impulse_responses``).
- ``far_talker``: the same room with the talker four times the critical distance away (about
  2 m in a living room, whose critical distance is about half a metre): direct-to-reverberant
  ratio −12 dB (the direct sound falls 6 dB per doubling of distance, the reverberant field
  stays), and the whole 15 dB quieter than the recording. Not run unless named.

One condition, not run unless named, puts a face to the voice: ``neutral_face_video`` writes
each file as a video (Matroska: MPEG-4 picture, the sound as 16-bit PCM) whose picture is a real
person's neutral face, the first 0.6 s of ``av_clips/pyfeat_single_face.mp4`` played over and
over (before she smiles). ``analyze`` then reads each clip as a video: the clip's label is the
face and the voice combined (``analyze.clip_fusion``); the table adds what the fused state
machine showed over the clip (``fused_over_time``) and where it ended. This is issue 14's
finding on real clips (a neutral face, an emotional voice, a fused state that stays neutral)
as a measurement.

Two more conditions, not run unless named, put each file through a lossy codec at a voice-message
bitrate, as a phone or a messaging app would send it (encoded by PyAV's FFmpeg, decoded by
``analyze`` itself): ``mp3_24k`` (MPEG-1/2 Layer III, libmp3lame, 24 kbit/s mono at 16 kHz) and
``opus_16k`` (Opus, libopus in its VoIP mode, 16 kbit/s mono at 16 kHz, in Ogg; RFC 6716).

Each condition's files are written as 16-bit WAV under a temporary folder (``--tmp``, default
/tmp), analyzed by one ``redsg-edge analyze --json`` process, and scored: labelled = the file got
a label (a file without one counts as a miss in the accuracy), accuracy = label equals the
RAVDESS emotion (calm → neutral, fearful → fear, surprised → surprise), and how many labels
differ from the original condition's. Prints a table; ``--json PATH`` writes every figure.

``--urdu`` adds the cross-corpus figure of issue 15: URDU's 400 files as recorded through the
same ``analyze`` call, scored on its four classes (``--conditions "" --urdu`` runs only that).
``--nemo DIR`` and ``--emospeech DIR`` add two more cross-corpus checks that are not in
``../shared/data`` (``datasets.load_nemo``, ``datasets.load_emospeech``; ``--limit`` random
files of each): acted Polish, and single keywords acted by the public in noisy places. A
choice made on URDU alone tunes to one corpus; these say whether it carries.

    python scripts/eval_voice.py [--config config.toml] [--conditions original,minus20db,...]
        [--urdu] [--nemo DIR] [--emospeech DIR] [--limit N] [--json runs/eval_voice.json]
        [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from redsg_edge import CLASSES  # noqa: E402
from redsg_edge.datasets import (DATA_ROOT, URDU_CLASSES, label_among,  # noqa: E402
                                 load_emospeech, load_nemo, load_ravdess_index, load_urdu)
from redsg_edge.features import frame_dbfs  # noqa: E402
from ser_augment import CODECS, encode  # noqa: E402

HELD_OUT = (23, 24)
CONDITIONS = ("original", "minus20db", "plus10db_clipped", "white_snr10", "babble_snr10",
              "reverb_rt60_0.6")
BABBLE_TALKERS = 6
RT60_S, DRR_DB = 0.6, 0.0  # reverb_rt60_0.6
FAR_DRR_DB, FAR_GAIN_DB = -12.0, -15.0  # far_talker, in the same room
#: the room conditions → (direct-to-reverberant ratio, gain of the result), both dB
ROOMS = {"reverb_rt60_0.6": (DRR_DB, 0.0), "far_talker": (FAR_DRR_DB, FAR_GAIN_DB)}
#: Conditions of degrade() not in the default list.
EXTRA_CONDITIONS = ("far_talker",)
#: condition → (``ser_augment.CODECS`` name, bit rate in bit/s); the file is named for its
#: container
CODEC_CONDITIONS = {"mp3_24k": ("mp3", 24_000), "opus_16k": ("opus", 16_000)}
#: neutral_face_video: the clip whose first NEUTRAL_S seconds show a neutral face
FACE_CLIP, NEUTRAL_S = DATA_ROOT / "av_clips" / "pyfeat_single_face.mp4", 0.6
VIDEO_CONDITIONS = ("neutral_face_video",)


def held_out_files() -> list:
    """The 104 non-calm files of actors 23 and 24, sorted by name."""
    return sorted((f for f in load_ravdess_index() if f.actor in HELD_OUT and f.emotion != "calm"),
                  key=lambda f: f.path.name)


def active_frames(x: np.ndarray) -> np.ndarray:
    """The 25 ms frames of ``x`` (float in [-1, 1]) within 30 dB of its loudest one, (k, 400)."""
    db = frame_dbfs(x)
    return x[:len(db) * 400].reshape(-1, 400)[db >= db.max() - 30.0]


def active_power(x: np.ndarray) -> float:
    """Mean power of ``x``'s active frames (:func:`active_frames`)."""
    return float(np.mean(active_frames(x) ** 2))


@functools.cache
def _babble_pool() -> tuple[Path, ...]:
    """The RAVDESS files babble is drawn from: every file of actors 1-22, sorted."""
    return tuple(sorted((f.path for f in load_ravdess_index() if f.actor not in HELD_OUT),
                        key=str))


def babble(n: int, seed: int, talkers: int = BABBLE_TALKERS) -> np.ndarray:
    """(n,) float32 babble: ``talkers`` streams of the active frames of random RAVDESS files of
    actors 1-22 (seeded), each scaled to unit power, summed."""
    rng = np.random.default_rng(seed)
    pool = _babble_pool()
    streams = []
    for _ in range(talkers):
        parts, have = [], 0
        while have < n:
            x, _rate = sf.read(str(pool[rng.integers(len(pool))]), dtype="float32")
            parts.append(active_frames(x.mean(axis=1) if x.ndim == 2 else x).reshape(-1))
            have += len(parts[-1])
        s = np.concatenate(parts)[:n]
        streams.append(s / np.sqrt(np.mean(s.astype(np.float64) ** 2) + 1e-12))
    return np.sum(streams, axis=0).astype(np.float32)


def statistical_rir(rt60_s: float, drr_db: float, seed: int, rate: int = 16_000) -> np.ndarray:
    """(n,) float32 room impulse response of Polack's statistical model: 1 at sample 0 (the
    direct path), then Gaussian noise under an envelope falling 60 dB in ``rt60_s`` seconds,
    from 2.5 ms to 1.2 ``rt60_s``, scaled so that the direct energy over the tail's is
    ``drr_db`` (the direct-to-reverberant ratio)."""
    n = int(1.2 * rt60_s * rate)
    t = np.arange(n) / rate
    tail = np.random.default_rng(seed).standard_normal(n) * 10 ** (-3 * t / rt60_s)
    tail[:int(0.0025 * rate)] = 0.0
    h = tail * np.sqrt(10 ** (-drr_db / 10) / np.sum(tail ** 2))
    h[0] = 1.0
    return h.astype(np.float32)


def degrade(x: np.ndarray, condition: str, seed: int) -> np.ndarray:
    """x float32 in [-1, 1] → the condition's signal, clipped to int16's range."""
    if condition == "original":
        y = x
    elif condition == "minus20db":
        y = x * 10 ** (-20 / 20)
    elif condition == "plus10db_clipped":
        y = x * 10 ** (10 / 20)
    elif condition == "white_snr10":
        noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
        y = x + noise * np.sqrt(active_power(x) / 10 ** (10 / 10))
    elif condition == "babble_snr10":
        noise = babble(len(x), seed)
        y = x + noise * np.sqrt(active_power(x) / np.mean(noise.astype(np.float64) ** 2)
                                / 10 ** (10 / 10))
    elif condition in ROOMS:
        drr_db, gain_db = ROOMS[condition]
        y = fftconvolve(x, statistical_rir(RT60_S, drr_db, seed))[:len(x)].astype(np.float32)
        y *= np.float32(np.sqrt(active_power(x) / active_power(y)) * 10 ** (gain_db / 20))
    else:
        raise ValueError(f"unknown condition {condition!r} (expected one of "
                         f"{CONDITIONS + EXTRA_CONDITIONS})")
    return np.clip(y, -1.0, 32767 / 32768)


@functools.cache
def _neutral_frames() -> tuple[tuple[np.ndarray, ...], float]:
    """The RGB frames of ``FACE_CLIP``'s first ``NEUTRAL_S`` seconds, and its frame rate."""
    import av
    with av.open(str(FACE_CLIP)) as inp:
        stream = inp.streams.video[0]
        frames = tuple(f.to_ndarray(format="rgb24") for f in inp.decode(stream)
                       if f.time is not None and f.time < NEUTRAL_S)
        return frames, float(stream.average_rate)


def face_video(x: np.ndarray, rate: int, dest: Path) -> None:
    """Write ``dest`` (.mkv): ``x`` (float32 in [-1, 1], mono) as 16-bit PCM sound under the
    neutral face of :func:`_neutral_frames`, looped for as long as the sound lasts."""
    import av
    from fractions import Fraction

    frames, fps = _neutral_frames()
    pcm = (np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)[None, :]
    with av.open(str(dest), "w", format="matroska") as out:
        vs = out.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(int(np.ceil(len(x) / rate * fps))):
            out.mux(vs.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")))
        out.mux(vs.encode(None))
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        out.mux([*aus.encode(frame), *aus.encode(None)])


def analyze(paths: list[Path], config: Path | None) -> dict[str, dict]:
    """``redsg-edge analyze --json`` on ``paths`` in one process → {path: record}."""
    cmd = [sys.executable, "-m", "redsg_edge", "analyze", "--json", *map(str, paths)]
    if config is not None:
        cmd[4:4] = ["--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode not in (0, 1) or len(recs) != len(paths):
        raise RuntimeError(f"analyze failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return {r["path"]: r for r in recs}


def run_condition(files: list, condition: str, config: Path | None, tmp: Path) -> dict:
    folder = tmp / condition
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(files):
        x, rate = sf.read(str(f.path), dtype="float32")
        dest = folder / (f.path.stem + ".wav")
        mono = x.mean(axis=1) if x.ndim == 2 else x
        if condition in CODEC_CONDITIONS:
            kind, bit_rate = CODEC_CONDITIONS[condition]
            dest = dest.with_suffix("." + CODECS[kind][0])
            encode(mono, str(dest), kind, bit_rate, rate)
        elif condition in VIDEO_CONDITIONS:
            dest = dest.with_suffix(".mkv")
            face_video(mono, rate, dest)
        else:
            sf.write(str(dest), degrade(x, condition, seed=i), rate, subtype="PCM_16")
        paths.append(dest)
    recs = analyze(paths, config)
    rows = []
    for f, p in zip(files, paths):
        r = recs[str(p)]
        rows.append({"file": f.path.name, "truth": CLASSES[f.label], "label": r.get("label"),
                     "utterances": len(r.get("utterances") or []), "error": r.get("error")})
        if r.get("kind") == "video":  # what the fused state showed over the clip, and at its end
            rows[-1]["over_time"] = (r.get("fused_over_time") or {}).get("label")
            rows[-1]["final"] = r["emotions"][-1]["emotion"] if r.get("emotions") else None
    n = len(rows)
    labelled = sum(r["label"] is not None for r in rows)
    correct = sum(r["label"] == r["truth"] for r in rows)
    out = {"condition": condition, "files": n, "labelled": labelled,
           "labelled_pct": round(100 * labelled / n, 2), "correct": correct,
           "accuracy_pct": round(100 * correct / n, 2),
           "utterances_per_file": round(sum(r["utterances"] for r in rows) / n, 3),
           "rows": rows}
    if condition in VIDEO_CONDITIONS:
        for key in ("over_time", "final"):
            got = [r[key] for r in rows]
            out[f"{key}_accuracy_pct"] = round(100 * np.mean([g == r["truth"]
                                                              for g, r in zip(got, rows)]), 2)
            out[f"{key}_neutral_pct"] = round(100 * np.mean([g == "neutral" for g in got]), 2)
    return out


def run_corpus(paths: list[Path], labels, classes, config: Path | None) -> dict:
    """A cross-corpus set through ``analyze`` as recorded: a file's label is the argmax over the
    corpus's ``classes`` (indices into CLASSES) of its 7-class probabilities; a file without
    probabilities counts as a miss. Returns files, labelled, accuracy, UAR (the mean of the
    per-class recalls: what counts on an unbalanced corpus) and per-class recall (%)."""
    recs = analyze(paths, config)
    names = [CLASSES[i] for i in sorted(classes)]
    hits, totals = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    labelled = 0
    for p, y in zip(paths, labels):
        probs = recs[str(p)].get("probs")
        truth = CLASSES[int(y)]
        totals[truth] += 1
        if probs:
            labelled += 1
            hits[truth] += CLASSES[label_among([probs[c] for c in CLASSES], classes)] == truth
    n = len(paths)
    recall = {c: 100 * hits[c] / totals[c] for c in names if totals[c]}
    return {"files": n, "labelled": labelled, "classes": names,
            "accuracy_pct": round(100 * sum(hits.values()) / n, 2),
            "uar_pct": round(float(np.mean(list(recall.values()))), 2),
            "recall_pct": {c: round(r, 1) for c, r in recall.items()}}


def cross_corpus_sets(args) -> dict[str, tuple[list[Path], np.ndarray, list[int]]]:
    """{name: (paths, labels, classes)} of the cross-corpus sets asked for: URDU (all 400 files,
    4 classes), and ``--limit`` random files (seed 0) of nEMO (6 classes) and EmoSpeech (4)."""
    sets = {}
    if args.urdu:
        paths, labels = load_urdu()
        sets["URDU"] = (paths, labels, URDU_CLASSES)
    for name, root, loader in (("nEMO", args.nemo, load_nemo),
                               ("EmoSpeech", args.emospeech, load_emospeech)):
        if root is None:
            continue
        files = loader(root)
        if args.limit and len(files) > args.limit:  # the same files whatever else is asked for
            pick = np.random.default_rng(0).choice(len(files), args.limit, replace=False)
            files = [files[i] for i in sorted(pick)]
        labels = np.array([f.label for f in files])
        sets[name] = ([f.path for f in files], labels, sorted(set(labels.tolist())))
    return sets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=None, help="config.toml (default: built-in)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--urdu", action="store_true",
                    help="also URDU's 400 files as recorded, 4 classes (cross-corpus validation)")
    ap.add_argument("--nemo", type=Path, default=None, metavar="DIR",
                    help="also nEMO (Polish, acted; datasets.load_nemo) from DIR, 6 classes")
    ap.add_argument("--emospeech", type=Path, default=None, metavar="DIR",
                    help="also Indian EmoSpeech Command (datasets.load_emospeech) from DIR, "
                         "4 classes")
    ap.add_argument("--limit", type=int, default=900, metavar="N",
                    help="random files (seed 0) of nEMO and EmoSpeech, 0 for all (default 900)")
    args = ap.parse_args(argv)
    conds = [c for c in args.conditions.split(",") if c]
    known = [*CONDITIONS, *EXTRA_CONDITIONS, *CODEC_CONDITIONS, *VIDEO_CONDITIONS]
    bad = [c for c in conds if c not in known]
    if bad:
        ap.error(f"unknown condition(s) {bad}; choose from {known}")
    if args.limit < 0:
        ap.error(f"--limit {args.limit}: give a number of files, or 0 for all")
    if not args.tmp.is_dir():
        ap.error(f"--tmp {args.tmp}: no such folder (create it, or pass an existing one)")
    try:
        sets = cross_corpus_sets(args)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = held_out_files() if conds else []
    with tempfile.TemporaryDirectory(prefix="redsg-eval-voice-", dir=args.tmp) as tmp:
        results = [run_condition(files, c, args.config, Path(tmp)) for c in conds]
    base = {r["file"]: r["label"] for r in results[0]["rows"]} if results else {}
    if results:
        print(f"{'condition':<18} {'files':>5} {'labelled':>9} {'accuracy':>9} {'utt/file':>8} "
              f"{'labels != ' + conds[0]:>20}")
    for res in results:
        changed = sum(r["label"] != base[r["file"]] for r in res["rows"])
        res["changed_vs_first"] = changed
        print(f"{res['condition']:<18} {res['files']:>5} {res['labelled_pct']:>8.1f}% "
              f"{res['accuracy_pct']:>8.1f}% {res['utterances_per_file']:>8.2f} {changed:>20}")
        if res["condition"] in VIDEO_CONDITIONS:
            print(f"{'':<18} the fused state over the clip: {res['over_time_accuracy_pct']:.1f} % "
                  f"right, {res['over_time_neutral_pct']:.1f} % neutral; at its end: "
                  f"{res['final_accuracy_pct']:.1f} % right, {res['final_neutral_pct']:.1f} % "
                  "neutral")
    out = {"held_out_actors": list(HELD_OUT), "results": results}
    for name, (paths, labels, classes) in sets.items():
        out[name.lower()] = u = run_corpus(paths, labels, classes, args.config)
        print(f"{name}, {len(classes)} classes: {u['labelled']} of {u['files']} labelled, "
              f"accuracy {u['accuracy_pct']:.1f} %, UAR {u['uar_pct']:.1f} %, recall " +
              ", ".join(f"{c} {r:.0f} %" for c, r in u["recall_pct"].items()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
