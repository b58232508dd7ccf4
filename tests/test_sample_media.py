"""The bundled sample media: present, in the promised format, small, and usable as promised."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from studio.edits import _runs, voice_activity
from studio.media import probe_video, read_audio, read_frames

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_media"


def test_files_are_there_and_small():
    names = {"template.mp4", "template_speech.wav", "speech.wav", "README.md"}
    assert names <= {p.name for p in SAMPLE.iterdir()}
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 6 * 2**20


def test_template_video_format():
    info = probe_video(SAMPLE / "template.mp4")
    assert (info.width, info.height) == (384, 384)
    assert info.fps == 25.0
    assert 30.0 <= info.duration <= 40.0
    assert info.has_audio
    track = read_audio(SAMPLE / "template.mp4")
    speech = read_audio(SAMPLE / "template_speech.wav")
    assert abs(len(track) - len(speech)) < 0.05 * 16000
    # The mp4's AAC track is the template speech (lossy, so compare envelopes).
    n = min(len(track), len(speech)) // 400 * 400
    env = lambda x: np.sqrt((x[:n].reshape(-1, 400) ** 2).mean(axis=1))  # noqa: E731
    assert np.corrcoef(env(track), env(speech))[0, 1] > 0.95


def test_dub_speech_is_different_and_has_a_1s_pause_in_the_middle():
    speech = read_audio(SAMPLE / "speech.wav")
    seconds = len(speech) / 16000
    assert 8.0 <= seconds <= 13.0
    n = int(seconds * 25)
    voiced = voice_activity(speech, 25.0, n)
    pauses = [(a / 25, b / 25) for a, b, v in _runs(voiced) if not v and a > 0 and b < n]
    middle = [(a, b) for a, b in pauses if 0.3 * seconds < a < 0.7 * seconds]
    assert middle and max(b - a for a, b in middle) >= 0.8
    template = read_audio(SAMPLE / "template_speech.wav")
    assert abs(len(template) - len(speech)) > 16000 * 10


def test_template_frames_move():
    frames = np.stack(read_frames(SAMPLE / "template.mp4", [0, 200, 400, 600])).astype(np.float32)
    assert frames.shape == (4, 384, 384, 3)
    assert np.abs(np.diff(frames, axis=0)).mean() > 1.0  # head motion changes the picture
    assert frames.std() > 20  # a real picture, not a flat colour


@pytest.mark.slow
def test_the_face_is_found_with_the_mediapipe_backend(weights_dir):
    from studio.face.landmarks import MediaPipeBackend

    frames = read_frames(SAMPLE / "template.mp4", [0, 300, 600, 900])
    with MediaPipeBackend(model_path=weights_dir / "face_landmarker.task") as backend:
        found = [backend.detect(f) for f in frames]
    assert all(d is not None for d in found)
    widths = [d.box[2] - d.box[0] for d in found]
    assert min(widths) > 100  # a face big enough to work with in a 384 frame


def test_the_generator_script_is_importable_and_its_motion_bounded():
    spec = importlib.util.spec_from_file_location("make_sample_media", REPO / "scripts" / "make_sample_media.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    motion = module.head_motion(25 * 40, 25)
    assert np.abs(motion[:, 0]).max() <= module.YAW_MAX
    assert np.abs(motion[:, 1]).max() <= module.PITCH_MAX
    assert np.abs(motion[:, 2]).max() <= module.ROLL_MAX
    assert np.abs(np.diff(motion[:, :3], axis=0)).max() < 2.0  # under 50 degrees per second
    assert np.abs(np.diff(motion[:, :3], 2, axis=0)).max() < 0.2  # and smooth
    blink = module.blinks(25 * 40, 25)
    assert 0 <= blink.min() and blink.max() <= 1 and 6 <= len(_runs(blink > 0.5)) // 2 + 1 <= 20
