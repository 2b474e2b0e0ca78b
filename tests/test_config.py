"""config.toml loading and validation, and the shipped config.toml itself."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from redsg_edge import CLASSES
from redsg_edge.config import Config, ConfigError, load_config, parse_config, style_for

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config.toml"


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == "\n".join(err.value.lines)
    return err.value.lines


# ------------------------------------------------------------------------ the shipped file

def test_shipped_config_loads_with_repo_defaults():
    cfg = load_config(SHIPPED)
    assert cfg.source_path == SHIPPED
    assert cfg.camera.source == "auto" and cfg.microphone.source == "auto"
    assert cfg.voice.sink == "sounddevice"
    assert cfg.vision.detector_model == REPO / "models" / "blaze_face_short_range.tflite"
    assert cfg.speech.ser_model == REPO / "models" / "ser_int8.tflite"
    assert cfg.fusion.exit_threshold <= cfg.fusion.enter_threshold
    # Scalar values equal the code's defaults, so the comments ("default ...") tell the truth.
    default = Config()

    def same_scalars(ours, theirs, where):
        for name in type(ours).model_fields:
            value = getattr(ours, name)
            if isinstance(value, BaseModel):  # a nested table, e.g. [speech.transcript]
                same_scalars(value, getattr(theirs, name), f"{where}.{name}")
            elif not isinstance(value, Path):
                assert value == getattr(theirs, name), f"{where}.{name}"

    for section in ("camera", "microphone", "speech", "fusion", "service"):
        same_scalars(getattr(cfg, section), getattr(default, section), section)
    assert cfg.speech.transcript.encoder_model == REPO / "models" / "moonshine-tiny-en-encoder.ort"
    assert cfg.reply.chat == default.reply.chat
    assert cfg.voice.default_style == default.voice.default_style


def test_shipped_templates_and_styles():
    cfg = load_config(SHIPPED)
    assert set(cfg.reply.templates) == set(CLASSES)
    for emotion, replies in cfg.reply.templates.items():
        assert 3 <= len(replies) <= 4, emotion
        assert len(set(replies)) == len(replies), emotion
        for text in replies:
            first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
            assert len(first.split()) <= 6, f"first sentence too long to start fast: {text!r}"
    style, base = cfg.voice.style, cfg.voice.default_style
    assert {"sad", "angry", "happy", "fear"} <= set(style)
    for calm in ("sad", "angry", "fear"):
        assert style[calm].length_scale > base.length_scale  # slower
        assert style[calm].volume < base.volume  # softer
    assert style["happy"].length_scale < base.length_scale  # a bit faster
    assert style["happy"].volume >= base.volume


def _expected_keys(model: type[BaseModel], section: str):
    """(section, key) for scalar keys and (section.key, None) for tables, recursively."""
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _expected_keys(ann, f"{section}.{name}".strip("."))
        elif typing.get_origin(ann) is dict:
            yield f"{section}.{name}".strip("."), None
        else:
            yield section, name


def _documented_keys(text: str) -> tuple[set[tuple[str, str]], set[str]]:
    """Keys set or shown commented out per [section], and all section headers."""
    keys, headers, section = set(), set(), ""
    for line in text.splitlines():
        if m := re.match(r"\s*\[([\w.]+)\]", line):
            section = m.group(1)
            headers.add(section)
        elif m := re.match(r"\s*#?\s*(\w+)\s*=", line):
            keys.add((section, m.group(1)))
    return keys, headers


def test_shipped_config_documents_every_key():
    text = SHIPPED.read_text(encoding="utf-8")
    keys, headers = _documented_keys(text)
    missing = []
    for section, key in _expected_keys(Config, ""):
        if key is None:
            if not any(h == section or h.startswith(section + ".") for h in headers):
                missing.append(f"[{section}]")
        elif (section, key) not in keys:
            missing.append(f"{section}.{key}")
    assert not missing, f"config.toml lacks: {', '.join(missing)}"


# ---------------------------------------------------------------------------- validation

@pytest.mark.parametrize("text, where, phrase", [
    ("[camera]\nwidth = 640\ncolour = true\n", "camera.colour: ", "not permitted"),
    ("[fusion]\nenter_threshold = 0.4\nexit_threshold = 0.5\n", "fusion.exit_threshold: ",
     "must not exceed enter_threshold"),
    ("[camera]\nwidth = 640\nheight = \n", "TOML syntax", "line 3"),
    ("[vision]\nfer_prior_shift = -0.5\n", "vision.fer_prior_shift: ", "greater than or equal"),
], ids=["unknown-key", "exit-above-enter", "toml-syntax", "negative-prior-shift"])
def test_single_problem_names_file_and_key(tmp_path, text, where, phrase):
    path = _write(tmp_path, text)
    lines = _problems(path)
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: {where}")
    assert phrase in lines[0]


def test_unknown_section_and_emotion_rejected(tmp_path):
    path = _write(tmp_path, '[cameras]\nwidth = 1\n\n[voice.style.bored]\nvolume = 0.5\n')
    lines = _problems(path)
    assert any(line.startswith(f"{path}: cameras: ") for line in lines)
    assert any(line.startswith(f"{path}: voice.style.bored") for line in lines)


def test_out_of_bounds_values_rejected(tmp_path):
    path = _write(tmp_path, "[camera]\nwidth = 10\n\n[speech]\nhop_s = 9.0\n\n"
                            "[reply.chat]\ntemperature = -1\n")
    lines = _problems(path)
    assert len(lines) == 3
    assert any(line.startswith(f"{path}: camera.width: ") and "64" in line for line in lines)
    assert any(line.startswith(f"{path}: speech.hop_s: ") for line in lines)
    assert any(line.startswith(f"{path}: reply.chat.temperature: ") for line in lines)


def test_wrong_type_rejected(tmp_path):
    path = _write(tmp_path, '[camera]\nsource = "webcam"\n\n[fusion]\nmin_dwell_s = "long"\n')
    lines = _problems(path)
    assert any(line.startswith(f"{path}: camera.source: ") and "auto" in line for line in lines)
    assert any(line.startswith(f"{path}: fusion.min_dwell_s: ") for line in lines)


def test_equal_thresholds_allowed(tmp_path):
    cfg = load_config(_write(tmp_path, "[fusion]\nenter_threshold = 0.4\nexit_threshold = 0.4\n"))
    assert cfg.fusion.enter_threshold == cfg.fusion.exit_threshold == 0.4


def test_relative_paths_resolved_against_the_file(tmp_path, monkeypatch):
    path = _write(tmp_path, '[camera]\nsource = "file"\nfile = "clips/a.mp4"\n\n'
                            '[vision]\nfer_model = "../models/fer.tflite"\n'
                            'detector_model = "/opt/models/bf.tflite"\n\n'
                            '[voice]\nwav_dir = "out"\n', name="etc/config.toml")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "etc" / "config.toml")
    etc = (tmp_path / "etc").resolve()
    assert cfg.camera.file == etc / "clips" / "a.mp4"
    assert cfg.vision.fer_model == (tmp_path / "models" / "fer.tflite").resolve()
    assert cfg.vision.detector_model == Path("/opt/models/bf.tflite")  # absolute: untouched
    assert cfg.voice.wav_dir == etc / "out"
    assert cfg.source_path == path.resolve()


def test_missing_file_named(tmp_path):
    lines = _problems(tmp_path / "absent.toml")
    assert lines[0].startswith(f"{tmp_path / 'absent.toml'}: file not found")


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, ""))
    assert cfg.camera.width == 640 and cfg.fusion.enter_threshold == 0.55


def test_top_level_and_default_source_in_error_lines():
    with pytest.raises(ConfigError) as e:
        parse_config([], "f.toml")  # type: ignore[arg-type]
    assert e.value.lines[0].startswith("f.toml: (top level): ")
    with pytest.raises(ConfigError) as e:
        parse_config({"fusion": {"min_dwell_s": -1}})
    assert e.value.lines[0].startswith("<config>: fusion.min_dwell_s: ")


def test_missing_and_unreadable_files_say_what_to_do(tmp_path):
    lines = _problems(tmp_path / "absent.toml")
    assert lines == [f"{tmp_path / 'absent.toml'}: file not found (pass --config PATH or create "
                     "it from the repository's config.toml)"]
    lines = _problems(tmp_path)  # a directory
    assert lines == [f"{tmp_path}: is a folder, not a config file (pass --config "
                     f"{tmp_path / 'config.toml'} or set REDSG_CONFIG to the file)"]
    unreadable = tmp_path / "bad.toml"
    unreadable.write_bytes(b"\xff\xfe not utf-8 [")
    lines = _problems(unreadable)
    assert len(lines) == 1 and lines[0].startswith(f"{unreadable}: "), lines


def test_style_for_uses_the_emotion_style_else_the_default():
    voice = parse_config({"voice": {"default_style": {"volume": 0.5},
                                    "style": {"sad": {"length_scale": 1.3}}}}).voice
    assert style_for(voice, "sad").length_scale == 1.3
    assert style_for(voice, "happy") == voice.default_style and voice.default_style.volume == 0.5


def test_a_key_that_is_not_printable_is_named_on_one_line():
    """A TOML quoted key may hold a newline; the problem is still one line (found by
    tests/test_properties.py)."""
    with pytest.raises(ConfigError) as ei:
        parse_config({"reply": {"chat": {"\n": False}}}, source="c.toml")
    assert ei.value.lines == ["c.toml: reply.chat.'\\n': Extra inputs are not permitted"]
