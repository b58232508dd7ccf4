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
