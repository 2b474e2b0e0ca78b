#!/usr/bin/env bash
# Install redsg-edge with its test extra into .venv and run the test suite on the real models and
# media (../shared/data, or $REDSG_DATA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh .venv test,systemd
.venv/bin/redsg-edge fetch-models --mirror "$(dirname "${REDSG_DATA:-../shared/data}")/models"
exec .venv/bin/python -m pytest -q "$@"
