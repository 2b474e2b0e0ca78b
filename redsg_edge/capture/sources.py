"""The two source contracts a :class:`~redsg_edge.capture.thread.CaptureThread` knows, and helpers
the device backends share.

- :class:`PullSource`: the capture thread calls :meth:`PullSource.read` in a loop; each call
  blocks until the next ``(t, data)`` item (a camera frame, a decoded file block, ...) and returns
  None at the end.
- :class:`PushSource`: the driver calls back on its own thread; :meth:`PushSource.attach` hands
  the source its ring once, its callback writes into it, and the capture thread only watches
  :attr:`PushSource.active` / :attr:`PushSource.last_callback` for the heartbeat and errors.

Both are small ABCs rather than structural protocols on purpose: a source *declares* which kind
it is by subclassing, so a class that happens to grow an ``attach`` method is not mistaken for a
push source, and a class that forgets a required method fails when it is instantiated.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .rings import AudioRing

__all__ = ["Source", "PullSource", "PushSource"]


class Source(ABC):
    """What every capture source has: open/close/interrupt, a name, and use as a context manager
    (open on enter, close on exit).

    ``name``: shown in logs and the status file (``"opencv:/dev/video0"``, ``"file:clip.mp4"``).
    ``live``: True for real devices, whose timestamps are ``time.monotonic()`` seconds.
    """

    name = "source"
    live = True

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or file. Raises :class:`~redsg_edge.errors.DeviceError` (exit 69)
        naming the device and the config key to change; may be called again after :meth:`close`
        (the capture thread reopens a failing device)."""

    def close(self) -> None:
        """Release the device or file; safe to call twice or before :meth:`open`."""

    def interrupt(self) -> None:
        """Wake a blocking call from another thread (a pacing sleep inside ``read`` of a realtime
        file); that call then returns None. The default does nothing."""

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PullSource(Source):
    """A source that is read: each :meth:`read` blocks until the next item.

    Iterating over an opened source yields the items until ``read()`` returns None.
    """

    @abstractmethod
    def read(self) -> tuple[float, np.ndarray] | None:
        """The next item ``(t, data)``: ``t`` in seconds (see the subclass for which instant and
        clock), ``data`` an array (a frame or an audio block). Returns None at the end of a
        non-looping file or after :meth:`interrupt`; raises OSError when a live device fails to
        deliver (the capture thread counts it and reopens the source after repeated errors)."""

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        while (item := self.read()) is not None:
            yield item


class PushSource(Source):
    """A source whose driver calls back on its own thread with each block (PortAudio streams).

    After :meth:`attach` the callback writes straight into the ring; the capture thread never
    reads, it watches :attr:`active` (False = the stream stopped, counted as an error and
    reopened), :attr:`last_callback` (the heartbeat) and :attr:`blocks` (items).
    """

    #: ``time.monotonic()`` (s) of the newest callback; 0.0 before the first.
    last_callback: float = 0.0
    #: Blocks delivered by the callback so far.
    blocks: int = 0

    @abstractmethod
    def attach(self, ring: AudioRing) -> None:
        """Have the callback write every block into ``ring`` from now on (call before or after
        :meth:`open`)."""

    @property
    @abstractmethod
    def active(self) -> bool:
        """True while the driver's stream runs (False before open, after an unplug or a host
        error)."""


# ----------------------------------------------------------------- helpers the backends share

OPEN_TIMEOUT_S = 5.0  # a device that has not opened (or given a first frame) by then is missing


def _plausible_monotonic(ts: float | None, now: float, window: float = 2.0) -> float:
    """``ts`` if it looks like a time.monotonic() reading from the last ``window`` s, else ``now``."""
    if ts is not None and now - window <= ts <= now + 0.01:
        return ts
    return now


def _call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a helper thread; raise TimeoutError naming ``what`` if it takes longer.

    Opening some devices (a GStreamer pipeline with a missing CSI camera, a wedged USB camera)
    can block for a long time; the daemon must fail within seconds instead. The hung call is left
    behind in a daemon thread.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    th = threading.Thread(target=run, name=f"open {what}", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise TimeoutError(f"{what} did not open within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _fmt(value: object) -> str:
    return f'"{value}"' if isinstance(value, (str, Path)) else repr(value)

