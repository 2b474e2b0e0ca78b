"""The SER training augmentation does what it claims, and the shipped SER model holds its floors on
real held-out data: RAVDESS actors 23 + 24 (never trained on), the same files at −20 dB and
+10 dB (clipped), and the URDU corpus (cross-corpus, cross-language, never trained on).

Floors sit a few points under the figures measured by scripts/eval_models.py (models/README.md);
utterances go through ``features.ser_windows`` on the whole file, as the model card's figures do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from redsg_edge import CLASSES
from redsg_edge.datasets import (DATA_ROOT, assert_not_validation, load_ravdess_index,
                                 load_urdu, urdu_label)
from redsg_edge.features import SAMPLE_RATE, num_frames, ser_windows
from redsg_edge.litert import LiteRTClassifier

from .conftest import ACTOR_24, SER_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import ser_augment as aug  # noqa: E402

HELD_OUT_LIST = Path(__file__).resolve().parent / "data" / "ser_heldout_23_24.txt"
WIN, HOP = 40_000, 8_000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    x, sr = sf.read(ACTOR_24 / "03-01-05-02-01-01-24.flac", dtype="float32")
    assert sr == SAMPLE_RATE
    return x


@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_add_noise_reaches_the_requested_snr(speech, kind, snr):
    rng = np.random.default_rng(1)
    noise = aug.white_noise(len(speech), rng) if kind == "white" else aug.pink_noise(len(speech), rng)
    noisy = aug.add_noise(speech, noise, snr)
    assert noisy.shape == speech.shape and noisy.dtype == np.float32
    assert aug.snr_db(speech, noisy) == pytest.approx(snr, abs=0.05)


def test_pink_noise_falls_3_db_per_octave():
    x = aug.pink_noise(2 ** 18, np.random.default_rng(2))
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    band = lambda lo: spec[(f >= lo) & (f < 2 * lo)].sum()  # noqa: E731 - power per octave is flat
    octave_power = [10 * np.log10(band(lo)) for lo in (250, 500, 1000, 2000)]
    assert np.ptp(octave_power) < 1.0, octave_power


@pytest.mark.parametrize("gain", [-20.0, -6.0, 6.0])
def test_gain_changes_the_level_by_its_db(speech, gain):
    out = aug.apply_gain(speech, gain)
    assert aug.level_db(out) - aug.level_db(speech) == pytest.approx(gain, abs=0.01)


def test_gain_clips_at_full_scale(speech):
    loud = aug.apply_gain(speech / np.abs(speech).max() * 0.5, 10.0)  # peak 0.5 → 1.58
    assert np.abs(loud).max() == pytest.approx(1.0)
    assert (np.abs(loud) >= 1.0).mean() > 0.001  # clipped samples exist


def test_band_limit_telephone_removes_lows_and_highs():
    x = aug.white_noise(SAMPLE_RATE * 4, np.random.default_rng(3))
    y = aug.band_limit(x, "telephone", np.random.default_rng(0))
    spec = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)
    inband = spec[(f > 500) & (f < 3000)].mean()
    assert 10 * np.log10(spec[f < 150].mean() / inband) < -20
    assert 10 * np.log10(spec[f > 5000].mean() / inband) < -30


def _highs_db(x):
    """Power above 6 kHz relative to 0.5–3 kHz, dB."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return 10 * np.log10(spec[f > 6000].sum() / spec[(f > 500) & (f < 3000)].sum())


@pytest.mark.parametrize("kind,bit_rate,highs_cut_db", [("mp3", 24_000, 40.0), ("opus", 16_000, 2.0)])
def test_codec_round_trip_keeps_time_and_level_and_cuts_the_highs(speech, kind, bit_rate,
                                                                  highs_cut_db):
    """A voice-message codec and back: the same length and timing (the decoded file lines up with
    the original), the level within 1 dB, and the band above 6 kHz cut (MP3 at 24 kbit/s keeps
    nothing there; Opus's VoIP mode thins it)."""
    out = aug.codec(speech, kind, bit_rate)
    assert out.shape == speech.shape and out.dtype == np.float32
    assert abs(aug.level_db(out) - aug.level_db(speech)) < 1.0
    n = 3 * SAMPLE_RATE
    lag = int(np.argmax(np.correlate(out[:n], speech[:n], "full"))) - (n - 1)
    assert abs(lag) <= 2
    assert np.corrcoef(out, speech)[0, 1] > 0.8
    assert _highs_db(speech) - _highs_db(out) > highs_cut_db


