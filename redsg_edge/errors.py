"""The project's exceptions and the one mapping from an exception to a process exit code.

Exit codes follow sysexits.h (BSD 4.3, also what systemd's ``RestartPreventExitStatus=`` sees):
0 ok · 1 anything unexpected (a bug: systemd restarts on it) · 2 usage (argparse) ·
69 ``EX_UNAVAILABLE`` a device (camera, microphone, speaker, media file) cannot be used ·
70 ``EX_SOFTWARE`` a model file is missing or broken · 78 ``EX_CONFIG`` the configuration is
invalid. Every command (``run``, ``replay``, ``analyze``, ``say``, ``check``) maps through
:func:`exit_code_for`, so one error gives one code wherever it happens.

This module imports nothing of ours: every other module may import it.
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69  # sysexits.h: a service (here a device) is unavailable
EX_SOFTWARE = 70     # sysexits.h: internal software error (here a model that cannot be loaded)
EX_CONFIG = 78       # sysexits.h: configuration error

__all__ = ["EX_OK", "EX_FAILURE", "EX_USAGE", "EX_UNAVAILABLE", "EX_SOFTWARE", "EX_CONFIG",
           "ConfigError", "DeviceError", "ModelError", "VoiceError", "exit_code_for"]


class ConfigError(Exception):
    """A config file that cannot be used. ``lines`` holds one ``file: key: message`` per problem;
    ``exit_code`` 78."""

    exit_code = EX_CONFIG

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class DeviceError(Exception):
    """A camera, microphone or media file that cannot be used.

    The message names the device and the config key to change. ``key`` is that config key
    (e.g. ``"camera.device"``), ``device`` the device as given, ``exit_code`` 69.
    """

    exit_code = EX_UNAVAILABLE

    def __init__(self, message: str, key: str | None = None, device: object = None) -> None:
        super().__init__(message)
        self.key = key
        self.device = device


class ModelError(RuntimeError):
    """A model file is missing, corrupt, or does not have the expected input/output shape;
    ``exit_code`` 70."""

    exit_code = EX_SOFTWARE


class VoiceError(RuntimeError):
    """A voice or audio output that cannot be used; ``key`` is the config key to fix.

    ``exit_code``: 70 for the voice model (``voice.model``, like any model file), 69 for an
    audio output (``voice.sink``, ``voice.device``, ``voice.wav_dir``, like any device).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key

    @property
    def exit_code(self) -> int:
        """70 (EX_SOFTWARE) for a missing or broken voice model, else 69 (EX_UNAVAILABLE: no audio
        output device)."""
        return EX_SOFTWARE if self.key == "voice.model" else EX_UNAVAILABLE


def exit_code_for(exc: BaseException) -> int:
    """The exit code for ``exc``: its ``exit_code`` when it is one of ours, else 1 (a bug)."""
    if isinstance(exc, (ConfigError, DeviceError, ModelError, VoiceError)):
        return exc.exit_code
    return EX_FAILURE
