"""Untrusted files and requests: nothing is unpickled, uploaded names stay inside their folders,
and the served studio hands out only its own outputs.

- The code base is scanned (AST) for every way of unpickling: pickle/joblib/dill loads,
  ``torch.load`` without ``weights_only=True``, ``np.load`` without ``allow_pickle=False``,
  ``allow_pickle=True`` anywhere, ``pandas.read_pickle``.
- Booby-trapped files (a pickle that creates a marker file when loaded) are fed to every loader
  of checkpoints and caches: each refuses with CheckpointError and the marker never appears.
- Hostile names (``../../x``, absolute paths, NUL, unicode) never become paths outside the
  session's folder or the subjects folder.
- The studio is served on 127.0.0.1; a secret file outside its work folder, the repository,
  the subjects, the template cache of other users and system files are requested through the
  file route (raw, ``..``, URL-encoded, double slashes) and through every endpoint that returns
  a file (hostile template names, subject folders, server-side paths as uploads). Nothing outside
  may be readable, while the session's own output is (the positive control).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

import robust_media as rm
from studio.errors import CheckpointError, InputError

REPO = rm.REPO
SECRET = "TOP-SECRET-3f9a"  # content of the files that must never be served


# -- 1. no unpickling in the code ------------------------------------------------------------------

def _call_name(node: ast.Call) -> str:
    parts = []
    f = node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def unpickling_calls(root: Path) -> list[str]:
    """file:line of every call in ``root`` (a .py file or a folder of them) that can unpickle."""
    found = []
    for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is False):
                found.append(f"{path}:{node.value.lineno} allow_pickle not False")
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            where = f"{path.relative_to(root.parent)}:{node.lineno} {name}"
            if name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal") \
                    and name.split(".")[-1] in ("load", "loads", "Unpickler", "open"):
                found.append(where)
            elif name.endswith("read_pickle"):
                found.append(where)
            elif name in ("torch.load",) and _kw(node, "weights_only") is not True:
                found.append(where + " without weights_only=True")
            elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") is not False:
                found.append(where + " without allow_pickle=False")
    return found


def test_no_unpickling_anywhere_in_the_code():
    for root in (REPO / "studio", REPO / "scripts", REPO / "app.py"):
        assert unpickling_calls(root) == [], "unpickling call sites"


def test_the_scanner_finds_unpickling(tmp_path):
    """The scanner itself can fail: planted calls are found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import pickle, numpy as np, torch\n"
                                "a = pickle.loads(b'')\n"
                                "b = np.load('x.npz')\n"
                                "c = torch.load('x.pt')\n"
                                "d = np.load('y.npz', allow_pickle=True)\n"
                                "e = torch.load('z.pt', weights_only=True)\n")
    found = unpickling_calls(pkg)
    assert len(found) == 5 and not any(":6 " in f for f in found)


# -- 2. booby-trapped checkpoints and caches ---------------------------------------------------

@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "UNPICKLED"
    yield m
    assert not m.exists(), "a pickle was executed"


def _object_npz(path: Path, marker: Path, names: list[str]) -> None:
    obj = np.empty(1, dtype=object)
    obj[0] = rm._Marker(str(marker))
    with open(path, "wb") as fh:
        np.savez(fh, **{n: obj for n in names})


def test_trapped_clip_cache(tmp_path, marker):
    from studio.data.clip import ARRAYS, Clip

    d = tmp_path / "clip"
    import shutil

    shutil.copytree(rm.SAMPLE_SUBJECT / "clips" / "template", d)
    (d / "arrays.npz").unlink()
    _object_npz(d / "arrays.npz", marker, list(ARRAYS))
    with pytest.raises(CheckpointError, match="unreadable"):
        Clip.load(d)
    (d / "arrays.npz").write_bytes(rm.malicious_pickle(marker))
    with pytest.raises(CheckpointError, match="unreadable"):
        Clip.load(d)


def test_trapped_pca_and_retrieval_pool(tmp_path, marker):
    import shutil

    from studio.face.pca import MouthPCA
    from studio.render.retrieval import RetrievalRenderer

    pca = tmp_path / "pca"
    shutil.copytree(rm.SAMPLE_SUBJECT / "mapping" / "ours", pca)
    (pca / "mouth_pca.npz").unlink()
    _object_npz(pca / "mouth_pca.npz", marker, ["mean", "components", "explained_variance", "coef_std"])
    with pytest.raises(CheckpointError):
        MouthPCA.load(pca)
    pool = tmp_path / "retrieval"
    shutil.copytree(rm.SAMPLE_SUBJECT / "retrieval", pool)
    with np.load(pool / "pool.npz", allow_pickle=False) as z:
        names = list(z.files)
    (pool / "pool.npz").unlink()
    _object_npz(pool / "pool.npz", marker, names)
    with pytest.raises(CheckpointError):
        RetrievalRenderer.load(pool)


