"""``redsg-edge check``: one line per item and the exit code that names the kind of problem."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from redsg_edge.check import check_main

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
VIDEO = SHARED / "data" / "av_clips" / "pyfeat_single_face.mp4"
AUDIO = SHARED / "data" / "ravdess" / "Actor_24" / "03-01-05-01-01-01-24.flac"
DETECTOR = SHARED / "models" / "blaze_face_short_range.tflite"

pytestmark = pytest.mark.skipif(not (VIDEO.is_file() and AUDIO.is_file() and DETECTOR.is_file()),
                                reason="../shared media or detector model missing")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from .helpers.models import classifier_models
    try:
        fer, ser = classifier_models(tmp_path_factory.mktemp("stub"))
    except ImportError as exc:
        pytest.skip(str(exc))
    d = tmp_path_factory.mktemp("models")
    shutil.copy(DETECTOR, d / DETECTOR.name)
    shutil.copy(fer, d / "fer_int8.tflite")
    shutil.copy(ser, d / "ser_int8.tflite")
    for name in ("ser_utt_int8.tflite", "ser_utt_int8.json", "silero_vad_16k_op15.onnx"):
        shutil.copy(REPO / "models" / name, d / name)
    shutil.copy(REPO / "models" / "manifest.toml", d / "manifest.toml")
    return d


def _cfg(tmp_path: Path, models: Path, camera: Path = VIDEO, extra: str = "") -> Path:
    p = tmp_path / "config.toml"
    p.write_text(f'[camera]\nsource = "file"\nfile = "{camera}"\n'
                 f'[microphone]\nsource = "file"\nfile = "{AUDIO}"\n'
                 f'[vision]\ndetector_model = "{models / DETECTOR.name}"\n'
                 f'fer_model = "{models / "fer_int8.tflite"}"\n'
                 f'[speech]\nser_model = "{models / "ser_int8.tflite"}"\n'
                 f'utterance_model = "{models / "ser_utt_int8.tflite"}"\n'
                 f'vad_model = "{models / "silero_vad_16k_op15.onnx"}"\n'
                 f'[reply]\nenabled = false\n' + extra)
    return p


def test_all_well(tmp_path, models, capsys):
    assert check_main(_cfg(tmp_path, models)) == 0
    out = capsys.readouterr().out
    for item in ("config", "model files", "face detector loads", "FER model loads",
                 "SER model loads", "camera", "microphone"):
        assert any(line.startswith("✔ " + item) for line in out.splitlines()), item
    assert "✘" not in out


def test_fer_line_names_the_calibration_in_effect():
    from redsg_edge.check import _classifier_item
    from redsg_edge.config import Config
    from redsg_edge.vision import FerModel

    vision = Config().vision
    item = _classifier_item("FER", vision.fer_model, lambda: FerModel.from_config(vision))
    assert item.status == "ok" and "T 0.8858, prior shift 0.7)" in item.detail, item
    off = vision.model_copy(update={"fer_prior_shift": 0.0})
    item = _classifier_item("FER", off.fer_model, lambda: FerModel.from_config(off))
    assert item.detail.endswith(", T 0.8858)") and "prior shift" not in item.detail, item


def test_ser_line_names_its_temperature():
    from redsg_edge.check import _classifier_item
    from redsg_edge.config import Config
    from redsg_edge.speech import SerModel

    speech = Config().speech
    item = _classifier_item("SER", speech.ser_model,
                            lambda: SerModel(speech.ser_model, speech.window_s))
    assert item.status == "ok" and item.detail.endswith(", T 0.84)"), item


def test_bad_config_is_78_with_key_lines(tmp_path, models, capsys):
    p = tmp_path / "config.toml"
    p.write_text("[camera]\nwidth = 1\n")
    assert check_main(p) == 78
    assert f"{p}: camera.width: " in capsys.readouterr().out


def test_missing_camera_is_69_naming_the_key(tmp_path, models, capsys):
    assert check_main(_cfg(tmp_path, models, camera=tmp_path / "none.mp4")) == 69
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("✘ camera")]
    assert "camera.file" in line and "none.mp4" in line


def test_corrupt_model_is_70(tmp_path, models, capsys):
    bad = tmp_path / "models"
    shutil.copytree(models, bad)
    (bad / "ser_int8.tflite").write_bytes(b"not a model")
    assert check_main(_cfg(tmp_path, bad), devices=False) == 70
    out = capsys.readouterr().out
    assert any(x.startswith("✘ SER model loads") and "ser_int8.tflite" in x
               for x in out.splitlines())
    assert "- devices: not checked" in out


def test_unreachable_chat_endpoint_is_only_a_warning(tmp_path, models, capsys):
    cfg = _cfg(tmp_path, models, extra="").read_text().replace(
        "[reply]\nenabled = false\n",
        '[reply]\nenabled = true\n[reply.chat]\nbase_url = "http://127.0.0.1:9/v1"\n'
        'connect_timeout_s = 0.5\n[voice]\nsink = "null"\n')
    (tmp_path / "config.toml").write_text(cfg)
    assert check_main(tmp_path / "config.toml") == 0
    out = capsys.readouterr().out
    assert any(x.startswith("! chat endpoint: 127.0.0.1:9 unreachable") for x in out.splitlines())
    assert any(x.startswith("✔ voice loads") for x in out.splitlines())
