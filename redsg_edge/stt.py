"""On-device speech-to-text: Moonshine tiny-en on plain onnxruntime, and a worker thread for it.

Model (see ``models/README.md``, "Speech-to-text"): Moonshine tiny-en (Useful Sensors /
Moonshine AI, MIT), an encoder-decoder transformer on raw 16 kHz audio, as the two ONNX Runtime
files that the ``moonshine-voice`` wheel carries (``encoder_model.ort``,
``decoder_model_merged.ort``) and the SentencePiece-BPE ``tokenizer.json`` of
``useful-moonshine-onnx``. ``redsg-edge fetch-models`` extracts and verifies them, and derives
from the decoder a copy that stores the weights its two branches share once
(``redsg_edge.derive``; 36-39 MB less resident memory); the config points at that copy.
Nothing is downloaded at run time.

:class:`Transcriber` runs one utterance: the encoder once, then a greedy decoder with the
merged decoder's key/value cache (step 0 computes the cross-attention cache from the encoder
states, later steps feed one token and reuse it). The layer count, heads and head size are
read from the decoder's inputs, so another Moonshine model (base, another language) is a
config change. The decode loop follows the reference in ``useful-moonshine-onnx``
(``moonshine_onnx/model.py``): start token 1, end token 2, at most 6.5 tokens per second of
audio (moonshine-voice's default for English; non-Latin scripts need about 13).

:class:`TranscriptWorker` runs a Transcriber in its own thread behind a bounded queue, so
capture, inference and the watchdog never wait for it. The voice-activity detector hands it
each utterance it closes with ``submit(t_start, t_end, pcm, emotion)``; results reach the
``on_transcript`` callback as :class:`Utterance` records. Wiring in the daemon::

    tc = cfg.speech.transcript
    if transcripts_wanted(cfg):  # enabled, and chat (or log_transcripts) uses the words
        stt = Transcriber.from_config(tc)  # ModelError (70) naming the file if missing
        tw = TranscriptWorker(stt, on_utterance, gate=reply_worker.mic_gated,
                              max_audio_s_per_minute=tc.max_audio_s_per_minute,
                              log_transcripts=tc.log_transcripts).start()
    tw.submit(t_start, t_end, pcm, emotion)  # per utterance the VAD closes; never blocks
    # on_utterance(u): reply_worker.add_utterance(u) and bus.publish(u) (events.Utterance;
    # its to_json() carries the words only when log_transcripts)

``t_start``/``t_end`` must be on the clock that transitions (``event.t``) and the mic gate use.

Privacy: transcripts are kept in memory only. This module logs a transcript's text only when
``speech.transcript.log_transcripts`` is true; otherwise its log lines carry durations and word
counts, never words.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ModelError
from .events import Utterance
from .features import frame_dbfs, pcm_to_float
from .memory import release_free_memory, shrink_run_options
from .worker import WorkerThread

log = logging.getLogger(__name__)

__all__ = ["SAMPLE_RATE", "Utterance", "transcripts_wanted", "Transcriber",
           "TranscriptWorker",
           "peak_dbfs", "transcribe_file", "WithTranscripts"]

SAMPLE_RATE = 16000
START_TOKEN, END_TOKEN = 1, 2
#: Moonshine's limits for one call (reference ``assert_audio_size``): 0.1 s to 64 s.
MIN_AUDIO_S, MAX_AUDIO_S = 0.1, 64.0
#: Upper bound on decoded tokens per second of audio: English speech runs at 3-5 tokens/s, and
#: the bound stops a hallucinating decoder from looping (the reference uses 6).
TOKENS_PER_S = 6.5


def transcripts_wanted(cfg) -> bool:
    """Whether the daemon should load speech-to-text at all for ``cfg`` (a ``Config``): it is
    enabled and something uses its words: the chat prompt (``reply.enabled`` and
    ``reply.chat.enabled``; the offline templates never do) or the event log
    (``log_transcripts``). Otherwise ~130 MB of model stay out of memory."""
    tc = cfg.speech.transcript
    return tc.enabled and ((cfg.reply.enabled and cfg.reply.chat.enabled) or tc.log_transcripts)


def peak_dbfs(pcm: np.ndarray) -> float:
    """Level of the loudest 25 ms frame of ``pcm`` ((N,) int16), dBFS; -120 for silence or
    fewer than one frame of samples."""
    db = frame_dbfs(pcm)
    return float(db.max()) if len(db) else -120.0


class Transcriber:
    """Moonshine speech-to-text on one utterance.

    ``encoder``, ``decoder``: the ``.ort``/``.onnx`` encoder and merged decoder; ``tokenizer``:
    HF ``tokenizer.json``. ``threads``: onnxruntime intra-op threads (1 keeps a core free for
    capture and the other models). ``min_level_dbfs``: audio whose loudest 25 ms frame is
    quieter than this is not transcribed (Moonshine, like Whisper, may invent words in silence).

    Raises ModelError naming the file and the config key when a file is missing or cannot be
    loaded, or the decoder is not a Moonshine merged decoder.
    """

    def __init__(self, encoder: Path, decoder: Path, tokenizer: Path, *, threads: int = 1,
                 min_level_dbfs: float = -45.0, key: str = "speech.transcript") -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        for name, path in (("encoder_model", encoder), ("decoder_model", decoder),
                           ("tokenizer", tokenizer)):
            if not Path(path).is_file():
                raise ModelError(f"{key}.{name}: {path} missing (run `redsg-edge fetch-models`)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The CPU arena on, emptied when each run ends (SHRINK_KEY): a run reuses its own
        # buffers, and the high-water mark of the longest utterance is not kept (+33 MB after
        # a 15 s one with a kept arena). Measured against no arena: 82-84 vs 87-92 ms of CPU
        # for a 3 s utterance, 239-260 vs 300-310 ms for 10 s (redsg_edge.memory).
        opts.enable_cpu_mem_arena = True
        opts.log_severity_level = 3
        sessions = []
        for name, path in (("encoder_model", encoder), ("decoder_model", decoder)):
            try:
                sessions.append(ort.InferenceSession(str(path), opts,
                                                     providers=["CPUExecutionProvider"]))
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise ModelError(f"{key}.{name}: {path} cannot be loaded ({exc}); fetch it "
                                 "again with `redsg-edge fetch-models`") from None
        self._enc, self._dec = sessions
        self._run_options = shrink_run_options(ort)
        try:
            self._tok = Tokenizer.from_file(str(tokenizer))
        except Exception as exc:
            raise ModelError(f"{key}.tokenizer: {tokenizer} is not a tokenizer.json "
                             f"({exc})") from None
        enc_in = {i.name for i in self._enc.get_inputs()}
        dec_in = {i.name: i for i in self._dec.get_inputs()}
        self._enc_mask = "attention_mask" in enc_in
        self._dec_mask = "encoder_attention_mask" in dec_in
        self._cache_names = [n for n in dec_in if n.startswith("past_key_values.")]
        first = dec_in.get("past_key_values.0.decoder.key")
        if (not self._cache_names or first is None or "use_cache_branch" not in dec_in
                or not isinstance(first.shape[1], int) or not isinstance(first.shape[3], int)):
            raise ModelError(f"{key}.decoder_model: {decoder} is not a Moonshine merged decoder "
                             "(inputs past_key_values.N.decoder.key ... and use_cache_branch)")
        self._heads, self._head_dim = int(first.shape[1]), int(first.shape[3])
        self._out_names = [o.name for o in self._dec.get_outputs()]
        self.min_level_dbfs = min_level_dbfs

    def transcribe(self, pcm: np.ndarray) -> str:
        """The words in ``pcm`` ((N,) int16, 16 kHz mono), "" when it is too quiet or too short
        (< 0.1 s). Audio longer than 64 s is cut to its first 64 s (Moonshine's limit; the
        VAD's utterances are far shorter). Raises ValueError for other shapes or dtypes."""
        pcm = np.asarray(pcm)
        if pcm.ndim != 1 or pcm.dtype != np.int16:
            raise ValueError(f"pcm must be (N,) int16 at 16 kHz, got {pcm.shape} {pcm.dtype}")
        pcm = pcm[: int(MAX_AUDIO_S * SAMPLE_RATE)]
        if len(pcm) < MIN_AUDIO_S * SAMPLE_RATE or peak_dbfs(pcm) < self.min_level_dbfs:
            return ""
        return self._tok.decode(self.tokens(pcm), skip_special_tokens=True).strip()

    def tokens(self, pcm: np.ndarray) -> list[int]:
        """Greedy decode of ``pcm`` ((N,) int16, 0.1-64 s): token ids without start/end."""
        audio = pcm_to_float(pcm)[None, :]
        mask = np.ones_like(audio, dtype=np.int64)
        feeds = {"input_values": audio}
        if self._enc_mask:
            feeds["attention_mask"] = mask
        hidden = self._enc.run(None, feeds, self._run_options)[0]
        empty = np.zeros((1, self._heads, 0, self._head_dim), np.float32)
        cache = {n: empty for n in self._cache_names}
        max_tokens = max(4, math.ceil(len(pcm) / SAMPLE_RATE * TOKENS_PER_S))
        out: list[int] = []
        token = START_TOKEN
        for step in range(max_tokens):
            feeds = {"input_ids": np.array([[token]], np.int64), "encoder_hidden_states": hidden,
                     "use_cache_branch": np.array([step > 0]), **cache}
            if self._dec_mask:
                feeds["encoder_attention_mask"] = mask
            logits, *present = self._dec.run(self._out_names, feeds, self._run_options)
            token = int(logits[0, -1].argmax())
            if token == END_TOKEN:
                break
            out.append(token)
            for name, value in zip(self._out_names[1:], present):
                # the cross-attention cache is computed at step 0 and reused; the cached
                # branch returns it unchanged (or empty), so only step 0's is kept
                if step == 0 or ".decoder." in name:
                    cache[name.replace("present.", "past_key_values.", 1)] = value
        return out

    @classmethod
    def from_config(cls, tc, threads: int = 1) -> Transcriber:
        """From a ``TranscriptConfig`` (``speech.transcript``)."""
        return cls(tc.encoder_model, tc.decoder_model, tc.tokenizer, threads=threads,
                   min_level_dbfs=tc.min_level_dbfs)


class TranscriptWorker(WorkerThread):
    """Speech-to-text in its own thread (``worker.WorkerThread``); ``submit`` never blocks.

    ``transcriber``: a :class:`Transcriber` (or anything with ``transcribe(pcm) -> str``).
    ``on_transcript(Utterance)``: called from the worker thread for every non-empty transcript
    (exceptions are logged and ignored). ``gate(t) -> bool``: True while the device's own voice
    may be in the microphone (``ReplyWorker.mic_gated``); an utterance gated at its start, its
    end or any half second between is skipped. ``max_audio_s_per_minute``: seconds of audio
    accepted in any 60 s of ``clock`` time; beyond it utterances are dropped (a chatterbox or
    a television must not keep a core busy). ``queue_size``: utterances waiting at most; when
    full, the oldest waiting one is dropped (the newest is the one a reply will want).
    ``log_transcripts``: log the text at INFO (default: durations and word counts only, DEBUG).

    ``stats`` counts ``submitted``, ``transcribed``, ``empty``, ``dropped_gated``,
    ``dropped_cap``, ``dropped_full``, ``errors``; ``audio_s`` and ``compute_s`` sum the work.
    """

    def __init__(self, transcriber, on_transcript: Callable[[Utterance], None], *,
                 gate: Callable[[float], bool] | None = None,
                 max_audio_s_per_minute: float = 30.0, queue_size: int = 4,
                 log_transcripts: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("stt", clock)
        self._stt = transcriber
        self._on_transcript = on_transcript
        self._gate = gate
        self.max_audio_s_per_minute = float(max_audio_s_per_minute)
        self.log_transcripts = log_transcripts
        self._q: deque = deque()
        self._queue_size = max(1, int(queue_size))
        self._cv = threading.Condition()
        self._busy = False
        self._spent: deque[tuple[float, float]] = deque()  # (clock time, audio seconds)
        self.stats = {"submitted": 0, "transcribed": 0, "empty": 0, "dropped_gated": 0,
                      "dropped_cap": 0, "dropped_full": 0, "errors": 0,
                      "audio_s": 0.0, "compute_s": 0.0}

    # ----------------------------------------------------------------- public API
    def stop(self, timeout: float = 5.0) -> bool:
        """Stop after the utterance in progress; waiting ones are dropped. True when the thread
        ended within ``timeout`` seconds (or never started)."""
        return super().stop(timeout)

    def _wake(self) -> None:
        with self._cv:
            self._q.clear()
            self._cv.notify_all()

    def submit(self, t_start: float, t_end: float, pcm: np.ndarray,
               emotion: str | None = None) -> bool:
        """Offer one utterance the VAD closed: ``t_start``/``t_end`` seconds (the clock the
        gate answers on), ``pcm`` (N,) int16 16 kHz mono (copied), ``emotion`` its SER label.
        Never blocks. Returns False when it is dropped now (gated, over the per-minute cap,
        stopped); True when queued (a full queue drops its oldest entry instead)."""
        audio_s = len(pcm) / SAMPLE_RATE
        gated = self._gated(t_start, t_end)  # outside our lock: the gate takes the reply's
        with self._cv:
            self.stats["submitted"] += 1
            if self._stop.is_set():
                return False
            if gated:
                self.stats["dropped_gated"] += 1
                return False
            now = self._clock()
            while self._spent and self._spent[0][0] <= now - 60.0:
                self._spent.popleft()
            if sum(s for _t, s in self._spent) + audio_s > self.max_audio_s_per_minute:
                self.stats["dropped_cap"] += 1
                log.debug("utterance of %.1f s not transcribed: over %.0f s of audio a minute",
                          audio_s, self.max_audio_s_per_minute)
                return False
            self._spent.append((now, audio_s))
            if len(self._q) >= self._queue_size:
                self._q.popleft()
                self.stats["dropped_full"] += 1
            self._q.append((float(t_start), float(t_end), np.array(pcm, np.int16), emotion))
            self._cv.notify()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until nothing is queued or being transcribed (e.g. a
        reply that wants the transcript of the utterance that just ended). True when idle."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._q or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cv.wait(left)
        return True

    # ----------------------------------------------------------------- worker
    def _gated(self, t_start: float, t_end: float) -> bool:
        if self._gate is None:
            return False
        n = max(1, int((t_end - t_start) / 0.5))
        return any(self._gate(t_start + (t_end - t_start) * i / n) for i in range(n + 1))

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._stop.is_set():
                    self.beat()
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                t_start, t_end, pcm, emotion = self._q.popleft()
                self._busy = True
            self.beat()
            try:
                self._one(t_start, t_end, pcm, emotion)
            except Exception:  # the worker survives anything one utterance throws
                log.exception("speech-to-text failed on a %.1f s utterance", len(pcm) / SAMPLE_RATE)
                self.stats["errors"] += 1
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _one(self, t_start: float, t_end: float, pcm: np.ndarray, emotion: str | None) -> None:
        t0 = time.perf_counter()
        text = self._stt.transcribe(pcm)
        compute_s = time.perf_counter() - t0
        release_free_memory()  # the activations go back to the OS, not to a high-water mark
        audio_s = len(pcm) / SAMPLE_RATE
        self.stats["audio_s"] += audio_s
        self.stats["compute_s"] += compute_s
        if not text:
            self.stats["empty"] += 1
            log.debug("no words in %.1f s of audio (%.0f ms)", audio_s, compute_s * 1e3)
            return
        self.stats["transcribed"] += 1
        if self.log_transcripts:
            log.info("transcript %.1f-%.1f s (%s): %r", t_start, t_end, emotion, text)
        else:
            log.debug("transcribed %.1f s of audio, %d words, in %.0f ms", audio_s,
                      len(text.split()), compute_s * 1e3)
        u = Utterance(t_start, t_end, text, emotion, round(audio_s, 3), round(compute_s, 4),
                      keep_text=self.log_transcripts)
        try:
            self._on_transcript(u)
        except Exception:
            log.exception("on_transcript callback failed")


# --------------------------------------------------------------------------- files (analyze)

#: A whole file is transcribed in pieces of this many seconds (Moonshine takes up to 64 s; its
#: accuracy is best on utterance-length audio).
FILE_CHUNK_S = 30.0


def _read_pcm(path: Path) -> np.ndarray:
    from .capture import AudioFileMic, DeviceError

    try:
        mic = AudioFileMic(path, 1000, realtime=False, key="analyze PATH")
        mic.open()
        pcm = np.concatenate([b for _t, b in mic] or [np.zeros(0, np.int16)])
        mic.close()
    except DeviceError as exc:
        raise ValueError(str(exc)) from None
    return pcm


def _transcribe_long(transcriber: Transcriber, pcm: np.ndarray) -> str:
    step = int(FILE_CHUNK_S * SAMPLE_RATE)
    parts = (transcriber.transcribe(pcm[i:i + step]) for i in range(0, len(pcm), step))
    return " ".join(p for p in parts if p)


def transcribe_file(transcriber: Transcriber, path: Path) -> str:
    """The words of a whole audio file (any format PyAV decodes), in ``FILE_CHUNK_S`` pieces
    joined by a space. Raises ValueError naming the file when it cannot be decoded."""
    return _transcribe_long(transcriber, _read_pcm(path))


class WithTranscripts:
    """An ``analyze.Analyzer`` whose results for recordings and for videos with speech gain a
    ``"transcript"`` field: the whole file's words, and each utterance's own (``"transcript"``
    in every ``utterances`` item, the samples from its ``start_s`` to ``end_s``); "" for none.
    ``redsg-edge analyze --transcribe``.
    """

    def __init__(self, analyzer, transcriber: Transcriber) -> None:
        self._an, self._stt = analyzer, transcriber

    def file(self, path: Path, annotate: Path | None = None) -> dict:
        """The wrapped analyzer's result for ``path``, with each utterance's ``transcript``
        added for recordings (what ``analyze --transcribe`` prints)."""
        r = self._an.file(path, annotate)
        if r.get("kind") == "audio" or (r.get("kind") == "video" and r.get("utterances")):
            pcm = _read_pcm(path)
            r["transcript"] = _transcribe_long(self._stt, pcm)
            for u in r.get("utterances", []):
                a, b = int(u["start_s"] * SAMPLE_RATE), int(u["end_s"] * SAMPLE_RATE)
                u["transcript"] = _transcribe_long(self._stt, pcm[a:b])
        return r

    def calibrate(self, paths: list[Path], progress: bool = False) -> int:
        """The wrapped analyzer's :meth:`~redsg_edge.analyze.Analyzer.calibrate`."""
        return self._an.calibrate(paths, progress)

    def close(self) -> None:
        """Close the wrapped analyzer (idempotent)."""
        self._an.close()
