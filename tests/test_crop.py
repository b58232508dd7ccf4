"""CropTrack: smooth square crops, exact inverse mapping, padding outside the frame."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render_faces import face_image, face_points
from studio.errors import InputError, NoFaceError
from studio.render.crop import CropConfig, CropTrack, raw_boxes


def _track_landmarks(t: int = 60, seed: int = 0, jitter: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    path = np.stack([128 + 20 * np.sin(np.arange(t) / 15), 118 + 10 * np.cos(np.arange(t) / 20)], 1)
    lm = np.stack([face_points(x, y, 40, opening=0.5 + 0.5 * np.sin(i)) for i, (x, y) in enumerate(path)])
    return lm + rng.normal(0, jitter, lm.shape).astype(np.float32)


def test_crop_contains_face_and_is_square():
    lm = _track_landmarks()
    track = CropTrack.from_landmarks(lm, (256, 256))
    for i in (0, 30, 59):
        pts = track.to_crop(lm[i], i, 256)
        assert pts.min() > 0 and pts.max() < 256, "the whole face lies inside the crop"
        x0, y0, x1, y1 = track.box(i)
        assert x1 - x0 == pytest.approx(y1 - y0)


@pytest.mark.parametrize("size", [256, 512, 720])
def test_inverse_is_exact(size):
    lm = _track_landmarks()
    track = CropTrack.from_landmarks(lm, (256, 256))
    pts = np.random.default_rng(1).uniform(-50, 300, (10, 68, 2))
    for i in (0, 17, 59):
        back = track.to_frame(track.to_crop(pts, i, size), i, size)
        np.testing.assert_allclose(back, pts, atol=1e-9)
        m, inv = track.matrix(i, size), track.inverse_matrix(i, size)
        full = np.vstack([m, [0, 0, 1]]) @ np.vstack([inv, [0, 0, 1]])
        np.testing.assert_allclose(full, np.eye(3), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(cx=st.floats(0, 300), cy=st.floats(0, 300), side=st.floats(10, 500),
       size=st.sampled_from([256, 512, 720]))
def test_crop_centre_maps_to_crop_centre(cx, cy, side, size):
    track = CropTrack(np.array([[cx, cy]]), np.array([side]), (300, 300), np.array([True]))
    np.testing.assert_allclose(track.to_crop(np.array([cx, cy]), 0, size), [(size - 1) / 2] * 2, atol=1e-9)
    np.testing.assert_allclose(track.to_frame(np.array([0.0, 0.0]), 0, size) - [cx, cy],
                               [-(size - 1) / 2 * side / size] * 2, atol=1e-9)


def test_crop_pixels_follow_the_matrix():
    """A bright dot in the frame lands where to_crop says it does."""
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[120, 170] = 255
    track = CropTrack(np.array([[160.0, 110.0]]), np.array([100.0]), (300, 200), np.array([True]))
    for size in (100, 256):
        crop = track.crop(frame, 0, size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        y, x = np.unravel_index(np.argmax(crop[..., 0].astype(float)), crop.shape[:2])
        expect = track.to_crop(np.array([170.0, 120.0]), 0, size)
        assert abs(x - expect[0]) <= 1 and abs(y - expect[1]) <= 1


def test_outside_frame_is_edge_replicated():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[:, -1] = 200  # right edge column
    track = CropTrack(np.array([[95.0, 50.0]]), np.array([60.0]), (100, 100), np.array([True]))
    crop = track.crop(frame, 0, 60)
    assert (crop[:, -5:] == 200).all(), "beyond the right edge the last column repeats"


def test_smoothing_removes_jitter_but_follows_motion():
    lm = _track_landmarks(jitter=3.0)
    raw_c, raw_s = raw_boxes(lm)
    track = CropTrack.from_landmarks(lm, (256, 256))
    clean_c, _ = raw_boxes(_track_landmarks(jitter=0.0))
    jitter_raw = np.abs(np.diff(raw_c, 2, axis=0)).mean()
    jitter_smooth = np.abs(np.diff(track.centres, 2, axis=0)).mean()
    assert jitter_smooth < 0.3 * jitter_raw
    assert np.abs(track.centres - clean_c).mean() < np.abs(raw_c - clean_c).mean()
    assert np.ptp(track.centres[:, 0]) > 25, "the crop follows the head"


def test_crop_ignores_mouth_opening():
    lm = np.stack([face_points(opening=o) for o in np.linspace(0, 1, 20)])
    c, s = raw_boxes(lm)
    np.testing.assert_allclose(c, np.broadcast_to(c[0], c.shape), atol=1e-3)
    np.testing.assert_allclose(s, s[0], atol=1e-3)


def test_margin_configurable_and_roll_followed():
    lm = face_points()[None]
    small = CropTrack.from_landmarks(lm, (256, 256), CropConfig(side_scale=3.0))
    big = CropTrack.from_landmarks(lm, (256, 256), CropConfig(side_scale=6.0))
    assert big.sides[0] == pytest.approx(2 * small.sides[0])
    c0, _ = raw_boxes(face_points(roll_deg=0)[None])
    c30, _ = raw_boxes(face_points(roll_deg=30)[None])
    assert c30[0, 0] < c0[0, 0] - 5, "rolled head: the crop centre moves along the face's down axis"


def test_invalid_frames_interpolated_and_flagged():
    lm = _track_landmarks(jitter=0.0)
    valid = np.ones(len(lm), bool)
    valid[20:25] = False
    lm_bad = lm.copy()
    lm_bad[20:25] = 0.0  # garbage where no face was found
    track = CropTrack.from_landmarks(lm_bad, (256, 256), valid=valid)
    assert not track.valid[20:25].any() and track.valid[:20].all()
    ref = CropTrack.from_landmarks(lm, (256, 256))
    assert np.abs(track.centres[20:25] - ref.centres[20:25]).max() < 5


def test_bad_input_errors():
    with pytest.raises(InputError):
        CropTrack.from_landmarks(np.zeros((5, 10, 2)), (256, 256))
    with pytest.raises(NoFaceError):
        CropTrack.from_landmarks(_track_landmarks(5), (256, 256), valid=np.zeros(5, bool))


def test_select_and_real_crop():
    lm = _track_landmarks(10, jitter=0.0)
    track = CropTrack.from_landmarks(lm, (256, 256))
    sub = track.select([3, 3, 7])
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.centres[1], track.centres[3])
    frame = face_image(lm[7])
    crop = sub.crop(frame, 2, 256)
    assert crop.std() > 10


def test_smoothing_matches_scipy_savgol():
    from scipy.signal import savgol_filter

    from studio.render.crop import _smooth

    rng = np.random.default_rng(1)
    for t, w, p in [(120, 15, 2), (9, 15, 2), (31, 31, 3), (4, 15, 2)]:
        x = rng.normal(size=(t, 2)).cumsum(axis=0)
        ww = min(w, t if t % 2 else t - 1)
        want = x if ww <= p or ww < 3 else savgol_filter(x, ww, p, axis=0, mode="interp")
        assert np.allclose(_smooth(x, w, p), want, atol=1e-9)
