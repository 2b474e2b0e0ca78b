"""scripts/install.sh against a scratch root, the model manifest, fetching and verifying.

The full install (a fresh virtualenv with every dependency) is marked ``slow``: it takes minutes
even from a local wheel cache. Run it with ``pytest -m slow tests/test_install.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from redsg_edge.assets import (AssetError, fetch_main, fetch_models, load_manifest,
                               read_sha256sums, sha256_file, verify_models)
from redsg_edge.config import load_config

REPO = Path(__file__).resolve().parent.parent
MIRROR = REPO.parent / "shared" / "models"
SCRIPT = REPO / "scripts" / "install.sh"
DETECTOR = "blaze_face_short_range.tflite"
#: Speech-to-text files as `redsg-edge fetch-models` leaves them in the repository's models/.
STT_FILES = [REPO / "models" / n for n in ("moonshine-tiny-en-encoder.ort",
                                           "moonshine-tiny-en-decoder.ort", "moonshine-tokenizer.json")]
#: The decoder that fetch-models derives from the fetched one (redsg_edge.derive).
STT_SHARED = REPO / "models" / "moonshine-tiny-en-decoder-shared.onnx"
#: The Silero VAD, also extracted from a wheel by `redsg-edge fetch-models`.
VAD_FILE = REPO / "models" / "silero_vad_16k_op15.onnx"

needs_mirror = pytest.mark.skipif(not (MIRROR / DETECTOR).is_file(),
                                  reason="../shared/models mirror missing")


# ------------------------------------------------------------------------------ manifest

def test_manifest_pins_the_face_detector():
    (a,) = [x for x in load_manifest() if x.name == DETECTOR]
    assert a.size == 229_746
    assert a.sha256 == "b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f"
    assert a.url.startswith("https://storage.googleapis.com/mediapipe-models/face_detector/")
    assert a.key == "vision.detector_model" and not a.optional


@needs_mirror
def test_mirror_copy_matches_manifest():
    (a,) = [x for x in load_manifest() if x.name == DETECTOR]
    assert sha256_file(MIRROR / DETECTOR) == a.sha256


# ------------------------------------------------------------------------------ fetch

@needs_mirror
def test_fetch_from_mirror_verifies_renames_and_is_idempotent(tmp_path, capsys):
    dest = tmp_path / "models"
    (path,) = fetch_models(dest, MIRROR, names={DETECTOR})
    assert path == dest / DETECTOR and sha256_file(path) == load_manifest()[0].sha256
    assert (dest / "manifest.toml").is_file()
    assert not list(dest.glob(".*.part"))
    mtime = path.stat().st_mtime_ns
    (again,) = fetch_models(dest, MIRROR, names={DETECTOR}, log=print)  # kept as is
    assert again == path
    assert path.stat().st_mtime_ns == mtime
    assert "present, sha256 ok" in capsys.readouterr().out


def test_fetch_rejects_a_corrupt_mirror_file_and_leaves_nothing(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / DETECTOR).write_bytes(b"\0" * 229_746)  # right size, wrong bytes
    dest = tmp_path / "models"
    with pytest.raises(AssetError, match="does not match the manifest"):
        fetch_models(dest, mirror)
    assert not (dest / DETECTOR).exists() and not list(dest.glob(".*"))
    (mirror / DETECTOR).write_bytes(b"x" * 300_000)  # too large: stops early
    with pytest.raises(AssetError, match="larger than"):
        fetch_models(dest, mirror)
    assert fetch_main(dest, mirror) == 1
    assert DETECTOR in capsys.readouterr().err
    with pytest.raises(AssetError, match="not in mirror"):
        fetch_models(dest, tmp_path / "empty")


def test_fetch_without_network_names_the_url(tmp_path):
    manifest = tmp_path / "manifest.toml"
    manifest.write_text('[[file]]\nname = "x.bin"\nurl = "http://127.0.0.1:9/x.bin"\n'
                        f'sha256 = "{"0" * 64}"\nsize = 3\n')
    with pytest.raises(AssetError, match=r"x.bin: download from http://127.0.0.1:9/x.bin failed"):
        fetch_models(tmp_path / "d", manifest=manifest, timeout=2)


# ------------------------------------------------------------------------------ verify

def _config(tmp_path: Path, models: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[vision]\ndetector_model = "{models / DETECTOR}"\n'
                   f'fer_model = "{models / "fer_int8.tflite"}"\n'
                   f'[speech]\nser_model = "{models / "ser_int8.tflite"}"\n'
                   f'utterance_model = "{models / "ser_utt_int8.tflite"}"\n')
    return cfg


def test_shipped_sha256sums_pin_the_shipped_files():
    """models/SHA256SUMS names every model and sidecar we ship, each with its current hash: a
    re-calibration or a new model that forgot the line fails here, not on an owner's device."""
    sums = read_sha256sums(REPO / "models" / "SHA256SUMS")
    assert {"fer_int8.tflite", "fer_int8.json", "ser_int8.tflite", "ser_int8.json",
            "ser_utt_int8.tflite", "ser_utt_int8.json"} <= set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((REPO / "models" / name).read_bytes()).hexdigest() == digest, name


