"""The preallocated rings between capture and inference: RGB frames and 16 kHz mono int16 audio.

A :class:`~redsg_edge.capture.thread.CaptureThread` (or a push source's callback) writes; the
vision and speech workers read the newest data. Rings never allocate after construction and count
what they drop. Pure data structures: no device, file or clock access (times are passed in).
"""

from __future__ import annotations

import threading

import numpy as np

SAMPLE_RATE = 16000  # Hz; every audio path in the project runs at 16 kHz mono int16

__all__ = ["SAMPLE_RATE", "FrameRing", "AudioRing"]


class FrameRing:
    """Preallocated ring of RGB frames with capture timestamps and sequence numbers.

    ``capacity`` slots of uint8 (height, width, 3). One producer calls :meth:`put`; one consumer
    calls :meth:`latest` or :meth:`wait`, which return the *newest* frame (older ones are skipped:
    the vision worker wants the freshest face, not a backlog).

    Counters: ``written`` frames put; ``dropped`` frames that were never handed to the consumer,
    counted when their slot is overwritten (so a frame skipped by ``latest`` counts once the ring
    wraps over it). Raises ValueError when ``capacity`` < 1.
    """

    def __init__(self, capacity: int, height: int, width: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.shape = (int(height), int(width), 3)
        self.frames = np.zeros((self.capacity, *self.shape), dtype=np.uint8)
        self.times = np.zeros(self.capacity, dtype=np.float64)
        self.seqs = np.full(self.capacity, -1, dtype=np.int64)
        self._taken = np.ones(self.capacity, dtype=bool)  # empty slots count as taken
        self._cond = threading.Condition()
        self._closed = False
        self.written = 0
        self.dropped = 0

    def put(self, frame: np.ndarray, t: float) -> int:
        """Copy ``frame`` (uint8 (H, W, 3), exactly the ring's size) into the next slot.

        ``t``: capture time in seconds. Returns the frame's sequence number (0, 1, ...).
        Raises ValueError on a shape mismatch (resizing is the source's job).
        """
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} != ring shape {self.shape}")
        with self._cond:
            seq = self.written
            slot = seq % self.capacity
            if not self._taken[slot]:
                self.dropped += 1
            np.copyto(self.frames[slot], frame)
            self.times[slot] = t
            self.seqs[slot] = seq
            self._taken[slot] = False
            self.written = seq + 1
            self._cond.notify_all()
            return seq

    def _take(self, after_seq: int, out: np.ndarray | None):
        if self.written == 0 or self.written - 1 <= after_seq:
            return None
        seq = self.written - 1
        slot = seq % self.capacity
        self._taken[slot] = True
        if out is None:
            out = self.frames[slot].copy()
        else:
            np.copyto(out, self.frames[slot])
        return seq, float(self.times[slot]), out

    def latest(self, after_seq: int = -1, out: np.ndarray | None = None
               ) -> tuple[int, float, np.ndarray] | None:
        """The newest frame if its sequence number is greater than ``after_seq``, else None.

        Returns ``(seq, t, frame)``; ``frame`` is a copy (into ``out`` when given, a preallocated
        uint8 (H, W, 3) array), so the producer may overwrite the slot at once.
        """
        with self._cond:
            return self._take(after_seq, out)

    def wait(self, after_seq: int = -1, timeout: float | None = None,
             out: np.ndarray | None = None) -> tuple[int, float, np.ndarray] | None:
        """Like :meth:`latest`, but blocks up to ``timeout`` seconds for a newer frame.

        Returns None on timeout, or once :meth:`close` was called and no newer frame is left.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self.written - 1 > after_seq, timeout)
            return self._take(after_seq, out)

    def close(self) -> None:
        """Wake every waiter; later ``wait`` calls return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        """``{"written": frames put, "dropped": frames overwritten untaken}`` (counts, int)."""
        return {"written": self.written, "dropped": self.dropped}


