#!/usr/bin/env python3
"""Check that the runtime dependency set installs from binary wheels on the devices' architecture.

    python scripts/check_aarch64_wheels.py [--python 3.10 --python 3.11] [--json-out FILE]

For each target Python (3.10: JetPack 6 on Jetson; 3.11: Raspberry Pi OS Bookworm), runs pip's
resolver on pyproject.toml's ``[project].dependencies`` and its ``web`` extra as it would run on
``aarch64``:

    pip install --dry-run --ignore-installed --only-binary=:all: --target TMP \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --python-version 3.X --implementation cp --report REPORT REQUIREMENTS...

A dry run downloads only the wheels' metadata (PEP 658), not the wheels: about 5 s per
version. It fails, naming the requirement, when a dependency or pin has no wheel for these
platforms; the report lists every file the device would install, each checked to be a wheel
for aarch64 or for any platform. Requirement markers are evaluated for the target
(``python_version``, ``platform_machine = aarch64``), not for this machine.

Not covered, by design: the ``systemd`` extra's ``systemd-python`` builds from source on the
device (``libsystemd-dev``, see README).
This resolves; it does not run anything on Arm (LiteRT and onnxruntime crash
under qemu-user, so emulated inference proves nothing).

Exit 0 when every version resolves to aarch64 wheels, 1 otherwise (the reason printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
             "manylinux2014_aarch64")
#: Extras that scripts/install.sh installs on the device besides ``systemd`` (built from source).
DEVICE_EXTRAS = ("web",)


def target_env(python: str) -> dict[str, str]:
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0",
               platform_machine="aarch64", platform_system="Linux", sys_platform="linux",
               implementation_name="cpython", platform_python_implementation="CPython")
    return env


def requirements(python: str) -> list[str]:
    """The device's requirements for target ``python``, markers evaluated and dropped."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [
        d for extra in DEVICE_EXTRAS for d in project["optional-dependencies"][extra]]
    wheels = []
    for line in deps:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(target_env(python)):
            continue
        req.marker = None
        wheels.append(str(req))
    return wheels


def pip_env() -> dict[str, str]:
    # This machine's pip settings may add local indexes and find-links (wheels built for it);
    # the check is about the public index a device installs from.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _quiet(stderr: str) -> str:
    return "\n".join(ln for ln in stderr.splitlines() if "is ignored" not in ln)


def check(python: str, work: Path) -> dict:
    wheels = requirements(python)
    report = work / f"report-{python}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
           "--only-binary=:all:", "--target", str(work / f"target-{python}"),
           "--python-version", python, "--implementation", "cp", "--report", str(report)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    t0 = time.perf_counter()
    res = subprocess.run(cmd + wheels, capture_output=True, text=True, env=pip_env())
    out: dict = {"python": python, "seconds": round(time.perf_counter() - t0, 1),
                 "requirements": wheels, "ok": res.returncode == 0}
    if res.returncode != 0:
        out["error"] = _quiet(res.stderr).strip()[-2000:]
        return out
    files = [(it["metadata"]["name"], it["metadata"]["version"],
              it["download_info"]["url"].rsplit("/", 1)[-1])
             for it in json.loads(report.read_text())["install"]]
    bad = [f for f in files if not f[2].endswith(".whl")
           or not any(t.endswith(("_aarch64", "-any")) or t == "any"
                      for t in f[2][:-4].split("-")[-1].split("."))]
    out["installs"] = [f"{n}=={v} {f}" for n, v, f in files]
    if bad:
        out["ok"] = False
        out["error"] = "not an aarch64 or pure-Python wheel: " + ", ".join(f[2] for f in bad)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", help="target Python version (repeatable)")
    ap.add_argument("--json-out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aarch64-wheels-") as tmp:
        results = [check(v, Path(tmp)) for v in (args.python or ["3.10", "3.11"])]
    total = round(time.perf_counter() - t0, 1)
    for r in results:
        status = "ok" if r["ok"] else "FAILED"
        n = len(r.get("installs", []))
        print(f"aarch64 wheels, Python {r['python']}: {status} ({n} distributions, "
              f"{r['seconds']} s)")
        if not r["ok"]:
            print("  " + r["error"].replace("\n", "\n  "))
    print(f"aarch64 wheel check: {total} s")
    if args.json_out:
        args.json_out.write_text(json.dumps({"seconds": total, "results": results}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
