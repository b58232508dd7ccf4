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
    assert info.fps == 30.0
    assert 10.0 <= info.duration <= 15.0
    assert info.has_audio
    track = read_audio(SAMPLE / "template.mp4")
    speech = read_audio(SAMPLE / "template_speech.wav")
    assert abs(len(track) - len(speech)) < 0.05 * 16000
    # The mp4's AAC track is the template speech (lossy, so compare envelopes).
    n = min(len(track), len(speech)) // 400 * 400
    env = lambda x: np.sqrt((x[:n].reshape(-1, 400) ** 2).mean(axis=1))  # noqa: E731
    assert np.corrcoef(env(track), env(speech))[0, 1] > 0.95


def test_dub_speech_is_another_part_of_the_address_with_a_pause():
    speech = read_audio(SAMPLE / "speech.wav")
    seconds = len(speech) / 16000
    assert 6.0 <= seconds <= 9.0
    n = int(seconds * 25)
    voiced = voice_activity(speech, 25.0, n)
    pauses = [(a / 25, b / 25) for a, b, v in _runs(voiced) if not v and a > 0 and b < n]
    assert pauses and max(b - a for a, b in pauses) >= 0.4  # the speaker's own pauses
    template = read_audio(SAMPLE / "template_speech.wav")
    # no overlap: the speech's envelope is found nowhere in the template's
    hop = 400
    env = lambda x: np.log(np.sqrt((x[: len(x) // hop * hop].reshape(-1, hop) ** 2).mean(axis=1)) + 1e-4)  # noqa: E731
    es, et = env(speech), env(template)
    best = max(np.corrcoef(es, et[k:k + len(es)])[0, 1] for k in range(0, len(et) - len(es)))
    assert best < 0.9


def test_template_frames_move():
    frames = np.stack(read_frames(SAMPLE / "template.mp4", [0, 100, 200, 400])).astype(np.float32)
    assert frames.shape == (4, 384, 384, 3)
    assert np.abs(np.diff(frames, axis=0)).mean() > 1.0  # the speaker moves
    assert frames.std() > 20  # a real picture, not a flat colour


@pytest.mark.slow
def test_the_face_is_found_with_the_mediapipe_backend(weights_dir):
    from studio.face.landmarks import MediaPipeBackend

    frames = read_frames(SAMPLE / "template.mp4", [0, 100, 250, 420])
    with MediaPipeBackend(model_path=weights_dir / "face_landmarker.task") as backend:
        found = [backend.detect(f) for f in frames]
    assert all(d is not None for d in found)
    widths = [d.box[2] - d.box[0] for d in found]
    assert min(widths) > 120  # a face big enough to work with in a 384 frame


def test_the_generator_script_is_importable_and_cuts_apart():
    spec = importlib.util.spec_from_file_location("make_sample_media", REPO / "scripts" / "make_sample_media.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    (a0, a1), (b0, b1) = module.TEMPLATE, module.SPEECH
    assert a1 <= b0 or b1 <= a0  # the dub speech does not overlap the footage
    assert "public domain" in (SAMPLE / "README.md").read_text()
