"""Helpers only the tests and scripts/ use, kept out of the runtime package: a process-wide
default Piper voice (here), stand-in classifier files (``models``) and the golden predictions
(``goldens``). The loopback chat server and the NOTIFY_SOCKET listener serve the benches too,
so they live in ``redsg_edge.bench.chat_server`` and ``redsg_edge.bench.notify``.

Imported as ``tests.helpers`` (pytest puts the repository root on ``sys.path`` because
``tests/`` is a package; scripts insert it themselves)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def shared_voice():
    """The default ``Voice`` (en_US-joe-medium), loaded once per process (~1 s) and warmed."""
    from redsg_edge.voice import Voice

    voice = Voice()
    voice.warm()
    return voice


def video_only_copy(src, dest):
    """Write ``dest``: the video track of media file ``src`` remuxed without re-encoding and
    without its audio (a camera file with no sound track). Returns ``dest``."""
    import av

    with av.open(str(src)) as inp, av.open(str(dest), "w") as out:
        vs = out.add_stream_from_template(inp.streams.video[0])
        for pkt in inp.demux(inp.streams.video[0]):
            if pkt.dts is not None:  # the demuxer's final flush packet carries no data
                pkt.stream = vs
                out.mux(pkt)
    return dest


def pcm16(path, gain_db: float = 0.0):
    """A 16 kHz recording as the microphone would give it: (n,) int16 after ``gain_db`` dB of gain,
    rounded and clipped to int16's range. Raises AssertionError for another sample rate."""
    import numpy as np
    import soundfile as sf

    x, rate = sf.read(str(path), dtype="float64")
    assert rate == 16_000, f"{path}: {rate} Hz, expected 16 kHz"
    return np.clip(np.round(x * 10 ** (gain_db / 20) * 32768), -32768, 32767).astype(np.int16)


def video_with_sound(video, audio, dest):
    """Write ``dest`` (.mp4): the video track of ``video`` remuxed without re-encoding, and the
    recording ``audio`` as its sound track (AAC, mono, at the recording's rate), as a phone
    films someone speaking. Returns ``dest``."""
    import av

    with av.open(str(video)) as vin, av.open(str(audio)) as ain, av.open(str(dest), "w") as out:
        vs = out.add_stream_from_template(vin.streams.video[0])
        rate = ain.streams.audio[0].rate
        aus = out.add_stream("aac", rate=rate, layout="mono")
        resample = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        for pkt in vin.demux(vin.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = vs
                out.mux(pkt)
        for frame in ain.decode(audio=0):
            for f in resample.resample(frame):
                out.mux(aus.encode(f))
        out.mux(aus.encode(None))
    return dest
