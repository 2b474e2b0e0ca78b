"""The daemon's status: the status file, the one-line ``STATUS=`` text and ``redsg-edge status``.

Where the file is (:func:`status_path`): ``service.status_file``; else
``$RUNTIME_DIRECTORY/status.json`` (systemd's ``RuntimeDirectory=``); else
``/run/redsg-edge/status.json`` when that directory is writable; else
``$XDG_RUNTIME_DIR/redsg-edge/status.json``; else ``<tmpdir>/redsg-edge-<uid>/status.json``.
It is JSON, written atomically (temporary file + ``os.replace``, mode 0644, so another user can
read it) at start-up, after each ``STATUS=`` tick (``service.status_interval_s``), around a
reload and at exit. ``redsg-edge status`` (:func:`status_main`) reads it.

The file's keys (:func:`status_document`; times in seconds unless named otherwise):

- ``state``: ``"starting"``, ``"ready"``, ``"reloading"``, ``"stopping"`` or ``"stopped"``;
- ``phase``: the latest start-up or shutdown step (``"opening devices"``, ``"loading models"``,
  ``"waiting for the first frame and audio block"``, ``"ready"``, ``"stopping"``,
  ``"stopped"``, ``"failed: <reason>"``);
- ``pid``, ``version`` (the package's), ``config`` (absolute path), ``config_sha256`` (of the
  file text in use; a rejected reload keeps the old one; null if the file vanished);
- ``restart_pending``: config keys changed since start that only a restart applies;
- ``updated_at`` (ISO 8601 UTC, ms), ``updated_at_unix`` (s since the epoch), ``started_at``
  (ISO 8601 UTC), ``uptime_s``;
- ``status_interval_s``: how often the file is rewritten (:func:`assess` judges staleness by it);
- ``status_line``: the ``STATUS=`` text (:func:`status_line`), or the phase before the pipeline
  exists;
- ``watchdog``: ``{"enabled": bool, "interval_s": s | null, "last_ping_age_s": s | null,
  "stale_workers": ["vision 12s", ...]}``;
- ``heartbeat_age_s``: worker name → seconds since its last heartbeat (``"vision"``,
  ``"speech"``, ``"capture camera"``, ``"capture microphone"``, ``"reply"``, ``"transcripts"``);
- ``last_transition_age_s``: seconds since the last transition, or null;
- ``pipeline``: ``Pipeline.status()`` (null until the pipeline is built, or if it failed), with
  ``modalities`` (modality name → ``"on"``/``"off"``, over ``modalities.MODALITIES``),
  ``evidence`` (modality name → ``{"top": class, "p": probability, "age_s": s}`` of the
  evidence the latest fusion update used, or null when it had none fresh), ``emotion`` (the fused emotion), ``probs`` (class → fused probability), ``fps`` (frames
  classified per second), ``frames`` (``captured``, ``dropped``, ``classified``, ``with_face``),
  ``audio`` (``samples``, ``overruns``, ``dropped`` samples, ``windows``, ``voiced_windows``,
  ``utterances``, ``gated_windows``), ``last_transition`` (``t``, ``from``, ``to``,
  ``confidence``; or null), ``last_reply`` (``source``, ``cause``, ``text``, ``latency_s``; or
  null), ``uptime_s``, ``notes`` (degraded-mode explanations, one string each),
  ``subscribers`` (the event bus's subscriber names, in call order) and ``subscriber_errors``
  (subscriber name → events it raised on);
- at exit only: ``exit_code`` (the process's) and ``error`` (why it failed, or null).

``redsg-edge status --json`` prints the file plus ``health`` (``"running"``, ``"stale"``,
``"dead"``, ``"stopped"``, or ``"not_running"``/``"unknown"`` without a readable file),
``health_detail`` (one sentence) and ``status_file`` (its path).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..assets import replacing
from ..modalities import MODALITIES

__all__ = ["STATUS_FILE_NAME", "status_candidates", "status_path", "write_json_atomic",
           "read_status", "status_document", "status_line", "assess", "format_status",
           "status_main"]

#: The file name in every candidate directory.
STATUS_FILE_NAME = "status.json"


# ================================================================================ file location

def _runtime_directory(environ: Mapping[str, str]) -> Path | None:
    value = environ.get("RUNTIME_DIRECTORY", "")
    return Path(value.split(":")[0]) if value else None


def status_candidates(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where a status file may be, in the order :func:`status_path` chooses them (without the
    config's ``service.status_file``), duplicates removed. ``environ`` replaces
    ``os.environ``."""
    env = environ if environ is not None else os.environ
    out = []
    rd = _runtime_directory(env)
    if rd is not None:
        out.append(rd / STATUS_FILE_NAME)
    out.append(Path("/run/redsg-edge") / STATUS_FILE_NAME)
    if env.get("XDG_RUNTIME_DIR"):
        out.append(Path(env["XDG_RUNTIME_DIR"]) / "redsg-edge" / STATUS_FILE_NAME)
    out.append(Path(tempfile.gettempdir()) / f"redsg-edge-{os.getuid()}" / STATUS_FILE_NAME)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def status_path(configured: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The status file the daemon writes: ``configured`` (``service.status_file``) when set,
    else ``$RUNTIME_DIRECTORY/status.json``, else ``/run/redsg-edge/status.json`` when that
    directory exists and is writable, else ``$XDG_RUNTIME_DIR/redsg-edge/status.json`` when
    writable, else ``<tmpdir>/redsg-edge-<uid>/status.json``. Creates nothing."""
    if configured is not None:
        return Path(configured)
    env = environ if environ is not None else os.environ
    rd = _runtime_directory(env)
    if rd is not None:
        return rd / STATUS_FILE_NAME
    run = Path("/run/redsg-edge")
    if run.is_dir() and os.access(run, os.W_OK | os.X_OK):
        return run / STATUS_FILE_NAME
    if env.get("XDG_RUNTIME_DIR") and os.access(env["XDG_RUNTIME_DIR"], os.W_OK | os.X_OK):
        return Path(env["XDG_RUNTIME_DIR"]) / "redsg-edge" / STATUS_FILE_NAME
    return Path(tempfile.gettempdir()) / f"redsg-edge-{os.getuid()}" / STATUS_FILE_NAME


# ================================================================================ read and write

def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` so readers see the old or the new file, never half of one (same-directory
    temporary file, then ``os.replace``). Mode 0644: ``redsg-edge status`` runs as another user.
    Values JSON cannot hold are written as ``str(value)``. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, "w", durable=False) as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")


def read_status(path: Path | None = None, environ: Mapping[str, str] | None = None
                ) -> tuple[Path | None, dict | None]:
    """(path, parsed status) of ``path``, or of the most recently updated candidate
    (:func:`status_candidates`); (None, None) when there is none. Unreadable JSON gives
    (path, None). Never raises."""
    if path is not None:
        paths = [Path(path)]
    else:
        paths = [p for p in status_candidates(environ) if p.is_file()]
        paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for p in paths:
        try:
            return p, json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return p, None
    return None, None


def status_document(*, state: str, phase: str, config: Path, config_sha256: str | None,
                    restart_pending: list[str], started_wall: float, started: float,
                    status_interval_s: float, watchdog_s: float | None,
                    last_ping: float | None, stale: list[str], pipeline: dict | None,
                    heartbeats: Mapping[str, float], now: float) -> dict:
    """The status file's content (keys in the module docstring), without ``exit_code``/``error``.

    ``started``, ``last_ping``, the ``heartbeats`` values and ``now`` are ``time.monotonic()``
    seconds; ``started_wall`` is ``time.time()`` at start; ``pipeline`` is
    ``Pipeline.status()`` or None. Reads the wall clock for ``updated_at``.
    """
    tr = (pipeline or {}).get("last_transition")
    return {
        "state": state,
        "phase": phase,
        "pid": os.getpid(),
        "version": __version__,
        "config": str(Path(config).resolve()),
        "config_sha256": config_sha256,
        "restart_pending": restart_pending,
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "updated_at_unix": round(time.time(), 3),
        "started_at": datetime.fromtimestamp(started_wall, timezone.utc)
                              .isoformat(timespec="seconds"),
        "uptime_s": round(now - started, 1),
        "status_interval_s": status_interval_s,
        "status_line": status_line(pipeline, now, stale) if pipeline else phase,
        "watchdog": {"enabled": watchdog_s is not None,
                     "interval_s": watchdog_s,
                     "last_ping_age_s": None if last_ping is None else round(now - last_ping, 3),
                     "stale_workers": stale},
        "heartbeat_age_s": {k: round(now - v, 3) for k, v in heartbeats.items()},
        "last_transition_age_s": round(now - float(tr["t"]), 1) if tr else None,
        "pipeline": pipeline,
    }


# ===================================================================================== text

def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def status_line(st: dict, now: float | None = None, stale: list[str] | None = None) -> str:
    """The ``STATUS=`` text of a ``Pipeline.status()`` dict: ``happy | face on, voice on |
    14.8 fps | last neutral->happy 0.62, 12s ago``; ``now`` (``time.monotonic()`` s) gives the
    age, ``stale`` (``"vision 12s"`` strings) is put first as ``STALLED ...`` when not empty."""
    mods = st.get("modalities", {})
    parts = [str(st.get("emotion", "?")),
             ", ".join(f"{k} {v}" for k, v in mods.items()),
             f"{float(st.get('fps') or 0.0):.1f} fps"]
    tr = st.get("last_transition")
    if tr:
        ago = "" if now is None else f", {_age(now - float(tr['t']))} ago"
        parts.append(f"last {tr['from']}->{tr['to']} {float(tr['confidence']):.2f}{ago}")
    else:
        parts.append("no transition yet")
    line = " | ".join(parts)
    if stale:
        line = f"STALLED {', '.join(stale)} | {line}"
    return line


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user (DynamicUser=)
        return True
    except OSError:
        return False
    return True


def assess(status: dict, now_unix: float | None = None) -> tuple[str, str]:
    """(health, explanation) of a status file: ``running``, ``stale`` (the writer stopped
    updating it for max(3 × ``status_interval_s``, 10 s): hung, or killed without cleaning up),
    ``dead`` (its pid is gone) or ``stopped``. ``now_unix``: seconds since the epoch (default
    now)."""
    now_unix = time.time() if now_unix is None else now_unix
    age = now_unix - float(status.get("updated_at_unix") or 0.0)
    interval = float(status.get("status_interval_s") or 2.0)
    pid = int(status.get("pid") or 0)
    if status.get("state") == "stopped":
        code = status.get("exit_code")
        return "stopped", f"not running: stopped {_age(age)} ago (exit code {code})"
    if pid and not _pid_alive(pid):
        return "dead", f"not running: process {pid} is gone (last update {_age(age)} ago)"
    if age > max(3 * interval, 10.0):
        return "stale", (f"status file is stale: last update {_age(age)} ago, expected every "
                         f"{interval:g} s (daemon hung or status writes failing)")
    return "running", f"running (pid {pid})"


def _camera_detail(p: dict) -> str:
    fr = p.get("frames") or {}
    return (f"{p.get('fps', 0):.1f} fps, {fr.get('captured', 0)} frames captured, "
            f"{fr.get('dropped', 0)} dropped, {fr.get('classified', 0)} classified, "
            f"{fr.get('with_face', 0)} with a face")


def _microphone_detail(p: dict) -> str:
    au = p.get("audio") or {}
    return (f"{au.get('windows', 0)} windows, {au.get('voiced_windows', 0)} voiced, "
            f"{au.get('gated_windows', 0)} gated while speaking, {au.get('overruns', 0)} "
            f"overruns, {au.get('dropped', 0)} samples dropped")


#: capture device (``Modality.device``) → the counters ``Pipeline.status()`` keeps for it
_DEVICE_DETAIL: dict[str, Callable[[dict], str]] = {"camera": _camera_detail,
                                                    "microphone": _microphone_detail}


def _modality_lines(p: dict) -> list[str]:
    """One line per modality: the table's, then any other the file names (another version)."""
    mods = p.get("modalities") or {}
    evidence = p.get("evidence")
    lines = []
    for name in list(MODALITIES) + [m for m in mods if m not in MODALITIES]:
        line = f"  {name:<11} {mods.get(name, '?')}"
        m = MODALITIES.get(name)
        detail = _DEVICE_DETAIL.get(m.device) if m is not None else None
        if detail is not None:
            line += f": {detail(p)}"
        if isinstance(evidence, Mapping) and name in evidence:
            ev = evidence[name]
            if isinstance(ev, Mapping):
                age = ev.get("age_s")
                line += (f"; evidence {ev.get('top')} ({float(ev.get('p') or 0.0):.2f}"
                         + ("" if age is None else f", {float(age):.1f} s old") + ")")
            else:
                line += "; no fresh evidence"
        lines.append(line)
    return lines


def format_status(status: dict, path: Path, now_unix: float | None = None) -> str:
    """The human-readable text ``redsg-edge status`` prints for a status file read from
    ``path``: health, config, uptime, one line per modality of ``modalities.MODALITIES`` (with
    its device's counters and latest evidence when the file has them), the last transition and
    reply, failing event subscribers, workers and watchdog. ``now_unix``: seconds since the epoch (default now)."""
    health, why = assess(status, now_unix)
    p = status.get("pipeline") or {}
    lines = [f"redsg-edge {status.get('version', '?')}: {status.get('state', '?')} — {why}",
             f"  status file {path}, updated {status.get('updated_at', '?')}",
             f"  config      {status.get('config', '?')}",
             f"  uptime      {_age(status.get('uptime_s'))}"]
    if status.get("error"):
        lines.append(f"  error       {status['error']}")
    if status.get("restart_pending"):
        lines.append(f"  restart     needed to apply {', '.join(status['restart_pending'])} "
                     "(sudo systemctl restart redsg-edge)")
    if status.get("state") in ("starting", "stopping") and status.get("phase"):
        lines.append(f"  phase       {status['phase']}")
    if p:
        probs = p.get("probs") or {}
        emo = p.get("emotion", "?")
        lines.append(f"  emotion     {emo}" + (f" ({probs[emo]:.2f})" if emo in probs else ""))
        lines += _modality_lines(p)
        tr = p.get("last_transition")
        if tr:
            lines.append(f"  transition  {tr['from']} -> {tr['to']} ({tr['confidence']:.2f}), "
                         f"{_age(status.get('last_transition_age_s'))} ago")
        else:
            lines.append("  transition  none yet")
        rp = p.get("last_reply")
        if rp:
            lat = (rp.get("latency_s") or {})
            first = lat.get("first_sample") or lat.get("first_pcm")
            lines.append(f"  last reply  {rp.get('source')}"
                         + (f" ({rp['cause']})" if rp.get("cause") else "")
                         + (f", first audio {first * 1000:.0f} ms" if first else "")
                         + f": {rp.get('text')!r}")
        else:
            lines.append("  last reply  none yet")
        errors = p.get("subscriber_errors") or {}
        if errors:
            lines.append("  subscribers " + ", ".join(f"{k} failed on {v} event(s)"
                                                      for k, v in sorted(errors.items())))
        for note in p.get("notes") or []:
            lines.append(f"  note        {note}")
    wd = status.get("watchdog") or {}
    beats = status.get("heartbeat_age_s") or {}
    if beats:
        lines.append("  workers     " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(beats.items()))
                     + (f"; STALLED: {', '.join(wd['stale_workers'])}"
                        if wd.get("stale_workers") else ""))
    ping = wd.get("last_ping_age_s")
    lines.append("  watchdog    " + (f"every {wd['interval_s']:.1f} s, last ping "
                                      + ("never" if ping is None else f"{ping:.1f} s ago")
                                      if wd.get("enabled") else "off (not under systemd)"))
    return "\n".join(lines)


