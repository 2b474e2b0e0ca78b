"""``redsg-edge check``: is this device ready to run the daemon?

One line per item, ``✔`` (fine), ``✘`` (the daemon would fail or run degraded) or ``!``
(a warning that does not stop the daemon, such as an unreachable chat endpoint):

1. the config file validates (else its ``file: section.key: message`` lines, exit 78);
2. model files: presence and sha256 (:func:`redsg_edge.assets.verify_models`);
3. the models load: MediaPipe face detector, FER, SER, and the Piper voice when replies are on;
4. devices open as configured: camera, microphone, audio output (``devices=False`` skips them,
   for image builds and CI where no device exists);
5. the chat endpoint: TCP reachability within ``reply.chat.connect_timeout_s`` and whether a key
   is configured for a non-local endpoint (warnings only; the key itself is never printed);
6. the MQTT broker when ``[mqtt] enabled``: one MQTT connect with the configured TLS and
   credentials (a warning when it fails: the daemon keeps retrying; a ``fail`` of kind
   ``config`` when the password or CA file cannot be used or paho-mqtt is missing).

Exit code: 0 all well (warnings allowed); 78 bad config (the file, or an MQTT credential
that cannot be read); 70 a model missing, corrupt or not
loadable; 69 a device cannot be opened. Models are reported before devices; with problems of
both kinds 70 wins, as a model problem is never fixed by plugging something in.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

from .config import Config, load_config
from .errors import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE, ConfigError


__all__ = ["check_main", "run_checks", "Item"]


class Item:
    """One check result: ``status`` ``ok`` | ``fail`` | ``warn`` | ``skip``; ``kind`` ``config`` |
    ``model`` | ``device`` | ``network`` (``config``: a credential file named by the config)."""

    def __init__(self, kind: str, name: str, status: str, detail: str = "") -> None:
        self.kind, self.name, self.status, self.detail = kind, name, status, detail

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Item({self.kind!r}, {self.name!r}, {self.status!r}, {self.detail!r})"


def _marks() -> dict[str, str]:
    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✔✘".encode(enc)
        return {"ok": "✔", "fail": "✘", "warn": "!", "skip": "-"}
    except (UnicodeEncodeError, LookupError):
        return {"ok": "OK", "fail": "FAIL", "warn": "WARN", "skip": "-"}


_T = TypeVar("_T")


def _timed(fn: Callable[[], _T]) -> tuple[_T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _classifier_item(what: str, path, load) -> Item:
    """Load a FER/SER model (``load()`` → an object with ``.clf``); ok with int8/float and the
    load time, fail with the ModelError naming the file."""
    from .litert import ModelError

    try:
        model, s = _timed(load)
    except ModelError as exc:
        return Item("model", f"{what} model loads", "fail", str(exc))
    q = "int8" if model.clf.quantized else "float"
    cal = model.calibration
    extra = f", T {cal.temperature:g}"
    if cal.log_bias is not None:
        extra += f", prior shift {cal.strength:g}"
    return Item("model", f"{what} model loads", "ok", f"{path} ({q}, {s:.2f} s{extra})")


def _model_items(cfg: Config) -> list[Item]:
    from .assets import verify_models
    from .litert import ModelError

    items = []
    warnings: list[str] = []
    problems = verify_models(cfg, warnings)
    for p in problems:
        items.append(Item("model", "model files", "fail", p))
    for w in warnings:
        items.append(Item("model", "model files", "warn", w))
    if not problems:
        items.append(Item("model", "model files", "ok", "present, sha256 verified where pinned"))

    face = cfg.camera.source != "none"
    voice_in = cfg.microphone.source != "none"
    if face:
        from .vision import FaceDetector, FerModel
        try:
            det, s = _timed(lambda: FaceDetector(cfg.vision.detector_model,
                                                 cfg.vision.min_detection_confidence))
            det.close()
            items.append(Item("model", "face detector loads", "ok",
                              f"{cfg.vision.detector_model} ({s:.1f} s)"))
        except ModelError as exc:
            items.append(Item("model", "face detector loads", "fail", str(exc)))
        items.append(_classifier_item("FER", cfg.vision.fer_model,
                                      lambda: FerModel.from_config(cfg.vision)))
    else:
        items.append(Item("model", "face models", "skip", 'camera.source = "none"'))
    if voice_in:
        from .speech import SerModel
        items.append(_classifier_item("SER", cfg.speech.ser_model,
                                      lambda: SerModel(cfg.speech.ser_model, cfg.speech.window_s)))
        if cfg.speech.utterance_model is not None:
            from .utterance_ser import UtteranceSer
            items.append(_classifier_item("utterance SER", cfg.speech.utterance_model,
                                          lambda: UtteranceSer(cfg.speech.utterance_model)))
        from .vad import SileroVad
        try:
            _, s = _timed(lambda: SileroVad(cfg.speech.vad_model))
            items.append(Item("model", "speech VAD loads", "ok",
                              f"{cfg.speech.vad_model} ({s:.2f} s)"))
        except ModelError as exc:
            items.append(Item("model", "speech VAD loads", "fail", str(exc)))
    else:
        items.append(Item("model", "speech model", "skip", 'microphone.source = "none"'))
    if cfg.reply.enabled:
        from .voice import Voice, VoiceError
        try:
            v, s = _timed(lambda: Voice.from_config(cfg.voice))
            chunks = (f"vocoder in {v.vocoder_chunk_s:.1f} s chunks" if v.vocoder_chunk_s
                      else "each sentence whole")
            items.append(Item("model", "voice loads", "ok",
                              f"{v.model_path.name} ({v.sample_rate} Hz, {s:.1f} s, {chunks})"))
        except VoiceError as exc:
            items.append(Item("model", "voice loads", "fail", str(exc)))
    else:
        items.append(Item("model", "voice", "skip", "reply.enabled = false"))
    return items


def _device_items(cfg: Config) -> list[Item]:
    from .capture import DeviceError, open_camera, open_microphone

    items = []
    for what, opener in (("camera", lambda: open_camera(cfg.camera, realtime=True)),
                         ("microphone", lambda: open_microphone(cfg.microphone, cfg.camera,
                                                                realtime=True))):
        try:
            src = opener()
        except DeviceError as exc:
            items.append(Item("device", what, "fail", str(exc)))
            continue
        if src is None:
            items.append(Item("device", what, "skip", f'{what}.source = "none"'))
            continue
        name = getattr(src, "name", what)
        try:
            src.close()
        except Exception:  # noqa: BLE001 - closing a probe must not fail the check
            pass
        items.append(Item("device", what, "ok", f"{name} opens"))
    if cfg.reply.enabled:
        if cfg.voice.sink == "sounddevice":
            from .voice import SounddeviceSink, VoiceError
            try:
                sink = SounddeviceSink(cfg.voice.device)
                items.append(Item("device", "audio output", "ok", f"{sink.name} opens"))
                sink.close()
            except VoiceError as exc:
                items.append(Item("device", "audio output", "fail", str(exc)))
        elif cfg.voice.sink == "wav":
            d = Path(cfg.voice.wav_dir)
            try:
                d.mkdir(parents=True, exist_ok=True)
                probe = d / ".redsg-edge-check"
                probe.write_bytes(b"")
                probe.unlink()
                items.append(Item("device", "audio output", "ok", f"WAV files in {d}"))
            except OSError as exc:
                items.append(Item("device", "audio output", "fail",
                                  f"voice.wav_dir: cannot write {d}: {exc}"))
        else:
            items.append(Item("device", "audio output", "skip", 'voice.sink = "null"'))
    return items


def _chat_items(cfg: Config) -> list[Item]:
    chat = cfg.reply.chat
    if not (cfg.reply.enabled and chat.enabled):
        return [Item("network", "chat endpoint", "skip",
                     "reply.chat.enabled = false: offline replies")]
    from .reply import is_local_url, read_api_key

    items = []
    u = urlparse(chat.base_url)
    host = u.hostname
    port = u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return [Item("network", "chat endpoint", "warn",
                     f"reply.chat.base_url = {chat.base_url!r} has no host")]
    try:
        with socket.create_connection((host, port), timeout=chat.connect_timeout_s):
            pass
        items.append(Item("network", "chat endpoint", "ok", f"{host}:{port} reachable"))
    except OSError as exc:
        items.append(Item("network", "chat endpoint", "warn",
                          f"{host}:{port} unreachable ({exc}); offline replies will be used"))
    if read_api_key(chat) is None and not is_local_url(chat.base_url):
        items.append(Item("network", "chat API key", "warn",
                          f"none: put it in /etc/redsg-edge/openai_api_key (systemd credential) "
                          f"or ${chat.api_key_env}"))
    return items


def _mqtt_items(cfg: Config) -> list[Item]:
    if not cfg.mqtt.enabled:
        return [Item("network", "MQTT broker", "skip", "mqtt.enabled = false")]
    from .mqtt import probe_broker

    try:
        ok, detail = probe_broker(cfg.mqtt, timeout_s=5.0)
    except ConfigError as exc:
        return [Item("config", "MQTT broker", "fail", "; ".join(exc.lines))]
    if ok:
        return [Item("network", "MQTT broker", "ok", detail)]
    return [Item("network", "MQTT broker", "warn",
                 f"{detail}; the daemon runs and keeps retrying (mqtt.host, mqtt.port)")]


def run_checks(cfg: Config, devices: bool = True, network: bool = True) -> list[Item]:
    """All checks for a loaded config (see module doc); never raises for the project's errors."""
    items = _model_items(cfg)
    if devices:
        items += _device_items(cfg)
    else:
        items.append(Item("device", "devices", "skip", "not checked (--no-devices)"))
    if network:
        items += _chat_items(cfg)
        items += _mqtt_items(cfg)
    return items


