"""Piper's vocoder a few seconds of audio at a time: a long sentence needs no more memory.

Piper (a VITS network; Kim et al. 2021, arXiv:2106.06103) turns a whole sentence into audio in one
``run``, and its vocoder, the HiFi-GAN generator (Kong et al. 2020, arXiv:2010.05646), holds about
16 MB of activations per second of that audio for the length of the run. The generator is
convolutional, so each output sample depends only on the latent frames around it.
``ChunkedVocoderSession`` runs the voice in two parts: the front (text encoder, duration
predictor, flow) once per sentence, giving the latent ``z`` of shape (1, 192, T frames); then the
vocoder on ``chunk_frames`` frames at a time, each with ``context_frames`` more on both sides
whose samples are dropped. The high-water mark then follows the chunk, not the sentence.

Measured on x86-64 (onnxruntime 1.32, one pinned core, the shipped int8 voice, two rounds):
over 6.7-6.9 s sentences the high-water mark rose by 45-58 MB with 2 s chunks and 31-34 MB
with 1 s chunks, against 105-153 MB in one run; CPU time per such sentence rose 10-25 %
(2 s) and 20-45 % (1 s), as the context is computed twice and each chunk is a run of its own.
The 40 sentences of the offline templates (under 2 s each) cost the same with 2 s chunks
(real-time factor 0.115-0.118 against 0.114-0.116) and 8-13 % more with 1 s chunks.

The audio is the whole-sentence audio: with 12 frames of context the chunked output equals it
to within float rounding (134 dB SNR, at most 6e-7 apart on a 5.3 s sentence with noise scales
0), with 8 frames it is 69 dB, with 4 frames 39 dB. ``CONTEXT_FRAMES`` is 16 for margin. The
two parts are files that ``redsg-edge fetch-models`` cuts from the voice
(``derive.split_voice_front`` and ``split_voice_vocoder``) and names by ``split_paths``; a
voice without them runs whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ChunkedVocoderSession", "split_paths", "VOCODER_PREFIX", "CONTEXT_FRAMES"]

#: Node-name prefix of a Piper voice's vocoder (VITS' HiFi-GAN generator ``dec`` as exported by
#: Piper's ``export_onnx``).
VOCODER_PREFIX = "/dec/"
#: Latent frames of context on each side of a chunk (exact from 12 for en_US-joe-medium).
CONTEXT_FRAMES = 16


def split_paths(model: str | Path) -> tuple[Path, Path]:
    """(front, vocoder) files of the voice ``model``: ``NAME.front.onnx`` and
    ``NAME.vocoder.onnx`` beside ``NAME.onnx``."""
    model = Path(model)
    stem = model.name[:-len(".onnx")] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{stem}.front.onnx"), model.with_name(f"{stem}.vocoder.onnx")


class ChunkedVocoderSession:
    """What piper-tts's ``PiperVoice`` calls as its ``session``: ``run(None, feed)`` returns
    ``[audio]``, audio (1, 1, N) float32 in [-1, 1], N = T frames × ``hop``, as the whole voice
    would.

    ``front``, ``vocoder``: onnxruntime sessions of the two parts (``split_paths``); the front's
    outputs are the vocoder's inputs, the latent (1, C, T) first by name order and any other
    (a speaker embedding) passed to every chunk whole. ``chunk_frames`` ≥ 1, ``context_frames``
    ≥ 0, ``hop``: samples per latent frame (256 for Piper's medium voices). ``run_options``
    go with every run (``memory.shrink_run_options``: each chunk's buffers handed back).
    Raises ValueError when the two sessions do not fit together.
    """

    def __init__(self, front: Any, vocoder: Any, *, chunk_frames: int, hop: int,
                 context_frames: int = CONTEXT_FRAMES, run_options: Any = None) -> None:
        if chunk_frames < 1 or context_frames < 0 or hop < 1:
            raise ValueError(f"chunk_frames {chunk_frames}, context_frames {context_frames} and "
                             f"hop {hop} must be positive (context may be 0)")
        self.front, self.vocoder = front, vocoder
        self.chunk_frames, self.context_frames, self.hop = chunk_frames, context_frames, hop
        self.run_options = run_options
        self._mid = [o.name for o in front.get_outputs()]
        wanted = sorted(i.name for i in vocoder.get_inputs())
        if sorted(self._mid) != wanted:
            raise ValueError(f"the vocoder reads {wanted}, the front gives {sorted(self._mid)}")
        ranks = {o.name: len(o.shape) for o in front.get_outputs()}
        latent = [n for n in self._mid if ranks[n] == 3]
        if len(latent) != 1:
            raise ValueError(f"expected one (1, C, T) latent among {self._mid}")
        self._latent = latent[0]

    def run(self, output_names, input_feed, run_options=None) -> list[np.ndarray]:
        """``[audio]`` for ``input_feed`` (the voice's inputs by name); ``output_names`` is
        ignored (the voice has one output)."""
        ro = run_options or self.run_options
        mid = dict(zip(self._mid, self.front.run(self._mid, input_feed, ro)))
        z = mid.pop(self._latent)
        n = z.shape[2]
        out = []
        for a in range(0, n, self.chunk_frames):
            b = min(n, a + self.chunk_frames)
            s0, s1 = max(0, a - self.context_frames), min(n, b + self.context_frames)
            y = self.vocoder.run(None, {self._latent: z[:, :, s0:s1], **mid}, ro)[0].reshape(-1)
            out.append(y[(a - s0) * self.hop:(b - s0) * self.hop])
        audio = np.concatenate(out) if out else np.zeros(0, np.float32)
        return [audio.reshape(1, 1, -1)]
