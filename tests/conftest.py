"""Shared fixtures: the real models and real media the tests run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from redsg_edge.config import Config, parse_config
from redsg_edge.datasets import DATA_ROOT

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
FER_MODEL = MODELS / "fer_int8.tflite"
SER_MODEL = MODELS / "ser_int8.tflite"
DETECTOR = DATA_ROOT.parent / "models" / "blaze_face_short_range.tflite"
CLIPS = DATA_ROOT / "av_clips"
PEXELS = CLIPS / "pyfeat_WolfgangLanger_Pexels.mp4"
SINGLE_FACE = CLIPS / "pyfeat_single_face.mp4"
#: Utterances of the held-out SER test speakers (never seen by the shipped SER model).
ACTOR_24 = DATA_ROOT / "ravdess" / "Actor_24"


def make_config(**sections) -> Config:
    """A Config with the real models and detector, plus per-section overrides (dicts)."""
    data = {"vision": {"detector_model": str(DETECTOR), "fer_model": str(FER_MODEL)},
            "speech": {"ser_model": str(SER_MODEL)},
            "voice": {"sink": "null"}, "reply": {"chat": {"enabled": False}}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, "<test>")


@pytest.fixture
def cfg() -> Config:
    return make_config()


def write_config(path: Path, text: str = "") -> Path:
    """A config.toml using the real models, with ``text`` appended (extra sections)."""
    path.write_text(f'[vision]\ndetector_model = "{DETECTOR}"\nfer_model = "{FER_MODEL}"\n'
                    f'[speech]\nser_model = "{SER_MODEL}"\n' + text)
    return path
