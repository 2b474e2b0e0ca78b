"""Property-based tests (hypothesis): random and adversarial inputs to the config loader, the
sentence splitter, the JSON event writer and the image and audio readers give a result or a
clear error, never a traceback or a hang.

Under CI (``CI`` set) the examples are derandomised, so a run is reproducible; elsewhere each
run explores new ones (and hypothesis keeps failures in .hypothesis/ to replay them first).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis import strategies as st

from redsg_edge.config import Config, ConfigError, load_config, parse_config
from redsg_edge.eventlog import EventLog
from redsg_edge.reply import split_sentences

# Hypothesis keeps its example database and a cache of source constants in .hypothesis/ of
# the working directory; every test writes only under a temporary directory, so neither goes
# into the repository.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="redsg-hypothesis-"))
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, database=None)
settings.register_profile("dev", deadline=None, print_blob=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

TMP_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# ============================================================================ config loader

SECTIONS = {name: sorted(type(getattr(Config(), name)).model_fields)
            for name in Config.model_fields if name != "source_path"}

scalars = st.one_of(
    st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["", "~", "~nobody/x", "/", "a\x00b", "..", "auto",
                                           "file", "none", "happy", "-1", "1e999"]))
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)),
    max_leaves=8)


PATHS = st.one_of(st.text(max_size=30), st.sampled_from(
    ["", ".", "~", "~nobody/x", "/", "a\x00b", "../" * 40, "/proc/self/fd/0", "x" * 300]))


@st.composite
def config_tables(draw):
    from redsg_edge.config import PATH_KEYS
    if draw(st.booleans()):  # a path key: the values that reach the file system
        section, key = draw(st.sampled_from(PATH_KEYS))
        return {section: {key: draw(PATHS)}}
    data = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS) + ["bogus"]), max_size=4)):
        keys = SECTIONS.get(section, []) + ["nonsense_key"]
        data[section] = draw(st.dictionaries(st.sampled_from(keys), values, max_size=4))
    return data


def _assert_config_lines(lines: list[str], source: str) -> None:
    assert lines
    for line in lines:
        assert line.startswith(f"{source}: ") and line.count(": ") >= 2, line
        assert "\n" not in line or line.startswith(f"{source}: TOML syntax"), line


@given(config_tables())
@settings(max_examples=300, suppress_health_check=TMP_OK)
def test_config_tables_validate_or_name_the_key(tmp_path_factory, data):
    base = tmp_path_factory.getbasetemp()
    try:
        cfg = parse_config(data, "cfg.toml", base)
    except ConfigError as exc:
        _assert_config_lines(exc.lines, "cfg.toml")
        return
    assert isinstance(cfg, Config)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.builds(lambda a, b: a + b, st.sampled_from(
                     ["[camera]\n", "[fusion]\nenter_threshold = ", "[reply.chat]\nenabled = ",
                      "[voice]\nmodel = ", "[[camera]]\n", "camera.width = "]),
                     st.text(max_size=60))))
@settings(max_examples=300, suppress_health_check=TMP_OK)
def test_config_files_load_or_give_file_key_message(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _assert_config_lines(exc.lines, str(path))
        return
    assert isinstance(cfg, Config) and cfg.source_path == path.resolve()


# ============================================================================ sentence splitter

#: Text made of the pieces the splitter decides on: terminators, clause marks, abbreviations,
#: quotes, digits, new lines, plus any character at all.
TEXT = st.lists(st.one_of(st.sampled_from(list("ab Z.!?,;:-\u2026\"')\n 3") + [
    "Dr.", "e.g.", "etc.", " \u2014 ", "...", "No. 5", "J. ", "Hello", "world"]),
    st.characters()), max_size=400).map("".join)


def _alnum(s: str) -> str:
    return "".join(c for c in s if c.isalnum())


@given(TEXT, st.booleans())
@settings(max_examples=500)
def test_splitter_keeps_every_word_caps_sentences_and_ends_empty_when_final(text, final):
    sentences, rest = split_sentences(text, final=final)
    assert _alnum("".join(sentences) + rest) == _alnum(text)  # nothing lost, nothing invented
    assert all(s == s.strip() and s and len(s) <= 200 for s in sentences)
    assert all(any(c.isalnum() for c in s) for s in sentences)
    assert len(rest) <= 200
    if final:
        assert rest == ""


@given(st.lists(TEXT.filter(bool), min_size=1, max_size=30))
@settings(max_examples=200)
def test_splitter_fed_token_by_token_keeps_every_word(tokens):
    """The reply worker's use: remainder + new token, then a final call at the end of stream."""
    out, buf = [], ""
    for tok in tokens:
        got, buf = split_sentences(buf + tok)
        out += got
    got, buf = split_sentences(buf, final=True)
    out += got
    assert buf == ""
    assert _alnum("".join(out)) == _alnum("".join(tokens))
    assert all(len(s) <= 200 for s in out)


@given(st.text(min_size=1, max_size=8), st.integers(10_000, 200_000))
@settings(max_examples=25)
def test_splitter_time_is_linear(unit, size):
    text = (unit * (size // len(unit) + 1))[:size]
    t0 = time.perf_counter()
    split_sentences(text)
    took = time.perf_counter() - t0
    assert took < 0.5 + size * 2e-6, f"{took:.2f} s for {size} characters of {unit!r}"


# ============================================================================ JSON event writer

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(),
              st.text(max_size=30)),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12)


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


@given(st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), max_size=20),
       st.booleans())
