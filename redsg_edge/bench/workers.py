"""The ``stages``, ``loop`` and ``peers`` (our side) measurements, each in a worker process.

Each timed measurement runs in a fresh process (``python -m redsg_edge.bench --worker KIND
--in payload.json``) whose CPU affinity is set before anything is imported, so every thread it
starts (MediaPipe, XNNPACK, FFmpeg) inherits it. The worker prints one JSON object on its
original stdout; native libraries' prints go to stderr (the section's log file).

The parent side, ``bench_stages`` and ``bench_loop``, starts the workers pinned to one core and
to all cores and judges the targets. Latencies in milliseconds, throughput in frames/s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (CLIP_NAME, HEIGHT, LOOP_FRAMES, LOOP_FRAMES_QUICK, STAGE_CALLS,
                     STAGE_CALLS_QUICK, TARGETS, WARMUP, WARMUP_QUICK, WIDTH, BenchPaths,
                     affinity_cpus, base_payload, compose_photo, decode_frames, json_stdout,
                     load_snapshot, loadavg, log_dir, own_worker, run_worker, speech_windows,
                     summarize_ns, time_calls)

def _worker_cfg(payload: dict):  # the payload's config with its resolved model paths
    from ..config import load_config
    cfg = load_config(payload["config"])
    cfg.vision.detector_model = Path(payload["models"]["detector"])
    cfg.vision.fer_model = Path(payload["models"]["fer"])
    cfg.speech.ser_model = Path(payload["models"]["ser"])
    cfg.speech.vad_model = Path(payload["models"]["vad"])
    utt = payload["models"].get("utterance ser")
    cfg.speech.utterance_model = Path(utt) if utt else None
    return cfg


def _stt_stage(cfg, pcm: np.ndarray, threads: int, n: int, warm: int) -> dict:
    """Speech-to-text of one utterance (``pcm``, 3 s of speech), once per utterance the VAD
    closes, so timed over fewer calls; p50/p95 None when its models are not fetched."""
    from ..errors import ModelError
    from ..stt import Transcriber
    try:
        stt = Transcriber.from_config(cfg.speech.transcript, threads=threads)
    except ModelError:
        return {"p50_ms": None, "p95_ms": None, "skipped": "speech-to-text models not fetched"}
    return summarize_ns(time_calls(lambda i: stt.transcribe(pcm), n, warm))


def worker_stages(p: dict) -> dict:
    """Per-stage latencies in this process (its affinity decides one core or all cores).

    ``p``: the payload (``base_payload`` + ``n`` timed calls, ``warmup`` calls, ``threads`` for
    the interpreters, ``frames`` / ``speech_files`` limits). Returns ``{"threads", "cpus",
    "frames", "speech_windows", "detection_rate", "stages": {name: summarize_ns(...)}}``,
    latencies in ms. Raises RuntimeError when the clip shows no face."""
    from ..fusion import Evidence, Fusion
    from ..speech import SerModel
    from ..vision import FaceDetector, FerModel, VisionWorker, crop_face, select_face
    from ..features import mfcc_features

    cfg = _worker_cfg(p)
    n, warm, threads = p["n"], p["warmup"], p["threads"]
    data = Path(p["data"])
    frames = decode_frames(data / CLIP_NAME, limit=p.get("frames"))
    wins = speech_windows(cfg.speech.window_s, data / "ravdess", limit_files=p.get("speech_files"))
    det = FaceDetector(cfg.vision.detector_model, cfg.vision.min_detection_confidence,
                       num_threads=threads)
    fer = FerModel.from_config(cfg.vision, num_threads=threads)
    ser = SerModel(cfg.speech.ser_model, cfg.speech.window_s, num_threads=threads)
    res: dict[str, Any] = {"threads": threads, "cpus": affinity_cpus(), "frames": len(frames),
                           "speech_windows": len(wins), "stages": {}}
    found: dict[int, Any] = {}

    def detect(i: int) -> None:
        k = i % len(frames)
        faces = det.detect(frames[k])
        f = select_face(faces, None)
        if f is not None:
            found[k] = f
    res["stages"]["face_detection"] = summarize_ns(time_calls(detect, n, warm))
    res["detection_rate"] = round(len(found) / min(len(frames), n + warm), 4)
    keys = sorted(found)
    if not keys:
        raise RuntimeError("no face found in the clip: cannot time crop and FER")
    crops = [crop_face(frames[k], found[k]) for k in keys]
    res["stages"]["crop_preprocess"] = summarize_ns(time_calls(
        lambda i: crop_face(frames[keys[i % len(keys)]], found[keys[i % len(keys)]]), n, warm))
    probs = []
    res["stages"]["fer"] = summarize_ns(time_calls(
        lambda i: probs.append(fer.predict(crops[i % len(crops)])), n, warm))
    vw = VisionWorker(det, fer)
    res["stages"]["vision_frame"] = summarize_ns(time_calls(
        lambda i: vw.process(frames[i % len(frames)]), n, warm))
    # A frame without a face: the whole frame, then vision.far_face_tiles tiles of it
    # (FarFaceSearch, in turn), as the live loop searches an empty room.
    empty = np.full_like(frames[0], 128)
    vw_far = VisionWorker(det, fer, max(1, cfg.vision.far_face_tiles))
    res["stages"]["vision_frame_no_face"] = summarize_ns(time_calls(
        lambda i: vw_far.process(empty), n, warm))
    feats = []
    res["stages"]["mfcc"] = summarize_ns(time_calls(
        lambda i: feats.append(mfcc_features(wins[i % len(wins)])), n, warm))
    feats = feats[:len(wins)]
    voice_probs = []
    res["stages"]["ser"] = summarize_ns(time_calls(
        lambda i: voice_probs.append(ser.clf.predict(feats[i % len(feats)])), n, warm))
    res["stages"]["speech_window"] = summarize_ns(time_calls(
        lambda i: ser.predict(wins[i % len(wins)]), n, warm))
    if cfg.speech.utterance_model is not None:  # at each utterance's end, 2.5 s utterances
        from ..utterance_ser import UtteranceSer
        utt = UtteranceSer(cfg.speech.utterance_model, num_threads=threads)
        norm = utt.new_norm()
        res["stages"]["utterance_ser_2_5s"] = summarize_ns(time_calls(
            lambda i: utt.predict(wins[i % len(wins)], norm), max(3, n // 10), min(warm, 5)))
        # a rolling label in quiet reads at most the newest 5 s of the utterance in progress
        pairs = [np.concatenate([wins[k], wins[k + 1]]) for k in range(0, len(wins) - 1, 2)]
        if pairs:
            res["stages"]["utterance_ser_5s"] = summarize_ns(time_calls(
                lambda i: utt.predict(pairs[i % len(pairs)], norm, learn=False),
                max(3, n // 10), min(warm, 5)))
    if cfg.speech.reverb_gate:  # each utterance's end: how reverberant it sounds (reverb.srmr)
        from ..reverb import srmr
        res["stages"]["srmr_2_5s"] = summarize_ns(time_calls(
            lambda i: srmr(wins[i % len(wins)]), max(3, n // 10), min(warm, 5)))
    # The VAD runs on every 32 ms chunk of audio, speech or not: consecutive chunks of the
    # utterances (the network is recurrent, so in stream order), each after its input gain.
    from ..vad import CHUNK, InputGain, SileroVad
    vad = SileroVad(cfg.speech.vad_model)
    gain = InputGain(cfg.speech.vad_gain_max_db)
    stream = np.concatenate(wins[::5] or wins)
    chunks = [stream[k * CHUNK:(k + 1) * CHUNK] for k in range(len(stream) // CHUNK)]

    def vad_chunk(i: int) -> float:
        c = chunks[i % len(chunks)]
        return vad.chunk_prob(c, gain.gain(c))
    res["stages"]["vad_chunk"] = summarize_ns(time_calls(vad_chunk, n, warm))
    res["stages"]["stt_utterance_3s"] = _stt_stage(cfg, np.concatenate(wins)[:48000], threads,
                                                   max(3, n // 50), min(warm, 2))
    fusion = Fusion(cfg.fusion)
    fprobs = [np.clip(v, 1e-6, None) for v in probs[:64]]
    vprobs = [np.clip(v, 1e-6, None) for v in voice_probs[:64]]

    def fuse(i: int) -> None:  # face evidence per frame at 15 fps, voice every 0.5 s
        t = i / 15.0
        if i % 7 == 6:
            ev = Evidence("voice", t, vprobs[i % len(vprobs)])
        else:
            ev = Evidence("face", t, fprobs[i % len(fprobs)])
        fusion.update(t, ev)
    res["stages"]["fusion_update"] = summarize_ns(time_calls(fuse, n, warm))
    det.close()
    return res


def worker_loop(p: dict) -> dict:
    """Vision loop throughput (decode excluded / included) and paced 15 fps latency.

    ``p``: the payload (``base_payload`` + ``n`` frames, ``warmup`` frames, ``frames`` limit,
    ``paced_frames`` for the real-time part). Returns ``{"cpus", "fer_threads", "max_fps":
    {mode: {"fps", ...}}, "latency_15fps": {"frame_to_fused": summarize_ns(...), ...}}``."""
    import queue
    import threading

    from ..capture import VideoFileCamera
    from ..fusion import Evidence, Fusion
    from ..pipeline import Pipeline
    from ..vision import FaceDetector, FerModel, VisionWorker

    cfg = _worker_cfg(p)
    n, warm = p["n"], p["warmup"]
    res: dict[str, Any] = {"cpus": affinity_cpus(), "fer_threads": 1, "max_fps": {}}

    def make_worker():
        return (VisionWorker(FaceDetector(cfg.vision.detector_model,
                                          cfg.vision.min_detection_confidence),
                             FerModel.from_config(cfg.vision)), Fusion(cfg.fusion))

    def step(vw, fusion, t, frame) -> None:
        r, _ = vw.process(frame)
        fusion.update(t, Evidence("face", t, r.probs) if r else None)

    clip = Path(p["data"]) / CLIP_NAME
    # (a) decode excluded: frames decoded beforehand, one thread runs the loop flat out
    frames = decode_frames(clip, limit=p.get("frames"))
    vw, fusion = make_worker()
    for i in range(warm):
        step(vw, fusion, i / 15.0, frames[i % len(frames)])
    lat = np.empty(n, np.int64)
    t0 = time.perf_counter_ns()
    for i in range(n):
        s = time.perf_counter_ns()
        step(vw, fusion, (warm + i) / 15.0, frames[i % len(frames)])
        lat[i] = time.perf_counter_ns() - s
    wall = (time.perf_counter_ns() - t0) / 1e9
    res["max_fps"]["decode_excluded"] = {"fps": round(n / wall, 1), "frames": n,
                                         "wall_s": round(wall, 3), "per_frame": summarize_ns(lat),
                                         "faces": vw.faces_found, "frames_seen": vw.frames}
    vw.close()
    del frames

    def clip_frames():
        """Endless (t, rgb) from the clip, decoded and letterboxed now; t keeps increasing."""
        offset = 0.0
        while True:
            cam = VideoFileCamera(clip, WIDTH, HEIGHT, realtime=False, key="bench clip")
            cam.open()
            last = 0.0
            for t, rgb in cam:
                last = t
                yield offset + t, rgb
            cam.close()
            offset += last + 0.05

    # (b) decode included, serial: the replay way
    vw, fusion = make_worker()
    src = clip_frames()
    for _ in range(warm):
        t, rgb = next(src)
        step(vw, fusion, t, rgb)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        t, rgb = next(src)
        step(vw, fusion, t, rgb)
    wall = (time.perf_counter_ns() - t0) / 1e9
    res["max_fps"]["decode_included_serial"] = {"fps": round(n / wall, 1), "frames": n,
                                                "wall_s": round(wall, 3)}
    vw.close()

    # (c) decode included, pipelined: decoder thread → bounded queue → vision thread
    vw, fusion = make_worker()
    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def producer() -> None:
        for t, rgb in clip_frames():
            while not stop.is_set():
                try:
                    q.put((time.perf_counter_ns(), t, rgb), timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    th = threading.Thread(target=producer, daemon=True)
    th.start()
    for _ in range(warm):
        _, t, rgb = q.get()
        step(vw, fusion, t, rgb)
    lat = np.empty(n, np.int64)
    t0 = time.perf_counter_ns()
    for i in range(n):
        t_in, t, rgb = q.get()
        step(vw, fusion, t, rgb)
        lat[i] = time.perf_counter_ns() - t_in
    wall = (time.perf_counter_ns() - t0) / 1e9
    stop.set()
    th.join(2.0)
    res["max_fps"]["decode_included_pipelined"] = {
        "fps": round(n / wall, 1), "frames": n, "wall_s": round(wall, 3),
        "queue_to_fused": summarize_ns(lat), "queue_size": 4}
    vw.close()

    # (d) the real Pipeline, camera = the clip paced at 15 fps: frame capture time → fused update
    pc = cfg.model_copy(deep=True)
    pc.camera.source = "file"
    pc.camera.file = clip
    pc.camera.fps = 15.0
    pc.camera.width, pc.camera.height = WIDTH, HEIGHT
    pc.microphone.source = "none"
    lats: list[float] = []
    done = threading.Event()
    target = warm + p["paced_frames"]

    def on_update(upd) -> None:
        # A subscriber of the fused updates, called by the vision thread right after the
        # fusion update of each frame (with face evidence or without): the whole path.
        lats.append(time.monotonic() - upd.t)
        if len(lats) >= target:
            done.set()

    pipe = Pipeline(pc, reply=False)
    pipe.bus.subscribe(on_update, types=("update",), name="bench latency")
    pipe.start()
    t0 = time.monotonic()
    done.wait(timeout=p["paced_frames"] / 15.0 * 2 + 30)
    wall = time.monotonic() - t0
    st = pipe.status()
    pipe.stop()
    lat_ns = (np.asarray(lats[warm:target]) * 1e9).astype(np.int64)
    res["latency_15fps"] = {"frame_to_fused": summarize_ns(lat_ns), "frames": int(lat_ns.size),
                            "wall_s": round(wall, 1), "captured": st["frames"]["captured"],
                            "ring_dropped": st["frames"]["dropped"],
                            "classified": st["frames"]["classified"],
                            "with_face": st["frames"]["with_face"], "fps": st["fps"]}
    return res


def worker_peers_ours(p: dict) -> dict:
    """This project's pipeline on the peer-comparison images: crop mode and photo mode.

    ``p``: ``base_payload`` + ``npz`` (``faces`` (N, 48, 48) uint8), ``threads``, optional
    ``limit`` and ``modes``. Returns per-image (7,) scores (None: no face found), latencies in
    ns and faces found per photo, for ``peers.score_predictions``."""
    from ..vision import FaceDetector, FerModel, crop_face

    cfg = _worker_cfg(p)
    data = np.load(p["npz"])
    faces48 = data["faces"]
    fer = FerModel.from_config(cfg.vision, num_threads=p.get("threads", 1))
    det = FaceDetector(cfg.vision.detector_model, cfg.vision.min_detection_confidence)
    n = len(faces48) if p.get("limit") is None else min(len(faces48), p["limit"])
    out: dict[str, Any] = {"cpus": affinity_cpus(), "n": n}
    warm = min(20, n)
    for i in range(warm):  # warm both paths
        fer.predict(faces48[i])
        det.detect(np.repeat(compose_photo(faces48[i])[..., None], 3, axis=2))
    if "crop" in p.get("modes", ("crop", "photo")):
        scores, lat = np.zeros((n, 7), np.float32), np.empty(n, np.int64)
        for i in range(n):
            t0 = time.perf_counter_ns()
            scores[i] = fer.predict(faces48[i])
            lat[i] = time.perf_counter_ns() - t0
        out["crop"] = {"scores": np.round(scores, 5).tolist(), "latency_ns": lat.tolist()}
    scores = np.full((n, 7), np.nan, np.float32)
    lat, nf = np.empty(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        rgb = np.repeat(compose_photo(faces48[i])[..., None], 3, axis=2)
        t0 = time.perf_counter_ns()
        faces = det.detect(rgb)
        if faces:
            f = max(faces, key=lambda f: f.area)
            scores[i] = fer.predict(crop_face(rgb, f))
        lat[i] = time.perf_counter_ns() - t0
        nf[i] = len(faces)
    out["photo"] = {"scores": [None if np.isnan(s[0]) else np.round(s, 5).tolist()
                               for s in scores], "latency_ns": lat.tolist(), "n_faces": nf.tolist()}
    det.close()
    return out


WORKERS = {"stages": worker_stages, "loop": worker_loop, "peers-ours": worker_peers_ours}


def worker_main(argv: list[str]) -> int:
    """``python -m redsg_edge.bench --worker KIND --in PAYLOAD.json``: run one of ``WORKERS``
    and print its result as one JSON line on stdout. Returns 0; argparse exits 2 on bad usage."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m redsg_edge.bench --worker")
    ap.add_argument("--worker", choices=sorted(WORKERS), required=True)
    ap.add_argument("--in", dest="inp", type=Path, required=True)
    a = ap.parse_args(argv)
    payload = json.loads(a.inp.read_text())
    with json_stdout() as emit:
        res = WORKERS[a.worker](payload)
        res["loadavg_after"] = loadavg()
        emit(res)
    return 0