@needs_mirror
def test_verify_models_presence_and_hashes(tmp_path):
    models = tmp_path / "models"
    fetch_models(models, MIRROR, names={DETECTOR})
    shutil.copy(VAD_FILE, models / VAD_FILE.name)
    for name, data in (("fer_int8.tflite", b"fer"), ("ser_int8.tflite", b"ser"),
                       ("ser_utt_int8.tflite", b"utt")):
        (models / name).write_bytes(data)
    cfg = load_config(_config(tmp_path, models))
    assert verify_models(cfg) == []
    (models / "SHA256SUMS").write_text(
        f"{hashlib.sha256(b'fer').hexdigest()}  fer_int8.tflite\n"
        f"{hashlib.sha256(b'other').hexdigest()} *ser_int8.tflite\n")
    assert read_sha256sums(models / "SHA256SUMS")["ser_int8.tflite"] == \
        hashlib.sha256(b"other").hexdigest()
    (problem,) = verify_models(cfg)
    assert problem.startswith("speech.ser_model: ") and "SHA256SUMS" in problem
    # The calibration sidecar is pinned with its model: edited, it is named; listed but gone too.
    (models / "fer_int8.json").write_text('{"temperature": 0.9}')
    with (models / "SHA256SUMS").open("a") as f:
        f.write(f"{hashlib.sha256(b'{}').hexdigest()}  fer_int8.json\n")
    problems = verify_models(cfg)
    assert any(p.startswith("vision.fer_model: ") and "fer_int8.json does not match" in p
               and "re-calibration" in p for p in problems), problems
    (models / "fer_int8.json").unlink()
    assert any(p.startswith("vision.fer_model: ") and "fer_int8.json missing" in p
               for p in verify_models(cfg))
    (models / "fer_int8.json").write_text("{}")
    (problem,) = verify_models(cfg)
    assert problem.startswith("speech.ser_model: ")
    (models / DETECTOR).write_bytes(b"tampered")
    problems = verify_models(cfg)
    assert any(p.startswith("vision.detector_model: ") and "does not match" in p
               for p in problems)
    (models / DETECTOR).unlink()
    (models / "fer_int8.tflite").unlink()
    problems = verify_models(cfg)
    assert any("vision.detector_model" in p and "missing" in p and "fetch-models" in p
               for p in problems)
    assert any(p.startswith("vision.fer_model: ") and "missing" in p for p in problems)


# ------------------------------------------------------------------------------ install.sh

def test_install_help_and_bad_option():
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--root DIR" in out.stdout and "--uninstall" in out.stdout
    out = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --bogus" in out.stderr


@pytest.fixture
def unprivileged_user():
    """A user name to run as without root: ourselves, or (CI runs as root) a system user this
    fixture creates and removes."""
    if os.geteuid() != 0:
        yield None
        return
    if shutil.which("useradd") is None:
        pytest.fail("running as root without useradd: cannot test the non-root path")
    name = f"redsg-t{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_install_refuses_real_root_without_privileges(unprivileged_user):
    out = subprocess.run(["bash", str(SCRIPT), "--no-apt"], capture_output=True, text=True,
                         user=unprivileged_user, cwd="/")
    assert out.returncode == 1 and "needs root" in out.stderr, out.stderr


