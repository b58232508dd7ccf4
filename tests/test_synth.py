"""Synthetic talking heads: format, determinism, head motion, articulation, detector noise."""

import numpy as np
import pytest

from studio import media
from studio.audio import frame_energy
from studio.data import synth
from studio.data.clip import Clip
from studio.errors import InputError
from studio.face import layout
from studio.face.normalize import face_scale
from studio.face.pose import rotation_matrix


@pytest.fixture(scope="module")
def minute(tmp_path_factory):
    """60 s of landmark-only synthetic data (procedural speech) and its truth."""
    d = tmp_path_factory.mktemp("synth") / "minute"
    clip = synth.synthesize(d, 60, 7, render=False)
    return clip, synth.load_truth(d)


def lagged_corr(a, b, lag):
    """corr(a[t], b[t + lag])."""
    n = len(a)
    return np.corrcoef(a[max(0, -lag): n - max(0, lag)], b[max(0, lag): n - max(0, -lag)])[0, 1]


def test_clip_format_and_video(tmp_path):
    out = tmp_path / "c"
    clip = synth.synthesize(out, 3, 1, size=128, fps=25.0)
    back = Clip.load(out)
    t = back.meta.frames
    assert t == 75 and back.meta.width == back.meta.height == 128
    assert back.meta.backend == "synthetic" and back.meta.synthetic and back.meta.video == "video.mp4"
    assert back.gt_landmarks is not None and back.gt_landmarks.shape == (t, 68, 2)
    assert back.landmarks.shape == (t, 68, 2) and back.audio.shape == (4 * t, 26)
    assert back.talk.shape == (t, 58) and back.cheek.shape == (t, 16)
    np.testing.assert_array_equal(back.landmarks, clip.landmarks)
    info = media.probe_video(back.video_path)
    assert info.frames == t and (info.width, info.height) == (128, 128) and info.has_audio
    speech = media.read_audio(back.audio_path)
    assert abs(len(speech) - 3 * 16000) <= 1 and back.meta.audio_seconds == pytest.approx(3.0)
    truth = synth.load_truth(out)
    assert truth["pose_true"].shape == (t, 3) and truth["articulation"].shape == (t, 3)
    assert truth["visible"].shape == (t, 68, 2) and truth["hidden"].shape == (t, 17)
    # every point of the face lies inside the frame
    assert back.gt_landmarks.min() > 0 and back.gt_landmarks.max() < 128
    frame = media.read_frames(back.video_path, [10])[0]
    assert frame.shape == (128, 128, 3) and frame.std() > 10  # something was drawn


