"""Device listing for ``redsg-edge devices``: V4L2 nodes (probed with VIDIOC_QUERYCAP), Raspberry
Pi cameras (libcamera) and PortAudio inputs and outputs, each with the config line that selects it.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from ..errors import DeviceError
from .microphone import _import_sounddevice

__all__ = ["list_devices", "format_devices"]


_VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
_V4L2_CAP_VIDEO_CAPTURE = 0x00000001
_V4L2_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
_V4L2_CAP_DEVICE_CAPS = 0x80000000


def _v4l2_capture(path: str) -> bool | None:
    """Whether the /dev/video node at ``path`` can capture video (UVC cameras add metadata-only
    nodes); None when it cannot be opened or queried."""
    import fcntl
    import struct
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buf = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, buf)
        caps, device_caps = struct.unpack_from("=II", buf, 84)
        if caps & _V4L2_CAP_DEVICE_CAPS:
            caps = device_caps
        return bool(caps & (_V4L2_CAP_VIDEO_CAPTURE | _V4L2_CAP_VIDEO_CAPTURE_MPLANE))
    except OSError:
        return None
    finally:
        os.close(fd)


def _picamera2_cameras() -> tuple[list[dict] | None, str]:
    """``(cameras, note)``: ``Picamera2.global_camera_info()`` as a list of dicts (libcamera's
    "Model", "Id", ...), None when picamera2 is not importable, [] on a libcamera error; ``note``
    says why ("" when the listing worked)."""
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, f"picamera2 not importable ({exc})"
    try:
        return list(Picamera2.global_camera_info()), ""
    except Exception as exc:  # noqa: BLE001
        return [], f"libcamera error: {exc}"


def list_devices() -> dict[str, Any]:
    """Cameras and audio devices visible to this process, for ``redsg-edge devices``.

    Returns ``{"cameras": [...], "camera_notes": [str], "audio_inputs": [...],
    "audio_outputs": [...], "audio_error": str | None}``. A V4L2 camera is
    ``{"kind": "v4l2", "device": "/dev/video0", "index": 0, "name": str, "capture": bool|None,
    "config": 'camera.device = 0'}``; a Pi camera ``{"kind": "picamera2", "index": n,
    "name": model, "id": str, "config": ...}``; an audio device ``{"index", "name", "hostapi",
    "channels", "default_samplerate", "default": bool, "config": ...}``. Never raises for a
    missing device or library: what could not be listed is said in ``camera_notes`` and
    ``audio_error``.
    """
    cameras: list[dict[str, Any]] = []
    notes: list[str] = []

    def node_index(p: str) -> int:
        m = re.search(r"(\d+)$", p)
        return int(m.group(1)) if m else -1

    for path in sorted(glob.glob("/dev/video*"), key=node_index):
        idx = node_index(path)
        try:
            name = Path(f"/sys/class/video4linux/{Path(path).name}/name").read_text().strip()
        except OSError:
            name = "?"
        cameras.append({"kind": "v4l2", "device": path, "index": idx, "name": name,
                        "capture": _v4l2_capture(path),
                        "config": f'camera.source = "opencv", camera.device = {idx}'})
    if not cameras:
        notes.append("no /dev/video* nodes")
    pi, note = _picamera2_cameras()
    if note:
        notes.append(note)
    for i, info in enumerate(pi or []):
        cameras.append({"kind": "picamera2", "index": i, "name": info.get("Model", "?"),
                        "id": info.get("Id", ""),
                        "config": f'camera.source = "picamera2", camera.device = {i}'})

    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    audio_error = None
    try:
        sd = _import_sounddevice()
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        try:
            default_in, default_out = sd.default.device
        except Exception:  # noqa: BLE001
            default_in = default_out = -1
        for d in devices:
            base = {"index": d["index"], "name": d["name"],
                    "hostapi": hostapis[d["hostapi"]]["name"],
                    "default_samplerate": d["default_samplerate"]}
            if d["max_input_channels"] > 0:
                inputs.append({**base, "channels": d["max_input_channels"],
                               "default": d["index"] == default_in,
                               "config": f"microphone.device = {d['index']}"})
            if d["max_output_channels"] > 0:
                outputs.append({**base, "channels": d["max_output_channels"],
                                "default": d["index"] == default_out,
                                "config": f"voice.device = {d['index']}"})
    except DeviceError as exc:
        audio_error = str(exc)
    except Exception as exc:  # noqa: BLE001 - PortAudio errors
        audio_error = f"PortAudio error: {exc}"
    return {"cameras": cameras, "camera_notes": notes, "audio_inputs": inputs,
            "audio_outputs": outputs, "audio_error": audio_error}


def format_devices(d: dict[str, Any]) -> str:
    """Human-readable text of :func:`list_devices`' result (the config line to use per device)."""
    lines = ["Cameras:"]
    for c in d["cameras"]:
        if c["kind"] == "v4l2":
            tag = {True: "", False: "  (not a capture node)", None: "  (cannot query)"}[c["capture"]]
            lines.append(f"  {c['device']:<13} {c['name']}{tag}  ->  {c['config']}")
        else:
            lines.append(f"  picamera2 {c['index']:<3} {c['name']} {c['id']}  ->  {c['config']}")
    if not d["cameras"]:
        lines.append("  (none)")
    lines += [f"  note: {n}" for n in d["camera_notes"]]
    for title, key in (("Audio inputs:", "audio_inputs"), ("Audio outputs:", "audio_outputs")):
        lines.append(title)
        for a in d[key]:
            mark = "*" if a["default"] else " "
            lines.append(f" {mark}{a['index']:>3} {a['name']} ({a['hostapi']}, {a['channels']} ch, "
                         f"{a['default_samplerate']:g} Hz)  ->  {a['config']}")
        if not d[key]:
            lines.append("  (none)" if not d["audio_error"] else "  (unknown)")
    if d["audio_error"]:
        lines.append(f"  audio: {d['audio_error']}")
    lines.append("(* = default device)")
    return "\n".join(lines)