class AudioRing:
    """Preallocated ring of 16 kHz mono int16 audio addressed by absolute sample position.

    Sample ``p`` (0 = the first sample ever written) is held while
    ``written_samples - capacity <= p < written_samples``. Each :meth:`write` gives the capture
    time of its block's last sample; the time of any held sample is extrapolated from the newest
    one at ``rate`` (:meth:`time_at`).

    ``seconds``: capacity (s) at ``rate`` (Hz). Raises ValueError when that is under one sample.

    Counters: ``written_samples``; ``overruns`` (input overflows reported by the driver, counted by
    the microphone source); ``dropped`` (samples overwritten before :meth:`read_since` read them;
    counted in :meth:`write`, where the ring overruns, once a reader has called ``read_since``).
    """

    def __init__(self, seconds: float, rate: int = SAMPLE_RATE) -> None:
        self.rate = int(rate)
        self.capacity = int(round(seconds * rate))
        if self.capacity < 1:
            raise ValueError("ring must hold at least one sample")
        self.buf = np.zeros(self.capacity, dtype=np.int16)
        self._cond = threading.Condition()
        self._closed = False
        self._reader_pos: int | None = None
        self.t_end = 0.0  # capture time (s) of the newest sample
        self.written_samples = 0
        self.overruns = 0
        self.dropped = 0

    def write(self, block: np.ndarray, t_end: float) -> None:
        """Append ``block`` (int16 (n,) or (n, 1)); ``t_end`` = capture time of its last sample, s.

        A block longer than the ring keeps only its newest ``capacity`` samples.
        """
        block = np.asarray(block).reshape(-1)
        n = block.shape[0]
        if n == 0:
            return
        with self._cond:
            w = self.written_samples
            oldest_before = max(0, w - self.capacity)
            oldest_after = max(0, w + n - self.capacity)
            if self._reader_pos is not None:
                self.dropped += max(0, oldest_after - max(oldest_before, self._reader_pos))
            src = block[-self.capacity:] if n > self.capacity else block
            start = (w + n - src.shape[0]) % self.capacity
            first = min(src.shape[0], self.capacity - start)
            self.buf[start:start + first] = src[:first]
            self.buf[:src.shape[0] - first] = src[first:]
            self.written_samples = w + n
            self.t_end = float(t_end)
            self._cond.notify_all()

    def _copy(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        out = np.empty(n, dtype=np.int16)
        a = start % self.capacity
        first = min(n, self.capacity - a)
        out[:first] = self.buf[a:a + first]
        out[first:] = self.buf[:n - first]
        return out

    def read_last(self, n: int) -> tuple[np.ndarray, float]:
        """The newest ``n`` samples and the capture time (s) of the last of them.

        Returns int16 (m,) with ``m = min(n, written_samples)`` (shorter only right after start).
        Raises ValueError when ``n`` exceeds the ring's capacity.
        """
        if n > self.capacity:
            raise ValueError(f"read_last({n}) exceeds ring capacity {self.capacity}")
        with self._cond:
            w = self.written_samples
            return self._copy(max(0, w - n), w), self.t_end

    def read_since(self, pos: int) -> tuple[np.ndarray, int, float]:
        """Every held sample from absolute position ``pos`` to the newest.

        Returns ``(samples int16 (m,), start_pos, t_end)``: ``start_pos`` is the position of
        ``samples[0]`` (greater than ``pos`` when the ring already overwrote those samples),
        ``t_end`` the capture time of the newest sample. Marks everything read for ``dropped``.
        """
        with self._cond:
            w = self.written_samples
            start = min(max(pos, w - self.capacity, 0), w)
            self._reader_pos = w
            return self._copy(start, w), start, self.t_end

    def time_at(self, pos: int) -> float:
        """Capture time (s) of the sample at absolute position ``pos`` (extrapolated at ``rate``)."""
        with self._cond:
            return self.t_end - (self.written_samples - 1 - pos) / self.rate

    def wait(self, pos: int, timeout: float | None = None) -> bool:
        """Block until sample ``pos`` has been written; False on timeout or after :meth:`close`."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._closed or self.written_samples > pos, timeout)
            return bool(ok) and self.written_samples > pos

    def close(self) -> None:
        """Wake every waiter; later :meth:`wait` calls return False at once (data stays readable)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        """``{"written_samples", "overruns", "dropped"}``: the counters above (ints; samples,
        driver overflow events, samples)."""
        return {"written_samples": self.written_samples, "overruns": self.overruns,
                "dropped": self.dropped}

