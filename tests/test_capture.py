"""Capture backends and rings, on real media from the shared data folder."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from redsg_edge.capture import (EX_UNAVAILABLE, SAMPLE_RATE, AudioFileMic, AudioRing,
                                CaptureThread, DeviceError, FrameRing, MicSource, OpenCVCamera,
                                PushSource, SounddeviceMic, VideoFileCamera, format_devices,
                                letterbox, list_devices, open_camera, open_microphone)
from redsg_edge.capture.microphone import _StreamResampler
from redsg_edge.config import CameraConfig, MicrophoneConfig
from redsg_edge.datasets import DATA_ROOT

from .helpers import video_only_copy

CLIPS = DATA_ROOT / "av_clips"
PEXELS = CLIPS / "pyfeat_WolfgangLanger_Pexels.mp4"  # 472 frames, 23.976 fps, silent AAC 48 kHz
SINGLE = CLIPS / "pyfeat_single_face.mp4"  # 72 frames, 30 fps, 640x360, mp3 44.1 kHz stereo
RAVDESS = DATA_ROOT / "ravdess" / "Actor_24" / "03-01-01-01-01-01-24.flac"

needs_media = pytest.mark.skipif(not (PEXELS.is_file() and SINGLE.is_file() and RAVDESS.is_file()),
                                 reason=f"shared media not found under {DATA_ROOT}")


def _read_all(source):
    source.open()
    try:
        return list(source)
    finally:
        source.close()


# ------------------------------------------------------------------------------- video files

@needs_media
def test_single_face_clip_frames_and_pts():
    frames = _read_all(VideoFileCamera(SINGLE, 640, 360))
    assert len(frames) == 72
    ts = np.array([t for t, _ in frames])
    assert ts[0] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(np.diff(ts), 1 / 30, atol=1e-3)
    for _, f in frames:
        assert f.shape == (360, 640, 3) and f.dtype == np.uint8
    assert frames[0][1].mean() > 20  # a real picture, no letterbox needed at 16:9


@needs_media
def test_pexels_clip_all_frames_letterboxed():
    cam = VideoFileCamera(PEXELS, 640, 480)
    frames = _read_all(cam)
    assert len(frames) == 472 == cam.decoded
    ts = np.array([t for t, _ in frames])
    assert np.all(np.diff(ts) > 0)
    assert ts[-1] == pytest.approx(471 * 1001 / 24000, abs=1e-3)
    f = frames[100][1]
    assert f.shape == (480, 640, 3)
    # 640x360 in 640x480 keeps its aspect: 60 black rows above and below the picture.
    assert f[:60].max() == 0 and f[-60:].max() == 0
    assert f[60:420].mean() > 20


@needs_media
@pytest.mark.parametrize("size", [(320, 240), (256, 256), (1280, 720)])
def test_video_resized_to_configured_size(size):
    w, h = size
    cam = VideoFileCamera(SINGLE, w, h)
    cam.open()
    try:
        t, f = cam.read()
    finally:
        cam.close()
    assert f.shape == (h, w, 3) and f.dtype == np.uint8 and f.flags.c_contiguous
    x, y, cw, ch = 0, 0, w, h
    if w / h < 16 / 9:  # bars top and bottom
        ch = round(w * 9 / 16)
        y = (h - ch) // 2
        assert f[:y].max() == 0 and f[y + ch:].max() == 0
    assert f[y:y + ch, x:x + cw].mean() > 20


@needs_media
def test_display_rotation_is_applied(tmp_path):
    # The same H.264 packets remuxed with a display matrix of 90° (what a phone writes, and
    # what `ffmpeg -metadata:s:v:0 rotate=90` writes), through PyAV's bundled FFmpeg.
    import av
    rotated = tmp_path / "rotated.mp4"
    with av.open(str(SINGLE)) as src, av.open(str(rotated), "w") as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        ost.set_display_rotation(90)
        for pkt in src.demux(ist):
            if pkt.dts is not None:  # the demuxer's final flush packet
                pkt.stream = ost
                dst.mux(pkt)
    with av.open(str(rotated)) as c:
        assert next(c.decode(video=0)).rotation == 90
    upright = VideoFileCamera(SINGLE, 640, 360)
    turned = VideoFileCamera(rotated, 360, 640)
    with upright, turned:
        _, a = upright.read()
        _, b = turned.read()
    # Same pixels (no scaling at these sizes), turned as FFmpeg's own autorotation does.
    np.testing.assert_array_equal(b, np.rot90(a, 1))


def test_letterbox_keeps_aspect():
    img = np.full((100, 200, 3), 200, np.uint8)
    out = letterbox(img, 100, 100)
    assert out.shape == (100, 100, 3)
    assert out[:25].max() == 0 and out[75:].max() == 0 and out[25:75].min() == 200


# ------------------------------------------------------------------------------- audio files

@needs_media
def test_ravdess_flac_decodes_bit_exact():
    import soundfile as sf
    ref, rate = sf.read(RAVDESS, dtype="int16")
    assert rate == SAMPLE_RATE
    blocks = _read_all(AudioFileMic(RAVDESS, block_ms=100))
    audio = np.concatenate([b for _, b in blocks])
    assert all(b.dtype == np.int16 and b.ndim == 1 for _, b in blocks)
    assert all(len(b) == 1600 for _, b in blocks[:-1]) and 0 < len(blocks[-1][1]) <= 1600
    # Already 16 kHz mono s16: the resampler passes it through untouched.
    np.testing.assert_array_equal(audio, ref)
    ts = np.array([t for t, _ in blocks])
    np.testing.assert_allclose(np.diff(ts), 0.1, atol=1e-9)


@needs_media
@pytest.mark.parametrize("path, duration", [(PEXELS, 19.69), (SINGLE, 2.4185)])
def test_video_audio_track_resampled_to_16k(path, duration):
    import av
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        duration = float(stream.duration * stream.time_base)
    blocks = _read_all(AudioFileMic(path, block_ms=100, key="camera.file"))
    n = sum(len(b) for _, b in blocks)
    assert abs(n - duration * SAMPLE_RATE) <= 1600
    ts = np.array([t for t, _ in blocks])
    assert np.all(np.diff(ts) > 0)
    audio = np.concatenate([b for _, b in blocks])
    if path == SINGLE:  # the mp3 track has (quiet) sound; the Pexels one is digital silence
        assert np.abs(audio).max() > 200
    # The same samples as FFmpeg's own command-line resampling (CI installs ffmpeg).
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed (apt install ffmpeg): no reference resampling")
    ref = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-vn", "-ac", "1",
                          "-ar", "16000", "-f", "s16le", "-"], capture_output=True,
                         check=True).stdout
    np.testing.assert_array_equal(audio, np.frombuffer(ref, np.int16))


def test_wav_44k_stereo_resampled(tmp_path):
    import soundfile as sf
    rate, secs = 44100, 1.5
    t = np.arange(int(rate * secs)) / rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    sf.write(tmp_path / "tone.wav", np.stack([tone, tone], axis=1), rate)
    audio = np.concatenate([b for _, b in _read_all(AudioFileMic(tmp_path / "tone.wav"))])
    assert abs(len(audio) - secs * SAMPLE_RATE) <= 1600
    spec = np.abs(np.fft.rfft(audio.astype(np.float64)))
    peak_hz = np.argmax(spec) * SAMPLE_RATE / len(audio)
    assert peak_hz == pytest.approx(440, abs=2)


def test_stream_resampler_48k_stereo_blocks():
    rs = _StreamResampler(48000, 2)
    t = np.arange(48000) / 48000
    tone = (6000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    stereo = np.stack([tone, tone], axis=1)
    out = np.concatenate([rs.push(stereo[i:i + 4800]) for i in range(0, 48000, 4800)])
    assert out.dtype == np.int16
    assert 16000 - 480 <= len(out) <= 16000  # the filter holds back up to 30 ms
    spec = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert np.argmax(spec) * SAMPLE_RATE / len(out) == pytest.approx(1000, abs=3)


@needs_media
def test_video_without_audio_track(tmp_path):
    silent = video_only_copy(SINGLE, tmp_path / "video_only.mp4")
    with pytest.raises(DeviceError) as err:
        open_microphone(MicrophoneConfig(source="video"),
                        CameraConfig(source="file", file=silent), realtime=False)
    assert str(silent) in str(err.value) and "microphone.source" in str(err.value)
    assert err.value.exit_code == EX_UNAVAILABLE


def test_missing_files_name_file_and_key(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(DeviceError) as err:
        open_camera(CameraConfig(source="file", file=missing))
    assert str(missing) in str(err.value) and "camera.file" in str(err.value)
    assert err.value.key == "camera.file"
    with pytest.raises(DeviceError) as err:
        open_microphone(MicrophoneConfig(source="file", file=missing))
    assert str(missing) in str(err.value) and "microphone.file" in str(err.value)
    with pytest.raises(DeviceError) as err:
        open_microphone(MicrophoneConfig(source="video"), CameraConfig(source="none"))
    assert "camera.file" in str(err.value) and err.value.key == "microphone.source"
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(DeviceError, match="cannot be decoded"):
        open_camera(CameraConfig(source="file", file=bad))


def test_source_none_gives_none():
    assert open_camera(CameraConfig(source="none")) is None
    assert open_microphone(MicrophoneConfig(source="none")) is None


# ------------------------------------------------------------------------------- live devices

def test_missing_camera_index_fails_fast(capfd):
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as err:
        OpenCVCamera(7, 640, 480, 15).open()
    assert time.monotonic() - t0 < 5.0
    # OpenCV's own "[ WARN:0@…] cap_v4l.cpp …" lines (C++ stderr) are silenced: ours says more.
    assert "WARN" not in capfd.readouterr().err
    msg = str(err.value)
    assert "/dev/video7" in msg and "camera.device = 7" in msg and 'camera.source = "none"' in msg
    assert err.value.key == "camera.device" and err.value.exit_code == 69


@pytest.mark.skipif(Path("/dev/video0").exists(), reason="this machine has a camera")
def test_auto_camera_without_camera_fails_fast():
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"camera\.device"):
        open_camera(CameraConfig(source="auto"))
    assert time.monotonic() - t0 < 5.0


def _has_audio_input() -> bool:
    try:
        import sounddevice as sd
        return any(d["max_input_channels"] > 0 for d in sd.query_devices())
    except OSError:
        return False


@pytest.mark.skipif(_has_audio_input(), reason="this machine has an audio input")
@pytest.mark.parametrize("device, key", [(None, "microphone.source"), (3, "microphone.device"),
                                         ("USB", "microphone.device")])
def test_no_audio_input_fails_fast(device, key):
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as err:
        open_microphone(MicrophoneConfig(source="auto", device=device))
    assert time.monotonic() - t0 < 5.0
    assert key in str(err.value) and err.value.key == key
    assert 'microphone.source = "none"' in str(err.value)


def test_portaudio_missing_is_explained(monkeypatch):
    import sys

    class NoPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    with pytest.raises(DeviceError) as err:
        open_microphone(MicrophoneConfig(source="sounddevice"))
    assert "libportaudio2" in str(err.value) and "microphone.source" in str(err.value)
    d = list_devices()
    assert "libportaudio2" in d["audio_error"] and "libportaudio2" in format_devices(d)


def test_sounddevice_callback_timestamps_and_overruns():
    mic = SounddeviceMic(None, 100)
    ring = AudioRing(5)
    mic.attach(ring)
    block = np.arange(1600, dtype=np.int16)[:, None]
    before = time.monotonic()
    # PortAudio says the first sample hit the ADC 0.15 s before this callback.
    info = SimpleNamespace(inputBufferAdcTime=100.0, currentTime=100.15)
    mic._callback(block, 1600, info, SimpleNamespace(input_overflow=True))
    after = time.monotonic()
    assert ring.written_samples == 1600 and ring.overruns == 1 == mic.overruns
    expected = before - 0.15 + 1599 / 16000
    assert expected - 0.01 <= ring.t_end <= after - 0.15 + 1599 / 16000 + 0.01
    np.testing.assert_array_equal(ring.read_last(1600)[0], block[:, 0])
    # No ADC time from the host API: the callback time is used.
    mic._callback(block, 1600, SimpleNamespace(inputBufferAdcTime=0.0, currentTime=0.0),
                  SimpleNamespace(input_overflow=False))
    assert abs(ring.t_end - time.monotonic()) < 0.05


def test_list_devices_and_format():
    d = list_devices()
    assert set(d) == {"cameras", "camera_notes", "audio_inputs", "audio_outputs", "audio_error"}
    text = format_devices(d)
    assert "Cameras:" in text and "Audio inputs:" in text and "Audio outputs:" in text
    for cam in d["cameras"]:
        assert cam["config"] in text


# ------------------------------------------------------------------------------------ rings

def _frame(v: int, h: int = 8, w: int = 6) -> np.ndarray:
    return np.full((h, w, 3), v % 256, np.uint8)


def test_frame_ring_wraparound_and_drops():
    ring = FrameRing(3, 8, 6)
    assert ring.latest() is None
    for i in range(10):
        assert ring.put(_frame(i), t=i * 0.1) == i
    assert ring.written == 10 and ring.dropped == 7  # 0..6 overwritten, never taken
    seq, t, f = ring.latest()
    assert seq == 9 and t == pytest.approx(0.9) and f[0, 0, 0] == 9
    assert ring.latest(after_seq=9) is None
    f[:] = 0  # a copy: the ring keeps its own
    assert ring.latest(after_seq=8)[2][0, 0, 0] == 9
    # 7 and 8 were skipped by latest(): they count when their slots are reused.
    ring.put(_frame(10), 1.0)
    ring.put(_frame(11), 1.1)
    assert ring.dropped == 9
    out = np.empty((8, 6, 3), np.uint8)
    seq, _, got = ring.latest(9, out=out)
    assert seq == 11 and got is out and out[0, 0, 0] == 11
    # A consumer that keeps up drops nothing.
    before = ring.dropped
    for i in range(12, 30):
        ring.put(_frame(i), i)
        assert ring.latest(i - 1)[0] == i
    assert ring.dropped == before + 1  # only frame 10, skipped above
    with pytest.raises(ValueError):
        ring.put(np.zeros((8, 7, 3), np.uint8), 0.0)


def test_frame_ring_wait_timeout_and_close():
    ring = FrameRing(2, 4, 4)
    t0 = time.monotonic()
    assert ring.wait(-1, timeout=0.1) is None
    assert 0.08 <= time.monotonic() - t0 < 1.0
    threading.Timer(0.05, ring.close).start()
    assert ring.wait(-1, timeout=5) is None


def test_frame_ring_concurrent_producer_consumer():
    ring = FrameRing(4, 48, 64)
    n = 600
    seen: list[int] = []
    torn = []

    def produce():
        for i in range(n):
            ring.put(_frame(i, 48, 64), float(i))
            if i % 7 == 0:
                time.sleep(0.0005)
        ring.close()

    th = threading.Thread(target=produce)
    th.start()
    seq = -1
    while (r := ring.wait(seq, timeout=2.0)) is not None:
        seq, t, f = r
        seen.append(seq)
        if not (t == seq and f.min() == f.max() == seq % 256):
            torn.append(seq)
    th.join()
    assert not torn
    assert seen == sorted(set(seen)) and seen[-1] == n - 1
    assert ring.written == n
    # Every frame was either taken, dropped, or is still waiting in a slot.
    pending = n - len(seen) - ring.dropped
    assert 0 <= pending <= ring.capacity


def test_audio_ring_wraparound_read_last_and_since():
    ring = AudioRing(0.01, rate=16000)  # 160 samples
    assert ring.capacity == 160
    data = (np.arange(1000) % 30000).astype(np.int16)
    pos = 0
    for n in (50, 70, 100, 33, 160, 7):
        ring.write(data[pos:pos + n], t_end=(pos + n - 1) / 16000)
        pos += n
        last, t_end = ring.read_last(min(pos, 160))
        np.testing.assert_array_equal(last, data[max(0, pos - 160):pos])
        assert t_end == pytest.approx((pos - 1) / 16000)
    assert ring.written_samples == pos == 420
    got, start, _ = ring.read_since(300)
    assert start == 300
    np.testing.assert_array_equal(got, data[300:420])
    got, start, _ = ring.read_since(0)  # 0..259 are gone
    assert start == 260
    np.testing.assert_array_equal(got, data[260:420])
    assert ring.time_at(260) == pytest.approx(260 / 16000)
    with pytest.raises(ValueError):
        ring.read_last(161)
    # A block longer than the ring keeps its newest samples.
    ring.write(data[420:820], t_end=819 / 16000)
    np.testing.assert_array_equal(ring.read_last(160)[0], data[660:820])
    # The reader had read up to 420: 420..659 were overwritten unread, 660..819 are held.
    assert ring.dropped == 240


def test_audio_ring_drop_counting():
    ring = AudioRing(0.01)  # 160 samples
    ring.write(np.zeros(100, np.int16), 0.0)
    assert ring.dropped == 0  # no reader yet: nothing to drop for
    ring.read_since(0)
    ring.write(np.zeros(100, np.int16), 0.0)  # 200 written, 40 overwritten, all read
    assert ring.dropped == 0
    ring.write(np.zeros(100, np.int16), 0.0)  # 300 written, held 140..299, read up to 100
    assert ring.dropped == 40
    got, start, _ = ring.read_since(100)
    assert start == 140 and len(got) == 160


def test_audio_ring_concurrent_producer_consumer():
    ring = AudioRing(0.5)
    total = 16000 * 4
    block = 320

    def produce():
        for p in range(0, total, block):
            ring.write((np.arange(p, p + block) % 32768).astype(np.int16), p / 16000)
            if (p // block) % 5 == 0:
                time.sleep(0.001)
        ring.close()

    th = threading.Thread(target=produce)
    th.start()
    pos, got, bad = 0, 0, 0
    while True:
        alive = ring.wait(pos, timeout=2.0)
        samples, start, _ = ring.read_since(pos)
        if len(samples):
            expect = (np.arange(start, start + len(samples)) % 32768).astype(np.int16)
            bad += int(np.any(samples != expect))
            got += len(samples)
            pos = start + len(samples)
        if not alive and ring.written_samples <= pos:
            break
    th.join()
    assert bad == 0
    assert pos == total == ring.written_samples
    assert got + ring.dropped == total


# ------------------------------------------------------------------------- capture threads

@needs_media
def test_capture_threads_realtime_file_pace_and_stop():
    origin = time.monotonic() + 0.1
    cam_cfg = CameraConfig(source="file", file=SINGLE, fps=15, width=320, height=240)
    cam = open_camera(cam_cfg, realtime=True, clock_origin=origin)
    mic = open_microphone(MicrophoneConfig(source="video"), cam_cfg, realtime=True,
                          clock_origin=origin)
    frames = FrameRing(4, 240, 320)
    audio = AudioRing(10)
    threads = [CaptureThread(cam, frames).start(), CaptureThread(mic, audio).start()]
    seq, ts = -1, []
    end = time.monotonic() + 3.0  # longer than the 2.4 s clip: it loops
    while time.monotonic() < end:
        r = frames.wait(seq, timeout=0.5)
        if r:
            seq, t, _ = r
            ts.append(t)
    t0 = time.monotonic()
    assert all(th.stop(timeout=1.0) for th in threads)
    assert time.monotonic() - t0 < 1.0
    fps = (len(ts) - 1) / (ts[-1] - ts[0])
    assert 12 <= fps <= 16  # 30 fps file thinned to camera.fps = 15
    assert np.all(np.diff(ts) > 0)
    assert ts[-1] > origin + 2.5  # looped past the end of the clip
    assert abs(audio.written_samples / SAMPLE_RATE - (time.monotonic() - origin)) < 0.6
    for th in threads:
        assert th.errors == 0 and not th.alive
        assert time.monotonic() - th.heartbeat < 1.5


@needs_media
def test_capture_thread_replay_sets_ended():
    cam = VideoFileCamera(SINGLE, 320, 180)
    cam.open()
    ring = FrameRing(128, 180, 320)
    th = CaptureThread(cam, ring).start()
    assert th.ended.wait(10)
    assert ring.written == 72 and th.items == 72
    assert th.stop()


# ------------------------------------------------------------------ source kinds and durations

@needs_media
def test_declared_duration_s_of_file_sources():
    import soundfile as sf
    cam, mic = VideoFileCamera(SINGLE), AudioFileMic(RAVDESS)
    assert np.isnan(cam.declared_duration_s) and np.isnan(mic.declared_duration_s)  # not open
    with cam, mic:
        assert cam.declared_duration_s == pytest.approx(72 / 30)  # 72 frames at 30 fps
        info = sf.info(str(RAVDESS))
        assert mic.declared_duration_s == pytest.approx(info.frames / info.samplerate)
    assert cam.declared_duration_s == pytest.approx(2.4)  # kept after close
    # The audio track of the same video: its own length (MP3 pads), not the picture's.
    with AudioFileMic(SINGLE) as track:
        assert 2.4 < track.declared_duration_s < 2.5


class _FilePushMic(MicSource, PushSource):
    """A push source as a driver with a callback thread would be: here the callback thread
    writes a real file's blocks into the attached ring."""

    def __init__(self, path):
        self.path, self.name = path, f"push:{path.name}"
        self.ring, self.worker, self.closed = None, None, False

    def attach(self, ring):
        self.ring = ring

    def open(self):
        def callback_thread():
            with AudioFileMic(self.path, 100) as src:
                for t, block in src:
                    self.ring.write(block, t + (block.shape[0] - 1) / SAMPLE_RATE)
                    self.blocks += 1
                    self.last_callback = time.monotonic()
        self.worker = threading.Thread(target=callback_thread, daemon=True)

    def start_stream(self):  # what PortAudio's stream.start() does, once attached
        self.worker.start()

    @property
    def active(self):
        return not self.closed

    def read(self):
        raise AssertionError("a push source is never read by the capture thread")

    def close(self):
        self.closed = True


