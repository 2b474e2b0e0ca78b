"""``python -m redsg_edge.bench``: the bench's own subprocess entry points.

- ``python -m redsg_edge.bench --worker KIND --in PAYLOAD.json``: one measurement in a fresh,
  CPU-pinned process (``workers.worker_main``); the bench starts these itself.
- ``python -m redsg_edge.bench charts RESULT.json OUTDIR``: the PNG charts of a saved result
  (``report.charts_main``).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "charts":
        from .report import charts_main
        sys.exit(charts_main(sys.argv[2:]))
    from .workers import worker_main
    sys.exit(worker_main(sys.argv[1:]))
