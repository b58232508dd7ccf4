"""Model files the landmark backends need: where they live, where they come from, their checksums.

MediaPipe's face landmarker ships inside the package (``studio/face/assets``, Apache-2.0, see its
NOTICE.md) and is used before anything else, so a new person's footage never needs the network.
The cache folder for the others is ``$STUDIO_WEIGHTS_DIR`` or ``~/.cache/lip-sync-studio/weights``. A file that
is missing is downloaded once from its official location (urllib, with a timeout) to a temporary
name in that folder, checked against its sha256 (where known; otherwise only that it is not
empty) and renamed into place, so a failed or partial download never leaves a file that is later
trusted. Offline, or on any failure, :class:`~studio.errors.WeightsError` names the file, the URL
and the folder to put it in by hand.

Some files ship inside the package (``studio/face/assets/``, with their licence): the MediaPipe
``face_landmarker.task``. Such a file is used first, after its sha256 is checked (once per
process and file version), so footage of a new person needs neither the network nor the
weights folder; only when it is missing or corrupt do the folder and the download follow.

The face-alignment files sit in a ``face_alignment/`` sub-folder under the names that package
uses itself (its own cache is ``$TORCH_HOME/hub/checkpoints/``; we pass our paths to it instead).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from studio.errors import WeightsError

log = logging.getLogger(__name__)

_MEDIAPIPE_BUCKET = "https://storage.googleapis.com/mediapipe-models/"
_FAN_SITE = "https://www.adrianbulat.com/downloads/python-fan/"
_BLAZEFACE_REPO = "https://github.com/hollance/BlazeFace-PyTorch/blob/master/"


@dataclass(frozen=True)
class WeightSpec:
    file: str  # path relative to weights_dir()
    sha256: str | None  # None: unknown upstream checksum; then only size > 0 is checked
    url: str
    licence: str = ""
    shipped: str | None = None  # file name in studio/face/assets/ when the package ships it


REGISTRY: dict[str, WeightSpec] = {
    "face_landmarker": WeightSpec(
        "face_landmarker.task",
        "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
        _MEDIAPIPE_BUCKET + "face_landmarker/face_landmarker/float16/1/face_landmarker.task",
        "Apache-2.0", shipped="face_landmarker.task"),
    # face-alignment (1adrianb/face-alignment, BSD-3-Clause): URLs from face_alignment/api.py and
    # detection/sfd/sfd_detector.py. The name's hex part is a sha256 prefix (torch.hub style);
    # the full checksums are not published.
    "fan_2d": WeightSpec("face_alignment/2DFAN4-11f355bf06.pth.tar", None,
                         _FAN_SITE + "2DFAN4-11f355bf06.pth.tar", "BSD-3-Clause"),
    "sfd": WeightSpec("face_alignment/s3fd-619a316812.pth", None,
                      _FAN_SITE + "s3fd-619a316812.pth", "BSD-3-Clause"),
    # BlazeFace front/back detectors (hollance/BlazeFace-PyTorch, Apache-2.0): URLs from
    # face_alignment/detection/blazeface/blazeface_detector.py. The two anchor files really are
    # identical: both models use 896 anchors at the same normalised centres.
    "blazeface": WeightSpec(
        "face_alignment/blazeface.pth",
        "54ecff653feaaaf1f7d44b6aff28fd2fc50e483a4e847563b6dd261369c43ba4",
        _BLAZEFACE_REPO + "blazeface.pth?raw=true", "Apache-2.0"),
    "blazeface_anchors": WeightSpec(
        "face_alignment/anchors.npy",
        "a10bb2fb93ab54ca426d6c750bfc3aad685028a16dcf231357d03694f261fd95",
        _BLAZEFACE_REPO + "anchors.npy?raw=true", "Apache-2.0"),
    "blazeface_back": WeightSpec(
        "face_alignment/blazefaceback.pth",
        "e2c03bb3ae45e769eaaa0a7cc7d4f61f54a5e3fbae6367d870166702e7022b11",
        _BLAZEFACE_REPO + "blazefaceback.pth?raw=true", "Apache-2.0"),
    "blazeface_back_anchors": WeightSpec(
        "face_alignment/anchorsback.npy",
        "a10bb2fb93ab54ca426d6c750bfc3aad685028a16dcf231357d03694f261fd95",
        _BLAZEFACE_REPO + "anchorsback.npy?raw=true", "Apache-2.0"),
}

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

# (path, size, mtime_ns) of files whose checksum was verified in this process.
_verified: set[tuple[str, int, int]] = set()


def weights_dir() -> Path:
    """The weights cache folder: ``$STUDIO_WEIGHTS_DIR`` or ``~/.cache/lip-sync-studio/weights``."""
    env = os.environ.get("STUDIO_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lip-sync-studio" / "weights"


def spec(name: str) -> WeightSpec:
    """The registry entry for ``name``; WeightsError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"Unknown model file {name!r}.", f"Known: {sorted(REGISTRY)}.") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _is_good(path: Path, s: WeightSpec) -> bool:
    """The file exists, is not empty and (when the checksum is known) matches it."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not path.is_file() or st.st_size == 0:
        return False
    if s.sha256 is None:
        return True
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return True
    if sha256_of(path) != s.sha256:
        log.warning("%s does not match its sha256 checksum; ignoring it", path)
        return False
    _verified.add(key)
    return True


def shipped_path(name: str) -> Path | None:
    """The package's own copy of model file ``name`` when it ships one that is intact, else None.

    Never touches the network or the weights folder; the sha256 is checked once per process.
    """
    s = spec(name)
    if s.shipped is None:
        return None
    path = ASSETS_DIR / s.shipped
    return path if _is_good(path, s) else None


def _hint(s: WeightSpec, folder: Path) -> str:
    return (f"Download {s.url} and save it as {folder / s.file} "
            f"(or set STUDIO_WEIGHTS_DIR to a folder that has {s.file}).")


def weights_path(name: str, *, download: bool = True, timeout: float = 30) -> Path:
    """Path of model file ``name``: the package's shipped copy, else the cache, downloading it
    into the cache first if needed.

    download=False never touches the network (missing -> WeightsError). timeout: seconds for the
    connection and for each read. Raises WeightsError on any failure (offline, HTTP error,
    checksum mismatch, empty file, unwritable folder).
    """
    s = spec(name)
    shipped = shipped_path(name)
    if shipped is not None:
        return shipped
    folder = weights_dir()
    path = folder / s.file
    if _is_good(path, s):
        return path
    if not download:
        raise WeightsError(f"Model file {s.file} is missing (or corrupt) in {folder}.", _hint(s, folder))
    _download(s, path, timeout)
    return path


def _download(s: WeightSpec, path: Path, timeout: float) -> None:
    folder = weights_dir()
    log.info("downloading %s from %s", s.file, s.url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise WeightsError(f"Cannot write model file {s.file} into {folder}: {exc}.",
                           _hint(s, folder)) from None
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        request = urllib.request.Request(s.url, headers={"User-Agent": "lip-sync-studio"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
                size += len(block)
        if size == 0:
            raise WeightsError(f"Downloading {s.file} from {s.url} gave an empty file.", _hint(s, folder))
        if s.sha256 is not None and h.hexdigest() != s.sha256:
            raise WeightsError(
                f"Downloaded {s.file} from {s.url} but its sha256 {h.hexdigest()} does not match "
                f"the expected {s.sha256}.", _hint(s, folder))
        os.replace(tmp, path)
        st = path.stat()
        _verified.add((str(path), st.st_size, st.st_mtime_ns))
        log.info("saved %s (%d bytes)", path, size)
    except WeightsError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"Could not download {s.file} from {s.url} ({reason}).",
                           _hint(s, folder)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
