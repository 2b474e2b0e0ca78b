"""Model files that ``redsg-edge fetch-models`` derives from fetched ones instead of downloading.

``share_branch_weights``: Moonshine's merged decoder (``moonshine-tiny-en-decoder.ort``) runs
the first step and the cached steps in two branches of one ``If`` node, and each branch holds
its own copy of every weight: 807 of the branches' initializers, 27.9 MB, are the same bytes
under the same name in both. onnxruntime keeps both copies (and packs each for its int8 GEMM).
Moving the shared ones to the main graph, where both branches read them as outer-scope values
(ONNX IR spec, "Names Within a Graph": a subgraph may use any name of an enclosing graph), gives
the same network with one copy: measured on x86-64, onnxruntime 1.23, 40 RAVDESS utterances,
the same transcripts to the byte, the session's resident memory +56 MB instead of +97 MB, and
CPU time per 3 s utterance within this machine's run-to-run noise (docs/benchmarks.md).

onnxruntime writes the ``.ort`` file back as an ONNX model first (its own saver, no graph
optimisation), so that the ``onnx`` package can move the initializers. The result is pinned by
sha256 in ``models/manifest.toml`` like any fetched file.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["DERIVATIONS", "DeriveError", "share_branch_weights"]


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
    copy = lambda t: type(t).FromString(t.SerializeToString())  # noqa: E731
    moved = [copy(t) for t in branches[0].initializer if t.name in shared]
    for b in branches:  # a repeated field cannot be filtered in place: rebuild it
        keep = [copy(t) for t in b.initializer if t.name not in shared]
        del b.initializer[:]
        b.initializer.extend(keep)
    graph.initializer.extend(moved)
    # onnxruntime writes subgraphs without names, which the ONNX checker (and onnxruntime's
    # loader of ONNX files) requires.
    graph.name = graph.name or "main"
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH and not a.g.name:
                a.g.name = f"{n.name or n.op_type}_{a.name}"
    Path(dest).write_bytes(model.SerializeToString())
    return sum(len(t.raw_data) for t in moved) * (len(branches) - 1)


#: ``derive`` values of ``models/manifest.toml`` → function(source path, destination path).
DERIVATIONS: dict[str, Callable[[Path, Path], int]] = {
    "share-branch-weights": share_branch_weights,
}
