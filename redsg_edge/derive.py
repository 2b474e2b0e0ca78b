"""Model files that ``redsg-edge fetch-models`` derives from fetched or installed ones.

``share_branch_weights``: Moonshine's merged decoder (``moonshine-tiny-en-decoder.ort``) runs
the first step and the cached steps in two branches of one ``If`` node, and each branch holds
its own copy of every weight: 807 of the branches' initializers, 27.9 MB, are the same bytes
under the same name in both. onnxruntime keeps both copies (and packs each for its int8 GEMM).
Moving the shared ones to the main graph, where both branches read them as outer-scope values
(ONNX IR spec, "Names Within a Graph": a subgraph may use any name of an enclosing graph), gives
the same network with one copy: measured on x86-64, onnxruntime 1.32, 40 RAVDESS utterances,
the same transcripts to the byte, the session's resident memory +56 MB instead of +97 MB, for
about 11 % more CPU time per utterance (models/README.md, "Speech-to-text"). onnxruntime first
writes the ``.ort`` file back as an ONNX model (its own saver, no graph optimisation), so that
the ``onnx`` package can move the initializers.

``quantize_voice``: a Piper voice (a float32 VITS network; Kim et al. 2021, arXiv:2106.06103)
with onnxruntime's dynamic quantization (per-tensor uint8 weights, activations quantised at run
time) of every Conv and MatMul outside the vocoder (the HiFi-GAN generator, nodes ``/dec/...``):
the default en_US-joe-medium goes from 63.2 to 21.8 MB. The vocoder holds 1.5 M of the voice's
15.5 M weights, but quantising it too makes the voice measurably worse to DNSMOS (Reddy et al.
2022, the ITU-T P.835 model): overall -0.20 and background -0.31 against the float voice, where
keeping it in float leaves every score within 0.03 (README, "An int8 voice").

``split_voice_front`` and ``split_voice_vocoder``: a Piper voice cut where its vocoder starts,
so that the vocoder can run a few seconds of audio at a time (``redsg_edge.vocoder``).

``copy_file`` copies a file (a voice's ``.onnx.json`` beside its derived ``.onnx``).

Each result is pinned by sha256 in ``models/manifest.toml`` like any fetched file.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .vocoder import VOCODER_PREFIX

__all__ = ["DERIVATIONS", "DeriveError", "share_branch_weights", "quantize_voice", "copy_file",
           "split_voice_front", "split_voice_vocoder", "VOCODER_PREFIX"]


class DeriveError(RuntimeError):
    """The source is not what a derivation expects; the message names the file."""


def _to_onnx(src: Path, dest: Path) -> None:
    """Write ``src`` (ONNX or ORT format) as an ONNX protobuf at ``dest``, unoptimised."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.optimized_model_filepath = str(dest)
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own Fail/InvalidGraph types
        raise DeriveError(f"{src}: onnxruntime cannot load it ({exc})") from None


def _key(t) -> tuple:
    return t.data_type, tuple(t.dims), hashlib.sha256(t.SerializeToString()).hexdigest()


