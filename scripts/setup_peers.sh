#!/usr/bin/env bash
# Create (or update) .venv-peers, the separate virtualenv in which `redsg-edge bench peers` runs
# the `fer` package (scripts/peer_fer.py), and check that fer's default mode loads.
#   scripts/setup_peers.sh [VENV_DIR]        default .venv-peers
# fer 25.10.3 is installed without its declared dependencies: facenet-pytorch pulls a CUDA
# PyTorch for its optional MTCNN mode only. What its default mode (Haar cascade + TFLite) needs
# is the `[peers]` extra of pyproject.toml, installed here without redsg-edge itself.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-peers}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip
"$venv/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))
    ["project"]["optional-dependencies"]["peers"]))' > "$venv/peers-requirements.txt"
"${pip[@]}" install -r "$venv/peers-requirements.txt"
"${pip[@]}" install --no-deps fer==25.10.3  # last: pip then checks no declared dependency
if ! out=$(TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" -c 'from fer.fer import FER; FER()' 2>&1); then
    echo "$out" >&2
    echo "setup_peers: fer does not load in $venv" >&2
    exit 1
fi
echo "peer virtualenv ready: $venv ($("$venv/bin/python" -m pip show fer | sed -n 's/^Version: /fer /p'))"
