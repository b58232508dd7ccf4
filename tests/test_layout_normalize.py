import numpy as np

from studio.face import layout
from studio.face.normalize import denormalize, face_scale, nose_centre, normalize


def test_index_sets():
    assert len(layout.TALKING) == 29 and len(layout.MOUTH) == 20 and len(layout.JAW) == 9
    assert len(layout.CHEEK) == 8
    assert set(layout.JAW) | set(layout.CHEEK) == set(layout.JAW_LINE)
    assert not set(layout.TALKING) & set(layout.CHEEK)


def test_talking_roundtrip():
    pts = np.random.default_rng(0).random((5, 68, 2)).astype(np.float32)
    talk = layout.talking_vector(pts)
    assert talk.shape == (5, 58)
    np.testing.assert_array_equal(talk[:, :2], pts[:, 48])
    np.testing.assert_array_equal(layout.with_talking(pts, talk), pts)


def test_normalize_inverse_and_invariance():
    rng = np.random.default_rng(1)
    pts = rng.random((7, 68, 2)).astype(np.float32) * 100
    c, s = nose_centre(pts), face_scale(pts)
    back = denormalize(normalize(pts, c, s), c, s)
    np.testing.assert_allclose(back, pts, atol=1e-3)
    # translating and scaling the face leaves the normalized points unchanged
    moved = pts * 2.5 + np.array([40.0, -7.0], np.float32)
    n1 = normalize(pts, c, s)
    n2 = normalize(moved, nose_centre(moved), face_scale(moved))
    np.testing.assert_allclose(n1, n2, atol=1e-4)
