#!/usr/bin/env bash
# Install redsg-edge as a systemd service on Raspberry Pi OS Bookworm, Jetson JetPack 6
# (Ubuntu 22.04) or Debian 12. Idempotent: run it again to upgrade; --uninstall to remove.
#
#   sudo scripts/install.sh                     # from a checkout of the repository
#   sudo scripts/install.sh --mirror DIR        # models from DIR instead of the internet
#   scripts/install.sh --root /tmp/r --no-apt   # into a scratch root (CI, image builds)
#   sudo scripts/install.sh --uninstall [--purge]
#
# Layout (paths below ROOT, default /):
#   /opt/redsg-edge/venv        the virtualenv (the package with its `systemd`, `mqtt` and `web` extras)
#   /opt/redsg-edge/models      models, read-only to the service; config.toml points here
#   /etc/redsg-edge/config.toml written only when absent (yours is never overwritten)
#   /etc/systemd/system/redsg-edge.service
#   /usr/local/bin/redsg-edge   a symlink into the venv
#   /var/lib/redsg-edge, /var/cache/redsg-edge, /run/redsg-edge   created by systemd
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=/
UNINSTALL=0
PURGE=0
APT=1
CHECK=1
MIRROR=""
MODELS_SRC="$SRC/models"
PYTHON=python3
UNIT=redsg-edge.service

