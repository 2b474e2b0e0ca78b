"""The numeric libraries' thread pools in the daemon (redsg_edge.threadpools).

The pools are sized when a library loads, so each case runs in a fresh interpreter and asks
the loaded libraries themselves (threadpoolctl for OpenBLAS, ``cv2.getNumThreads``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from redsg_edge.threadpools import POOL_SIZE_VARIABLES, limit_thread_pools

PROBE = """
import json, sys
{before}
from redsg_edge.threadpools import limit_thread_pools
done = limit_thread_pools() if {limit} else None
import numpy, scipy.fft, cv2, threadpoolctl
import python_speech_features  # the speech step's imports: scipy's own OpenBLAS loads too
blas = sorted({{i["filepath"].rsplit("/", 1)[-1]: i["num_threads"]
               for i in threadpoolctl.threadpool_info()
               if "scipy_openblas" in i["filepath"]}}.items())
print(json.dumps({{"set": done, "blas": blas, "cv2": cv2.getNumThreads()}}))
"""


def probe(before: str = "", env: dict[str, str] | None = None, limit: bool = True) -> dict:
    """What the libraries report in a fresh interpreter, with or without limit_thread_pools()
    called before they load; none of the pool variables inherited from this process."""
    e = {k: v for k, v in os.environ.items() if k not in POOL_SIZE_VARIABLES}
    e.update(env or {})
    code = textwrap.dedent(PROBE.format(before=before, limit=limit))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pools_are_held_to_one_thread():
    # The same imports without the call: the libraries' own defaults on this machine.
    bare = probe(limit=False)
    if max([bare["cv2"]] + [n for _, n in bare["blas"]]) == 1:
        pytest.skip("the libraries start no pool on this machine (one core): nothing to limit")
    r = probe()
    assert r["set"] == {"OPENBLAS_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    assert r["cv2"] == 1
    # numpy's and scipy's own copies of OpenBLAS both
    assert len(r["blas"]) == 2 and all(n == 1 for _, n in r["blas"]), r["blas"]


def test_numpy_loaded_first_is_limited_at_run_time():
    r = probe(before="import numpy")
    assert all(n == 1 for _, n in r["blas"]), r["blas"]


def test_what_the_environment_sets_stands():
    r = probe(env={"OPENBLAS_NUM_THREADS": "2", "OPENCV_FOR_THREADS_NUM": "2"})
    assert r["set"] == {}
    assert r["cv2"] == 2 and all(n == 2 for _, n in r["blas"]), r


@pytest.mark.parametrize("environ, expected", [
    ({}, {"OPENBLAS_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}),
    ({"OPENBLAS_NUM_THREADS": "4"}, {"OPENCV_FOR_THREADS_NUM": "1"}),
    ({"OPENBLAS_NUM_THREADS": "4", "OPENCV_FOR_THREADS_NUM": "0"}, {}),
])
def test_limit_thread_pools_sets_only_what_is_unset(environ, expected):
    env = dict(environ)
    assert limit_thread_pools(env) == expected
    assert env == {**environ, **expected}


def test_the_cli_loads_no_numpy_before_run_limits_the_pools():
    # cmd_run calls limit_thread_pools first; that only works while importing the CLI itself
    # leaves numpy (and with it OpenBLAS) unloaded.
    out = subprocess.run([sys.executable, "-c", "import sys, redsg_edge.cli\nprint(sorted(m for m "
                          "in ('numpy', 'cv2', 'scipy') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