@settings(max_examples=200, suppress_health_check=TMP_OK)
def test_event_log_lines_are_whole_strict_json_records(tmp_path_factory, records, append):
    path = tmp_path_factory.mktemp("ev") / "events.jsonl"
    path.write_text('{"old":1}\n')
    log = EventLog(path, append=append)
    try:
        assert all(log.write(r) for r in records)
    finally:
        log.close()
    lines = path.read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == ""  # every record ends its line
    parsed = [json.loads(ln, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
              for ln in lines[:-1]]
    expect = ([{"old": 1}] if append else []) + [_finite(r) for r in records]
    assert parsed == expect


@given(st.sampled_from([object(), {1, 2}, b"bytes", 1j, Path("/x")]))
@settings(max_examples=10, suppress_health_check=TMP_OK)
def test_event_log_refuses_what_is_not_json_with_a_clear_error(tmp_path_factory, bad):
    path = tmp_path_factory.mktemp("ev") / "events.jsonl"
    log = EventLog(path)
    try:
        with pytest.raises(TypeError, match="not JSON serializable"):
            log.write({"x": bad})
        assert log.write({"ok": True})
    finally:
        log.close()
    assert path.read_text() == '{"ok":true}\n'


# ============================================================================ image reader

def _png_of(arr: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG")
    return buf.getvalue()


@st.composite
def images(draw):
    from PIL import Image
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F",
                                 "YCbCr", "HSV"]))
    seed = draw(st.integers(0, 2**32 - 1))
    im = Image.frombytes(mode, (w, h), np.random.default_rng(seed).bytes(
        len(Image.new(mode, (w, h)).tobytes())))
    fmt = draw(st.sampled_from(["PNG", "TIFF", "BMP", "JPEG", "WEBP"]))
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, ValueError, KeyError):  # this mode cannot be stored in this format
        assume(False)
    return buf.getvalue(), (w, h)


@given(images())
@settings(max_examples=150, suppress_health_check=TMP_OK)
def test_image_reader_gives_rgb8_of_the_same_size(tmp_path_factory, img):
    from redsg_edge.analyze import read_image
    data, (w, h) = img
    path = tmp_path_factory.mktemp("img") / "x.img"
    path.write_bytes(data)
    rgb, scale = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (h, w, 3) and scale == 1.0


@given(st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([_png_of(np.zeros((4, 4), np.uint8))[:33], b"\xff\xd8\xff\xe0",
                               b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]),
              st.binary(max_size=2000))))
@settings(max_examples=300, suppress_health_check=TMP_OK)
def test_image_reader_on_garbage_raises_a_clear_value_error(tmp_path_factory, data):
    from redsg_edge.analyze import read_image
    path = tmp_path_factory.mktemp("img") / "garbage.png"
    path.write_bytes(data)
    try:
        rgb, scale = read_image(path)
    except ValueError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and 0 < scale <= 1


def test_image_with_a_corrupt_exif_block_is_decoded_and_the_warning_names_the_file(
        tmp_path, caplog, recwarn):
    """Pillow decodes a JPEG whose EXIF block is cut short but warns without naming the file;
    the reader logs that once with the path, and no Python warning escapes."""
    from PIL import Image
    from redsg_edge.analyze import read_image
    path = tmp_path / "bad_exif.jpg"
    # a TIFF header that promises 5 IFD entries and holds one
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path, exif=exif)
    with caplog.at_level("WARNING", logger="redsg_edge.analyze"):
        rgb, scale = read_image(path)
    assert rgb.shape == (64, 64, 3) and scale == 1.0
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and logged[0].startswith(f"{path}: Corrupt EXIF data"), logged
    assert not [w for w in recwarn if "EXIF" in str(w.message)]


# ============================================================================ audio reader

def _decode(path: Path) -> np.ndarray:
    from redsg_edge.capture import AudioFileMic
    mic = AudioFileMic(path, 100, realtime=False, key="analyze PATH")
    mic.open()
    try:
        blocks = [b for _t, b in mic]
    finally:
        mic.close()
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int16)


@given(st.integers(1, 4), st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
       st.floats(0.01, 1.5), st.sampled_from(["WAV", "FLAC", "OGG"]), st.integers(0, 2**32 - 1))
@settings(max_examples=60, suppress_health_check=TMP_OK)
def test_audio_reader_gives_16k_mono_int16_of_the_right_length(tmp_path_factory, channels, rate,
                                                                seconds, fmt, seed):
    import soundfile as sf
    n = max(1, int(rate * seconds))
    x = np.random.default_rng(seed).uniform(-1, 1, (n, channels)).astype(np.float32)
    path = tmp_path_factory.mktemp("au") / f"x.{fmt.lower()}"
    sf.write(path, x, rate, format=fmt)
    pcm = _decode(path)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert abs(len(pcm) - 16000 * n / rate) <= 16000 * 0.03 + 64


@given(st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3",
                               b"\xff\xfb", b"\x00\x00\x00\x18ftypmp42"]),
              st.binary(max_size=3000))))
@settings(max_examples=200, suppress_health_check=TMP_OK)
def test_audio_reader_on_garbage_raises_device_error_or_reads(tmp_path_factory, data):
    from redsg_edge.capture import DeviceError
    path = tmp_path_factory.mktemp("au") / "garbage.wav"
    path.write_bytes(data)
    t0 = time.monotonic()
    try:
        pcm = _decode(path)
    except DeviceError as exc:
        assert str(path) in str(exc) and exc.key == "analyze PATH"
        return
    finally:
        assert time.monotonic() - t0 < 10
    assert pcm.dtype == np.int16 and pcm.ndim == 1
