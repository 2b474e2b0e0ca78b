"""Shared fixtures: the real models and real media the tests run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from redsg_edge.config import Config, parse_config
from redsg_edge.datasets import DATA_ROOT

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
FER_MODEL = MODELS / "fer_int8.tflite"
SER_MODEL = MODELS / "ser_int8.tflite"
UTT_MODEL = MODELS / "ser_utt_int8.tflite"
VAD_MODEL = MODELS / "silero_vad_16k_op15.onnx"
#: Speech-to-text files: fetched (the encoder, the decoder as its wheel has it, the tokenizer)
#: and the decoder `fetch-models` derives from it (redsg_edge.derive), which the config names.
STT_ENCODER = MODELS / "moonshine-tiny-en-encoder.ort"
STT_DECODER_ORT = MODELS / "moonshine-tiny-en-decoder.ort"
STT_DECODER = MODELS / "moonshine-tiny-en-decoder-shared.onnx"
STT_TOKENIZER = MODELS / "moonshine-tokenizer.json"
DETECTOR = DATA_ROOT.parent / "models" / "blaze_face_short_range.tflite"
CLIPS = DATA_ROOT / "av_clips"
PEXELS = CLIPS / "pyfeat_WolfgangLanger_Pexels.mp4"
SINGLE_FACE = CLIPS / "pyfeat_single_face.mp4"
#: Utterances of the held-out SER test speakers (never seen by the shipped SER model).
ACTOR_23 = DATA_ROOT / "ravdess" / "Actor_23"
ACTOR_24 = DATA_ROOT / "ravdess" / "Actor_24"


def make_config(**sections) -> Config:
    """A Config with the real models and detector, plus per-section overrides (dicts)."""
    data = {"vision": {"detector_model": str(DETECTOR), "fer_model": str(FER_MODEL)},
            "speech": {"ser_model": str(SER_MODEL), "utterance_model": str(UTT_MODEL),
                       "vad_model": str(VAD_MODEL)},
            "voice": {"sink": "null"}, "reply": {"chat": {"enabled": False}}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, "<test>")


@pytest.fixture
def cfg() -> Config:
    return make_config()


def model_sections(fer: Path = FER_MODEL, ser: Path = SER_MODEL) -> str:
    """The [vision] and [speech] sections of a config.toml naming the real models (``fer`` and
    ``ser`` replaceable): the one place a test config learns of a new model key."""
    return (f'[vision]\ndetector_model = "{DETECTOR}"\nfer_model = "{fer}"\n'
            f'[speech]\nser_model = "{ser}"\nutterance_model = "{UTT_MODEL}"\n'
            f'vad_model = "{VAD_MODEL}"\n')


def write_config(path: Path, text: str = "") -> Path:
    """A config.toml using the real models, with ``text`` appended (extra sections)."""
    path.write_text(model_sections() + text)
    return path


# ------------------------------------------------------------------------------- isolation
# Every test writes only under its own temporary directory. The daemon's default status file
# (``status_path``: $RUNTIME_DIRECTORY first) and everything a subprocess inherits through the
# environment point into one session temporary directory; the checks below fail the run when a
# test still touched the user's default status file or left files in the repository.

def _default_status_files() -> dict[str, tuple[int, int] | None]:
    """(mtime_ns, size) of each default status file under the environment pytest started with."""
    from redsg_edge.service import status_candidates

    out: dict[str, tuple[int, int] | None] = {}
    for p in status_candidates(_ORIGINAL_ENV):
        try:
            st = p.stat()
        except OSError:
            out[str(p)] = None
        else:
            out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


def _written_by(path: Path, roots: tuple[str, ...]) -> bool:
    """True when the status file at ``path`` names a config under one of ``roots``."""
    import json

    try:
        config = str(json.loads(path.read_text(encoding="utf-8")).get("config") or "")
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: assume the worst
    return config.startswith(roots)


def _repo_stray_files() -> set[str]:
    """Untracked files (ignored ones included) in the repository, caches and venvs aside."""
    import subprocess

    try:
        res = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    skip = (".venv", ".pytest_cache", "models/blaze_face_short_range.tflite", ".whl/", ".cache/")
    return {line[3:] for line in res.stdout.splitlines()
            if line[:2] in ("??", "!!") and "__pycache__" not in line and ".egg-info" not in line
            and not line[3:].startswith(skip)}


_ORIGINAL_ENV = dict(os.environ)


@pytest.fixture(scope="session", autouse=True)
def isolated_runtime(tmp_path_factory):
    """Point the daemon's default status file (and XDG/runtime paths) at a session temp dir.

    At the end, fail when a default status file of the original environment changed or the
    repository gained untracked files (runs/, replies/, events.jsonl ...)."""
    runtime = tmp_path_factory.mktemp("runtime")
    before_status = _default_status_files()
    before_repo = _repo_stray_files()
    mp = pytest.MonkeyPatch()
    mp.setenv("RUNTIME_DIRECTORY", str(runtime))
    mp.setenv("XDG_RUNTIME_DIR", str(runtime / "xdg"))
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                "CREDENTIALS_DIRECTORY", "OPENAI_API_KEY"):
        mp.delenv(key, raising=False)
    try:
        yield runtime
    finally:
        mp.undo()
    # Other test runs on the same machine (another checkout, as another session) may write the
    # same default file meanwhile: a changed file counts when its config is one of this run's.
    ours = (str(tmp_path_factory.getbasetemp()), str(REPO))
    changed = {p: (before_status[p], now) for p, now in _default_status_files().items()
               if before_status.get(p) != now and _written_by(Path(p), ours)}
    assert not changed, ("the test run wrote the user's default status file(s) (before, after): "
                         f"{changed}; give the daemon service.status_file or RUNTIME_DIRECTORY "
                         "under the test's tmp_path")
    stray = sorted(_repo_stray_files() - before_repo)
    assert not stray, f"the test run left files in the repository: {stray}"
