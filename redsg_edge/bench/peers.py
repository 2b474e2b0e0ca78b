"""The ``peers`` section: the ``fer`` package (25.10.3: its own API, bundled mini-XCEPTION
TFLite + Haar cascade) against this project's pipeline on the same images in one run.

The peer runs in its own venv (``--peer-python``, default ``.venv-peers``, built by
``scripts/setup_peers.sh``) through ``scripts/peer_fer.py``; our side in a worker of ours
(``workers.worker_peers_ours``). Both are pinned to one core, then given all cores for the
photo latency. Accuracy as fractions (0..1), latency in milliseconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .common import (PEER_SCRIPT, PHOTO_FACE, PHOTO_H, PHOTO_W, TARGETS, BenchPaths,
                     affinity_cpus, base_payload, load_snapshot, log_dir, model_info,
                     own_worker, run_worker, summarize_ns)


def peer_unavailable(paths: BenchPaths) -> str | None:
    """None when the peer's interpreter and worker script exist, else why not (naming the
    ``--peer-python`` flag and how to build the venv)."""
    if not Path(paths.peer_python).is_file():
        return (f"{paths.peer_python}: the fer peer's Python not found: create .venv-peers with "
                "`bash scripts/setup_peers.sh` (fer 25.10.3 and the [peers] extra) or pass "
                "--peer-python PATH")
    if not PEER_SCRIPT.is_file():
        return f"{PEER_SCRIPT} missing"
    return None


def peer_dataset(data: Path, quick: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(faces (N, 48, 48) uint8, labels (N,) int64, set ids (N,) 0 = FER2013 PrivateTest
    1 = CK+48, names) from ``data/fer2013.zip`` and ``data/ck48.zip``. Quick: 10 FER2013
    images per class and every 20th CK+48 image. Raises FileNotFoundError naming a zip."""
    from ..datasets import load_ck48, load_fer2013
    x, y, names = load_fer2013("test", data / "fer2013.zip",
                               limit_per_class=10 if quick else None)
    ck = load_ck48(data / "ck48.zip")
    if quick:
        ck = ck[::20]
    faces = np.concatenate([x, np.stack([c.image for c in ck])])
    labels = np.concatenate([y, np.array([c.label for c in ck], np.int64)])
    sets = np.concatenate([np.zeros(len(x), np.int64), np.ones(len(ck), np.int64)])
    return faces, labels, sets, list(names) + [c.name for c in ck]


def _acc(pred: np.ndarray, labels: np.ndarray) -> float | None:  # fraction correct
    return round(float((pred == labels).mean()), 4) if len(labels) else None


def _balanced(pred: np.ndarray, labels: np.ndarray) -> float | None:  # mean per-class recall
    rec = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return round(float(np.mean(rec)), 4) if rec else None


def score_predictions(scores: list, labels: np.ndarray, sets: np.ndarray) -> dict:
    """Accuracy per test set from per-image (7,) scores (None = no face found = wrong).

    FER2013: 7-way argmax. CK+48 (no neutral, contempt left out): ``acc_6way`` = argmax over our
    six non-neutral classes, ``acc_7way`` = plain argmax (a "neutral" answer counts wrong).
    ``acc_detected`` is the accuracy on the images where a face was found. Ties (the peer's API
    rounds scores to 2 decimals) go to the first class, as its ``top_emotion`` does."""
    found = np.array([s is not None for s in scores])
    sc = np.array([s if s is not None else [np.nan] * 7 for s in scores], dtype=np.float64)
    p7 = np.where(found, np.argmax(np.nan_to_num(sc, nan=-1), axis=1), -1)
    p6 = np.where(found, np.argmax(np.nan_to_num(sc[:, :6], nan=-1), axis=1), -1)
    out = {}
    for sid, name in ((0, "fer2013_private_test"), (1, "ck48")):
        m = sets == sid
        if not m.any():
            continue
        d = {"n": int(m.sum()), "face_found": round(float(found[m].mean()), 4),
             "acc_7way": _acc(p7[m], labels[m]), "balanced_acc_7way": _balanced(p7[m], labels[m])}
        if sid == 1:
            d["acc_6way"] = _acc(p6[m], labels[m])
            d["balanced_acc_6way"] = _balanced(p6[m], labels[m])
            md = m & found
            d["acc_6way_detected"] = _acc(p6[md], labels[md])
        else:
            md = m & found
            d["acc_7way_detected"] = _acc(p7[md], labels[md])
        d["acc"] = d["acc_6way"] if sid == 1 else d["acc_7way"]
        out[name] = d
    return out


