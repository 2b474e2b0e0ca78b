"""A thin wrapper over the LiteRT (TFLite) interpreter for the project's int8 classifiers.

ai-edge-litert is preferred; tflite-runtime (which needs numpy<2) is the fallback import. Both
release the GIL while ``invoke()`` runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np

from .errors import ModelError

try:  # pragma: no cover - which branch runs depends on the install
    from ai_edge_litert.interpreter import Interpreter
    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        RUNTIME = "tflite-runtime"
    except ImportError:
        Interpreter = None  # type: ignore[assignment,misc]
        RUNTIME = None

__all__ = ["RUNTIME", "LiteRTClassifier", "ModelError", "load_interpreter",
           "quiet_native_stderr"]

_stderr_lock = threading.Lock()


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence native (C++) log lines written to fd 2 while the block runs.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" when an interpreter allocates
    its tensors, and no environment variable silences it; redirecting the file descriptor is the
    only way to keep it out of the journal. Python's own ``sys.stderr`` writes made in the block
    are lost too, so keep it short.
    """
    with _stderr_lock:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (some service managers): nothing to silence
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def load_interpreter(path: Path, num_threads: int = 1):
    """A LiteRT interpreter of the ``.tflite`` at ``path`` with its tensors allocated. Raises
    ModelError when no runtime is installed or the file is missing or not a loadable model."""
    if Interpreter is None:
        raise ModelError("no LiteRT runtime installed: pip install ai-edge-litert "
                         "(or tflite-runtime with numpy<2)")
    if not Path(path).is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with quiet_native_stderr():
            interp = Interpreter(model_path=str(path), num_threads=num_threads)
            interp.allocate_tensors()
    except Exception as exc:  # the runtime raises ValueError/RuntimeError with C++ text
        raise ModelError(f"{path}: not a loadable TFLite model ({exc})") from exc
    return interp


class LiteRTClassifier:
    """One TFLite classifier with a single input and a single output of class scores.

    Quantized (int8/uint8) inputs and outputs are handled here: ``predict`` takes float features in
    the model's own float domain and returns float32 scores, dequantized with the tensor's scale
    and zero point.

    path: the ``.tflite`` file.
    input_shape: expected input shape without the batch axis, e.g. ``(48, 48, 1)``; ``None`` entries
        match anything. A mismatch raises ``ModelError`` naming the file.
    num_classes: expected size of the last output axis.
    num_threads: interpreter threads (1 keeps the daemon's CPU use predictable).
    """

    def __init__(self, path: str | os.PathLike, input_shape: tuple[int | None, ...],
                 num_classes: int, num_threads: int = 1) -> None:
        self.path = Path(path)
        self._interp = load_interpreter(self.path, num_threads)
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{self.path}: expected 1 input and 1 output, found "
                             f"{len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        got = tuple(int(d) for d in self._in["shape"][1:])
        if len(got) != len(input_shape) or any(
                e is not None and e != g for e, g in zip(input_shape, got)):
            raise ModelError(f"{self.path}: input shape {got} does not match expected "
                             f"{tuple(input_shape)}; is this the right model for this slot?")
        if int(self._out["shape"][-1]) != num_classes:
            raise ModelError(f"{self.path}: output has {int(self._out['shape'][-1])} classes, "
                             f"expected {num_classes}")
        self.input_shape = got
        self.input_dtype = np.dtype(self._in["dtype"])
        self._in_q = self._in["quantization"]
        self._out_q = self._out["quantization"]

    @property
    def quantized(self) -> bool:
        """True when the model takes int8/uint8 input (inputs are quantized with its scale and zero point)."""
        return self.input_dtype in (np.int8, np.uint8)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x: one example shaped ``input_shape`` (float, model's float domain) → scores
        ``(num_classes,)`` float32 as the model outputs them (probabilities for the FER and the
        window SER, logits for the utterance SER)."""
        x = np.asarray(x, dtype=np.float32).reshape((1, *self.input_shape))
        if self.quantized:
            scale, zero = self._in_q
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input_dtype)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        y = self._interp.get_tensor(self._out["index"])[0]
        if np.dtype(self._out["dtype"]) in (np.int8, np.uint8):
            scale, zero = self._out_q
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)