def test_trapped_weights_files(tmp_path, marker):
    """A pickle (or a zip "torch.save" archive) where safetensors are expected is refused."""
    from studio.models import build_model, model_config
    from studio.models.checkpoint import load_weights

    net = build_model(model_config("ours", {}))
    trapped = tmp_path / "model.safetensors"
    trapped.write_bytes(rm.malicious_pickle(marker))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_weights(net, trapped)
    import torch

    torch.save({"x": rm._Marker(str(marker))}, tmp_path / "zip.safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_weights(net, tmp_path / "zip.safetensors")


def test_trapped_training_state_restarts_cleanly(tmp_path, marker):
    """A mapping training state whose tensors file is a pickle is ignored (training restarts),
    never loaded."""
    from studio.train.mapping import _load_state

    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"state_epoch": 3, "param_groups": []}))
    (state / "state.safetensors").write_bytes(rm.malicious_pickle(marker))
    assert _load_state(state, None, None) is None


# -- 3. hostile names --------------------------------------------------------------------------

HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "..", ".", "a/../../b", "..\\..\\win.ini", "x\x00y",
                 "~root", "$HOME", "con", " spaced out ", "ünï 音声", "a" * 300, ".hidden", "--out=/tmp"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_names_stay_inside(name, tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")  # noqa: F841 - the UI's helpers
    from studio.subject import clip_name
    from studio.ui.session import DubState, safe_name

    monkeypatch.setenv("STUDIO_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("STUDIO_SUBJECTS_DIR", str(tmp_path / "subjects"))
    from studio.ui.session import user_subjects_dir, work_dir

    folder = safe_name(name)
    if folder:
        target = (user_subjects_dir() / folder).resolve()
        assert target.parent == user_subjects_dir().resolve() and not target.name.startswith(".")
    clip = clip_name(Path(name), set())
    assert "/" not in clip and "\\" not in clip and clip not in ("", ".", "..")
    session = DubState(session_id=name).folder().resolve()
    assert session.parent == (work_dir() / "sessions").resolve()


def test_uploaded_template_is_cached_by_content_not_by_name(tmp_path):
    """Pipeline.template keys an uploaded video's clip cache by its content hash, whatever its name."""
    from studio.fsutil import sha256_file
    from studio.pipeline import Pipeline

    pipe = Pipeline(work_dir=tmp_path / "work")
    subject = pipe.subject(rm.SAMPLE_SUBJECT)
    odd = tmp_path / "in" / "..%2F..%2Fevil name.mp4"
    odd.parent.mkdir()
    odd.write_bytes(b"")
    with pytest.raises(InputError):
        pipe.template(subject, odd)
    video = rm.write_video(tmp_path / "in" / "x.mp4", rm.sample_frames()[:2])
    sha = sha256_file(video)
    assert (tmp_path / "work" / "templates" / sha[:16]).parent == tmp_path / "work" / "templates"
    assert list((tmp_path / "work").glob("**/*evil*")) == []


# -- 4. the served studio ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    gradio_client = pytest.importorskip("gradio_client")  # noqa: F841
    from ui_support import free_port

    base = tmp_path_factory.mktemp("served")
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_WORK_DIR", str(base / "work"))
    mp.setenv("STUDIO_SUBJECTS_DIR", str(base / "subjects"))
    (base / "subjects").mkdir()
    from studio.ui import app, session

    session.set_pipeline(None)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    rm.write_video(outside / "secret.mp4", rm.sample_frames()[:8])
    # another user's cached template (inside the work folder, but not a session output)
    other = base / "work" / "templates" / "0123456789abcdef"
    other.mkdir(parents=True)
    (other / "clip.json").write_text(SECRET)
    (base / "work" / "secret_in_work.txt").write_text(SECRET)
    demo = app.launch(prevent_thread_lock=True, server_port=free_port())
    try:
        yield {"demo": demo, "base": base, "outside": outside, "other": other}
    finally:
        demo.close()
        session.set_pipeline(None)
        mp.undo()


def _get(demo, path: str):
    import httpx

    url = demo.local_url.rstrip("/") + path
    return httpx.get(url, timeout=30, follow_redirects=False)


def _readable(resp) -> bool:
    return resp.status_code == 200 and len(resp.content) > 0


def _targets(served) -> list[Path]:
    base = served["base"]
    return [served["outside"] / "secret.txt", served["outside"] / "secret.mp4", base / "work" / "secret_in_work.txt",
            served["other"] / "clip.json", REPO / "pyproject.toml", REPO / "studio" / "pipeline.py",
            rm.SAMPLE_SUBJECT / "subject.json", rm.SAMPLE_SUBJECT / "mapping" / "ours" / "model.safetensors",
            Path("/etc/passwd"), Path("/proc/self/environ")]


def _spellings(target: Path, work: Path) -> list[str]:
    rel_from_work = os.path.relpath(target, work / "sessions")
    s = str(target)
    return [s, quote(s), quote(s, safe=""), "/" + s, s.replace("/", "//"),
            str(work / "sessions") + "/" + rel_from_work, quote(str(work / "sessions") + "/" + rel_from_work, safe=""),
            "../" * 12 + s.lstrip("/"), "..%2f" * 12 + s.lstrip("/"), "%2e%2e/" * 12 + s.lstrip("/")]


def test_file_route_serves_nothing_outside(served):
    demo, work = served["demo"], served["base"] / "work"
    readable = []
    for target in _targets(served):
        for spelling in _spellings(target, work):
            for prefix in ("/gradio_api/file=", "/file="):
                r = _get(demo, prefix + spelling)
                if _readable(r):
                    readable.append(f"{prefix}{spelling} -> {r.status_code} {r.content[:40]!r}")
    assert readable == [], "readable from outside the sessions folder:\n" + "\n".join(readable)


def _client(demo):
    from gradio_client import Client

    return Client(demo.local_url, verbose=False, download_files=False)


def _url(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("video") or value
        return value.get("url") or value.get("path")
    return value


def test_every_file_endpoint_refuses_traversal(served):
    """Hostile values in every input that could name a file; the session's own output stays
    readable (so the check can see a readable file when there is one)."""
    from gradio_client import handle_file

    demo = served["demo"]
    client = _client(demo)
    sample = str(rm.SAMPLE_SUBJECT.resolve())
    speech = handle_file(str(rm.audio_short(served["base"], 2.0)))
    secret_video = str(served["outside"] / "secret.mp4")
    hostile_templates = [secret_video, "../../../../../../" + secret_video.lstrip("/"), "/etc/passwd",
                         str(served["other"]), "template/../../../../../etc/passwd"]
    leaked = []
    for tpl in hostile_templates:
        try:
            client.predict(sample, speech, tpl, None, "ours", api_name="/predict")
            leaked.append(f"/predict accepted template {tpl!r}")
        except Exception as exc:  # gradio_client raises AppError with the message
            assert "has no clip" in str(exc), str(exc)
    for subject in ("/", "..", str(served["outside"]), sample + "/../..", str(REPO)):
        with pytest.raises(Exception, match="not one of the studio's subjects"):
            client.predict(subject, speech, "template", None, "ours", api_name="/predict")
    # server-side paths posing as uploads are refused by gradio itself
    for path in ("/etc/passwd", str(served["outside"] / "secret.txt")):
        fake = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "speech.wav"}
        try:
            client.predict(sample, fake, "template", None, "ours", api_name="/predict")
            leaked.append(f"/predict accepted the server path {path!r} as speech")
        except Exception as exc:
            assert SECRET not in str(exc) and "root:" not in str(exc)
        try:
            client.predict(0, fake, api_name="/load_edits")
            leaked.append(f"/load_edits accepted the server path {path!r}")
        except Exception as exc:
            assert SECRET not in str(exc) and "root:" not in str(exc)
    for endpoint in ("/ablation_results",):
        with pytest.raises(Exception, match="not one of the studio's subjects"):
            client.predict(str(served["outside"]), [], api_name=endpoint)
    with pytest.raises(Exception, match="has no clip"):
        client.predict(sample, speech, secret_video, ["ours", "no-pose"], False, api_name="/compare")
    assert leaked == []

    # the positive control: a real prediction and every file-returning endpoint's output
    client.predict(sample, speech, "template", None, "ours", api_name="/predict")
    outputs = {
        "/save_edits": client.predict(api_name="/save_edits"),
        "/landmarks_csv": client.predict(api_name="/landmarks_csv"),
        "/render_range": client.predict(0, 3, "retrieval", 50, 150, api_name="/render_range"),
    }
    for name, value in outputs.items():
        url = _url(value)
        assert url, (name, value)
        import httpx

        r = httpx.get(url, timeout=30) if url.startswith("http") else _get(demo, "/gradio_api/file=" + url)
        assert _readable(r), f"{name}: own output not readable ({url})"
        assert SECRET.encode() not in r.content


def test_allowed_paths_are_narrow():
    pytest.importorskip("gradio")
    from studio.ui.app import launch_kwargs
    from studio.ui.session import work_dir

    allowed = [Path(p).resolve() for p in launch_kwargs()["allowed_paths"]]
    assert allowed and all(p == (work_dir() / "sessions").resolve() for p in allowed)
    assert REPO.resolve() not in allowed and Path.home().resolve() not in allowed


def test_renderer_samples_are_shown_as_pixels(tmp_path):
    """The Subject tab's sample sheet lives in the subjects folder, which is not served: the
    handler hands gradio its pixels, never the path (gradio would refuse it: InvalidPathError)."""
    pytest.importorskip("gradio")
    import cv2

    from studio.ui import handlers

    sheet = np.zeros((40, 120, 3), np.uint8)
    sheet[:, :40] = (255, 0, 0)  # red in RGB
    path = tmp_path / "step_0000010.jpg"
    cv2.imwrite(str(path), sheet[..., ::-1])
    img = handlers._sample_image(str(path))
    assert img.shape == (40, 120, 3) and img[20, 20, 0] > 200 and img[20, 20, 2] < 60
    assert handlers._sample_image(None) is None and handlers._sample_image(str(tmp_path / "gone.jpg")) is None
