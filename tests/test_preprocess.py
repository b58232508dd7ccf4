"""Preprocessing into the clip cache: real footage, audio paths, caching, crash safety, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from studio import cli, media
from studio.data import preprocess as pp
from studio.data.clip import Clip
from studio.data.preprocess import PreprocessConfig, overlay_image, preprocess
from studio.errors import InputError, NoFaceError
from studio.face.landmarks import LandmarkConfig
from studio.face.layout import INNER_LIP, OUTER_LIP

VIDEO = "media/video"
OTHER_CLIPS = ["obama_clip1", "obama_clip2", "obama_clip3", "andrew_clip_1", "andrew_clip_2", "reagan_clip1",
               "katie_hill", "aoc", "theresa_may_5s", "young_man_outdoors"]


@pytest.fixture(autouse=True)
def shared_weights(monkeypatch, weights_dir):
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))


@pytest.fixture
def counting_backend(monkeypatch):
    """Counts how often preprocess builds a landmark backend (i.e. recomputes)."""
    calls = []
    real = pp.make_backend

    def counted(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(pp, "make_backend", counted)
    return calls


def _check_clip_geometry(clip: Clip, min_found: float = 0.99) -> None:
    lm, boxes = clip.landmarks, clip.boxes
    assert clip.found.mean() >= min_found
    f = clip.found
    x, y = lm[f, :, 0], lm[f, :, 1]
    b = boxes[f]
    assert (x >= b[:, None, 0] - 1).all() and (x <= b[:, None, 2] + 1).all()
    assert (y >= b[:, None, 1] - 1).all() and (y <= b[:, None, 3] + 1).all()
    mouth = lm[f][:, list(OUTER_LIP + INNER_LIP), 1]
    assert (mouth > lm[f][:, 30:31, 1]).all()  # mouth below the nose tip in every frame
    assert (lm[f][:, 8, 1] > lm[f][:, 57, 1]).all()  # chin below the lower lip
    assert (clip.scale > 0).all() and np.isfinite(clip.pose).all()
    assert (np.abs(clip.pose) < 60).all()


# -- real footage ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_obama_weekly_address_first_10s(shared, tmp_path):
    clip = preprocess(shared / VIDEO / "obama_weekly_address.mp4", tmp_path / "c", stop=300, progress=False)
    m = clip.meta
    assert (m.frames, m.width, m.height, m.fps) == (300, 1280, 720, 30.0)
    _check_clip_geometry(clip, 0.99)
    assert m.audio_seconds == pytest.approx(10.0, abs=0.05)
    assert clip.audio.shape == (1200, 26) and clip.audio.std() > 0.5
    assert clip.audio_path is not None
    raw = json.loads((tmp_path / "c" / "clip.json").read_text())
    for k in ("source", "fps", "frames", "width", "height", "faces_found", "backend", "audio_seconds"):
        assert k in raw
    assert raw["backend"] == "mediapipe" and raw["faces_found"] >= 297
    # the speaker barely moves his head: small, smooth pose
    assert np.abs(np.diff(clip.pose, axis=0)).max() < 3.0


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHER_CLIPS)
def test_other_shared_clips(shared, tmp_path, name):
    video = shared / VIDEO / f"{name}.mp4"
    wav = video.with_suffix(".wav")
    clip = preprocess(video, tmp_path / name, audio=wav if wav.exists() else None, stop=60, progress=False)
    assert clip.meta.frames == 60
    _check_clip_geometry(clip, 0.99)
    # every shared clip has speech (own track or .wav), cut to the processed frames
    assert clip.meta.audio_seconds == pytest.approx(60 / clip.meta.fps, abs=0.01)
    assert clip.audio.std() > 0.5


def test_katie_hill_pose_moves(shared, tmp_path):
    """Lively head motion shows in the pose; the face box follows the face."""
    clip = preprocess(shared / VIDEO / "katie_hill.mp4", tmp_path / "k", stop=100, progress=False)
    _check_clip_geometry(clip)
    assert np.ptp(clip.pose[:, 0]) > 3 or np.ptp(clip.pose[:, 1]) > 3  # yaw or pitch varies
    arrays = np.load(tmp_path / "k" / "arrays.npz", allow_pickle=False)
    np.testing.assert_allclose(arrays["landmarks"], clip.landmarks)
    assert (tmp_path / "k" / "frames.csv").exists() and (tmp_path / "k" / "audio.wav").exists()


# -- audio ----------------------------------------------------------------------------------------------
def test_separate_audio_and_no_audio(shared, tmp_path):
    video = shared / VIDEO / "obama_clip1.mp4"  # 256x256, no audio stream
    with_audio = preprocess(video, tmp_path / "a", audio=video.with_suffix(".wav"), stop=50, progress=False)
    assert with_audio.meta.audio_seconds == pytest.approx(50 / 30, abs=0.01)
    assert with_audio.meta.audio_source.endswith("obama_clip1.wav")
    assert with_audio.audio.shape == (200, 26) and with_audio.audio.std() > 0.5
    sig = media.read_audio(with_audio.audio_path)
    assert abs(len(sig) - 50 / 30 * 16000) < 20

    silent = preprocess(video, tmp_path / "b", stop=50, progress=False)
    assert silent.meta.audio_seconds == 0.0 and silent.audio_path is None
    assert silent.audio.shape == (200, 26) and not silent.audio.any()

    with pytest.raises(InputError, match="no audio"):
        preprocess(video, tmp_path / "c", stop=50, progress=False,
                   config=PreprocessConfig(require_audio=True))
    assert not (tmp_path / "c").exists()
    with pytest.raises(InputError):
        preprocess(video, tmp_path / "d", audio=tmp_path / "missing.wav", progress=False)


# -- no face, bad input ---------------------------------------------------------------------------------
def test_noise_video_raises_no_face(tmp_path):
    path = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    with media.VideoWriter(path, 25, (160, 120)) as w:
        for _ in range(20):
            w.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    with pytest.raises(NoFaceError) as ei:
        preprocess(path, tmp_path / "out", progress=False)
    assert "No face found in" in ei.value.message and "noise.mp4" in ei.value.message
    assert ei.value.hint
    assert not (tmp_path / "out").exists()


def test_not_a_video_and_unknown_backend(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError):
        preprocess(bad, tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="backend"):
        preprocess(bad, tmp_path / "o", backend="dlib", progress=False)


# -- cache ------------------------------------------------------------------------------------------------
def test_cache_reuse_and_invalidation(shared, tmp_path, counting_backend):
    video = shared / VIDEO / "theresa_may_5s.mp4"
    out = tmp_path / "c"
    first = preprocess(video, out, stop=20, progress=False)
    assert len(counting_backend) == 1
    mtime = (out / "clip.json").stat().st_mtime_ns

    second = preprocess(video, out, stop=20, progress=False)
    assert len(counting_backend) == 1  # not recomputed
    assert (out / "clip.json").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.landmarks, first.landmarks)
    assert second.meta.source_sha256 == first.meta.source_sha256

    preprocess(video, out, stop=20, progress=False, config=PreprocessConfig(pose_window=3))
    assert len(counting_backend) == 2  # settings changed
    preprocess(video, out, stop=20, progress=False, config=PreprocessConfig(pose_window=3), force=True)
    assert len(counting_backend) == 3
    third = preprocess(video, out, stop=21, progress=False, config=PreprocessConfig(pose_window=3))
    assert len(counting_backend) == 4 and third.meta.frames == 21


def test_cache_follows_the_video_to_another_path(shared, tmp_path, counting_backend):
    """The cache is keyed by content: the same video at a new path (the old copy deleted) is not
    recomputed, and the clip reads its frames from the new path."""
    import shutil

    first_path = tmp_path / "a" / "v.mp4"
    first_path.parent.mkdir()
    shutil.copy(shared / VIDEO / "theresa_may_5s.mp4", first_path)
    out = tmp_path / "c"
    first = preprocess(first_path, out, stop=10, progress=False)
    moved = tmp_path / "b" / "w.mp4"
    moved.parent.mkdir()
    shutil.move(first_path, moved)
    second = preprocess(moved, out, stop=10, progress=False)
    assert len(counting_backend) == 1  # not recomputed
    assert second.video_path == moved.resolve() and second.meta.source == str(moved.resolve())
    np.testing.assert_array_equal(second.landmarks, first.landmarks)
    assert media.read_frames(second.video_path, [3])[0].shape == (512, 512, 3)


def test_cache_key_depends_on_content(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    cfg = PreprocessConfig()
    assert pp.cache_key(a, None, "mediapipe", cfg) != pp.cache_key(b, None, "mediapipe", cfg)
    assert pp.cache_key(a, None, "mediapipe", cfg) != pp.cache_key(a, None, "fan", cfg)
    assert pp.cache_key(a, None, "mediapipe", cfg) != pp.cache_key(a, b, "mediapipe", cfg)
    assert pp.cache_key(a, None, "mediapipe", cfg) == pp.cache_key(a, None, "mediapipe", PreprocessConfig())
    other = PreprocessConfig(landmarks=LandmarkConfig(max_gap=2))
    assert pp.cache_key(a, None, "mediapipe", cfg) != pp.cache_key(a, None, "mediapipe", other)


def test_crash_mid_write_leaves_nothing_trusted(shared, tmp_path, monkeypatch, counting_backend):
    """The disk fills up while the cache is written (at its last file, clip.json)."""
    video = shared / VIDEO / "aoc.mp4"
    out = tmp_path / "c"
    real_write_text = Path.write_text

    def failing_write_text(self, *a, **kw):
        if self.name == "clip.json":
            raise OSError("disk full")
        return real_write_text(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="disk full"):
        preprocess(video, out, stop=15, progress=False)
    assert not out.exists()
    assert not any(p.name.startswith(".c.") for p in tmp_path.iterdir())  # no temporary folder left

    monkeypatch.setattr(Path, "write_text", real_write_text)
    clip = preprocess(video, out, stop=15, progress=False)  # recomputed, not half-trusted
    assert clip.meta.frames == 15 and (out / "clip.json").exists() and len(counting_backend) == 2

    # a crash while replacing an existing clip keeps the old, complete one
    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError):
        preprocess(video, out, stop=16, progress=False)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert Clip.load(out).meta.frames == 15


def test_corrupt_cache_is_recomputed(shared, tmp_path, counting_backend):
    video = shared / VIDEO / "aoc.mp4"
    out = tmp_path / "c"
    preprocess(video, out, stop=10, progress=False)
    (out / "arrays.npz").write_bytes(b"garbage")
    clip = preprocess(video, out, stop=10, progress=False)
    assert len(counting_backend) == 2 and clip.meta.frames == 10


# -- progress, overlay, config, CLI ------------------------------------------------------------------------
def test_progress_callback(shared, tmp_path):
    seen = []
    preprocess(shared / VIDEO / "aoc.mp4", tmp_path / "c", stop=12, progress=lambda i, n: seen.append((i, n)))
    assert seen[-1] == (12, 12) and len(seen) == 12


def test_overlay_image():
    frame = np.zeros((100, 120, 3), np.uint8)
    lm = np.stack(np.meshgrid(np.linspace(30, 90, 17), np.linspace(20, 80, 4)), -1).reshape(-1, 2)[:68]
    img = overlay_image(frame, lm, box=np.array([10, 10, 110, 90]))
    assert img.shape == frame.shape and img.dtype == np.uint8
    assert not frame.any()  # input untouched
    assert img[int(lm[0, 1]), int(lm[0, 0])].any() and img[10, 60].any()
    red = overlay_image(frame, lm, valid=False)
    assert not np.array_equal(red, img)


def test_config_from_dict():
    cfg = PreprocessConfig.from_dict({"pose_window": 3, "landmarks": {"max_gap": 2, "num_faces": 2}})
    assert cfg.pose_window == 3 and cfg.landmarks == LandmarkConfig(max_gap=2, num_faces=2)
    with pytest.raises(InputError, match="Unknown setting"):
        PreprocessConfig.from_dict({"landmarks": {"maxgap": 2}})
    with pytest.raises(InputError):
        PreprocessConfig.from_dict({"landmarks": {"max_gap": -3}})


def test_cli(shared, tmp_path, capsys):
    out = tmp_path / "clip"
    png = tmp_path / "ov.png"
    video = shared / VIDEO / "theresa_may_5s.mp4"
    speech = shared / "media" / "speech" / "radio_address_16k_stereo.wav"  # 8 s: cut to the video
    rc = cli.main(["preprocess", str(video), "--audio", str(speech), "--out", str(out),
                   "--overlay", str(png)])
    assert rc == 0
    meta = json.loads((out / "clip.json").read_text())
    assert meta["frames"] == media.probe_video(video).frames
    assert meta["audio_seconds"] == pytest.approx(meta["frames"] / meta["fps"], abs=0.01)
    assert png.stat().st_size > 1000
    rc = cli.main(["preprocess", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "error:" in capsys.readouterr().err
