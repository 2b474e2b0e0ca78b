"""The numeric libraries' own thread pools, held to one thread in the daemon.

The daemon gives each model one thread of its own (LiteRT ``num_threads=1``, onnxruntime one
intra-op thread) so that its CPU use is predictable. Two libraries underneath start pools of
their own that do not pay for the daemon's small matrices and single frames:

- **OpenBLAS** (numpy's and scipy's copies) starts one worker per core when it loads, and a
  worker that was handed a product spins for a while before it sleeps. The speech step's
  matrix products (filterbanks, functionals) are a few hundred rows: splitting them costs more
  than it saves (``features._one_blas_thread`` measured 6 ms against 2.4 ms a window).
- **OpenCV**'s ``parallel_for`` splits the 640x480 colour conversion of every frame
  (``vision.crop_face``) over all cores, a hand-off to a pool thread 15 times a second.

Both read their size from the environment when they load, so :func:`limit_thread_pools` must
run before numpy or OpenCV is imported; ``redsg-edge run`` calls it first. A variable the
environment already sets is left alone, so a systemd drop-in can still choose. Where numpy is
already loaded, OpenBLAS is limited at run time through threadpoolctl instead (libraries that
load later are then not covered). Measured with ``redsg-edge run`` on the ``bench daemon``
configuration (2-core AVX2 host, 2026-12-03; docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

__all__ = ["POOL_SIZE_VARIABLES", "limit_thread_pools"]

#: Environment variables that size the pools, read when each library loads (OpenBLAS
#: ``driver/others/openblas_env.c``; OpenCV ``core/src/parallel.cpp``).
POOL_SIZE_VARIABLES = ("OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def limit_thread_pools(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Size OpenBLAS's and OpenCV's pools at one thread by setting each variable of
    :data:`POOL_SIZE_VARIABLES` in ``environ`` (default ``os.environ``) that it does not set
    yet; returns ``{variable: value}`` of what was set. Acting on ``os.environ`` when numpy is
    already imported (too late for its OpenBLAS to read the variable), it also limits the
    loaded BLAS libraries through threadpoolctl."""
    env = os.environ if environ is None else environ
    done = {}
    for name in POOL_SIZE_VARIABLES:
        if name not in env:
            env[name] = done[name] = "1"
    if environ is None and "OPENBLAS_NUM_THREADS" in done and "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1, user_api="blas")
        log.debug("numpy was loaded first: OpenBLAS limited at run time")
    log.debug("thread pools: %s", done or "left to the environment")
    return done
