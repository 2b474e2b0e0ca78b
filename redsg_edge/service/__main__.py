"""``python -m redsg_edge.service run --config PATH [--no-reply]`` or ``status [--json]
[--file PATH]``: the daemon without the CLI (tests, and the installer before ``redsg-edge`` is
on the PATH). Exit codes as ``redsg-edge run`` and ``redsg-edge status``; 2 for a usage error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .daemon import exit_process, run_service
from .status import status_main


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m redsg_edge.service")
    sub = ap.add_subparsers(dest="cmd")
    run = sub.add_parser("run")
    run.add_argument("--config", type=Path, default=Path("config.toml"))
    run.add_argument("--no-reply", action="store_true")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    st.add_argument("--file", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "status":
        return status_main(args.json, args.file)
    if args.cmd != "run":
        ap.error("choose run or status")
    exit_process(run_service(args.config, reply=not args.no_reply))


if __name__ == "__main__":
    sys.exit(_main())