def test_augmenter_reports_what_it_applied(speech):
    """The chain's own record matches the signal: gain within a dB or so (noise and clipping add
    a little), and the noise at the stated SNR when measured before gain."""
    rng = np.random.default_rng(4)
    chain = aug.Augmenter(babble=[], room=[], rirs=[], p_speed=0, p_pitch=0, p_reverb=0, p_band=0,
                          p_noise=1.0, gain_range_db=(-20.0, -20.0), snr_range_db=(10.0, 10.0))
    out, applied = chain(speech, rng)
    assert applied["gain_db"] == -20.0 and applied["snr_db"] == 10.0
    assert applied["noise"] in ("white", "pink")
    # out = 0.1 × (speech + noise): its noise part is out/0.1 − speech.
    assert aug.snr_db(speech, out / 0.1) == pytest.approx(10.0, abs=0.2)
    assert aug.level_db(out) - aug.level_db(speech) == pytest.approx(-20 + 10 * np.log10(1.1), abs=0.2)


def test_ser_windows_tiles_a_short_utterance(speech):
    short = speech[16000:24000]  # 0.5 s
    w = ser_windows(short, WIN, HOP)
    assert w.shape == (1, num_frames(WIN), 20) and w.dtype == np.float32
    # Tiled, not zero-padded: the second half of the window carries speech as the first does.
    np.testing.assert_array_equal(w[0], ser_windows(np.resize(short, WIN), WIN, HOP)[0])
    assert abs(w[0, 50:100, 0].mean() - w[0, :50, 0].mean()) < 0.5
    with pytest.raises(ValueError, match="empty"):
        ser_windows(short[:0], WIN, HOP)


def test_features_do_not_depend_on_the_level(speech):
    """The noise floor is relative to the window's loud frames, so gain cancels out exactly
    (up to float rounding) as long as nothing clips."""
    x = speech[:WIN] / np.abs(speech[:WIN]).max() * 0.9
    ref = ser_windows(x, WIN, HOP)
    for gain in (-30.0, -20.0, -6.0):
        np.testing.assert_allclose(ser_windows(aug.apply_gain(x, gain), WIN, HOP), ref, atol=2e-3)
    # Through int16 at −20 dB (the quietest microphone of the acceptance test) almost unchanged.
    pcm = np.round(aug.apply_gain(x, -20.0) * 32767).astype(np.int16)
    assert np.abs(ser_windows(pcm, WIN, HOP) - ref).mean() < 0.05


# --- accuracy floors on real data -------------------------------------------------------------



def _utterance_probs(clf, x: np.ndarray) -> np.ndarray:
    return np.mean([clf.predict(w) for w in ser_windows(x, WIN, HOP)], axis=0)


@pytest.fixture(scope="module")
def clf() -> LiteRTClassifier:
    return LiteRTClassifier(SER_MODEL, (num_frames(WIN), 20), len(CLASSES))


def _heldout():
    root = DATA_ROOT / "ravdess"
    names = HELD_OUT_LIST.read_text().split()
    assert len(names) == 104  # the non-calm files of actors 23 and 24
    return [(root / n, CLASSES.index({"01": "neutral", "03": "happy", "04": "sad", "05": "angry",
                                      "06": "fear", "07": "disgust", "08": "surprise"}[
        Path(n).name.split("-")[2]])) for n in names]


def test_ser_held_out_actors_at_three_levels(clf):
    """Actors 23 + 24, 104 non-calm files, at 0 dB, −20 dB and +10 dB (clipped)."""
    acc = {}
    for gain in (0.0, -20.0, 10.0):
        hits = []
        for path, y in _heldout():
            x, _ = sf.read(path, dtype="float32")
            pcm = np.round(aug.apply_gain(x, gain) * 32767).astype(np.int16)
            hits.append(int(_utterance_probs(clf, pcm).argmax()) == y)
        acc[gain] = float(np.mean(hits))
    assert acc[0.0] >= HELDOUT_FLOOR, acc
    assert acc[-20.0] >= acc[0.0] - 0.05 and acc[10.0] >= acc[0.0] - 0.08, acc


def test_ser_urdu_four_classes(clf):
    """URDU (never trained on): argmax over angry/happy/neutral/sad of the 7-class output."""
    files, labels = load_urdu()
    assert len(files) == 400
    hits = []
    for path, y in zip(files, labels):
        x, _ = sf.read(path, dtype="int16")
        p = _utterance_probs(clf, x)
        hits.append(urdu_label(p) == y)
    assert float(np.mean(hits)) >= URDU_FLOOR, float(np.mean(hits))