# ======================================================================= the parent side

def bench_stages(cfg, models: dict[str, Path], paths: BenchPaths, quick: bool,
                 out_dir: Path) -> dict:
    """Per-stage p50/p95 (ms), one core + num_threads=1, then all cores + num_threads=cores.
    Returns ``{"calls", "warmup", "modes": {"one_core", "all_cores"}, "targets", ...}``;
    raises RuntimeError when a worker fails."""
    cpus = affinity_cpus()
    n = STAGE_CALLS_QUICK if quick else STAGE_CALLS
    warm = WARMUP_QUICK if quick else WARMUP
    base = {**base_payload(cfg, models, paths), "n": n, "warmup": warm,
            "frames": 60 if quick else None, "speech_files": 6 if quick else None}
    res: dict[str, Any] = {"calls": n, "warmup": warm, "modes": {}}
    for mode, pin, threads in (("one_core", [cpus[-1]], 1), ("all_cores", cpus, len(cpus))):
        res["load_before_" + mode] = load_snapshot()
        print(f"  stages, {mode} ({len(pin)} CPU, num_threads={threads}) ...", flush=True)
        res["modes"][mode] = run_worker(own_worker("stages"), {**base, "threads": threads},
                                        pin, log_dir(out_dir) / f"stages_{mode}.log")
    one = res["modes"]["one_core"]["stages"]
    p50 = one["vision_frame"]["p50_ms"]
    vad = one["vad_chunk"]["p50_ms"]
    vad30 = None if vad is None else round(vad * 30 / 32, 4)  # a chunk is 32 ms of audio
    res["targets"] = {"vision_frame_p50_ms_one_core": {
        "value": p50, "limit": TARGETS["vision_frame_p50_ms_one_core"],
        "met": p50 is not None and p50 <= TARGETS["vision_frame_p50_ms_one_core"]},
        "vad_per_30ms_p50_ms_one_core": {
        "value": vad30, "limit": TARGETS["vad_per_30ms_p50_ms_one_core"],
        "met": vad30 is not None and vad30 <= TARGETS["vad_per_30ms_p50_ms_one_core"]}}
    return res


