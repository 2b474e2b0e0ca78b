"""openSMILE functionals for SER, the way a daemon could compute them (issue 15 experiments).

``lean_smile`` runs openSMILE's ComParE 2016 or eGeMAPS v02 functionals through the ``opensmile``
wheel's ctypes layer alone (``opensmile/core/lib.py`` and ``libSMILEapi``, which the wheel carries
for x86-64 and ``manylinux_2_17_aarch64``), without ``import opensmile`` and its pandas,
pyarrow and audinterface (+125 MB resident). ``level_normalised`` scales an utterance so that
its loud frames sit at −20 dBFS first (``redsg_edge.functionals.level_normalise``), so that the
features do not depend on the microphone gain. Used by ``scripts/ser_representations.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from redsg_edge.functionals import SAMPLE_RATE, level_normalise


def level_normalised(fx):
    """``fx`` on the utterance with its loud frames at −20 dBFS (the runtime's
    ``functionals.level_normalise``): the features then cannot depend on the microphone gain."""
    return lambda x: fx(level_normalise(x).astype(np.float32))


SMILE_CONFIGS = {"compare": "compare/ComParE_2016.conf", "egemaps": "egemaps/v02/eGeMAPSv02.conf"}


def lean_smile(name: str):
    """openSMILE functionals through the package's ctypes layer alone (``opensmile/core/lib.py``
    loaded by path, so neither pandas nor audinterface is imported: +1 MB resident instead of
    +125 MB for ``import opensmile``), driven as ``opensmile.Smile.process_signal`` drives it: one
    SMILE instance per utterance, int16 samples in, one functionals vector out. The shape a
    daemon could use; ``--features compare_lean`` checks it gives the package's numbers."""
    import importlib.util
    spec = importlib.util.find_spec("opensmile")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("opensmile is not installed: pip install opensmile (or --no-deps)")
    core = Path(spec.origin).parent / "core"
    lib_spec = importlib.util.spec_from_file_location("_smile_lib", core / "lib.py")
    lib = importlib.util.module_from_spec(lib_spec)
    lib_spec.loader.exec_module(lib)
    cfg = core / "config"
    options = {"source": cfg / "shared/standard_external_wave_input.conf.inc",
               "sampleRate": SAMPLE_RATE, "nBits": 16,
               "sink": cfg / "shared/standard_external_data_output_single.conf.inc",
               "sinkLevel": "func", "bufferModeRbConf": cfg / "shared/BufferModeRb.conf.inc",
               "frameModeFunctionalsConf": cfg / "shared/FrameModeFunctionals.conf.inc"}

    def f(x: np.ndarray) -> np.ndarray:
        pcm = (np.clip(x, -1, 32767 / 32768) * 32768).astype(np.int16)
        out: list[np.ndarray] = []
        smile = lib.OpenSMILE()
        smile.initialize(str(cfg / SMILE_CONFIGS[name]), options, loglevel=2)
        try:
            smile.external_sink_set_callback_ex("extsink", lambda d, meta: out.append(d.copy()))
            smile.external_audio_source_write_data("extsource", pcm.tobytes())
            smile.external_audio_source_set_eoi("extsource")
            smile.run()
        finally:
            smile.free()
        if not out:
            raise ValueError(f"openSMILE gave no functionals for {len(x)} samples (too short)")
        return out[0].reshape(-1).astype(np.float32)
    return f
