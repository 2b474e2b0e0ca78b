"""Piper's vocoder a second at a time (redsg_edge.vocoder): the shipped int8 voice and its two
parts as `fetch-models` derives them, real synthesis."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from redsg_edge.config import load_config
from redsg_edge.vocoder import ChunkedVocoderSession, split_paths
from redsg_edge.voice import Voice

from .conftest import MODELS

VOICE = MODELS / "en_US-joe-medium-int8.onnx"
#: One sentence of 5.3 s: six chunks of 1 s and a part one.
LONG = ("That sounded hard. I'm here with you, and we can take this one small step at a time, "
        "whenever you feel ready to talk about it.")


@pytest.fixture(scope="module")
def parts():
    missing = [p for p in (VOICE, *split_paths(VOICE)) if not p.is_file()]
    if missing:
        pytest.skip(f"{missing[0]} missing: run `redsg-edge fetch-models`")
    return split_paths(VOICE)


def _speak(voice: Voice, text: str = LONG) -> np.ndarray:
    return np.concatenate([pcm for pcm, _ in voice.synthesize(text, noise=False)])


def test_the_chunked_vocoder_speaks_the_whole_sentence_audio(parts):
    chunked = Voice(VOICE, vocoder_chunk_s=1.0)
    whole = Voice(VOICE, vocoder_chunk_s=0.0)
    assert isinstance(chunked._piper.session, ChunkedVocoderSession)
    assert chunked._piper.session.chunk_frames == 86  # 1 s at 22,050 Hz, 256 samples a frame
    assert chunked.vocoder_chunk_s == 86 * 256 / 22050 and whole.vocoder_chunk_s is None
    assert not isinstance(whole._piper.session, ChunkedVocoderSession)
    a, b = _speak(chunked), _speak(whole)
    assert len(a) == len(b) > 5 * 22050
    # the same samples but for float rounding (the context covers the receptive field)
    assert np.abs(a.astype(np.int32) - b).max() <= 2


def test_too_little_context_is_heard_at_the_seams(parts):
    """The check above can fail: without context each chunk's edges are computed from zeros."""
    chunked = Voice(VOICE, vocoder_chunk_s=1.0)
    reference = _speak(chunked)
    chunked._piper.session.context_frames = 0
    seams = _speak(chunked).astype(np.int32) - reference
    assert np.abs(seams).max() > 100


def test_the_shipped_config_chunks_the_shipped_voice(parts):
    vcfg = load_config(MODELS.parent / "config.toml").voice
    assert vcfg.model == VOICE and vcfg.vocoder_chunk_s == 2.0
    assert isinstance(Voice.from_config(vcfg)._piper.session, ChunkedVocoderSession)


def test_a_voice_without_its_parts_runs_whole(parts, tmp_path, caplog):
    for p in (VOICE, VOICE.with_name(VOICE.name + ".json")):
        (tmp_path / p.name).symlink_to(p)
    with caplog.at_level("INFO", logger="redsg_edge.voice"):
        voice = Voice(tmp_path / VOICE.name, vocoder_chunk_s=1.0)
    assert not isinstance(voice._piper.session, ChunkedVocoderSession)
    assert f"no {parts[0].name} and {parts[1].name} beside it" in caplog.text
    assert len(_speak(voice, "I'm here.")) > 0.3 * 22050


def test_parts_that_do_not_fit_are_refused(parts):
    front, vocoder = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                      for p in parts)
    with pytest.raises(ValueError, match=r"the vocoder reads \['input', 'input_lengths', "
                                         r"'scales'\], the front gives"):
        ChunkedVocoderSession(front, front, chunk_frames=86, hop=256)
    with pytest.raises(ValueError, match="must be positive"):
        ChunkedVocoderSession(front, vocoder, chunk_frames=0, hop=256)
