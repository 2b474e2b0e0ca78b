"""The house rules that code review alone would let slip: no import circles among our modules,
one mapping from an exception to an exit code, nothing of the benches, the test helpers or
matplotlib on the daemon's import path, no module over 600 lines, and a docstring on every public
definition."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from redsg_edge.errors import (EX_CONFIG, EX_FAILURE, EX_SOFTWARE, EX_UNAVAILABLE, ConfigError,
                               DeviceError, ModelError, VoiceError, exit_code_for)

PACKAGE = Path(__file__).resolve().parent.parent / "redsg_edge"
REPO = PACKAGE.parent
#: Module name prefixes that must not be loaded by the daemon's own code.
# mediapipe: the face detector runs its model on LiteRT (redsg_edge.vision), ~55 MB less
OFF_DAEMON_PATH = ("redsg_edge.bench", "tests", "matplotlib", "mediapipe")


def _import_graph() -> dict[str, set[str]]:
    """Module → the modules of ours it imports (at module level or inside functions)."""
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for c in [target] + [f"{target}.{a.name}" for a in node.names]:
                    if c in graph and c != m:
                        graph[m].add(c)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = _import_graph()
    assert "redsg_edge.errors" in graph and "redsg_edge.cli" in graph
    assert _cycles(graph) == []


def test_errors_imports_nothing_of_ours():
    assert _import_graph()["redsg_edge.errors"] == set()


@pytest.mark.parametrize("exc, code", [
    (ConfigError(["config.toml: camera.fps: bad"]), EX_CONFIG),
    (DeviceError("no camera", key="camera.device"), EX_UNAVAILABLE),
    (ModelError("models/fer_int8.tflite: model file not found"), EX_SOFTWARE),
    (VoiceError("voice.model", "missing"), EX_SOFTWARE),
    (VoiceError("voice.device", "no such output"), EX_UNAVAILABLE),
    (VoiceError("voice.wav_dir", "not writable"), EX_UNAVAILABLE),
    (RuntimeError("a bug"), EX_FAILURE),
    (KeyError("x"), EX_FAILURE),
])
def test_exit_code_for(exc, code):
    assert exit_code_for(exc) == code


def _modules_after(code: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter (this venv, the repository first on the path)
    after running ``code``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                           "print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=300, cwd=str(REPO), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _off_path(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == p or m.startswith(p + ".") for p in OFF_DAEMON_PATH))


def test_daemon_imports_no_bench_test_helper_matplotlib_or_mediapipe():
    ours = _modules_after("import redsg_edge.service, redsg_edge.pipeline, redsg_edge.cli")
    assert {"redsg_edge.service", "redsg_edge.pipeline", "redsg_edge.cli"} <= ours
    assert _off_path(ours) == []


def test_off_path_check_sees_a_planted_import():
    # The check above must be able to fail: a bench module, a test helper or MediaPipe imported
    # next to the daemon's modules is caught.
    planted = _modules_after("import redsg_edge.pipeline, redsg_edge.bench.report, tests.helpers, "
                             "mediapipe")
    caught = set(_off_path(planted))
    assert {"redsg_edge.bench.report", "tests.helpers", "mediapipe"} <= caught


def test_running_daemon_loads_no_bench_test_helper_matplotlib_or_mediapipe():
    # After start, not only after import: lazy imports on the live path (capture, vision,
    # speech, the reply worker and its Piper voice) count too.
    from .conftest import ACTOR_24, DETECTOR, FER_MODEL, PEXELS, SER_MODEL, UTT_MODEL
    utterances = sorted(ACTOR_24.glob("*.flac"))
    if not (PEXELS.is_file() and DETECTOR.is_file() and utterances):
        pytest.skip("../shared clip, detector or RAVDESS Actor_24 missing")
    data = {"vision": {"detector_model": str(DETECTOR), "fer_model": str(FER_MODEL)},
            "speech": {"ser_model": str(SER_MODEL), "utterance_model": str(UTT_MODEL)},
            "camera": {"source": "file", "file": str(PEXELS)},
            "microphone": {"source": "file", "file": str(utterances[0])},
            "voice": {"sink": "null"}, "reply": {"chat": {"enabled": False}}}
    ours = _modules_after(f"""
import threading
from redsg_edge.config import parse_config
from redsg_edge.pipeline import Pipeline
faces = threading.Event()
pipe = Pipeline(parse_config({data!r}, "<test>"), reply=True,
                on_evidence=lambda t, ev: ev is not None and ev.modality == "face" and faces.set())
pipe.start()
try:
    assert faces.wait(60), "no face evidence within 60 s"
finally:
    pipe.stop()
""")
    assert {"redsg_edge.pipeline", "redsg_edge.vision", "redsg_edge.voice"} <= ours
    assert _off_path(ours) == []


MAX_MODULE_LINES = 600  # issue 16: no module over about 600 lines


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (lines): {long}"


def _undocumented(source: str) -> list[str]:
    """Public classes, functions and methods of ``source`` without a docstring (a property
    setter documents itself through its getter)."""
    missing = []

    def walk(node: ast.AST, prefix: str) -> None:
        for n in ast.iter_child_nodes(node):
            if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if n.name.startswith("_"):
                continue
            setter = any(isinstance(d, ast.Attribute) and d.attr == "setter"
                         for d in n.decorator_list)
            if not setter and not ast.get_docstring(n):
                missing.append(f"{n.lineno}: {prefix}{n.name}")
            if isinstance(n, ast.ClassDef):
                walk(n, f"{prefix}{n.name}.")
    walk(ast.parse(source), "")
    return missing


def test_undocumented_finds_a_planted_public_function():
    assert _undocumented("def f():\n    pass\n\ndef _g():\n    pass\n") == ["1: f"]
    assert _undocumented('class A:\n    """A."""\n    def m(self):\n        pass\n') == ["3: A.m"]


def test_every_public_definition_has_a_docstring():
    missing = {str(p.relative_to(REPO)): m for p in sorted(PACKAGE.rglob("*.py"))
               if (m := _undocumented(p.read_text(encoding="utf-8")))}
    assert not missing, f"public definitions without a docstring: {missing}"