def bench_loop(cfg, models: dict[str, Path], paths: BenchPaths, quick: bool,
               out_dir: Path) -> dict:
    """Vision loop max fps (decode excluded / included) and frame → fused latency (ms) at
    15 fps, pinned to one core then all cores. Raises RuntimeError when a worker fails."""
    cpus = affinity_cpus()
    n = LOOP_FRAMES_QUICK if quick else LOOP_FRAMES
    base = {**base_payload(cfg, models, paths), "n": n, "warmup": WARMUP_QUICK if quick else WARMUP,
            "frames": 60 if quick else None, "paced_frames": 45 if quick else 900}
    res: dict[str, Any] = {"frames": n, "modes": {}}
    for mode, pin in (("one_core", [cpus[-1]]), ("all_cores", cpus)):
        res["load_before_" + mode] = load_snapshot()
        print(f"  loop, {mode} ({len(pin)} CPU) ...", flush=True)
        res["modes"][mode] = run_worker(own_worker("loop"), base, pin,
                                        log_dir(out_dir) / f"loop_{mode}.log")
    fps = res["modes"]["all_cores"]["max_fps"]["decode_included_pipelined"]["fps"]
    fps_ex = res["modes"]["all_cores"]["max_fps"]["decode_excluded"]["fps"]
    res["targets"] = {
        "loop_fps_all_cores_decode_included": {"value": fps, "limit": TARGETS["loop_fps_all_cores"],
                                               "met": fps >= TARGETS["loop_fps_all_cores"]},
        "loop_fps_all_cores_decode_excluded": {"value": fps_ex,
                                               "limit": TARGETS["loop_fps_all_cores"],
                                               "met": fps_ex >= TARGETS["loop_fps_all_cores"]}}
    return res
