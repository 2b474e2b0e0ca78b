"""The ``redsg-edge`` command. Each subcommand's help says what it does; exit codes:

0 ok · 1 error · 2 usage · 69 a device (camera, microphone, speaker) is missing ·
70 a model file is missing or broken · 78 the configuration is invalid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .errors import EX_CONFIG, ConfigError, DeviceError, ModelError, VoiceError, exit_code_for

# An empty REDSG_CONFIG= counts as unset (Path("") would be the current directory).
DEFAULT_CONFIG = Path(os.environ.get("REDSG_CONFIG") or "config.toml")


def _load(path: Path):
    from .config import load_config
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def _guarded(fn):
    """Turn the project's errors into their exit codes (errors.exit_code_for) with a one-line
    message."""
    def run(args) -> int:
        try:
            return fn(args)
        except (DeviceError, ModelError, VoiceError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exit_code_for(exc)
    return run


@_guarded
def cmd_run(args) -> int:
    """``redsg-edge run``: the daemon (service.run_service); returns its exit code."""
    from .threadpools import limit_thread_pools
    # Before numpy and OpenCV load (they size their pools then): OpenBLAS and OpenCV on one
    # thread (redsg_edge.threadpools; `bench daemon` CPU 27.4-29.6 -> 24.5 % of a core).
    limit_thread_pools()
    from .memory import tune_heap
    # Before any worker thread exists (arenas are per thread): keeps the speech models'
    # activations out of glibc's heaps (redsg_edge.memory; `bench daemon` peak RSS
    # 510-512 -> 482-491 MB).
    tune_heap()
    from .service import exit_process, run_service
    # Ends the process itself (os._exit after a clean stop): interpreter teardown of MediaPipe,
    # onnxruntime and LiteRT takes 2-6 s, past the 3 s a SIGTERM should take.
    exit_process(run_service(args.config, reply=not args.no_reply))


def output_problem(path: Path, option: str) -> str | None:
    """Why ``path`` cannot be written (a folder, under a file, no permission, read-only file
    system), found by creating it (then removing it if it did not exist); None when it can."""
    if path.is_dir():
        return f"{option} {path}: is a folder; give a file name"
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as exc:
        return f"{option} {path}: cannot be written ({exc.strerror or exc})"
    if not existed:
        path.unlink(missing_ok=True)
    return None


@_guarded
def cmd_replay(args) -> int:
    """``redsg-edge replay``: recorded media through the live loop's perception and fusion;
    prints the transitions as JSON; 0, or 1 when the media was damaged (replayed up to it)."""
    from .replay import replay
    # Checked before any work: a bad --plot used to fail after the whole replay.
    for path, option in ((args.out, "--out"), (args.plot, "--plot")):
        why = output_problem(path, option) if path is not None else None
        if why:
            print(f"redsg-edge replay: error: {why}", file=sys.stderr)
            return 2
    cfg = _load(args.config)
    if args.max_fps:
        cfg.vision.max_fps = args.max_fps
    if args.serve is not None and not (args.serve == -1 or 0 <= args.serve <= 65535):
        print(f"redsg-edge replay: error: --serve {args.serve}: a port is 0..65535 (0: any "
              "free port)", file=sys.stderr)
        return 2
    warnings: list[str] = []
    transcriber = None
    if args.transcribe:
        from .stt import Transcriber
        transcriber = Transcriber.from_config(cfg.speech.transcript)
    kwargs = {}
    server = None
    if args.serve is not None:
        server = _serve_replay(cfg, args.serve)
        kwargs["bus"] = server.bus
    t0 = time.perf_counter()
    finished = False
    # The server is closed whatever ends the command; a Ctrl-C once the replay is done (even
    # during the summary's print) is the normal end of ``--serve``, not an interruption.
    try:
        records = replay(cfg, args.video, args.audio, args.out, args.plot,
                         use_video_audio=not args.no_video_audio,
                         progress=sys.stderr.isatty() and server is None,
                         append=args.append, warnings=warnings, transcriber=transcriber,
                         **kwargs)
        finished = True  # a Ctrl-C from here on ends a finished replay: not an interruption
        summary = json.dumps(_replay_summary(args, records, time.perf_counter() - t0, warnings),
                             indent=1)
        if server is None:
            print(summary, flush=True)
        else:
            _wait_for_stop(summary, f"replay done; the page stays at {server.url} until Ctrl-C")
    except KeyboardInterrupt:
        if not finished:
            raise
    finally:
        if server is not None:
            server.close()
    # A damaged input still gives what it has (above), but a script must be able to tell.
    return 1 if any("damaged" in w or "could not be written" in w for w in warnings) else 0


def _wait_for_stop(summary: str, announce: str) -> None:
    """Print ``summary`` to stdout and ``announce`` to stderr, then sleep until SIGINT, SIGTERM
    or SIGHUP (the SSH session closed). Handlers are installed here rather than trusting
    KeyboardInterrupt: a process started in the background by a non-interactive shell (a CI
    job, ``cmd &`` in a script) inherits SIGINT ignored, and Python then never raises it. They
    are installed before anything is printed, so a Ctrl-C sent on reading either is not lost."""
    from .service.signals import SignalWaiter

    waiter = SignalWaiter()
    waiter.install()
    try:
        print(summary, flush=True)
        print(announce, file=sys.stderr, flush=True)
        while not {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} & set(waiter.wait(3600.0)):
            pass
    finally:
        waiter.restore()


def _replay_summary(args, records: list[dict], wall: float, warnings: list[str]) -> dict:
    """The JSON ``replay`` prints when done: media and wall seconds, speed, updates and the
    transitions, and where the outputs went."""
    updates = [r for r in records if r["type"] == "update"]
    trans = [r for r in records if r["type"] == "transition"]
    media = max((r["t"] for r in updates), default=0.0)
    summary = {"media_s": round(media, 2), "wall_s": round(wall, 2),
               "speed_x_realtime": round(media / wall, 1) if wall else None,
               "updates": len(updates), "transitions": [
                   {"t": r["t"], "from": r["from"], "to": r["to"]} for r in trans]}
    if args.out:
        summary["out"] = str(args.out)
    if args.plot:
        summary["plot"] = str(args.plot)
    if warnings:
        summary["warnings"] = warnings
    return summary


def _serve_replay(cfg, port: int):
    """``replay --serve``: the tuning page on a fresh bus, paced to real time (web.Pacer), and
    wait for the first page before the replay starts, so the run is seen from its start.
    Returns the started server (its ``bus`` goes to ``replay``)."""
    from .events import EventBus
    from .web import Pacer, TuningServer

    bus = EventBus()
    pacer = Pacer()
    bus.subscribe(pacer, types=("update",), name="real-time pacing")  # first: paces the rest
    server = TuningServer(bus, pacer.status, lambda: cfg.fusion, cfg.web.host,
                          cfg.web.port if port < 0 else port, max_rate_hz=cfg.web.max_rate_hz,
                          snapshot_s=cfg.web.snapshot_s).start()
    print(f"replay --serve: open {server.url} (over SSH: ssh -L {server.port}:127.0.0.1:"
          f"{server.port} USER@DEVICE, then http://localhost:{server.port}/); the replay starts "
          "when a page connects", file=sys.stderr, flush=True)
    try:
        while server.clients == 0:
            time.sleep(0.1)
    except KeyboardInterrupt:
        server.close()
        raise
    return server


@_guarded
def cmd_analyze(args) -> int:
    """``redsg-edge analyze``: FER/SER on stills, recordings and videos; one bad file never stops
    the others (exit 1 when any failed)."""
    from .analyze import Analyzer, expand, human_line
    cfg = _load(args.config)
    an = Analyzer(cfg)
    if args.transcribe:  # a transcript of each whole audio file (redsg_edge.stt)
        from .stt import Transcriber, WithTranscripts
        an = WithTranscripts(an, Transcriber.from_config(cfg.speech.transcript))
    failed = 0
    paths = list(expand(args.paths))
    try:
        if args.calibrate:
            an.calibrate(paths, progress=sys.stderr.isatty())
        for path in paths:
            try:
                r = an.file(path, args.annotate)
            except ValueError as exc:
                failed += 1
                r = {"path": str(path), "kind": None, "label": None, "probs": None,
                     "error": str(exc)}
            print(json.dumps(r) if args.json else human_line(r), flush=True)
    finally:
        an.close()
    return 1 if failed else 0


def cmd_check(args) -> int:
    """``redsg-edge check``: config, models, devices and endpoint; exit 0 when all are usable."""
    from .check import check_main
    return check_main(args.config)


def cmd_devices(args) -> int:
    """``redsg-edge devices``: cameras and microphones this machine has."""
    from .capture import format_devices, list_devices
    d = list_devices()
    print(json.dumps(d, indent=1) if args.json else format_devices(d))
    return 0


def cmd_status(args) -> int:
    """``redsg-edge status``: the running daemon's status file, readable or as JSON."""
    from .service import status_main
    return status_main(args.json, args.file)