def test_deterministic_per_seed_and_seeds_differ(tmp_path):
    a = synth.synthesize(tmp_path / "a", 4, 3, render=False)
    b = synth.synthesize(tmp_path / "b", 4, 3, render=False)
    c = synth.synthesize(tmp_path / "c", 4, 4, render=False)
    for name in ("landmarks", "gt_landmarks", "pose", "audio"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.allclose(getattr(a, name), getattr(c, name)), name
    assert a.meta.source_sha256 == b.meta.source_sha256 != c.meta.source_sha256
    assert (tmp_path / "a" / "audio.wav").read_bytes() == (tmp_path / "b" / "audio.wav").read_bytes()


def test_pose_is_estimated_like_preprocessing():
    from studio.data.preprocess import PreprocessConfig

    assert synth.SynthConfig().pose_window == PreprocessConfig().pose_window


def test_rotation_convention_is_the_pose_modules():
    angles = np.array([[20.0, -10.0, 5.0], [-33.0, 14.0, -9.0]])
    got = synth.rotation_matrices(angles)
    for g, (y, p, r) in zip(got, angles):
        np.testing.assert_allclose(g, rotation_matrix(y, p, r), atol=1e-12)


def test_head_motion_ranges_and_pose_estimate(minute):
    clip, truth = minute
    true = truth["pose_true"]
    assert np.abs(true[:, 0]).max() > 25  # large yaw within one minute
    assert np.abs(true[:, 0]).max() <= 35 * 1.03 and np.abs(true[:, 1]).max() <= 15 * 1.03
    assert np.abs(true[:, 2]).max() <= 10 * 1.03
    assert np.abs(true[:, 1]).max() > 5 and np.abs(true[:, 2]).max() > 3
    # the stored pose is estimated from the noisy landmarks, yet follows the truth closely
    assert not np.array_equal(clip.pose, true)
    for i in range(3):
        assert np.corrcoef(clip.pose[:, i], true[:, i])[0, 1] > 0.9
    assert np.sqrt(np.mean((clip.pose[:, 0] - true[:, 0]) ** 2)) < 5
    # the face scale changes with the camera distance (+-20 %)
    s = face_scale(clip.gt_landmarks)
    assert 1.25 < s.max() / s.min() < 1.6


def mouth_energy_correlation(clip, speech):
    energy = np.log(frame_energy(speech, clip.meta.frames, clip.meta.fps) + 1e-4)
    opening = layout.mouth_opening(clip.gt_landmarks) / face_scale(clip.gt_landmarks)
    return {lag: lagged_corr(opening, energy, lag) for lag in range(-6, 7)}


def test_mouth_opening_follows_speech_energy_with_a_lead(minute):
    clip, _ = minute
    corr = mouth_energy_correlation(clip, media.read_audio(clip.audio_path))
    best = max(corr, key=corr.get)
    assert corr[best] > 0.6
    assert 1 <= best <= 3, corr  # the mouth at t matches the sound 40-120 ms later
    assert corr[best] > corr[0] + 0.02 and corr[best] > corr[-best] + 0.1


def test_real_speech_drives_the_mouth_with_a_lead(tmp_path, shared):
    speech = shared / "media" / "speech" / "english_60s_16k.wav"
    clip = synth.synthesize(tmp_path / "r", 20, 2, speech=speech, render=False)
    corr = mouth_energy_correlation(clip, media.read_audio(clip.audio_path))
    best = max(corr, key=corr.get)
    assert corr[best] > 0.5 and 1 <= best <= 3, corr
    # seeds start the speech at different points of the file
    other = synth.synthesize(tmp_path / "s", 20, 3, speech=speech, render=False)
    assert not np.allclose(other.audio, clip.audio)


def test_observation_noise_magnitude(minute):
    clip, truth = minute
    size = synth.face_size(clip.gt_landmarks)[:, None]
    err = np.linalg.norm(clip.landmarks - truth["visible"], axis=-1) / size
    inner = err[:, 17:]  # the non-contour points
    assert 0.01 < np.median(inner) < 0.03
    assert 0.01 < np.sqrt(np.mean(inner**2)) < 0.04
    assert np.percentile(err, 99.9) > 0.05  # occasional larger errors
    # drift: errors are correlated over time (AR(1) with a 0.4 s time constant)
    e = (clip.landmarks - truth["visible"])[:, 30, 0]
    assert lagged_corr(e, e, 1) > 0.3


def test_noise_free_observation_is_the_visible_projection(tmp_path):
    cfg = synth.SynthConfig(jitter=0, drift=0, outlier_rate=0, silhouette=False)
    clip = synth.synthesize(tmp_path / "q", 3, 5, render=False, config=cfg)
    np.testing.assert_allclose(clip.landmarks, clip.gt_landmarks, atol=1e-3)


def test_far_side_contour_slides_to_the_outline(minute):
    clip, truth = minute
    yaw = truth["pose_true"][:, 0]
    hidden = truth["hidden"]
    right, left = yaw > 25, yaw < -25  # nose toward the image's right / left
    assert right.any() and left.any()
    # turning right hides the contour on the image's right (points 10-16), and vice versa
    assert hidden[right][:, 10:].all() and not hidden[right][:, :7].any()
    assert hidden[left][:, :7].all() and not hidden[left][:, 10:].any()
    assert not hidden[:, 7:10].any()  # the chin stays visible
    gt, vis = clip.gt_landmarks, truth["visible"]
    shift = (vis[:, :17, 0] - gt[:, :17, 0]) / synth.face_size(gt)[:, None]
    # the hidden points move outward, away from the nose, by several percent of the face size
    far = shift[right][:, 12:]
    assert far.mean() > 0.03 and (far > 0).all()
    assert shift[left][:, :5].mean() < -0.03
    # frontal frames: the outline is about where the points are (perspective shifts it a little)
    frontal = np.abs(yaw) < 3
    assert np.abs(shift[frontal]).max() < 0.025 and np.abs(shift[frontal]).mean() < 0.01


def test_cheek_points_move_much_less_than_the_jaw():
    shape = synth.identity_shape(0)
    closed, opened = synth.articulate(shape, np.array([[0.0, 0, 0], [1.0, 0, 0]]))
    d = np.linalg.norm(opened - closed, axis=-1)
    assert d[list(layout.JAW)].mean() > 8  # mm at full opening
    assert d[list(layout.CHEEK)].mean() < 0.15 * d[list(layout.JAW)].mean()
    assert np.allclose(d[list(layout.STABLE)], 0)
    gap = layout.mouth_opening(np.stack([closed, opened])[..., :2])
    assert abs(gap[0]) < 0.1 and 10 < gap[1] < 20  # closed lips at rest; ~15 mm fully open
    # spread widens the mouth, rounding narrows it and protrusion moves the lips forward
    wide, round_ = synth.articulate(shape, np.array([[0.0, 1, 0], [0.0, -1, 1]]))
    width = lambda p: p[54, 0] - p[48, 0]  # noqa: E731
    assert width(wide) > width(closed) > width(round_)
    assert round_[51, 2] < closed[51, 2] - 3


def test_in_a_clip_cheeks_vary_less_than_the_jaw_beyond_head_motion(minute):
    clip, truth = minute
    # the same head motion without articulation: what remains is the speech-driven motion
    shape = truth["shape"].astype(np.float64)
    rot = synth.rotation_matrices(truth["pose_true"])
    focal = float(truth["focal"])
    size = clip.meta.width

    def projected(params):
        cam = synth.to_camera(synth.articulate(shape, params), rot, truth["translation"].astype(np.float64))
        return synth.project(cam, focal, size / 2, size / 2)

    still = projected(np.zeros_like(truth["articulation"]))
    moved = projected(truth["articulation"])
    np.testing.assert_allclose(moved, clip.gt_landmarks, atol=1e-2)
    d = np.linalg.norm(moved - still, axis=-1).mean(axis=0)
    assert d[list(layout.CHEEK)].mean() < 0.2 * d[list(layout.JAW)].mean()


def test_articulation_is_silent_in_silence_and_leads():
    sr = 16000
    sig = synth.procedural_speech(6, 0)
    sig[: 2 * sr] = 0  # two seconds of silence first
    art = synth.articulation(sig, 25.0, 150, seed=0)
    assert art.shape == (150, 3) and art.dtype == np.float32
    assert art[:40, 0].max() < 0.05  # mouth closed in silence until just before the speech
    assert art[60:, 0].max() > 0.5
    cfg = synth.SynthConfig(lead_open_ms=0.0)
    late = synth.articulation(sig, 25.0, 150, cfg, seed=0)
    first = lambda a: np.argmax(a[:, 0] > 0.2)  # noqa: E731
    assert first(art) == first(late) - 2  # 80 ms = 2 frames earlier


def test_procedural_speech_is_speech_like():
    sr = 16000
    x = synth.procedural_speech(20, 11)
    assert x.shape == (20 * sr,) and x.dtype == np.float32 and np.abs(x).max() <= 1
    np.testing.assert_array_equal(x, synth.procedural_speech(20, 11))
    assert not np.allclose(x[:sr], synth.procedural_speech(20, 12)[:sr])
    env = np.sqrt(np.mean(x.reshape(-1, 160) ** 2, axis=1))  # 10 ms frames
    db = 20 * np.log10(env + 1e-6)
    assert 0.05 < np.mean(db < db.max() - 40) < 0.5  # pauses, but mostly speech
    spec = np.convolve(np.abs(np.fft.rfft(env - env.mean())), np.ones(9) / 9, "same")
    freqs = np.fft.rfftfreq(env.size, 0.01)
    band = (freqs > 1.5) & (freqs < 20)
    peak = freqs[band][np.argmax(spec[band])]
    assert 1.5 < peak < 8  # syllable-rate amplitude modulation, beyond the phrase rhythm
    syllabic = (spec[(freqs > 2) & (freqs < 8)] ** 2).sum()
    assert syllabic > 1.5 * (spec[(freqs > 8) & (freqs < 30)] ** 2).sum()


def test_loop_speech_crossfades():
    x = np.sin(np.arange(1000) * 0.05).astype(np.float32)
    y = synth.loop_speech(x, 2500, 300, 40)
    assert y.shape == (2500,)
    np.testing.assert_array_equal(y[:600], x[300:900])
    assert np.abs(np.diff(y)).max() < 0.1  # no clicks at the seams
    np.testing.assert_array_equal(synth.loop_speech(x, 500, 0, 40), x[:500])


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError):
        synth.synthesize(tmp_path / "x", 0, 1)
    with pytest.raises(InputError):
        synth.synthesize(tmp_path / "x", 1, 1, speech=tmp_path / "missing.wav")
    with pytest.raises(ValueError):
        synth.SynthConfig(yaw_max=-1)


def test_cli(tmp_path):
    from studio.cli import main

    assert main(["synth", "--out", str(tmp_path / "c"), "--seconds", "2", "--seed", "5", "--size", "96",
                 "--no-render"]) == 0
    clip = Clip.load(tmp_path / "c")
    assert clip.meta.frames == 50 and clip.meta.width == 96 and not (tmp_path / "c" / "video.mp4").exists()
    assert not clip.meta.extras["rendered"]


def test_output_folder_parents_are_created(tmp_path):
    from studio.data.clip import Clip
    from studio.data.synth import synthesize

    synthesize(tmp_path / "a" / "b" / "clip", 2.0, 0, render=False)
    assert Clip.load(tmp_path / "a" / "b" / "clip").meta.frames == 50