def status_main(json_out: bool = False, path: Path | None = None,
                environ: Mapping[str, str] | None = None) -> int:
    """``redsg-edge status [--json] [--file PATH]``: print the daemon's status file.

    Finds the file (``path``, else the newest of :func:`status_candidates`), prints it for humans
    (:func:`format_status`) or as JSON (the file plus ``"health"``/``"health_detail"``/
    ``"status_file"``). Returns 0 when the daemon runs and the file is fresh, 1 when the file is
    stale or its process is gone, 3 (LSB "not running") when there is no file or the daemon
    stopped, 4 when the file is unreadable. Never raises for a missing or broken file.
    """
    found, status = read_status(path, environ)
    if found is None:
        where = [str(path)] if path else [str(p) for p in status_candidates(environ)]
        msg = ("redsg-edge is not running: no status file (looked in " + ", ".join(where) + ")")
        if json_out:
            print(json.dumps({"health": "not_running", "health_detail": msg}))
        else:
            print(msg)
        return 3
    if status is None:
        msg = f"{found}: status file is not readable JSON"
        print(json.dumps({"health": "unknown", "health_detail": msg}) if json_out else msg)
        return 4
    health, why = assess(status)
    if json_out:
        print(json.dumps({**status, "health": health, "health_detail": why,
                          "status_file": str(found)}, indent=1, default=str))
    else:
        print(format_status(status, found))
    return {"running": 0, "stale": 1, "dead": 1, "stopped": 3}[health]