@needs_media
def test_capture_thread_dispatches_on_the_declared_kind():
    with AudioFileMic(RAVDESS, 100) as src:
        reference = np.concatenate([b for _, b in src])
    push = _FilePushMic(RAVDESS)
    push.open()
    ring = AudioRing(10)
    th = CaptureThread(push, ring).start()
    assert push.ring is ring  # attached by start()
    push.start_stream()
    push.worker.join(10)
    deadline = time.monotonic() + 5  # the thread looks every 0.2 s
    while th.items < push.blocks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert th.heartbeat >= push.last_callback > 0
    assert th.items == push.blocks == 38 and th.errors == 0
    np.testing.assert_array_equal(ring.read_last(reference.shape[0])[0], reference)
    assert th.stop() and push.closed

    class PullWithAttach(AudioFileMic):  # an attach method does not make a pull source push
        def attach(self, ring):
            raise AssertionError("a pull source is never attached")
    pull = PullWithAttach(RAVDESS, 100)
    pull.open()
    ring = AudioRing(10)
    th = CaptureThread(pull, ring).start()
    assert th.ended.wait(10) and th.items == 38 and ring.written_samples == reference.shape[0]
    assert th.stop()

    with pytest.raises(TypeError, match="neither a PullSource nor a PushSource"):
        CaptureThread(SimpleNamespace(name="duck", attach=lambda ring: None), ring)

    class NoActive(MicSource, PushSource):
        def open(self): ...
        def attach(self, ring): ...
    with pytest.raises(TypeError, match="active"):
        NoActive()
