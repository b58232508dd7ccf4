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


# -- dub mode: the template articulates with another speech than the clip's audio ---------------
DUB_SEED, DUB_TEMPLATE_SEED, DUB_SECONDS = 3, 103, 6


@pytest.fixture(scope="module")
def dub_clips(tmp_path_factory):
    """A dub clip (audio: procedural speech A of the seed; template: procedural speech B, seed 103)
    and the two ordinary clips of the same seed made with speech A and with speech B."""
    root = tmp_path_factory.mktemp("dub")
    dub = synth.synthesize(root / "dub", DUB_SECONDS, DUB_SEED, template_speech=DUB_TEMPLATE_SEED, render=False)
    a = synth.synthesize(root / "a", DUB_SECONDS, DUB_SEED, render=False)
    b = synth.synthesize(root / "b", DUB_SECONDS, DUB_SEED, speech=DUB_TEMPLATE_SEED, render=False)
    return {name: (clip, synth.load_truth(clip.directory)) for name, clip in
            (("dub", dub), ("a", a), ("b", b))}


def normalized_opening(points):
    return layout.mouth_opening(points) / face_scale(points)


def test_dub_mode_landmarks_follow_the_template_speech_and_gt_the_audio(dub_clips):
    (dub, truth), (a, truth_a), (b, truth_b) = dub_clips["dub"], dub_clips["a"], dub_clips["b"]
    opening = normalized_opening(dub.landmarks)
    r_template = np.corrcoef(opening, normalized_opening(b.gt_landmarks))[0, 1]
    r_audio = np.corrcoef(opening, normalized_opening(a.gt_landmarks))[0, 1]
    assert r_template > 0.9 and abs(r_audio) < 0.3, (r_template, r_audio)
    # the observed side is exactly the ordinary clip made with speech B ...
    for name in ("landmarks", "pose", "centre", "scale", "boxes"):
        np.testing.assert_array_equal(getattr(dub, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(truth["template_gt"], b.gt_landmarks)
    np.testing.assert_array_equal(truth["template_visible"], truth_b["visible"])
    np.testing.assert_array_equal(truth["template_hidden"], truth_b["hidden"])
    np.testing.assert_array_equal(truth["template_articulation"], truth_b["articulation"])
    # ... the audio and the noise-free truth are those of the ordinary clip made with speech A
    np.testing.assert_array_equal(dub.audio, a.audio)
    assert (dub.directory / "audio.wav").read_bytes() == (a.directory / "audio.wav").read_bytes()
    assert (dub.directory / synth.TEMPLATE_AUDIO_FILE).read_bytes() == (b.directory / "audio.wav").read_bytes()
    np.testing.assert_array_equal(dub.gt_landmarks, a.gt_landmarks)
    for name in ("articulation", "visible", "hidden"):
        np.testing.assert_array_equal(truth[name], truth_a[name], err_msg=name)
    np.testing.assert_array_equal(truth["observed"], a.landmarks)
    assert not np.allclose(dub.gt_landmarks, dub.landmarks, atol=1.0)
    # the metadata says so
    ex = dub.meta.extras
    assert ex["mode"] == "dub" and ex["template_speech"] == f"procedural:{DUB_TEMPLATE_SEED}"
    assert dub.meta.audio_source == "procedural" and "landmarks" in ex["follows"]["template_speech"]
    assert "gt_landmarks" in ex["follows"]["speech"] and "mode" not in a.meta.extras
    assert len({dub.meta.source_sha256, a.meta.source_sha256, b.meta.source_sha256}) == 3


def test_other_speech_same_head_motion_face_and_noise(dub_clips):
    (_, truth), (a, truth_a), (b, truth_b) = dub_clips["dub"], dub_clips["a"], dub_clips["b"]
    for name in ("pose_true", "translation", "shape", "focal"):
        np.testing.assert_array_equal(truth[name], truth_a[name], err_msg=name)
        np.testing.assert_array_equal(truth[name], truth_b[name], err_msg=name)
    assert not np.allclose(truth_a["articulation"], truth_b["articulation"], atol=0.05)
    # the estimated pose differs only by what the moving jaw does to the pose fit
    assert np.abs(a.pose - b.pose).max() < 0.5
    # the same detector-noise draws: identical in units of the face size
    noise_a = (a.landmarks - truth_a["visible"]) / synth.face_size(a.gt_landmarks)[:, None, None]
    noise_b = (b.landmarks - truth_b["visible"]) / synth.face_size(b.gt_landmarks)[:, None, None]
    np.testing.assert_allclose(noise_a, noise_b, atol=1e-4)
    assert np.abs(noise_a).max() > 0.01


def test_speech_seed_is_procedural_speech_of_that_seed(tmp_path, dub_clips):
    a, _ = dub_clips["a"]
    same = synth.synthesize(tmp_path / "s", DUB_SECONDS, DUB_SEED, speech=DUB_SEED, render=False)
    for name in ("landmarks", "gt_landmarks", "pose", "audio"):
        np.testing.assert_array_equal(getattr(same, name), getattr(a, name))
    with pytest.raises(InputError):
        synth.synthesize(tmp_path / "x", 1, 1, speech=True)


def fingerprint(clip, truth):
    """Two float64 sums per array (plain and position-weighted): any change of the generator moves them."""
    arrays = {**{k: getattr(clip, k) for k in ("landmarks", "gt_landmarks", "pose", "audio", "scale")},
              **{f"truth:{k}": truth[k] for k in ("articulation", "visible", "pose_true", "translation")},
              "audio.wav": media.read_audio(clip.audio_path)}
    out = {}
    for k, x in arrays.items():
        x = np.asarray(x, np.float64).ravel()
        out[k] = [float(x.sum()), float((x * np.linspace(-1, 1, x.size)).sum())]
    return out


# synthesize(d, 2, 3, render=False) as produced before dub mode existed (commit 5f7f5ec)
_DEFAULT_FINGERPRINT = {
    "landmarks": [937588.768837, -8015.664309], "gt_landmarks": [935746.949989, -7618.598216],
    "pose": [1172.493215, -247.649914], "audio": [-48144.972948, 707.457691], "scale": [1228.507282, 64.123916],
    "truth:articulation": [44.596501, 0.306255], "truth:visible": [937867.731544, -7731.075945],
    "truth:pose_true": [1005.66883, -226.08742], "truth:translation": [23358.582789, -257.030666],
    "audio.wav": [16.055054, -0.917183],
}


def test_default_mode_output_is_unchanged(tmp_path):
    clip = synth.synthesize(tmp_path / "c", 2, 3, render=False)
    assert clip.meta.source_sha256 == "27d5300b8984954465d8be83ebadc71a824ee0de3d6dd62ccf7b80d5592e38f8"
    assert sorted(clip.meta.extras) == ["config", "focal", "pose_source", "rendered", "seed", "truth", "yaw_range"]
    truth = synth.load_truth(tmp_path / "c")
    assert sorted(truth) == ["articulation", "articulators", "focal", "hidden", "pose_true", "shape",
                             "translation", "visible"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "arrays.npz", "audio.wav", "clip.json", "frames.csv", synth.TRUTH_FILE]
    got = fingerprint(clip, truth)
    for name, expected in _DEFAULT_FINGERPRINT.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=2e-3, err_msg=name)


def test_cli_dub_mode_renders_the_template(tmp_path):
    from studio.cli import main

    common = ["--seconds", "2", "--seed", "5", "--size", "96"]
    assert main(["synth", "--out", str(tmp_path / "d"), *common, "--template-speech-seed", "9"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), *common, "--speech-seed", "9"]) == 0
    dub, b = Clip.load(tmp_path / "d"), Clip.load(tmp_path / "b")
    assert dub.meta.extras["mode"] == "dub" and dub.meta.extras["template_speech"] == "procedural:9"
    np.testing.assert_array_equal(dub.landmarks, b.landmarks)
    # the frames show the template (speech B); the audio is the clip's own (speech A)
    frames = list(range(0, 50, 7))
    np.testing.assert_array_equal(media.read_frames(dub.video_path, frames), media.read_frames(b.video_path, frames))
    assert not np.allclose(media.read_audio(dub.audio_path), media.read_audio(b.audio_path))
    assert (tmp_path / "d" / synth.TEMPLATE_AUDIO_FILE).read_bytes() == (tmp_path / "b" / "audio.wav").read_bytes()
    with pytest.raises(SystemExit):  # one template speech at a time
        main(["synth", "--out", str(tmp_path / "x"), *common, "--template-speech", "f.wav",
              "--template-speech-seed", "9"])