usage() {
    cat <<EOF
usage: $0 [options]

  --root DIR      install below DIR instead of / (a scratch root for CI or an image build);
                  apt and starting the service are skipped, the unit is enabled offline
  --no-apt        do not install Debian packages (they must be present already)
  --mirror DIR    copy third-party models from DIR instead of downloading them
  --models DIR    where this project's own fer_int8.tflite / ser_int8.tflite come from
                  (default: $SRC/models)
  --python PY     interpreter for the virtualenv (default: python3; 3.10 or newer)
  --no-check      skip \`redsg-edge check\` at the end
  --uninstall     stop and remove the service, the venv and the models
  --purge         with --uninstall: also remove /etc/redsg-edge and the state and cache dirs
  -h, --help      this text

Exit status: 0 installed (device warnings allowed), 1 failed, 2 usage.
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --mirror) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; MIRROR=$2; shift 2 ;;
        --mirror=*) MIRROR=${1#*=}; shift ;;
        --models) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; MODELS_SRC=$2; shift 2 ;;
        --models=*) MODELS_SRC=${1#*=}; shift ;;
        --python) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --no-apt) APT=0; shift ;;
        --no-check) CHECK=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ $ROOT != / ]]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi
r() { if [[ $ROOT == / ]]; then echo "$1"; else echo "$ROOT$1"; fi; }  # path below ROOT

PREFIX=/opt/redsg-edge                  # as the service sees it
VENV=$(r $PREFIX/venv)
MODELS=$(r $PREFIX/models)
ETC=$(r /etc/redsg-edge)
UNIT_DIR=$(r /etc/systemd/system)

is_pi() { grep -qs "Raspberry Pi" /proc/device-tree/model; }
is_jetson() { [[ -f /etc/nv_tegra_release ]]; }
live() { [[ $ROOT == / && -d /run/systemd/system ]]; }  # systemd is PID 1 on this root

if [[ $ROOT == / && $EUID -ne 0 ]]; then
    die "installing into / needs root: sudo $0 $*"
fi

# ------------------------------------------------------------------------------- uninstall
if [[ $UNINSTALL == 1 ]]; then
    if live; then
        say "stopping and disabling $UNIT"
        systemctl disable --now "$UNIT" 2>/dev/null || true
    elif [[ $ROOT != / ]] && command -v systemctl >/dev/null; then
        systemctl --root="$ROOT" disable "$UNIT" >/dev/null 2>&1 || true
    fi
    rm -f "$UNIT_DIR/$UNIT" "$(r /etc/systemd/system/multi-user.target.wants)/$UNIT"
    rm -rf "$UNIT_DIR/$UNIT.d"
    live && systemctl daemon-reload
    say "removing $(r $PREFIX)"
    rm -rf "$(r $PREFIX)"
    if [[ -L $(r /usr/local/bin/redsg-edge) ]]; then rm -f "$(r /usr/local/bin/redsg-edge)"; fi
    if [[ $PURGE == 1 ]]; then
        say "purging config, state and cache"
        rm -rf "$ETC" "$(r /var/lib/redsg-edge)" "$(r /var/lib/private/redsg-edge)" \
               "$(r /var/cache/redsg-edge)" "$(r /var/cache/private/redsg-edge)"
    else
        echo "kept $ETC and /var/lib/redsg-edge (use --purge to remove them)"
    fi
    say "uninstalled"
    exit 0
fi

[[ -f $SRC/pyproject.toml && -f $SRC/systemd/$UNIT ]] || die "run me from a redsg-edge checkout ($SRC)"

# ------------------------------------------------------------------------------- packages
if [[ $APT == 1 ]]; then
    if [[ $ROOT != / ]]; then
        echo "skipping apt: --root $ROOT (install the packages into that image yourself)"
    else
        pkgs=(python3-venv python3-dev gcc pkg-config libsystemd-dev libportaudio2)
        is_pi && pkgs+=(python3-picamera2)
        say "apt packages: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${pkgs[@]}"
    fi
fi

# ------------------------------------------------------------------------------- virtualenv
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is older than Python 3.10"
if [[ ! -x $VENV/bin/python ]]; then
    venv_args=()
    # picamera2 (and its libcamera bindings) only come from apt: let the venv see them.
    is_pi && venv_args+=(--system-site-packages)
    say "creating $VENV ${venv_args[*]:-}"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
else
    say "reusing $VENV"
fi
say "installing redsg-edge[systemd,mqtt,web] from $SRC"
# A copy of the source tree, so a build/ or .egg-info never lands in the checkout.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$SRC" --exclude=./.venv --exclude='./.venv-*' --exclude=./.git --exclude=./runs \
    --exclude=./models --exclude='*.egg-info' --exclude=./build -cf - . | tar -C "$build" -xf -
# mqtt: paho-mqtt (pure Python, ~0.2 MB), so that [mqtt] enabled = true needs no other install.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$build[systemd,mqtt,web]"
"$VENV/bin/python" -c 'import redsg_edge, systemd.daemon' \
    || die "the package or systemd-python did not install into $VENV"
# `redsg-edge status` etc. on the PATH of SSH users
mkdir -p "$(r /usr/local/bin)"
ln -sfn "$PREFIX/venv/bin/redsg-edge" "$(r /usr/local/bin/redsg-edge)"

# ------------------------------------------------------------------------------- models
say "models into $MODELS"
mkdir -p "$MODELS"
fetch=("$VENV/bin/python" -m redsg_edge.assets --dest "$MODELS")
[[ -n $MIRROR ]] && fetch+=(--mirror "$MIRROR")
"${fetch[@]}" || die "fetching the third-party models failed (no network? use --mirror DIR)"
for m in fer_int8.tflite ser_int8.tflite ser_utt_int8.tflite; do
    [[ -f $MODELS_SRC/$m ]] || die "$MODELS_SRC/$m is missing: train or download it (models/README.md), or pass --models DIR"
    if ! cmp -s "$MODELS_SRC/$m" "$MODELS/$m"; then
        install -m 0644 "$MODELS_SRC/$m" "$MODELS/$m.new"
        mv -f "$MODELS/$m.new" "$MODELS/$m"
    fi
    # The model's calibration (temperature) travels with it; a stale one must not outlive it.
    side=${m%.tflite}.json
    if [[ -f $MODELS_SRC/$side ]]; then
        install -m 0644 "$MODELS_SRC/$side" "$MODELS/$side"
    else
        rm -f "$MODELS/$side"
    fi
done
if [[ -f $MODELS_SRC/SHA256SUMS ]]; then
    install -m 0644 "$MODELS_SRC/SHA256SUMS" "$MODELS/SHA256SUMS"
    (cd "$MODELS" && sha256sum --quiet --check --ignore-missing SHA256SUMS) \
        || die "our models do not match $MODELS_SRC/SHA256SUMS"
else
    # Pin what was installed, so `redsg-edge check` notices later corruption (SD cards).
    (cd "$MODELS" && sha256sum fer_int8.tflite ser_int8.tflite ser_utt_int8.tflite > SHA256SUMS)
fi

# ------------------------------------------------------------------------------- config
mkdir -p "$ETC"
if [[ -f $ETC/config.toml ]]; then
    say "keeping the existing $ETC/config.toml"
else
    say "writing $ETC/config.toml"
    # Absolute model paths; paths the service writes to go to its StateDirectory.
    sed -e "s#^detector_model = \"models/#detector_model = \"$PREFIX/models/#" \
        -e "s#^fer_model = \"models/#fer_model = \"$PREFIX/models/#" \
        -e "s#^ser_model = \"models/#ser_model = \"$PREFIX/models/#" \
        -e "s#^utterance_model = \"models/#utterance_model = \"$PREFIX/models/#" \
        -e "s#^vad_model = \"models/#vad_model = \"$PREFIX/models/#" \
        -e 's#^norm_state = ""#norm_state = "/var/lib/redsg-edge/voice_norm.npz"#' \
        -e "s#^\(encoder_model\|decoder_model\|tokenizer\) = \"models/#\1 = \"$PREFIX/models/#" \
        -e "s#^model = \"models/#model = \"$PREFIX/models/#" \
        -e 's#^wav_dir = "replies"#wav_dir = "/var/lib/redsg-edge/replies"#' \
        "$SRC/config.toml" > "$ETC/config.toml.new"
    chmod 0644 "$ETC/config.toml.new"
    mv -f "$ETC/config.toml.new" "$ETC/config.toml"
fi

# ------------------------------------------------------------------------------- unit
install -m 0644 "$SRC/README.md" "$(r $PREFIX)/README.md"  # the unit's Documentation=
say "installing $UNIT_DIR/$UNIT"
mkdir -p "$UNIT_DIR"
install -m 0644 "$SRC/systemd/$UNIT" "$UNIT_DIR/$UNIT"
if is_jetson; then
    mkdir -p "$UNIT_DIR/$UNIT.d"
    cat > "$UNIT_DIR/$UNIT.d/jetson.conf" <<'EOF'
# Jetson CSI cameras (nvarguscamerasrc) need the NVIDIA memory and host1x nodes.
[Service]
DeviceAllow=/dev/nvmap rw
DeviceAllow=char-nvhost-* rw
EOF
fi

# ------------------------------------------------------------------------------- check
check_rc=0
if [[ $CHECK == 1 ]]; then
    say "redsg-edge check"
    check=("$VENV/bin/python" -m redsg_edge.check)
    if [[ $ROOT == / ]]; then
        check+=(--config /etc/redsg-edge/config.toml)
    else
        # The installed config names /opt/redsg-edge/...; check the copy below ROOT. No devices
        # or network: a scratch root has neither.
        tmpcfg="$build/check-config.toml"
        sed -e "s#\"$PREFIX/#\"$ROOT$PREFIX/#g" "$ETC/config.toml" > "$tmpcfg"
        check+=(--config "$tmpcfg" --no-devices --no-network)
    fi
    "${check[@]}" || check_rc=$?
    case $check_rc in
        0) ;;
        69) echo "warning: a device is missing (see above); the service will start once it is there" ;;
        *) die "redsg-edge check failed with exit code $check_rc (see above)" ;;
    esac
fi

# ------------------------------------------------------------------------------- enable
if live; then
    systemctl daemon-reload
    systemctl enable "$UNIT"
    if [[ $check_rc == 0 ]]; then
        say "restarting $UNIT"
        systemctl restart "$UNIT"
        systemctl --no-pager --lines=0 status "$UNIT" || true
    fi
elif command -v systemctl >/dev/null; then
    # Offline enable (the wants/ symlink) so an image boots with the service on.
    systemctl --root="$ROOT" enable "$UNIT" >/dev/null 2>&1 \
        || echo "note: could not enable $UNIT below $ROOT"
fi
say "done: redsg-edge installed below $ROOT"
[[ $ROOT == / ]] && echo "    status: redsg-edge status · log: journalctl -u redsg-edge -f"
exit 0
