"""Weights registry: cache folder, checksums, and downloads against a local HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from studio.errors import WeightsError
from studio.face import weights
from studio.face.weights import WeightSpec, weights_dir, weights_path


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (folder, base_url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(d))
    return d


def _register(monkeypatch, name, spec):
    monkeypatch.setitem(weights.REGISTRY, name, spec)


def _no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".part") for p in folder.rglob("*")) if folder.exists() else True


def test_weights_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(tmp_path))
    assert weights_dir() == tmp_path
    monkeypatch.delenv("STUDIO_WEIGHTS_DIR")
    assert weights_dir() == Path.home() / ".cache" / "lip-sync-studio" / "weights"


def test_registry_entries():
    assert set(weights.REGISTRY) >= {"face_landmarker", "fan_2d", "sfd", "blazeface", "blazeface_anchors",
                                     "blazeface_back", "blazeface_back_anchors"}
    lm = weights.REGISTRY["face_landmarker"]
    assert lm.url == ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
                      "float16/1/face_landmarker.task")
    assert lm.sha256 == "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
    assert weights.REGISTRY["fan_2d"].url.endswith("/python-fan/2DFAN4-11f355bf06.pth.tar")
    assert weights.REGISTRY["sfd"].url.endswith("/python-fan/s3fd-619a316812.pth")
    for s in weights.REGISTRY.values():
        assert s.url.startswith("https://") and s.file
        assert s.sha256 is None or len(s.sha256) == 64


def test_shared_weights_are_found_and_verified(monkeypatch, weights_dir):
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    names = ("face_landmarker", "blazeface", "blazeface_anchors", "blazeface_back", "blazeface_back_anchors")
    for name in names:
        p = weights_path(name, download=False)
        assert p.is_file() and p.stat().st_size > 0
        assert weights.sha256_of(p) == weights.REGISTRY[name].sha256


def test_unknown_name():
    with pytest.raises(WeightsError, match="Unknown model file"):
        weights_path("no-such-model")


def test_missing_without_download_names_file_url_and_folder(cache, monkeypatch):
    unshipped = dataclasses.replace(weights.REGISTRY["face_landmarker"], shipped=None)
    _register(monkeypatch, "face_landmarker", unshipped)
    with pytest.raises(WeightsError) as ei:
        weights_path("blazeface", download=False)
    text = f"{ei.value.message} {ei.value.hint}"
    assert "blazeface.pth" in text and str(cache) in text
    assert weights.REGISTRY["blazeface"].url in text


def test_shipped_face_model_is_found_without_network_or_cache(cache, monkeypatch):
    """The face landmarker ships in the package: found (checksum verified) before the cache, and
    no download is ever attempted, even with an empty cache folder and no network."""
    import socket

    def no_network(*a, **k):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(weights, "_download", no_network)
    path = weights_path("face_landmarker")
    assert path.parent == weights.ASSETS_DIR
    assert weights.sha256_of(path) == weights.REGISTRY["face_landmarker"].sha256
    assert (weights.ASSETS_DIR / "LICENSE-Apache-2.0.txt").read_text().lstrip().startswith("Apache License")
    assert weights.REGISTRY["face_landmarker"].sha256 in (weights.ASSETS_DIR / "NOTICE.md").read_text()


def test_a_corrupt_shipped_copy_falls_back_to_the_cache(cache, monkeypatch, tmp_path):
    bad = tmp_path / "assets"
    bad.mkdir()
    (bad / "face_landmarker.task").write_bytes(b"not the model")
    monkeypatch.setattr(weights, "ASSETS_DIR", bad)
    with pytest.raises(WeightsError, match="missing"):
        weights_path("face_landmarker", download=False)


def test_download_ok(server, cache, monkeypatch):
    root, base = server
    data = b"model bytes " * 1000
    (root / "m.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    _register(monkeypatch, "test_ok", WeightSpec("sub/m.bin", digest, base + "m.bin"))
    p = weights_path("test_ok", timeout=5)
    assert p == cache / "sub" / "m.bin"
    assert p.read_bytes() == data
    assert _no_temp_files(cache)
    # cached now: works without the server's file and without network
    (root / "m.bin").unlink()
    assert weights_path("test_ok", download=False) == p


def test_download_unknown_checksum_checks_size(server, cache, monkeypatch):
    root, base = server
    (root / "a.bin").write_bytes(b"abc")
    (root / "empty.bin").write_bytes(b"")
    _register(monkeypatch, "test_a", WeightSpec("a.bin", None, base + "a.bin"))
    _register(monkeypatch, "test_empty", WeightSpec("empty.bin", None, base + "empty.bin"))
    assert weights_path("test_a", timeout=5).read_bytes() == b"abc"
    with pytest.raises(WeightsError, match="empty"):
        weights_path("test_empty", timeout=5)
    assert not (cache / "empty.bin").exists()
    assert _no_temp_files(cache)


def test_download_checksum_mismatch_leaves_nothing(server, cache, monkeypatch):
    root, base = server
    (root / "m.bin").write_bytes(b"tampered")
    _register(monkeypatch, "test_bad", WeightSpec("m.bin", "0" * 64, base + "m.bin"))
    with pytest.raises(WeightsError) as ei:
        weights_path("test_bad", timeout=5)
    assert "sha256" in ei.value.message and base + "m.bin" in ei.value.message
    assert str(cache) in ei.value.hint
    assert not (cache / "m.bin").exists()
    assert _no_temp_files(cache)


def test_corrupt_cached_file_is_downloaded_again(server, cache, monkeypatch):
    root, base = server
    data = b"good weights"
    (root / "m.bin").write_bytes(data)
    _register(monkeypatch, "test_fix", WeightSpec("m.bin", hashlib.sha256(data).hexdigest(), base + "m.bin"))
    cache.mkdir(parents=True)
    (cache / "m.bin").write_bytes(b"half a fi")
    with pytest.raises(WeightsError):
        weights_path("test_fix", download=False)
    assert weights_path("test_fix", timeout=5).read_bytes() == data


def test_unreachable_server(cache, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m.bin"
    _register(monkeypatch, "test_down", WeightSpec("m.bin", None, url))
    with pytest.raises(WeightsError) as ei:
        weights_path("test_down", timeout=2)
    assert "m.bin" in ei.value.message and url in ei.value.message
    assert str(cache) in ei.value.hint
    assert _no_temp_files(cache)


def test_http_404(server, cache, monkeypatch):
    _, base = server
    _register(monkeypatch, "test_404", WeightSpec("gone.bin", None, base + "gone.bin"))
    with pytest.raises(WeightsError, match="Could not download gone.bin"):
        weights_path("test_404", timeout=5)


def test_the_shipped_face_model_matches_its_checksum_and_licence():
    s = weights.REGISTRY["face_landmarker"]
    path = weights.ASSETS_DIR / s.shipped
    assert path.is_file()
    assert weights.sha256_of(path) == s.sha256 == "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
    notice = (weights.ASSETS_DIR / "NOTICE.md").read_text()
    assert s.sha256 in notice and s.url in notice and "MediaPipe" in notice
    assert "Apache License" in (weights.ASSETS_DIR / "LICENSE-Apache-2.0.txt").read_text()


def test_the_shipped_face_model_is_found_without_network_or_weights_folder(tmp_path, monkeypatch):
    """No socket may be opened and the weights folder (empty) is never looked at."""
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(weights, "_verified", set())  # the checksum is really checked here

    def no_network(*a, **kw):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(weights, "_download", no_network)
    seen = []
    real_is_good = weights._is_good
    monkeypatch.setattr(weights, "_is_good", lambda p, s: seen.append(Path(p)) or real_is_good(p, s))
    p = weights_path("face_landmarker")
    assert p == weights.ASSETS_DIR / "face_landmarker.task"
    assert weights.shipped_path("face_landmarker") == p
    assert all(q.parent == weights.ASSETS_DIR for q in seen)
    assert not (tmp_path / "nowhere").exists()
    assert weights.shipped_path("fan_2d") is None  # the others are not shipped: download stays


def test_a_corrupt_shipped_copy_falls_back_to_the_weights_folder(tmp_path, monkeypatch, weights_dir):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "face_landmarker.task").write_bytes(b"not the model")
    monkeypatch.setattr(weights, "ASSETS_DIR", assets)
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    assert weights.shipped_path("face_landmarker") is None
    assert weights_path("face_landmarker", download=False) == weights_dir / "face_landmarker.task"


def test_the_shipped_files_are_package_data():
    """A non-editable install (a wheel) carries every file of studio/face/assets/."""
    import tomllib

    config = tomllib.loads((Path(weights.__file__).parents[2] / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["package-data"]["studio.face"])
    assert {f"assets/{p.name}" for p in weights.ASSETS_DIR.iterdir()} <= listed
