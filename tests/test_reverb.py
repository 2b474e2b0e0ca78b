"""The reverberation measure (``reverb.srmr``) on real speech in simulated rooms, the gate it
drives (``speech.reverb_weight``), and the speech path applying it to an utterance's label."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from redsg_edge.config import Config
from redsg_edge.reverb import RoomReverb, srmr
from redsg_edge.speech import SRMR_FULL, SRMR_NONE, SerModel, SpeechPerception, reverb_weight
from redsg_edge.utterance_ser import UtteranceSer

from .conftest import ACTOR_23, SER_MODEL, UTT_MODEL, make_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import eval_voice  # noqa: E402

# Actor 23 (never trained on): neutral, happy, sad, angry, fearful, one sentence each
FILES = [ACTOR_23 / f"03-01-{e:02d}-01-01-01-23.flac" for e in (1, 3, 4, 5, 6)]


def _speech(path: Path) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32")
    assert rate == 16_000
    return x


@pytest.mark.parametrize("value,share", [(None, 1.0), (0.5, 0.0), (SRMR_NONE, 0.0),
                                         ((SRMR_NONE + SRMR_FULL) / 2, 0.5), (SRMR_FULL, 1.0),
                                         (12.0, 1.0)])
def test_reverb_weight_table(value, share):
    assert reverb_weight(value) == pytest.approx(share)


def test_srmr_tells_close_speech_from_a_room_and_a_far_talker():
    """Each sentence reads lower at the critical distance of a reverberant room than as
    recorded, and lower still four times farther. As a room, the five sentences as recorded get
    the utterance SER's full weight, and from four times farther a little over half of it at
    most (measured 2026-12-05: as recorded 10.4, 8.4, 5.2, 11.1, 9.6; far 3.9, 1.9, 2.8, 2.1,
    3.8, median 2.8)."""
    drys, fars = [], []
    for i, path in enumerate(FILES):
        x = _speech(path)
        drys.append(srmr(x))
        near = srmr(eval_voice.degrade(x, "reverb_rt60_0.6", seed=i))
        fars.append(srmr(eval_voice.degrade(x, "far_talker", seed=i)))
        assert fars[-1] < near < drys[-1], (path.name, drys[-1], near, fars[-1])
    assert min(drys) > 5.0 and reverb_weight(float(np.median(drys))) == 1.0, drys
    assert reverb_weight(float(np.median(fars))) < 0.6, fars


def test_srmr_does_not_depend_on_the_level_or_the_sample_type():
    x = _speech(FILES[2])
    ref = srmr(x)
    assert srmr(x * 10 ** (-30 / 20)) == pytest.approx(ref, rel=1e-4)
    assert srmr(np.round(x * 32767).astype(np.int16)) == pytest.approx(ref, rel=0.02)
    # padding with silence changes nothing: only the active part counts
    assert srmr(np.concatenate([np.zeros(16_000, np.float32), x])) == pytest.approx(ref, rel=1e-4)


def test_srmr_of_too_little_speech_or_silence_is_none_and_bad_input_is_refused():
    x = _speech(FILES[0])
    assert srmr(np.zeros(48_000, np.float32)) is None
    assert srmr(x[:4_000]) is None  # 0.25 s
    assert srmr(np.zeros(0, np.float32)) is None
    with pytest.raises(ValueError, match="16000 Hz"):
        srmr(x, rate=8_000)
    with pytest.raises(ValueError, match="mono"):
        srmr(np.stack([x, x], axis=1))


@pytest.mark.parametrize("values,median", [([], None), ([4.0] * 4, None), ([1, 2, 3, 4, 9], 3.0),
                                           ([1, 2, 3, 4, 9, None], 3.0),
                                           ([9, 9, 1, 1, 1, 2], 1.5)])
def test_room_reverb_is_the_median_of_the_utterances_measured(values, median):
    room = RoomReverb(min_utterances=5)
    for v in values:
        room.add(v)
    assert room.srmr() == median


def test_room_reverb_forgets_beyond_its_window_and_learns_nothing_frozen():
    room = RoomReverb(window=5, min_utterances=1)
    for v in (9, 9, 9, 9, 9, 2, 2, 2):
        room.add(v)
    assert room.srmr() == 2.0  # 9, 9, 2, 2, 2
    room.frozen = True
    room.add(1.0)
    room.add(1.0)
    assert room.srmr() == 2.0
    with pytest.raises(ValueError, match="min_utterances"):
        RoomReverb(window=3, min_utterances=4)


def _outputs(cfg: Config, x: np.ndarray, room: RoomReverb | None = None):
    step = SpeechPerception(SerModel(SER_MODEL, cfg.speech.window_s), cfg.speech,
                            utterance_model=UtteranceSer(UTT_MODEL), room=room)
    count = step.norm.count
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    outs = step.push(0.0, pcm) + step.finish()
    utts = [o for o in outs if o.kind == "utterance"]
    assert len(utts) == 1, [(o.kind, o.start_s, o.end_s) for o in utts]
    # the voice normalisation learns from the utterance whatever the room makes of its weight
    assert step.norm.count == count + (cfg.speech.utterance_weight > 0)
    return utts[0], [o for o in outs if o.kind == "rolling"]


def _room(value: float) -> RoomReverb:
    room = RoomReverb(min_utterances=1)
    room.add(value)
    room.frozen = True
    return room


def test_in_a_reverberant_room_the_window_ser_labels_alone():
    """In a room measured reverberant (median SRMR at or under SRMR_NONE) an utterance's label
    and the rolling labels are the window SER's alone: equal to the gate-free path's with the
    utterance SER's weights at 0. In a dry room they equal the gate-free path's as configured.
    A far talker's utterance reports its own SRMR, a fresh room learns it, and the label
    moves off the gate-free one."""
    on = make_config()
    assert on.speech.reverb_gate and on.speech.utterance_weight > 0
    assert on.speech.rolling_utterance_weight > 0

    def speech(**kw):
        return on.model_copy(update={"speech": on.speech.model_copy(update=kw)})

    off = speech(reverb_gate=False)
    windows = speech(reverb_gate=False, utterance_weight=0.0, rolling_utterance_weight=0.0)
    x = _speech(FILES[3])
    far = eval_voice.degrade(x, "far_talker", seed=0)

    fresh = RoomReverb(min_utterances=1)
    u, _ = _outputs(on, far, fresh)
    assert u.srmr is not None and u.srmr < SRMR_FULL and fresh.srmr() == u.srmr
    assert not np.allclose(u.probs, _outputs(off, far)[0].probs, atol=1e-3)
    u, _ = _outputs(on, far, _room(SRMR_NONE))
    np.testing.assert_allclose(u.probs, _outputs(windows, far)[0].probs, atol=1e-6)

    u, rolling = _outputs(on, x, _room(SRMR_NONE))
    uw, rw = _outputs(windows, x)
    assert rolling and len(rolling) == len(rw)
    np.testing.assert_allclose(u.probs, uw.probs, atol=1e-6)
    for a, b in zip(rolling, rw):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)

    u, rolling = _outputs(on, x, _room(SRMR_FULL))
    assert u.srmr is not None and u.srmr > SRMR_FULL
    uo, ro = _outputs(off, x)
    # the rolling labels do pool the utterance SER here, so the room's gate had work to do
    assert any(not np.allclose(a.probs, b.probs, atol=1e-3) for a, b in zip(ro, rw))
    np.testing.assert_allclose(u.probs, uo.probs, atol=1e-6)
    for a, b in zip(rolling, ro):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
