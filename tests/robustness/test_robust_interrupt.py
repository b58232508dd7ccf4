"""Interrupted work: SIGKILL at a random point, then the same command again.

Preprocessing, mapping training and renderer training run as the CLI runs them (a child process,
``python -m studio ...``) and are killed with SIGKILL (the whole process group) at a seeded
random point inside the work: while tracking (the child has the video open), or once the
training state records a random epoch / step. Whatever the kill left must be absent or complete
(nothing half-written is trusted), and running the same command again must end with the
uninterrupted result: the same landmarks bit for bit, the same mapping weights bit for bit
(training resumes deterministically), a renderer at the requested step.

A render that fails on frame k says so, and neither a new nor an existing output file is touched.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import robust_media as rm
from conftest import child_processes
from studio.errors import CancelledError, CheckpointError, InputError, StudioError

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("STUDIO_ROBUST_SEED", "7"))
TINY_PRESET = """
[mapping_model]
channels = 12
dilations = [1, 2]
dropout = 0.1

[mapping_train]
window = 16
stride = 4
batch_size = 16
max_epochs = 8
patience = 50
val_stride = 8
lr = 0.003
threads = 1
"""


def _studio(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    full = dict(os.environ, **env, PYTHONPATH=str(rm.REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "studio", *map(str, args)], cwd=rm.REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    return text


def _kill_during(args, env, ready, extra: float, rng: random.Random) -> tuple[int, bool]:
    """Start the command; once ``ready(pid)`` (it is inside the work: its training state reached
    a random epoch or step, or it opened the video) wait a random 0..``extra`` s more and SIGKILL
    its process group. -> (return code, whether it got ready)."""
    proc = _studio(args, env)
    deadline = time.monotonic() + 240
    was_ready = False
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(proc.pid):
            was_ready = True
            break
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, extra))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    return proc.returncode, was_ready


def _state_reached(path: Path, key: str, k: int):
    """ready(pid): the training state file at ``path`` records ``key`` >= k (epoch or step)."""
    def ready(pid: int) -> bool:
        try:
            return json.loads(path.read_text()).get(key, 0) >= k
        except (OSError, ValueError):
            return False
    return ready


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` itself holds ``path`` open (OpenCV decoding it, not an ffmpeg probe)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared):
    base = tmp_path_factory.mktemp("interrupt")
    return base, {"STUDIO_WEIGHTS_DIR": str(shared / "weights")}


@pytest.fixture(scope="module")
def footage(env):
    base, _ = env
    frames = list(rm.sample_frames()) * 4  # 100 frames, 4 s, with speech
    return rm.write_video(base / "footage.mp4", frames, audio=rm.sample_signal()[: 4 * 16000])


# -- preprocessing ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_clip(env, footage):
    """The uninterrupted result, computed in this process."""
    from studio.data.preprocess import preprocess

    base, e = env
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_WEIGHTS_DIR", e["STUDIO_WEIGHTS_DIR"])
    try:
        return preprocess(footage, base / "clip_ref", progress=False)
    finally:
        mp.undo()


def test_killed_preprocessing_reruns_cleanly(env, footage, reference_clip):
    """Killed while tracking (it has the video open), at a random point of its 100 frames."""
    from studio.data.clip import Clip

    base, e = env
    ref = reference_clip
    out = base / "clip_killed"
    rng = random.Random(SEED)
    for _ in range(2):
        rc, ready = _kill_during(["preprocess", footage, "--out", out], e,
                                 lambda pid: _has_open(pid, footage.resolve()), 0.4, rng)
        assert ready and rc < 0, f"not killed while tracking (rc {rc})"
        if out.exists():  # only ever a complete folder: renamed into place at the end
            Clip.load(out)
    _finish(_studio(["preprocess", footage, "--out", out], e))
    again = Clip.load(out)
    np.testing.assert_array_equal(again.landmarks, ref.landmarks)
    np.testing.assert_array_equal(again.audio, ref.audio)
    assert again.meta.source_sha256 == ref.meta.source_sha256


def test_half_written_clip_cache_is_recomputed(env, footage, reference_clip, monkeypatch):
    """A clip folder left by a writer that crashed half-way (arrays.npz cut short, clip.json
    present) is not trusted: preprocessing notices and recomputes it."""
    import shutil

    from studio.data.clip import Clip
    from studio.data.preprocess import preprocess

    base, e = env
    ref = reference_clip
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", e["STUDIO_WEIGHTS_DIR"])
    half = base / "clip_half"
    shutil.copytree(base / "clip_ref", half)
    data = (half / "arrays.npz").read_bytes()
    (half / "arrays.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        Clip.load(half)
    clip = preprocess(footage, half, progress=False)
    np.testing.assert_array_equal(clip.landmarks, ref.landmarks)
    assert Clip.load(half).meta.frames == ref.meta.frames


# -- mapping training ------------------------------------------------------------------------------

def _mapping_args(out: Path, preset: Path) -> list:
    return ["train-mapping", rm.SAMPLE_SUBJECT / "clips" / "template", "--variant", "ours", "--out", out,
            "--preset", preset, "--seed", "3"]


def test_killed_mapping_training_resumes_to_the_same_model(env):
    from safetensors.numpy import load_file

    from studio.data.clip import Clip
    from studio.models.checkpoint import MappingModel
    from studio.train.mapping import STATE_DIR, train_mapping

    base, e = env
    preset = base / "tiny.toml"
    preset.write_text(TINY_PRESET)
    clip_dir = rm.SAMPLE_SUBJECT / "clips" / "template"
    ref = train_mapping([Clip.load(clip_dir)], "ours", base / "map_ref", str(preset), seed=3)
    out = base / "map_killed"
    rng = random.Random(SEED)
    epoch = rng.randint(1, 6)  # of 8: killed inside training, whatever the machine's speed
    rc, ready = _kill_during(_mapping_args(out, preset), e, _state_reached(out / STATE_DIR / "state.json",
                                                                         "state_epoch", epoch), 0.05, rng)
    assert ready and rc < 0, f"not killed during training (rc {rc})"
    if not (out / "config.json").exists():  # the usual case: no checkpoint yet, a state to resume
        with pytest.raises(CheckpointError, match="interrupted"):
            MappingModel.load(out)
    _finish(_studio(_mapping_args(out, preset), e))
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    model = MappingModel.load(out)
    assert model.config["result"]["epochs"] == 8


# -- renderer training -----------------------------------------------------------------------------

def _renderer_args(clip: Path, out: Path, steps: int) -> list:
    return ["train-renderer", clip, "--out", out, "--size", "64", "--ngf", "4", "--ndf", "4", "--n-blocks", "1",
            "--batch-size", "2", "--steps", str(steps), "--checkpoint-every", "1", "--sample-every", "2",
            "--device", "cpu", "--resume"]


def test_killed_renderer_training_resumes(env, reference_clip):
    from studio.render.neural import NeuralRenderer
    from studio.train.renderer import STATE_DIR

    base, e = env
    clip = base / "clip_ref"
    steps = 4  # a step takes 1-3 s on two busy cores
    out = base / "ren_killed"
    rng = random.Random(SEED)
    rc, ready = _kill_during(_renderer_args(clip, out, steps), e,
                             _state_reached(out / STATE_DIR / "state.json", "step", rng.randint(1, steps - 1)), 0.05, rng)
    assert ready and rc < 0, f"not killed during training (rc {rc})"
    if (out / "config.json").exists():
        step = NeuralRenderer.load(out, device="cpu").info["step"]  # whatever checkpoint is there is complete
        assert 1 <= step < steps
    _finish(_studio(_renderer_args(clip, out, steps), e))
    r = NeuralRenderer.load(out, device="cpu")
    assert r.info["step"] == steps
    crop = np.zeros((1, 64, 64, 3), np.uint8)
    assert r.render(crop, None, 1).shape == (1, 64, 64, 3)


# -- a render that fails on frame k ----------------------------------------------------------------

class _FailingEngine:
    """The retrieval renderer (``studio.render.base.Renderer``), failing at its ``k``-th frame."""

    def __init__(self, engine, k: int) -> None:
        self._engine, self._k, self.calls = engine, k, 0
        self.crop_config = engine.crop_config

    def render_size(self, requested: int) -> int:
        return self._engine.render_size(requested)

    def prepare(self, lms, track):
        return self._engine.prepare(lms, track)

    def draw(self, inputs, i: int, state):
        self.calls += 1
        if self.calls == self._k + 1:
            raise RuntimeError("simulated GPU fault")
        return self._engine.draw(inputs, i, state)


@pytest.fixture(scope="module")
def staged_sample(tmp_path_factory):
    from studio.pipeline import Pipeline

    base = tmp_path_factory.mktemp("render_fail")
    pipe = Pipeline(work_dir=base / "work")
    subject = pipe.subject(rm.SAMPLE_SUBJECT)
    tpl = pipe.template(subject)
    speech = pipe.speech(rm.audio_short(base, 1.0))
    lms = pipe.landmarks(pipe.predict(subject, speech, tpl), tpl, subject)
    return pipe, subject, tpl, speech, lms


def _folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_render_failing_on_frame_k_reports_it_and_leaves_no_file(staged_sample, tmp_path, monkeypatch):
    pipe, subject, tpl, speech, lms = staged_sample
    k = 7
    engine = pipe.renderer(subject, "retrieval")
    monkeypatch.setattr(pipe, "renderer", lambda s, name: _FailingEngine(engine, k))
    with pytest.raises(StudioError, match=f"frame {k} of {lms.points.shape[0]}.*simulated GPU fault") as info:
        pipe.render(subject, tpl, speech, lms, tmp_path / "new.mp4")
    assert "No video was written" in info.value.hint
    assert _folder_files(tmp_path) == []
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"an earlier good render")
    with pytest.raises(StudioError, match=f"frame {k} "):
        pipe.render(subject, tpl, speech, lms, existing)
    assert existing.read_bytes() == b"an earlier good render" and _folder_files(tmp_path) == ["existing.mp4"]
    assert child_processes() == []


def test_template_damaged_after_preparation(staged_sample, tmp_path):
    """The template video cut short after it was preprocessed: an InputError naming the file,
    no output, instead of a silently shorter video."""
    import dataclasses
    import shutil

    pipe, subject, tpl, speech, lms = staged_sample
    cut = tmp_path / "cut.mp4"
    rm.ffmpeg("-i", str(tpl.video_path), "-frames:v", "10", "-c", "copy", str(cut))
    damaged = dataclasses.replace(tpl, meta=dataclasses.replace(tpl.meta, video=str(cut)))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="ended at frame"):
        pipe.render(subject, damaged, speech, lms, out / "dub.mp4")
    assert _folder_files(out) == []
    # a truncated (unfinished) file instead: also an InputError, also no output
    data = Path(tpl.video_path).read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 3])
    broken = dataclasses.replace(tpl, meta=dataclasses.replace(tpl.meta, video=str(half)))
    # (the render reads the template's colour tags first, so the probe names the truncation)
    with pytest.raises(InputError, match="is incomplete|frame 0 of"):
        pipe.render(subject, broken, speech, lms, out / "dub.mp4")
    assert _folder_files(out) == []
    shutil.rmtree(out)


def test_render_failure_through_the_ui(staged_sample, tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")
    from studio.ui import handlers, session

    pipe, subject, tpl, speech, lms = staged_sample
    monkeypatch.setenv("STUDIO_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("STUDIO_SUBJECTS_DIR", str(tmp_path / "subjects"))
    session.set_pipeline(pipe)
    try:
        state = handlers.predict(session.DubState.new(), str(rm.SAMPLE_SUBJECT.resolve()), str(speech.path),
                                 "template", None, "ours")[0]
        engine = pipe.renderer(subject, "retrieval")
        monkeypatch.setattr(pipe, "renderer", lambda s, name: _FailingEngine(engine, 3))
        with pytest.raises(gr.Error, match="frame 3 of"):
            handlers.render_full(state, "retrieval", 50, 150)
        with pytest.raises(gr.Error, match="frame 5 of"):  # range 2..10: its 4th frame is frame 5
            handlers.render_range(state, 2, 10, "retrieval", 50, 150)
        assert [p for p in state.folder().iterdir() if p.suffix in (".mp4", ".tmp")] == []
        assert child_processes() == []
    finally:
        session.set_pipeline(None)


def test_cancelled_render_leaves_no_file(staged_sample, tmp_path):
    import threading

    pipe, subject, tpl, speech, lms = staged_sample
    cancel = threading.Event()

    def progress(frac, desc):
        if frac > 0.2:
            cancel.set()

    with pytest.raises(CancelledError):
        pipe.render(subject, tpl, speech, lms, tmp_path / "x.mp4", progress=progress, cancel=cancel)
    assert _folder_files(tmp_path) == []


def test_training_state_is_never_half_written(tmp_path, monkeypatch):
    """A crash between writing the mapping trainer's state tensors and its state.json must not
    pair epoch e's weights with epoch e-1's bookkeeping: the resumed run equals an uninterrupted one."""
    import tomllib

    from safetensors.numpy import load_file

    import studio.train.mapping as mapping
    from studio.data.clip import Clip

    preset = tomllib.loads(TINY_PRESET)
    clip = Clip.load(rm.SAMPLE_SUBJECT / "clips" / "template")
    ref = mapping.train_mapping([clip], "ours", tmp_path / "ref", preset, seed=1, max_epochs=3)
    real = mapping.write_json_atomic

    def crash_at_epoch_2(path, data):
        if Path(path).name == "state.json" and data.get("state_epoch") == 2:
            raise KeyboardInterrupt("killed while saving the state of epoch 2")
        return real(path, data)

    monkeypatch.setattr(mapping, "write_json_atomic", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        mapping.train_mapping([clip], "ours", tmp_path / "run", preset, seed=1, max_epochs=3)
    monkeypatch.setattr(mapping, "write_json_atomic", real)
    out = mapping.train_mapping([clip], "ours", tmp_path / "run", preset, seed=1, max_epochs=3)
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