def check_main(cfg_path: Path, *, devices: bool = True, network: bool = True) -> int:
    """``redsg-edge check``: print one line per item; exit code as in the module doc.

    cfg_path: config.toml. devices: open camera, microphone and audio output (False in CI and
    image builds). network: probe the chat endpoint.
    """
    mark = _marks()
    try:
        cfg = load_config(cfg_path)
    except ConfigError as exc:
        print(f"{mark['fail']} config {cfg_path}")
        for line in exc.lines:
            print(f"    {line}")
        return EX_CONFIG
    print(f"{mark['ok']} config {cfg.source_path}")
    items = run_checks(cfg, devices=devices, network=network)
    for it in items:
        print(f"{mark[it.status]} {it.name}" + (f": {it.detail}" if it.detail else ""), flush=True)
    failed = {it.kind for it in items if it.status == "fail"}
    if "model" in failed:
        return EX_SOFTWARE
    if "device" in failed:
        return EX_UNAVAILABLE
    if "config" in failed:
        return EX_CONFIG
    return EX_OK


def _main(argv: list[str] | None = None) -> int:
    """``python -m redsg_edge.check --config PATH [--no-devices] [--no-network]`` (installer)."""
    import argparse
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m redsg_edge.check")
    ap.add_argument("--config", type=Path, default=Path("config.toml"))
    ap.add_argument("--no-devices", action="store_true")
    ap.add_argument("--no-network", action="store_true")
    args = ap.parse_args(argv)
    return check_main(args.config, devices=not args.no_devices, network=not args.no_network)


if __name__ == "__main__":
    sys.exit(_main())