def cmd_fetch(args) -> int:
    """``redsg-edge fetch-models``: download (or copy from ``--mirror``) and verify third-party
    models."""
    from .assets import fetch_main
    return fetch_main(args.dest, args.mirror, download_missing=args.download_missing)


def say(text: str, voice, sink, style=None) -> float:
    """Speak ``text`` through ``voice`` (a ``voice.Voice``) into ``sink`` (a ``voice.Sink``),
    sentence by sentence, and wait until it has been played. Returns the audio duration in s."""
    from .reply import split_sentences

    samples, rate = 0, voice.sample_rate
    sentences = split_sentences(text, final=True)[0] or [text]
    for i, s in enumerate(sentences):
        for pcm, rate in voice.synthesize(s, style, pause_before=i > 0):
            sink.write(pcm, rate)
            samples += len(pcm)
    sink.drain()
    return samples / float(rate)


def say_main(cfg, text: str) -> int:
    """``redsg-edge say TEXT``: speak ``text`` with ``cfg.voice`` (model, sink, default_style)
    and wait until it has been played. Returns 0; 1 for empty text; for a voice or sink that
    cannot be used, a message on stderr and its exit code (70 the voice model, 69 the output)."""
    import time

    from .voice import Voice, WavSink, make_sink

    if not text.strip():
        print("say: nothing to say", file=sys.stderr)
        return 1
    try:
        voice = Voice.from_config(cfg.voice)
        sink = make_sink(cfg.voice, voice.sample_rate)
    except VoiceError as exc:
        print(f"say: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    try:
        t0 = time.monotonic()
        audio_s = say(text, voice, sink, cfg.voice.default_style)
        where = (f" to {sink.paths[-1]}" if isinstance(sink, WavSink) and sink.paths
                 else f" on {getattr(sink, 'name', cfg.voice.sink)}")
        print(f"said {audio_s:.2f} s of audio{where} in {time.monotonic() - t0:.2f} s")
    finally:
        sink.close()
    return 0


@_guarded
def cmd_say(args) -> int:
    """``redsg-edge say TEXT``: speak through Piper and the configured sink (voice check)."""
    cfg = _load(args.config)
    if args.sink:
        cfg.voice.sink = args.sink
    return say_main(cfg, " ".join(args.text))


@_guarded
def cmd_bench(args) -> int:
    """``redsg-edge bench``: the measurements of docs/benchmarks.md (imported only here)."""
    from . import bench
    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``redsg-edge`` argument parser, one sub-command per ``cmd_*``."""
    ap = argparse.ArgumentParser(
        prog="redsg-edge", description="Emotion-aware companion daemon: camera + microphone → "
        "FER + SER → late fusion → a short, kind spoken reply.", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"redsg-edge {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_, config=True):
        p = sub.add_parser(name, help=help_, description=help_)
        if config:
            p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG,
                           help=f"config file (default {DEFAULT_CONFIG}; env REDSG_CONFIG)")
        p.set_defaults(func=fn)
        return p

    p = add("run", cmd_run, "run the daemon live (camera, microphone, replies) until stopped")
    p.add_argument("--no-reply", action="store_true", help="observe only: no chat, no voice")

    p = add("replay", cmd_replay, "run recorded media through the same loop in media time; "
            "a damaged file is replayed up to the damage (exit 1, what it had is kept)")
    p.add_argument("video", type=Path, nargs="?", help="video file (omit for --audio only)")
    p.add_argument("--audio", type=Path, help="separate audio file (default: the video's track)")
    p.add_argument("--no-video-audio", action="store_true", help="ignore the video's own audio")
    p.add_argument("--out", type=Path, help="write JSON lines (updates, transitions) here; an "
                   "existing file is overwritten unless --append")
    p.add_argument("--append", action="store_true", help="add to an existing --out file")
    p.add_argument("--plot", type=Path, help="draw the emotion timeline to this PNG")
    p.add_argument("--max-fps", type=float, help="override vision.max_fps")
    p.add_argument("--serve", type=int, nargs="?", const=-1, metavar="PORT",
                   help="show the run on the live tuning page at [web] host, port (or PORT), "
                        "paced in real time; starts when a page connects, serves until Ctrl-C")
    p.add_argument("--transcribe", action="store_true",
                   help="add an utterance record (start, end, SER label, transcript) per "
                        "utterance to the output (needs the speech-to-text models)")

    p = add("analyze", cmd_analyze, "FER on photos, SER on recordings, both and their fusion on "
                                     "videos (files or folders)")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per file per line")
    p.add_argument("--annotate", type=Path, metavar="DIR", help="write images with boxes+labels")
    p.add_argument("--transcribe", action="store_true",
                   help="add each audio file's transcript (on-device speech-to-text)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="label each recording as heard, in order, instead of first listening to "
                        "all of them to adapt the voice normalisation to their microphone and "
                        "speakers (the default; no labels are used)")

    add("check", cmd_check, "validate config, models and devices; exit 0 when all is well")
    p = add("devices", cmd_devices, "list cameras and audio devices", config=False)
    p.add_argument("--json", action="store_true")
    p = add("status", cmd_status, "show the running daemon's state (reads its status file)",
            config=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--file", type=Path, help="status file (default: the daemon's runtime dir)")
    p = add("fetch-models", cmd_fetch, "download (or copy from --mirror) and verify third-party "
            "model files listed in models/manifest.toml", config=False)
    p.add_argument("--dest", type=Path, default=Path("models"), help="folder (default models/)")
    p.add_argument("--mirror", type=Path, help="copy from this folder instead of downloading")
    p.add_argument("--download-missing", action="store_true",
                   help="with --mirror: download the files the mirror lacks")
    p = add("say", cmd_say, "speak a sentence through the configured voice and sink")
    p.add_argument("text", nargs="+")
    p.add_argument("--sink", choices=["sounddevice", "wav", "null"], help="override voice.sink")

    p = add("bench", cmd_bench, "measure: stages, reply latency, daemon cost, peers")
    p.add_argument("what", choices=["stages", "reply", "loop", "daemon", "coldstart", "peers",
                                    "all"])
    p.add_argument("--quick", action="store_true", help="few iterations (CI smoke run)")
    p.add_argument("--json-out", type=Path, help="write the results as JSON here")
    p.add_argument("--ttft", type=float, default=0.5, help="reply bench: loopback TTFT (s)")
    for flag, metavar, help_ in (  # the bench's inputs outside the repository
            ("--data", "DIR", "dataset folder: the Pexels clip, RAVDESS, FER2013 and CK+48 as in "
             "../shared/data/README.md (default $REDSG_DATA, else ../shared/data next to the "
             "repository)"),
            ("--detector", "PATH", "BlazeFace model (default the config's "
             "vision.detector_model, else DIR/../models/blaze_face_short_range.tflite)"),
            ("--peer-python", "PATH", "peers bench: Python of the venv with the fer package "
             "(default .venv-peers/bin/python, built by scripts/setup_peers.sh; without it the "
             "section is skipped)"),
            ("--daemon-python", "PATH", "daemon and coldstart benches: Python that runs the "
             "daemon (default .venv-rt/bin/python when it exists, else this interpreter)")):
        p.add_argument(flag, type=Path, metavar=metavar, help=help_)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the sub-command; returns the process exit code
    (0 ok, 1 error, 2 usage, 69 device, 70 model, 78 config; errors.exit_code_for)."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        # SIGHUP's default action ends the process. The daemon's own handler comes only after
        # the imports (pydantic, numpy: a second or more on a small board); until then a reload
        # request is ignored, which loses nothing: the config is read after that anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .redact import install as install_secret_filter
    for handler in logging.getLogger().handlers:  # the API key never reaches a log line
        install_secret_filter(handler)
    try:
        return args.func(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
