"""Head pose: PnP against the embedded mean face recovers known rotations; axis conventions."""

from __future__ import annotations

import numpy as np
import pytest

from studio.face.meanface import mean_face
from studio.face.pose import euler_angles, head_pose, project, rotation_matrix, smooth_pose

W, H = 1280, 720
T_VEC = (25.0, -15.0, 1100.0)  # mm: the face a little off-centre, about 1 m from the camera


def _landmarks(angles, tvec=T_VEC, w=W, h=H):
    m = mean_face()
    return np.stack([project(m, rotation_matrix(*a), tvec, w, h) for a in angles])


def test_mean_face_table(shared):
    m = mean_face()
    assert m.shape == (68, 3)
    ref = np.loadtxt(shared / "face3d" / "mean_face_68_3d.txt").reshape(3, 68).T
    np.testing.assert_array_equal(m, ref)
    assert m[:, 2].argmin() == 30  # nose tip is nearest the camera
    assert m[36, 0] < 0 < m[45, 0]  # subject's right eye on the image's left


def test_rotation_matrix_roundtrip():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.uniform([-80, -80, -170], [80, 80, 170])
        r = rotation_matrix(*a)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        np.testing.assert_allclose(euler_angles(r), a, atol=1e-9)


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-35, 0, 0), (0, 20, 0), (0, -20, 0),
                                    (0, 0, 15), (25, -10, 8), (-20, 15, -12), (45, 10, 20)])
def test_recovers_known_rotation(angles):
    lm = _landmarks([angles])
    np.testing.assert_allclose(head_pose(lm, W, H)[0], angles, atol=1.0)


def test_recovers_a_sequence_with_noise():
    t = np.linspace(0, 2 * np.pi, 60)
    angles = np.stack([30 * np.sin(t), 12 * np.sin(2 * t), 10 * np.cos(t)], axis=1)
    lm = _landmarks(angles)
    lm = lm + np.random.default_rng(1).normal(0, 0.3, lm.shape).astype(np.float32)  # sub-pixel noise
    est = head_pose(lm, W, H)
    assert est.shape == (60, 3) and est.dtype == np.float32
    assert np.abs(est - angles).max() < 2.0
    assert np.abs(est - angles).mean() < 0.6


def test_axis_conventions():
    m = mean_face()
    centre = project(m, np.eye(3), T_VEC, W, H)
    nose = 30
    yawed = project(m, rotation_matrix(20, 0, 0), T_VEC, W, H)
    assert yawed[nose, 0] > centre[nose, 0] + 5  # yaw > 0: nose moves to the image's right
    pitched = project(m, rotation_matrix(0, 20, 0), T_VEC, W, H)
    assert pitched[nose, 1] < centre[nose, 1] - 5  # pitch > 0: nose moves up (looks up)
    rolled = project(m, rotation_matrix(0, 0, 20), T_VEC, W, H)
    assert rolled[45, 1] > rolled[36, 1] + 5  # roll > 0: clockwise, the image-right eye goes down


def test_mirrored_face_flips_yaw_and_roll():
    angles = [(25, 10, 12)]
    lm = _landmarks(angles, tvec=(0.0, 0.0, 1000.0))
    # mirror in the image and swap left/right point labels
    perm = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
            + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
            + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])
    mirrored = lm[:, perm].copy()
    mirrored[..., 0] = W - mirrored[..., 0]
    y, p, r = head_pose(mirrored, W, H)[0]
    assert y == pytest.approx(-25, abs=3) and p == pytest.approx(10, abs=3) and r == pytest.approx(-12, abs=3)


def test_head_pose_rejects_bad_shape():
    with pytest.raises(ValueError):
        head_pose(np.zeros((5, 68, 3)), W, H)


def test_degenerate_frame_repeats_previous():
    lm = _landmarks([(10, 0, 0), (10, 0, 0)])
    lm[1] = np.nan
    est = head_pose(lm, W, H)
    np.testing.assert_allclose(est[1], est[0])


def test_smooth_pose():
    rng = np.random.default_rng(2)
    clean = np.stack([np.linspace(-20, 20, 100)] * 3, axis=1).astype(np.float32)
    noisy = clean + rng.normal(0, 2, clean.shape).astype(np.float32)
    sm = smooth_pose(noisy, 7)
    assert sm.shape == noisy.shape and sm.dtype == np.float32
    assert np.abs(sm - clean)[5:-5].std() < np.abs(noisy - clean)[5:-5].std() / 2
    np.testing.assert_array_equal(smooth_pose(noisy, 1), noisy)
    const = np.full((10, 3), 7.0, np.float32)
    np.testing.assert_allclose(smooth_pose(const, 5), const)
    assert smooth_pose(np.zeros((0, 3)), 5).shape == (0, 3)
