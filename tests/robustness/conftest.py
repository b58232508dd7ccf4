"""Fixtures of the robustness suite: one pipeline shared by the pipeline-side and handler-side
runs of each case, its own work and subjects folders, the sample subject staged once, and the
checks every case ends with (bounded time, process still healthy)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import robust_media as rm

HANG_SECONDS = 180.0  # a case still running after this long counts as hung (a guard, not a speed test)


@dataclass
class Staged:
    """The sample subject staged once: subject, template clip, 2 s speech and its prediction."""

    subject: Any
    template: Any
    speech: Any
    prediction: Any
    lms: Any
    speech_path: Path


@pytest.fixture(scope="module")
def rob_env(tmp_path_factory, shared):
    """Work, subjects and media folders of this module; the real MediaPipe weights from ../shared."""
    base = tmp_path_factory.mktemp("robust")
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
    mp.setenv("STUDIO_WORK_DIR", str(base / "work"))
    mp.setenv("STUDIO_SUBJECTS_DIR", str(base / "subjects"))
    mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    for sub in ("work", "subjects", "media"):
        (base / sub).mkdir()
    yield base
    mp.undo()


@pytest.fixture(scope="module")
def pipe(rob_env):
    """One pipeline, also installed as the studio UI's process-wide pipeline (when gradio is here)."""
    from studio.pipeline import Pipeline

    p = Pipeline(work_dir=rob_env / "work")
    try:
        from studio.ui import session
    except ImportError:  # pragma: no cover - gradio is a dependency
        session = None
    if session is not None:
        session.set_pipeline(p)
    yield p
    if session is not None:
        session.set_pipeline(None)


@pytest.fixture(scope="module")
def staged(pipe, rob_env) -> Staged:
    subject = pipe.subject(rm.SAMPLE_SUBJECT)
    tpl = pipe.template(subject)
    speech_path = rm.audio_short(rob_env / "media", 2.0)
    speech = pipe.speech(speech_path)
    pred = pipe.predict(subject, speech, tpl, "ours")
    return Staged(subject, tpl, speech, pred, pipe.landmarks(pred, tpl, subject), speech_path)


def bounded(fn: Callable, *args, timeout: float = HANG_SECONDS, **kwargs):
    """Run ``fn`` in a worker thread; its result, or its exception re-raised; a hang fails the test."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True, name=f"bounded-{getattr(fn, '__name__', 'call')}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {timeout:.0f} s (hung)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def child_processes() -> list[str]:
    """Command lines of this process's live children (ffmpeg decoders/encoders left behind, ...)."""
    out = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if state != "Z":
                out.append(f"{pid} {cmd[:120]}")
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_healthy(pipe, staged: Staged, folder: Path | None = None) -> None:
    """The process still works after a case: no stray child processes, no temporary files left in
    ``folder``, and the staged sample still predicts and edits."""
    import time

    deadline = time.monotonic() + 5.0
    while child_processes() and time.monotonic() < deadline:  # an encoder may still be exiting
        time.sleep(0.05)
    assert child_processes() == [], f"child processes left running: {child_processes()}"
    if folder is not None:
        stray = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]
        assert stray == [], f"temporary files left behind: {stray}"
    from studio.edits import Edits

    lms = pipe.landmarks(staged.prediction, staged.template, staged.subject, Edits(mouth_open_gain=1.5))
    assert np.isfinite(lms.points).all()
    assert pipe.speech(staged.speech_path).sha256 == staged.speech.sha256