def bench_peers(cfg, models: dict[str, Path], paths: BenchPaths, quick: bool,
                out_dir: Path) -> dict:
    """``fer`` 25.10.3 vs this pipeline on the same FER2013 PrivateTest and CK+48 images:
    accuracy, latency (ms, one core and all cores), speed-up, targets. ``{"skipped": why}``
    when the default peer venv is missing; raises RuntimeError when ``--peer-python`` was given
    and is missing, or a worker fails."""
    why = peer_unavailable(paths)
    if why:
        if paths.peer_python_given:
            raise RuntimeError(why)
        return {"skipped": why}
    faces, labels, sets, _names = peer_dataset(paths.data, quick)
    cpus = affinity_cpus()
    pin = [cpus[-1]]
    res: dict[str, Any] = {"images": {"fer2013_private_test": int((sets == 0).sum()),
                                      "ck48": int((sets == 1).sum())},
                           "pinned_cpus": pin, "feeding": {
        "crop": "the 48x48 dataset image itself: ours FerModel.predict(image); fer: "
                "FER(...).detect_emotions(bgr48, face_rectangles=[(0, 0, 48, 48)]) (whole "
                "image as the face box; its own API, so its own grey padding, square box, "
                "offsets, resize to 64x64 and scaling apply)",
        "photo": f"the face upscaled (Lanczos) to {PHOTO_FACE} px, centred on a flat grey "
                 f"{PHOTO_W}x{PHOTO_H} canvas, 3 equal channels: ours MediaPipe BlazeFace "
                 "(IMAGE mode) → largest face → crop_face → FER; fer: "
                 "FER().detect_emotions(photo) (Haar cascade, its defaults) → largest box. "
                 "Latency = the whole call per photo. No face found = wrong answer."}}
    with tempfile.TemporaryDirectory(prefix="redsg-peers-") as tmpd:
        npz = Path(tmpd) / "faces.npz"
        np.savez(npz, faces=faces)
        res["load_before"] = load_snapshot()
        print(f"  peers: fer package on {len(faces)} images, pinned to CPU {pin} "
              "(~40 ms a photo) ...", flush=True)
        peer_cmd = [str(paths.peer_python), str(PEER_SCRIPT)]
        peer = run_worker(peer_cmd, {"npz": str(npz)}, pin, log_dir(out_dir) / "peers_fer.log")
        print("  peers: this pipeline ...", flush=True)
        ours = run_worker(own_worker("peers-ours"), {**base_payload(cfg, models, paths),
                                                      "npz": str(npz), "threads": 1},
                          pin, log_dir(out_dir) / "peers_ours.log")
        # Photo latency with all cores, on the first images (both sides, same images).
        lim = 100 if quick else 500
        res["all_cores_images"] = min(lim, len(faces))
        print(f"  peers: photo latency on all {len(cpus)} CPUs, {lim} images each ...", flush=True)
        peer_all = run_worker(peer_cmd, {"npz": str(npz), "limit": lim, "modes": ["photo"]},
                              cpus, log_dir(out_dir) / "peers_fer_all.log")
        ours_all = run_worker(own_worker("peers-ours"), {**base_payload(cfg, models, paths),
                                                          "npz": str(npz), "limit": lim,
                                                          "threads": 1, "modes": ["photo"]},
                              cpus, log_dir(out_dir) / "peers_ours_all.log")
    res["versions"] = {"fer": peer["versions"], "ours": {"fer_model": model_info(models["fer"]),
                                                         "detector": model_info(models["detector"])}}
    res["accuracy"] = {
        "ours_crop": score_predictions(ours["crop"]["scores"], labels, sets),
        "ours_photo": score_predictions(ours["photo"]["scores"], labels, sets),
        "fer_crop_offsets_0": score_predictions(peer["crop_offsets_0"]["scores"], labels, sets),
        "fer_crop_default": score_predictions(peer["crop_default"]["scores"], labels, sets),
        "fer_photo_default": score_predictions(peer["photo_default"]["scores"], labels, sets),
        "fer_photo_offsets_0": score_predictions(peer["photo_offsets_0"]["scores"], labels, sets),
    }
    lat = {
        "ours_photo_pipeline": summarize_ns(ours["photo"]["latency_ns"]),
        "ours_classifier": summarize_ns(ours["crop"]["latency_ns"]),
        "fer_photo_pipeline": summarize_ns(peer["photo_default"]["latency_ns"]),
        "fer_classifier_api": summarize_ns(peer["crop_offsets_0"]["latency_ns"]),
        "fer_classifier_bare": summarize_ns(peer["bare_classifier_ns"]),
        "fer_haar_detect": summarize_ns(peer["haar_ns"]),
    }
    res["latency_one_core"] = lat
    res["latency_all_cores"] = {
        "ours_photo_pipeline": summarize_ns(ours_all["photo"]["latency_ns"]),
        "fer_photo_pipeline": summarize_ns(peer_all["photo_default"]["latency_ns"])}
    res["multiple_faces"] = {"ours_photo": int(np.sum(np.array(ours["photo"]["n_faces"]) > 1)),
                             "fer_photo": int(np.sum(np.array(peer["photo_default"]["n_faces"]) > 1))}
    speed = lat["fer_photo_pipeline"]["p50_ms"] / lat["ours_photo_pipeline"]["p50_ms"]
    speed_clf = lat["fer_classifier_api"]["p50_ms"] / lat["ours_classifier"]["p50_ms"]
    res["speedup_p50"] = {"photo_pipeline": round(speed, 1), "classifier": round(speed_clf, 2)}
    acc = res["accuracy"]
    better = {}
    for ds in ("fer2013_private_test", "ck48"):
        ours_best = acc["ours_crop"][ds]["acc"]
        peer_best = max(acc[k][ds]["acc"] for k in acc if k.startswith("fer_crop"))
        ours_ph, peer_ph = acc["ours_photo"][ds]["acc"], acc["fer_photo_default"][ds]["acc"]
        better[ds] = {"crop": [ours_best, peer_best], "photo": [ours_ph, peer_ph],
                      "met": ours_best > peer_best and ours_ph > peer_ph}
    res["targets"] = {
        "peer_speedup_per_face": {"value": round(speed, 1),
                                  "limit": TARGETS["peer_speedup_per_face"],
                                  "met": speed >= TARGETS["peer_speedup_per_face"]},
        "higher_accuracy_both_sets": {"value": better,
                                      "met": all(v["met"] for v in better.values())}}
    return res