def share_branch_weights(src: Path, dest: Path) -> int:
    """Write ``src``'s model to ``dest`` (ONNX) with every initializer that all branches of a
    top-level ``If`` node hold identically (name, dtype, shape, bytes) moved to the main graph.

    Returns the number of bytes no longer stored twice. Raises DeriveError when ``src`` cannot
    be loaded, has no top-level ``If`` node, or its branches share nothing."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="redsg-derive-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        _to_onnx(Path(src), plain)
        model = onnx.load(str(plain))
    graph = model.graph
    branches = [a.g for n in graph.node if n.op_type == "If" for a in n.attribute
                if a.type == onnx.AttributeProto.GRAPH]
    if not branches:
        raise DeriveError(f"{src}: no If node in the main graph, nothing to share")
    keys = [{t.name: _key(t) for t in b.initializer} for b in branches]
    outer = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    shared = {name for name, k in keys[0].items()
              if name not in outer and all(other.get(name) == k for other in keys[1:])}
    if not shared:
        raise DeriveError(f"{src}: the If branches share no initializer")
    clone = lambda t: type(t).FromString(t.SerializeToString())  # noqa: E731
    moved = [clone(t) for t in branches[0].initializer if t.name in shared]
    for b in branches:  # a repeated field cannot be filtered in place: rebuild it
        keep = [clone(t) for t in b.initializer if t.name not in shared]
        del b.initializer[:]
        b.initializer.extend(keep)
    graph.initializer.extend(moved)
    # onnxruntime writes subgraphs without names; the ONNX checker (and onnxruntime's loader of
    # ONNX files) requires them.
    graph.name = graph.name or "main"
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH and not a.g.name:
                a.g.name = f"{n.name or n.op_type}_{a.name}"
    Path(dest).write_bytes(model.SerializeToString())
    return sum(len(t.raw_data) for t in moved) * (len(branches) - 1)


def quantize_voice(src: Path, dest: Path) -> int:
    """Write an int8 copy of the Piper voice ``src`` (``.onnx``) to ``dest``: dynamic uint8
    quantization of every Conv and MatMul weight except the vocoder's (:data:`VOCODER_PREFIX`).
    The same bytes on every run with the same onnxruntime. Returns the bytes saved. Raises
    DeriveError when ``src`` cannot be read or has no vocoder nodes (not a Piper voice)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, dec = _load_voice(src, weights=False)
    vocoder = [n.name for n in dec]
    del model, dec
    # The quantizer advises "pre-processing" (shape inference) on the root logger for every
    # model; the voice was measured without it, and an installer's output is no place for it.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dest), weight_type=QuantType.QUInt8,
                         op_types_to_quantize=["Conv", "MatMul"], nodes_to_exclude=vocoder)
    finally:
        root.setLevel(level)
    return Path(src).stat().st_size - Path(dest).stat().st_size


def _load_voice(src: Path, weights: bool = True):
    """(ONNX model, its vocoder nodes) of the Piper voice ``src``; ``weights=False`` leaves
    external weight files unread. Raises DeriveError when it is not an ONNX model or has no
    vocoder nodes."""
    import onnx

    try:
        model = onnx.load(str(src), load_external_data=weights)
    except Exception as exc:  # DecodeError, OSError
        raise DeriveError(f"{src}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    dec = [n for n in model.graph.node if n.name.startswith(VOCODER_PREFIX)]
    if not dec:
        raise DeriveError(f"{src}: no {VOCODER_PREFIX} nodes; not a Piper (VITS) voice")
    return model, dec


def _voice_parts(src: Path):
    """(model, front input names, latent names, output names) of the Piper voice ``src``: the
    latent names are the values the vocoder nodes read from outside the vocoder."""
    model, dec = _load_voice(src)
    g = model.graph
    made = {o for n in dec for o in n.output}
    known = made | {t.name for t in g.initializer}
    latent = sorted({i for n in dec for i in n.input if i and i not in known})
    return model, [i.name for i in g.input], latent, [o.name for o in g.output]


def _split_voice(src: Path, dest: Path, front: bool) -> int:
    import onnx

    model, inputs, latent, outputs = _voice_parts(src)
    part = onnx.utils.Extractor(model).extract_model(
        inputs if front else latent, latent if front else outputs)
    Path(dest).write_bytes(part.SerializeToString())
    return 0


def split_voice_front(src: Path, dest: Path) -> int:
    """Write the Piper voice ``src`` up to its vocoder (text encoder, duration predictor, flow:
    phoneme ids → latent) to ``dest``; ``vocoder.ChunkedVocoderSession`` runs it once per
    sentence. Returns 0. Raises DeriveError when ``src`` is not a Piper voice."""
    return _split_voice(src, dest, True)


def split_voice_vocoder(src: Path, dest: Path) -> int:
    """Write the vocoder of the Piper voice ``src`` (latent → audio) to ``dest``;
    ``vocoder.ChunkedVocoderSession`` runs it ``voice.vocoder_chunk_s`` of audio at a time.
    Returns 0. Raises DeriveError when ``src`` is not a Piper voice."""
    return _split_voice(src, dest, False)


def copy_file(src: Path, dest: Path) -> int:
    """Copy ``src`` to ``dest`` (a voice's ``.onnx.json`` beside its derived ``.onnx``)."""
    shutil.copyfile(src, dest)
    return 0


#: ``derive`` values of ``models/manifest.toml`` → function(source path, destination path).
DERIVATIONS: dict[str, Callable[[Path, Path], int]] = {
    "share-branch-weights": share_branch_weights,
    "quantize-voice": quantize_voice,
    "split-voice-front": split_voice_front,
    "split-voice-vocoder": split_voice_vocoder,
    "copy": copy_file,
}