def test_training_refuses_the_urdu_validation_set(tmp_path):
    """URDU is for validation and reports only: the SER training refuses its files before it
    reads a sample (the RAVDESS files it trains on pass)."""
    import train_ser

    files, _ = load_urdu()
    assert_not_validation([r.path for r in load_ravdess_index()])
    with pytest.raises(ValueError, match="never train on it"):
        assert_not_validation(files[:1] + [ACTOR_24 / "x.flac"])
    fake = [load_ravdess_index()[0]]
    fake = [type(fake[0])(files[0], 1, "m", 0, "angry", "01", 3.0)]
    with pytest.raises(ValueError, match="cross-corpus validation set"):
        train_ser.build_crops(fake, 1, 0, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


HELDOUT_FLOOR = 0.60
URDU_FLOOR = 0.29


def test_nemo_loader_maps_its_classes_and_reads_at_16k(tmp_path, speech):
    """An nEMO-shaped folder (data.tsv + 24 kHz WAVs, as GitHub amu-cai/nEMO ships it) of real
    speech: the loader maps nEMO's names onto ours, and the reader resamples to 16 kHz and cuts
    to the speech, so 1 s of silence on each side is mostly gone."""
    from scipy.signal import resample_poly
    from ser_representations import nemo_audio

    from redsg_edge.datasets import load_nemo
    with pytest.raises(FileNotFoundError, match="amu-cai/nEMO"):
        load_nemo(tmp_path)
    (tmp_path / "samples").mkdir()
    rows = ["file_id\temotion\traw_text\tnormalized_text\tspeaker_id\tgender\tage"]
    pad = np.zeros(24_000, np.float32)
    x24 = np.concatenate([pad, resample_poly(speech, 3, 2).astype(np.float32), pad])
    for emotion in ("anger", "happiness", "sadness", "neutral", "fear", "surprised"):
        sf.write(tmp_path / "samples" / f"AB0_{emotion}_1.wav", x24, 24_000, subtype="PCM_16")
        rows.append(f"AB0_{emotion}_1.wav\t{emotion}\tx\tx\t        AB0\tfemale\t30")
    (tmp_path / "data.tsv").write_text("\n".join(rows) + "\n")
    recs = load_nemo(tmp_path)
    assert [CLASSES[r.label] for r in recs] == ["angry", "happy", "sad", "neutral", "fear", "surprise"]
    assert {r.speaker for r in recs} == {"AB0"}
    cut = nemo_audio(recs[:1])[0]
    assert len(speech) * 0.5 < len(cut) < len(speech) + 2 * 0.25 * SAMPLE_RATE + 800


def test_emospeech_loader_reads_labels_from_names_and_eval_voice_scores_it(tmp_path, speech):
    """An EmoSpeech-shaped folder (place folders of keyword-environment-emotion-timestamp-hash.wav,
    as GitHub RakshakTeam/emospeech-dataset-v1 ships it) of real speech: the loader maps the four
    emotions onto ours and leaves the background clips out, and ``eval_voice.py --emospeech``
    runs those files through ``analyze`` and scores them on their four classes."""
    import eval_voice

    from redsg_edge.datasets import label_among, load_emospeech
    with pytest.raises(FileNotFoundError, match="emospeech-dataset-v1"):
        load_emospeech(tmp_path)
    x = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)])
    names = {"Metro": ["help-safe-angry-1562907046662-ab12", "stop-safe-calm-20190710134940-cd34"],
             "House": ["go-safe-fearful-20190709085906-ab12", "yes-safe-happy-1562907046999-ef56",
                       "background-safe-None-20190701193438-ab12",
                       "background-safe-calm-20190701193501-ab12"]}
    for place, stems in names.items():
        (tmp_path / place).mkdir()
        for stem in stems:
            sf.write(tmp_path / place / f"{stem}.wav", x, SAMPLE_RATE, subtype="PCM_16")
    recs = load_emospeech(tmp_path)
    assert [(r.place, r.keyword, r.speaker, CLASSES[r.label]) for r in recs] == [
        ("House", "go", "ab12", "fear"), ("House", "yes", "ef56", "happy"),
        ("Metro", "help", "ab12", "angry"), ("Metro", "stop", "cd34", "neutral")]
    four = sorted({r.label for r in recs})
    p = np.full(len(CLASSES), 0.01)
    p[CLASSES.index("disgust")], p[CLASSES.index("happy")] = 0.6, 0.3
    assert CLASSES[label_among(p, four)] == "happy"  # disgust is not one of the four
    out = tmp_path / "ev.json"
    assert eval_voice.main(["--conditions", "", "--emospeech", str(tmp_path), "--limit", "0",
                            "--json", str(out), "--tmp", str(tmp_path)]) == 0
    res = json.loads(out.read_text())["emospeech"]
    assert res["files"] == 4 and res["labelled"] == 4
    assert res["classes"] == ["angry", "fear", "happy", "neutral"]
    assert 0 <= res["accuracy_pct"] <= 100 and set(res["recall_pct"]) == set(res["classes"])
    # one file per class: UAR and accuracy are the same figure
    assert res["uar_pct"] == pytest.approx(res["accuracy_pct"], abs=0.01)
