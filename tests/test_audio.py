import numpy as np
import pytest
from python_speech_features import logfbank as reference

from studio.audio import FEATURES_PER_VIDEO_FRAME, align_to_video, features_for_video, logfbank


@pytest.mark.parametrize("n", [1, 399, 400, 401, 560, 16_000, 48_123])
def test_logfbank_matches_reference(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    ours, ref = logfbank(x), reference(x, 16_000)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_logfbank_silence_is_finite():
    out = logfbank(np.zeros(16_000, np.float32))
    assert np.isfinite(out).all() and out.shape == (99, 26)


def test_alignment_is_identity_at_25fps():
    feats = np.arange(100 * 26, dtype=np.float32).reshape(100, 26)
    out = align_to_video(feats, 25, 25.0)
    assert out.shape == (100, 26)
    np.testing.assert_array_equal(out, feats)


def test_alignment_at_30fps_interpolates_and_pads():
    feats = np.arange(100, dtype=np.float32)[:, None].repeat(2, 1)  # value = frame index
    out = align_to_video(feats, 40, 30.0)  # 40 frames at 30 fps = 1.33 s > 1 s of features
    assert out.shape == (FEATURES_PER_VIDEO_FRAME * 40, 2)
    # output k sits at time k / 120 s = feature position k * 100 / 120
    np.testing.assert_allclose(out[:119, 0], np.arange(119) * 100 / 120, atol=1e-4)
    assert out[-1, 0] == 99  # padded with the last frame


def test_features_for_video_length():
    x = np.zeros(16_000 * 2, np.float32)
    assert features_for_video(x, 25.0).shape == (200, 26)
    assert features_for_video(x, 30.0, n_video_frames=61).shape == (244, 26)


# -- speaker-normalised features (histogram equalization, conditioning.normalize_audio "heq") ------
def _voice(seconds=3.0, pitch=120.0, formant_scale=1.0, gain=0.3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllable-rate loudness
    x = sum(np.sin(2 * np.pi * pitch * k * t) / k * np.exp(-((pitch * k / formant_scale - 700) / 400) ** 2)
            for k in range(1, 30))
    return (gain * env * x + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def test_heq_features_keep_the_video_alignment_and_are_standard_normal_per_band():
    from studio.models.conditioning import normalize_audio

    feats = features_for_video(_voice(), fps=30.0)
    out = normalize_audio(feats, "heq")
    assert out.shape == feats.shape == (4 * 90, 26) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=0.1)
    # each band keeps the order of its values in time
    k = 5
    assert np.all(np.diff(out[np.argsort(feats[:, k], kind="stable"), k]) >= -1e-6)


def test_heq_removes_level_and_monotone_channel_differences():
    """A louder recording of the same speech, or one through a monotone band response, gives the
    same equalized features: what is left is how each band moves in time."""
    from studio.models.conditioning import normalize_audio

    x = _voice()
    a = normalize_audio(features_for_video(x, 25.0), "heq")
    b = normalize_audio(features_for_video(4.0 * x, 25.0), "heq")
    np.testing.assert_allclose(a, b, atol=0.05)
    feats = features_for_video(x, 25.0)
    squashed = 2.0 * feats.astype(np.float64) + 1e-3 * feats.astype(np.float64) ** 3 + 5  # monotone per band
    np.testing.assert_allclose(normalize_audio(squashed, "heq"), normalize_audio(feats, "heq"), atol=1e-5)


def test_heq_of_silence_is_zero_and_deterministic():
    from studio.models.conditioning import normalize_audio

    silent = features_for_video(np.zeros(16000, np.float32), 25.0)
    np.testing.assert_array_equal(normalize_audio(silent, "heq"), 0.0)
    x = features_for_video(_voice(seed=3), 25.0)
    np.testing.assert_allclose(normalize_audio(x, "heq"), normalize_audio(x.copy(), "heq"), atol=1e-6)
