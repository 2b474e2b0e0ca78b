"""What the MQTT publisher sends and accepts: topics, Home Assistant discovery configs, the state
and event payloads, and command parsing.

Pure: no sockets, no clocks (the caller passes wall time ``ts``), no paho. The network side is
``redsg_edge.mqtt``.

Topic layout for one device (``base`` = ``<topic_prefix>/<device_id>``, e.g.
``redsg-edge/kitchen-1``)::

    <base>/availability        "online" / "offline"          retained, QoS 1 (last will)
    <base>/state               JSON, see state_payload       retained, QoS 0, <= state_max_hz
    <base>/event/transition    JSON, see transition_payload  QoS 1, queued while offline
    <base>/event/reply         JSON, see reply_payload       QoS 1, queued while offline
    <base>/cmd/say             UTF-8 text to speak           (subscribed)
    <base>/cmd/mute            minutes, 0..1440 (0 = unmute) (subscribed)
    <base>/cmd/reload          anything: reload config.toml  (subscribed)
    <discovery_prefix>/<component>/<device_id>/<object_id>/config   retained discovery

Payloads carry labels and numbers only: never an image, audio, or (unless
``publish_reply_text``) words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import CLASSES, __version__
from .modalities import MODALITIES

__all__ = ["Topics", "COMMANDS", "MAX_SAY_CHARS", "MAX_MUTE_MIN", "CommandError",
           "discovery_configs", "state_payload", "state_key", "transition_payload",
           "reply_payload", "parse_command"]

#: The commands the device accepts on ``<base>/cmd/<name>``.
COMMANDS = ("say", "mute", "reload")
#: Longest ``say`` text, characters (Home Assistant's text entity allows 255 at most).
MAX_SAY_CHARS = 255
#: Longest mute, minutes (one day).
MAX_MUTE_MIN = 1440
#: Confidence steps that count as a change of state (0.05 = five percentage points).
_CONFIDENCE_STEP = 0.05


@dataclass(frozen=True)
class Topics:
    """Every topic of one device (see the module doc for the layout)."""

    base: str
    availability: str
    state: str
    transition: str
    reply: str
    command_prefix: str  # <base>/cmd/ ; a command's topic is this + its name
    command_filter: str  # <base>/cmd/+ ; what the device subscribes to
    ha_status: str       # <discovery_prefix>/status ; Home Assistant's birth message

    @classmethod
    def build(cls, topic_prefix: str, device_id: str, discovery_prefix: str) -> "Topics":
        """Topics for ``device_id`` under ``topic_prefix`` (both validated by config)."""
        base = f"{topic_prefix}/{device_id}"
        return cls(base=base, availability=f"{base}/availability", state=f"{base}/state",
                   transition=f"{base}/event/transition", reply=f"{base}/event/reply",
                   command_prefix=f"{base}/cmd/", command_filter=f"{base}/cmd/+",
                   ha_status=f"{discovery_prefix}/status")


# --------------------------------------------------------------------------- discovery

def discovery_configs(topics: Topics, device_id: str, discovery_prefix: str,
                      device_name: str | None = None) -> list[tuple[str, dict]]:
    """Home Assistant MQTT discovery: ``[(config topic, config dict)]`` for one device with

    - ``sensor`` *Emotion* (``device_class: enum`` over ``CLASSES``) with the whole state as
      attributes, and ``sensor`` *Emotion confidence* (%);
    - ``binary_sensor`` *Person present* (``occupancy``);
    - ``event`` *Emotion transition* (event types = the emotion entered) and *Reply*
      (``chat`` / ``offline``);
    - ``text`` *Say*, ``number`` *Mute replies* (minutes), ``button`` *Reload config*.

    Every entity shares the availability topic and the ``device`` block, so Home Assistant shows
    one device with all of them. Publish each retained.
    """
    dev = {"identifiers": [f"redsg_edge_{device_id}"],
           "name": device_name or f"redsg-edge {device_id}",
           "manufacturer": "redsg-edge", "model": "emotion-aware companion",
           "sw_version": __version__}
    common = {"availability_topic": topics.availability, "payload_available": "online",
              "payload_not_available": "offline", "device": dev,
              "origin": {"name": "redsg-edge", "sw_version": __version__}}
    entities: list[tuple[str, str, dict]] = [
        ("sensor", "emotion", {
            "name": "Emotion", "state_topic": topics.state,
            "value_template": "{{ value_json.emotion }}", "device_class": "enum",
            "options": list(CLASSES), "json_attributes_topic": topics.state,
            "icon": "mdi:emoticon-outline"}),
        ("sensor", "confidence", {
            "name": "Emotion confidence", "state_topic": topics.state,
            "value_template": "{{ (value_json.confidence * 100) | round(0) }}",
            "unit_of_measurement": "%", "state_class": "measurement",
            "icon": "mdi:gauge"}),
        ("binary_sensor", "person", {
            "name": "Person present", "state_topic": topics.state,
            "value_template": "{{ 'ON' if value_json.person_present else 'OFF' }}",
            "payload_on": "ON", "payload_off": "OFF", "device_class": "occupancy"}),
        ("event", "transition", {
            "name": "Emotion transition", "state_topic": topics.transition,
            "event_types": list(CLASSES), "icon": "mdi:swap-horizontal"}),
        ("event", "reply", {
            "name": "Reply", "state_topic": topics.reply, "event_types": ["chat", "offline"],
            "icon": "mdi:message-reply-text"}),
        ("text", "say", {
            "name": "Say", "command_topic": topics.command_prefix + "say", "mode": "text",
            "min": 1, "max": MAX_SAY_CHARS, "retain": False, "icon": "mdi:account-voice"}),
        ("number", "mute", {
            "name": "Mute replies", "command_topic": topics.command_prefix + "mute",
            "min": 0, "max": MAX_MUTE_MIN, "step": 1, "mode": "box",
            "unit_of_measurement": "min", "retain": False, "icon": "mdi:volume-off"}),
        ("button", "reload", {
            "name": "Reload config", "command_topic": topics.command_prefix + "reload",
            "payload_press": "reload", "retain": False, "entity_category": "config",
            "icon": "mdi:reload"}),
    ]
    out = []
    for component, object_id, cfg in entities:
        cfg = {**cfg, "unique_id": f"redsg_edge_{device_id}_{object_id}", **common}
        out.append((f"{discovery_prefix}/{component}/{device_id}/{object_id}/config", cfg))
    return out


# --------------------------------------------------------------------------- state and events

def _top(probs: np.ndarray) -> dict[str, Any]:
    """``{"top": class name, "p": probability}`` of a (7,) probability vector."""
    i = int(np.argmax(probs))
    return {"top": CLASSES[i], "p": round(float(probs[i]), 3)}


def person_present(evidence: dict) -> bool:
    """True when a camera modality (``modalities.MODALITIES[m].device == "camera"``, the face)
    has fresh evidence in ``evidence`` (an update's or a transition's), i.e. a face was seen
    within ``fusion.max_age_s``."""
    return any(m in MODALITIES and MODALITIES[m].device == "camera" for m in evidence)


def state_payload(update: Any, ts: float) -> dict:
    """The retained state for a ``fusion.FusedUpdate``::

        {"t": s, "ts": unix s, "emotion": name, "confidence": 0..1, "person_present": bool,
         "modalities": {<name>: {"top": class, "p": 0..1} | null, ...}}

    ``confidence`` is the smoothed fused probability of ``emotion``; ``modalities`` iterates
    ``modalities.MODALITIES`` and gives each model's own top class (null when it had no fresh
    evidence). ``t`` pipeline seconds, ``ts`` wall-clock seconds since the epoch.
    """
    mods: dict[str, Any] = {}
    for name in MODALITIES:
        probs = update.model_output(name)
        mods[name] = None if probs is None else _top(probs)
    conf = float(update.probs[CLASSES.index(update.emotion)])
    return {"t": round(float(update.t), 3), "ts": round(ts, 3), "emotion": update.emotion,
            "confidence": round(conf, 3), "person_present": person_present(update.evidence),
            "modalities": mods}


def state_key(state: dict) -> tuple:
    """What counts as a change of state: emotion, person present, each modality's top class,
    and the confidence in steps of 0.05 (so the fused number's jitter is not a change)."""
    mods = tuple((k, None if v is None else v["top"]) for k, v in state["modalities"].items())
    return (state["emotion"], state["person_present"], mods,
            math.floor(state["confidence"] / _CONFIDENCE_STEP))


def transition_payload(tr: Any, ts: float) -> dict:
    """An ``events.Transition`` as a Home Assistant event payload::

        {"event_type": to, "from", "to", "confidence", "previous_duration_s", "t", "ts",
         "person_present", "evidence": {<modality>: {"top", "p", "weight"}}}
    """
    ev = {}
    for name, e in tr.evidence.items():
        probs = e.get("probs") or {}
        if probs:
            top = max(probs, key=probs.get)
            ev[name] = {"top": top, "p": round(float(probs[top]), 3),
                        "weight": round(float(e.get("weight", 0.0)), 4)}
    return {"event_type": tr.to_emotion, "from": tr.from_emotion, "to": tr.to_emotion,
            "confidence": round(float(tr.confidence), 3),
            "previous_duration_s": round(float(tr.previous_duration_s), 3),
            "t": round(float(tr.t), 3), "ts": round(ts, 3),
            "person_present": person_present(tr.evidence), "evidence": ev}


def reply_payload(reply: Any, ts: float, include_text: bool) -> dict:
    """An ``events.Reply`` as an event payload: ``{"event_type": source, "from", "to", "source",
    "cause", "skipped", "truncated", "sentences", "audio_s", "first_audio_s", "latency_s", "t",
    "ts"}`` (seconds), plus ``"text"`` only when ``include_text``."""
    rec = {"event_type": reply.source, "from": reply.transition.from_emotion,
           "to": reply.transition.to_emotion, "source": reply.source, "cause": reply.cause,
           "skipped": reply.skipped, "truncated": reply.truncated,
           "sentences": reply.sentences, "audio_s": round(float(reply.audio_s), 3),
           "first_audio_s": reply.first_audio_s,
           "latency_s": {k: (None if v is None else round(float(v), 4))
                         for k, v in reply.latency_s.items()},
           "t": round(float(reply.t), 3), "ts": round(ts, 3)}
    if include_text:
        rec["text"] = reply.text
    return rec


# --------------------------------------------------------------------------- commands

class CommandError(ValueError):
    """A command that is refused; the message says what was wrong and what is accepted."""


def parse_command(name: str, payload: bytes) -> tuple[str, str]:
    """Validate a command from ``<base>/cmd/<name>``; return ``(name, arg)``.

    - ``say``: UTF-8 text, 1..255 characters after stripping, no control characters; arg = the
      text.
    - ``mute``: minutes as a number 0..1440 (``"30"``, ``"30.0"``; 0 unmutes); arg = whole
      minutes as a decimal string (rounded).
    - ``reload``: any payload (a button sends ``reload``); arg = ``""``.

    Raises CommandError naming the command and the accepted form.
    """
    if name not in COMMANDS:
        raise CommandError(f"unknown command {name!r}: the device accepts "
                           f"{', '.join(COMMANDS)}")
    if name == "reload":
        return name, ""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError(f"{name}: the payload is not UTF-8 text") from None
    if name == "say":
        if not text:
            raise CommandError("say: empty text; publish the words to speak")
        if len(text) > MAX_SAY_CHARS:
            raise CommandError(f"say: {len(text)} characters, at most {MAX_SAY_CHARS}")
        if any(not (c.isprintable() or c in " \t\n") for c in text):
            raise CommandError("say: the text holds control characters")
        return name, text
    try:
        minutes = float(text)
    except ValueError:
        raise CommandError(f"mute: {text[:40]!r} is not a number of minutes "
                           f"(0..{MAX_MUTE_MIN}, 0 unmutes)") from None
    if not (math.isfinite(minutes) and 0 <= minutes <= MAX_MUTE_MIN):
        raise CommandError(f"mute: {text[:40]!r} minutes is outside 0..{MAX_MUTE_MIN} "
                           f"(0 unmutes)")
    return name, str(int(round(minutes)))
