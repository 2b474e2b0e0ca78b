"""What every bench section shares: the paths it reads (overridable from the command line),
the fixed sizes and targets, machine and load information, latency summaries, the real inputs
(clip frames, speech windows, peer photos) and the worker-process plumbing.

Units: latencies in nanoseconds as measured (``time.perf_counter_ns``) and milliseconds once
summarised; CPU in percent of one core; memory in MB (10^6 bytes); audio 16 kHz int16.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__

REPO = Path(__file__).resolve().parents[2]
#: The Pexels clip (640x360, 23.976 fps, one face) under the data folder.
CLIP_NAME = Path("av_clips") / "pyfeat_WolfgangLanger_Pexels.mp4"
#: The shared BlazeFace copy, relative to the data folder (``../shared/models``).
SHARED_DETECTOR_NAME = Path("..") / "models" / "blaze_face_short_range.tflite"
PEER_VENV_PYTHON = REPO / ".venv-peers" / "bin" / "python"
RUNTIME_VENV_PYTHON = REPO / ".venv-rt" / "bin" / "python"
PEER_SCRIPT = REPO / "scripts" / "peer_fer.py"
DEFAULT_OUT = REPO / "runs" / "bench"


WIDTH, HEIGHT = 640, 480
STAGE_CALLS, STAGE_CALLS_QUICK = 1000, 50
WARMUP, WARMUP_QUICK = 50, 5
LOOP_FRAMES, LOOP_FRAMES_QUICK = 1000, 50
DAEMON_S, DAEMON_S_QUICK = 600.0, 10.0
COLDSTART_RUNS, COLDSTART_RUNS_QUICK = 3, 1
#: Peer comparison photos: the 48x48 dataset face upscaled (Lanczos) to PHOTO_FACE px, centred on
#: a flat grey PHOTO_W x PHOTO_H canvas (see compose_photo).
PHOTO_W, PHOTO_H, PHOTO_FACE, PHOTO_GREY = 640, 480, 240, 128

#: Targets of issue 6 on this machine (x86-64, 2 cores).
TARGETS = {
    "vision_frame_p50_ms_one_core": 6.0,      # face detection + FER per frame
    "loop_fps_all_cores": 100.0,              # 640x480 video
    "peer_speedup_per_face": 10.0,            # whole pipeline per photo, one core
    "daemon_cpu_pct_one_core": 25.0,          # at 15 fps real time
    "daemon_rss_mb": 400.0,
    "daemon_rss_mb_with_stt": 500.0,           # speech-to-text loaded (issue 18)
    "daemon_rss_slope_mb_per_min": 1.0,       # "does not grow": Theil-Sen slope after 1 min
    "coldstart_s": 8.0,
    "vad_per_30ms_p50_ms_one_core": 0.5,      # Silero VAD, per 30 ms of audio
}


def default_data_root() -> Path:
    """The dataset folder when ``--data`` is not given: ``$REDSG_DATA``, else ``../shared/data``
    next to the repository (``redsg_edge.datasets.DATA_ROOT``)."""
    from ..datasets import DATA_ROOT
    return Path(DATA_ROOT)


@dataclass(frozen=True)
class BenchPaths:
    """The files outside the repository a bench run reads, each overridable on the command line.

    ``data``: dataset folder (``--data``; the Pexels clip, RAVDESS, FER2013, CK+48 as described
    in ``../shared/data/README.md``). ``detector``: BlazeFace model given with ``--detector``
    (None: the config's, else the shared copy ``data/../models``). ``peer_python``: interpreter
    of the ``fer`` peer's venv (``--peer-python``). ``daemon_python``: interpreter the daemon
    and cold-start benches run the daemon with (``--daemon-python``; None: ``.venv-rt`` when it
    exists, else this interpreter). ``*_given``: the value came from the command line, so a
    missing file is an error rather than a fallback.
    """

    data: Path
    detector: Path | None = None
    peer_python: Path = PEER_VENV_PYTHON
    daemon_python: Path | None = None
    peer_python_given: bool = False

    @classmethod
    def from_args(cls, args: Any) -> "BenchPaths":
        """From ``redsg-edge bench``'s parsed arguments; absent attributes take the defaults."""
        peer = getattr(args, "peer_python", None)
        return cls(data=Path(getattr(args, "data", None) or default_data_root()),
                   detector=getattr(args, "detector", None),
                   peer_python=Path(peer) if peer else PEER_VENV_PYTHON,
                   daemon_python=getattr(args, "daemon_python", None),
                   peer_python_given=peer is not None)

    @property
    def clip(self) -> Path:
        """The Pexels clip (640x360 H.264, 23.976 fps) the vision benches decode."""
        return self.data / CLIP_NAME

    @property
    def ravdess(self) -> Path:
        """The RAVDESS folder (``index.csv`` + 16 kHz mono WAVs); Actor_23/24 are used."""
        return self.data / "ravdess"

    @property
    def shared_detector(self) -> Path:
        """The shared BlazeFace copy next to the data folder (``DATA/../models``)."""
        return (self.data / SHARED_DETECTOR_NAME).resolve()

    def missing_data(self, section: str) -> str | None:
        """None when the data files ``section`` reads exist, else a message naming the first
        missing one and the ``--data`` flag."""
        need = {"stages": [(self.clip, "the Pexels clip"),
                           (self.ravdess / "index.csv", "the RAVDESS index")],
                "loop": [(self.clip, "the Pexels clip")],
                "peers": [(self.data / "fer2013.zip", "the FER2013 zip"),
                          (self.data / "ck48.zip", "the CK+48 zip")]}
        need["daemon"] = need["coldstart"] = need["stages"]
        for path, what in need.get(section, []):
            if not path.is_file():
                return (f"{path}: {what} not found in the data folder {self.data} (pass "
                        "--data DIR or set REDSG_DATA; ../shared/data/README.md lists the files)")
        return None


# ============================================================================ small helpers

def summarize_ns(samples_ns) -> dict[str, Any]:
    """Latency summary of nanosecond samples (any int/float sequence), in milliseconds:
    ``{"n", "p50_ms", "p95_ms", "p99_ms", "min_ms", "max_ms"}`` (numpy linear-interpolated
    percentiles, 4 decimals); every figure None when there are no samples."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "min_ms": None,
                "max_ms": None}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "min_ms": round(float(a.min()), 4),
            "max_ms": round(float(a.max()), 4)}


def time_calls(call, n: int, warmup: int) -> np.ndarray:
    """Call ``call(i)`` for i = 0 .. warmup + n - 1; return the last n durations, (n,) int64
    nanoseconds of ``time.perf_counter_ns``."""
    for i in range(warmup):
        call(i)
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        t0 = time.perf_counter_ns()
        call(warmup + j)
        out[j] = time.perf_counter_ns() - t0
    return out


def affinity_cpus() -> list[int]:
    """The CPU numbers this process may run on (its affinity), ascending."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (runnable processes), 2 decimals; None where the
    platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            k, _, v = line.partition(":")
            out[k.strip().lower()] = v.strip()
    except OSError:
        pass
    return out


def _cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine()


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    from importlib import metadata
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


RUNTIME_PACKAGES = ("numpy", "ai-edge-litert", "tflite-runtime",
                    "opencv-contrib-python", "opencv-python", "opencv-python-headless", "av",
                    "soxr", "scipy", "piper-tts", "onnxruntime", "psutil",
                    "tensorflow-cpu")


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory (GB, 10^9 bytes), OS, Python and the installed versions
    of the runtime packages (``RUNTIME_PACKAGES``), as a JSON-able dict."""
    import psutil
    ci = _cpuinfo()
    return {"cpu_model": _cpu_model(), "cpu_family_model": f"{ci.get('cpu family', '?')}/"
            f"{ci.get('model', '?')}", "virtualized": "hypervisor" in ci.get("flags", "").split(),
            "logical_cpus": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False), "affinity": affinity_cpus(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "redsg_edge": __version__, "packages": {k: v for k, v in
                                                    _versions(RUNTIME_PACKAGES).items() if v}}


def load_snapshot(sample_s: float = 1.0) -> dict[str, Any]:
    """How busy the machine is before a measurement: load averages and the CPU % (of one core)
    used by processes other than this one and its children over ``sample_s`` seconds;
    ``contended`` when others used over 20 % or the 1-minute load exceeds half the CPUs + 0.5."""
    import psutil
    me = psutil.Process()
    mine = {me.pid} | {c.pid for c in me.children(recursive=True)}
    procs = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.pid in mine:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    other = 0.0
    top = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
        except psutil.Error:
            continue
        other += c
        if c >= 5:
            top.append((round(c), p.info["name"]))
    la = loadavg() or [0.0, 0.0, 0.0]
    ncpu = len(affinity_cpus())
    return {"loadavg": la, "other_cpu_pct": round(other, 1),
            "busiest_others": sorted(top, reverse=True)[:4],
            "contended": bool(other > 20.0 or la[0] > 0.5 * ncpu + 0.5)}


def _sha256(path: Path) -> str:  # hex digest of the whole file
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_info(path: Path) -> dict[str, Any]:
    """A model file's identity for the record: path, size in bytes, the first 16 hex digits of
    its SHA-256 and its local modification time. Raises OSError when it cannot be read."""
    st = path.stat()
    return {"path": str(path), "bytes": st.st_size, "sha256": _sha256(path)[:16],
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime))}


def resolve_models(cfg, paths: BenchPaths) -> dict[str, Path]:
    """Model files the benches use, ``{"detector", "fer", "ser"}`` → Path: the config's, the
    detector replaced by ``--detector`` when given, else falling back to the shared copy
    (``DATA/../models``) when ``vision.detector_model`` is missing. Raises ModelError naming
    the file and how to get it."""
    from ..errors import ModelError
    if paths.detector is not None:
        if not Path(paths.detector).is_file():
            raise ModelError(f"{paths.detector}: face detector given with --detector not found")
        det = Path(paths.detector)
    else:
        det = Path(cfg.vision.detector_model)
        if not det.is_file() and paths.shared_detector.is_file():
            det = paths.shared_detector
    out = {"detector": det, "fer": Path(cfg.vision.fer_model), "ser": Path(cfg.speech.ser_model),
           "vad": Path(cfg.speech.vad_model)}
    if cfg.speech.utterance_model is not None:
        out["utterance ser"] = Path(cfg.speech.utterance_model)
    for k, p in out.items():
        if not p.is_file():
            raise ModelError(f"{p}: {k} model not found (train it, or run `redsg-edge "
                             "fetch-models`; or pass --config with other paths, or "
                             "--detector PATH)")
    return out


def compose_photo(face48: np.ndarray, width: int = PHOTO_W, height: int = PHOTO_H,
                  face_px: int = PHOTO_FACE, grey: int = PHOTO_GREY) -> np.ndarray:
    """The "photo" both pipelines get in the peer comparison: (height, width) uint8 grayscale,
    the 48x48 dataset face upscaled with Lanczos to ``face_px`` pixels and centred on a flat grey
    canvas (the face unpadded: padding the tight crops lowers BlazeFace's detection rate, see
    ``scripts/make_scenario.py``). Imported by ``scripts/peer_fer.py`` so both sides see the
    same pixels."""
    from PIL import Image
    img = np.asarray(Image.fromarray(np.ascontiguousarray(face48, np.uint8))
                     .resize((face_px, face_px), Image.LANCZOS), np.uint8)
    out = np.full((height, width), grey, np.uint8)
    y0, x0 = (height - face_px) // 2, (width - face_px) // 2
    out[y0:y0 + face_px, x0:x0 + face_px] = img
    return out


def decode_frames(path: Path, limit: int | None = None, step: int = 1) -> list[np.ndarray]:
    """Frames of a video as the camera path gives them: RGB uint8 (480, 640, 3), letterboxed.
    Every ``step``-th frame, at most ``limit``. Raises DeviceError when the file cannot be
    decoded."""
    from ..capture import VideoFileCamera
    cam = VideoFileCamera(path, WIDTH, HEIGHT, realtime=False, key="bench clip")
    cam.open()
    frames = []
    try:
        for i, (_t, rgb) in enumerate(cam):
            if i % step == 0:
                frames.append(rgb)
                if limit is not None and len(frames) >= limit:
                    break
    finally:
        cam.close()
    return frames


def speech_windows(window_s: float, ravdess: Path, limit_files: int | None = None,
                   hop_s: float = 0.5) -> list[np.ndarray]:
    """``window_s``-second (2.5 s) int16 16 kHz windows every ``hop_s`` seconds over the RAVDESS
    Actor_23/24 files under ``ravdess`` (the speakers no shipped model trained on); at most
    ``limit_files`` files, spread evenly. Raises FileNotFoundError without ``index.csv``."""
    import soundfile as sf

    from ..datasets import load_ravdess_index
    from ..features import SAMPLE_RATE
    files = [f for f in load_ravdess_index(ravdess) if f.actor in (23, 24)]
    files.sort(key=lambda f: (f.actor, f.path.name))
    if limit_files:
        files = files[::max(1, len(files) // limit_files)][:limit_files]
    n, hop = int(round(window_s * SAMPLE_RATE)), int(round(hop_s * SAMPLE_RATE))
    out = []
    for f in files:
        pcm, rate = sf.read(str(f.path), dtype="int16")
        if rate != SAMPLE_RATE or pcm.ndim != 1:
            continue
        if len(pcm) < n:
            pcm = np.pad(pcm, (0, n - len(pcm)))
        out.extend(pcm[s:s + n].copy() for s in range(0, len(pcm) - n + 1, hop))
    return out


# ======================================================================= worker processes
# Each timed measurement runs in a fresh process whose CPU affinity is set before anything is
# imported, so every thread it starts (MediaPipe, XNNPACK, FFmpeg) inherits it. The worker
# prints one JSON object on its original stdout; native libraries' prints go to stderr.

def log_dir(out_dir: Path) -> Path:
    """``out_dir/logs``, created: where every worker's and daemon's stderr goes."""
    d = out_dir / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_worker(cmd: list[str], payload: dict, cpus: list[int] | None, log_path: Path,
               timeout_s: float = 3600.0, env: dict | None = None) -> dict:
    """Run a worker command with ``--in payload.json``; affinity ``cpus`` (None = inherit),
    stderr to ``log_path``, at most ``timeout_s`` seconds, extra ``env``. Returns its JSON
    result; raises RuntimeError with the log's tail when it fails, subprocess.TimeoutExpired
    when it runs too long."""
    with tempfile.TemporaryDirectory(prefix="redsg-bench-") as tmp:
        pin = Path(tmp) / "in.json"
        pin.write_text(json.dumps(payload))
        pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with open(log_path, "w") as log:
            proc = subprocess.run([*cmd, "--in", str(pin)], stdout=subprocess.PIPE, stderr=log,
                                  preexec_fn=pre, timeout=timeout_s, cwd=str(REPO),
                                  env={**os.environ, **(env or {})})
    lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"worker {' '.join(cmd[-3:])} failed (exit {proc.returncode}); "
                           f"log {log_path}:\n" + "\n".join(tail))
    return json.loads(lines[-1])


def own_worker(kind: str) -> list[str]:
    """The command line of one of this package's workers (``python -m redsg_edge.bench
    --worker KIND``, see ``workers.WORKERS``), in this interpreter."""
    return [sys.executable, "-m", "redsg_edge.bench", "--worker", kind]


@contextlib.contextmanager
def json_stdout():
    """Point fd 1 at stderr while the block runs; yields a function that writes one JSON line
    to the original stdout (so native libraries' prints cannot corrupt the result)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)

    def emit(obj: dict) -> None:
        sys.stdout.flush()
        os.write(saved, (json.dumps(obj) + "\n").encode())

    try:
        yield emit
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)



def base_payload(cfg, models: dict[str, Path], paths: BenchPaths) -> dict:
    """What every worker of ours gets: the config file, the resolved model paths and the data
    folder (all as strings, JSON-able)."""
    return {"config": str(cfg.source_path), "models": {k: str(v) for k, v in models.items()},
            "data": str(paths.data)}
