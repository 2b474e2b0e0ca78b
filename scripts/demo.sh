#!/usr/bin/env bash
# Install redsg-edge into .venv and run it on real input: the live camera and microphone when this
# machine has them, otherwise the bundled sample video (../shared/data/av_clips) replayed through
# the same loop, writing the event log and the emotion timeline to runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq python3-venv libportaudio2 >/dev/null
fi
scripts/setup_venv.sh .venv
. .venv/bin/activate
shared=${REDSG_DATA:-../shared/data}
mirror=$(dirname "$shared")/models
# the shared mirror has the face detector; what it lacks (speech-to-text) comes from the registry
if [ -d "$mirror" ]; then redsg-edge fetch-models --mirror "$mirror" --download-missing; else redsg-edge fetch-models; fi
mkdir -p runs/demo
if ls /dev/video* >/dev/null 2>&1 && [ -z "${REDSG_DEMO_REPLAY:-}" ]; then
    echo "camera found: running live (Ctrl-C to stop)"
    exec redsg-edge run --config config.toml
fi
video="$shared/av_clips/pyfeat_WolfgangLanger_Pexels.mp4"
echo "no camera: replaying $video"
redsg-edge replay "$video" --out runs/demo/events.jsonl --plot runs/demo/timeline.png
echo "wrote runs/demo/events.jsonl and runs/demo/timeline.png"
