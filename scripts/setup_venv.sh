#!/usr/bin/env bash
# Create (or update) the project's virtual environment and install redsg-edge into it.
#   scripts/setup_venv.sh [VENV_DIR] [EXTRAS]     e.g. scripts/setup_venv.sh .venv test
# Idempotent. System packages it needs (Debian/Raspberry Pi OS/Ubuntu): python3-venv
# libportaudio2, and libegl1 libgles2 for the test extra's mediapipe — scripts/install.sh or
# .ci/run install them.
set -euo pipefail
venv=${1:-.venv}
extras=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv ${VENV_SYSTEM_SITE:+--system-site-packages} "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip
"${pip[@]}" install -e "$here${extras:+[$extras]}"
# The test extra's mediapipe pulls the GUI build of OpenCV (needs libGL, X11) beside the
# headless one. Both wheels write the same cv2/ folder, so swap rather than add (DESIGN.md §2).
if "$venv/bin/python" -m pip show -q opencv-contrib-python >/dev/null 2>&1; then
    "${pip[@]}" uninstall -y opencv-contrib-python opencv-python-headless
    "${pip[@]}" install --no-deps --force-reinstall opencv-python-headless==4.11.0.86
fi
"$venv/bin/python" -c "import cv2, ai_edge_litert, onnxruntime, piper" \
    || { echo "setup_venv: the runtime does not import; see the errors above" >&2; exit 1; }
echo "setup_venv: $venv ready"