def test_uninstall_of_nothing_is_fine(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), "--root", str(tmp_path), "--uninstall", "--purge"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
@needs_mirror
def test_install_into_scratch_root_idempotent_then_uninstall(tmp_path, tmp_path_factory):
    from .helpers.models import classifier_models
    try:
        fer, ser = classifier_models(tmp_path_factory.mktemp("m"))
    except ImportError as exc:
        pytest.skip(str(exc))
    own = tmp_path / "own"
    own.mkdir()
    shutil.copy(fer, own / "fer_int8.tflite")
    shutil.copy(ser, own / "ser_int8.tflite")
    for name in ("ser_utt_int8.tflite", "ser_utt_int8.json"):
        shutil.copy(REPO / "models" / name, own / name)
    root = tmp_path / "root"
    mirror = tmp_path / "mirror"  # the shared face detector and the speech-to-text files
    mirror.mkdir()
    for src in [MIRROR / DETECTOR, *STT_FILES, VAD_FILE]:
        if not src.is_file():
            pytest.skip(f"{src} missing: run `redsg-edge fetch-models`")
        (mirror / src.name).symlink_to(src)
    cmd = ["bash", str(SCRIPT), "--root", str(root), "--no-apt", "--mirror", str(mirror),
           "--models", str(own), "--python", shutil.which("python3") or sys.executable]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    venv = root / "opt/redsg-edge/venv"
    models = root / "opt/redsg-edge/models"
    cfg = root / "etc/redsg-edge/config.toml"
    unit = root / "etc/systemd/system/redsg-edge.service"
    assert (venv / "bin/redsg-edge").is_file()
    assert os.readlink(root / "usr/local/bin/redsg-edge") == "/opt/redsg-edge/venv/bin/redsg-edge"
    assert (root / "opt/redsg-edge/README.md").is_file()  # the unit's Documentation=
    assert subprocess.run([venv / "bin/python", "-c", "import systemd.daemon, redsg_edge"]).returncode == 0
    assert sha256_file(models / DETECTOR) == load_manifest()[0].sha256
    assert (models / "manifest.toml").is_file() and (models / "SHA256SUMS").is_file()
    text = cfg.read_text()
    assert 'detector_model = "/opt/redsg-edge/models/blaze_face_short_range.tflite"' in text
    assert 'fer_model = "/opt/redsg-edge/models/fer_int8.tflite"' in text
    assert 'utterance_model = "/opt/redsg-edge/models/ser_utt_int8.tflite"' in text
    assert 'vad_model = "/opt/redsg-edge/models/silero_vad_16k_op15.onnx"' in text
    assert sha256_file(models / VAD_FILE.name) == sha256_file(VAD_FILE)
    assert 'norm_state = "/var/lib/redsg-edge/voice_norm.npz"' in text
    assert (models / "ser_utt_int8.json").is_file()
    assert 'encoder_model = "/opt/redsg-edge/models/moonshine-tiny-en-encoder.ort"' in text
    assert sha256_file(models / STT_FILES[1].name) == sha256_file(STT_FILES[1])
    assert sha256_file(models / STT_SHARED.name) == sha256_file(STT_SHARED)
    assert f'decoder_model = "/opt/redsg-edge/models/{STT_SHARED.name}"' in text
    assert unit.read_text() == (REPO / "systemd/redsg-edge.service").read_text()
    assert "✔ model files" in first.stdout  # redsg-edge check ran on the installed models
    if shutil.which("systemctl"):
        assert (root / "etc/systemd/system/multi-user.target.wants/redsg-edge.service").is_symlink()

    # Idempotent, and an edited config survives a re-install.
    cfg.write_text(text + "\n# edited by the owner\n")
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "keeping the existing" in second.stdout and "reusing" in second.stdout
    assert cfg.read_text().endswith("# edited by the owner\n")

    out = subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--uninstall"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not (root / "opt/redsg-edge").exists() and not unit.exists()
    assert not (root / "usr/local/bin/redsg-edge").is_symlink()
    assert cfg.exists()  # kept without --purge
    out = subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--uninstall", "--purge"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not cfg.parent.exists()
