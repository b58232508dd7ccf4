"""facial_map: channel layout, talking points replaced, old mouth removed from the edges."""

from __future__ import annotations

import numpy as np
import pytest

from render_faces import face_image, face_points
from studio.face import layout
from studio.render.facemap import FacemapConfig, facial_map, lower_face_mask


def _inputs(size=256, open_t=0.0, open_p=1.0):
    s = size / 256
    tp = face_points(128 * s, 118 * s, 40 * s, opening=open_t)
    crop = face_image(tp, size, size)
    pred = layout.talking_vector(face_points(128 * s, 118 * s, 40 * s, opening=open_p))
    return crop, tp, pred


@pytest.mark.parametrize("size", [256, 512, 720])
def test_shape_dtype_and_channels(size):
    crop, tp, pred = _inputs(size)
    m = facial_map(crop, tp, pred)
    assert m.shape == (size, size, 3) and m.dtype == np.uint8
    assert set(np.unique(m[..., 0])) <= {0, 255}, "channel 0 holds binary Canny edges"
    assert (m[..., 1] > 0).sum() > 0 and (m[..., 2] > 0).sum() > 0
    # lips: outer line near 255, inner line near the configured 128 (anti-aliased)
    talk = pred.reshape(29, 2)
    for idx, lo, hi in ((range(0, 12), 200, 255), (range(12, 20), 100, 140)):
        for x, y in np.round(talk[list(idx)]).astype(int):
            peak = m[y - 1:y + 2, x - 1:x + 2, 2].max()
            assert lo <= peak <= hi, (peak, lo, hi)


def test_pure_and_deterministic():
    crop, tp, pred = _inputs()
    before = crop.copy(), tp.copy(), pred.copy()
    a, b = facial_map(crop, tp, pred), facial_map(crop, tp, pred)
    np.testing.assert_array_equal(a, b)
    for x, y in zip(before, (crop, tp, pred)):
        np.testing.assert_array_equal(x, y)


def test_lips_follow_prediction_not_template():
    crop, tp, _ = _inputs(open_t=0.0)
    closed = layout.talking_vector(tp)
    opened = layout.talking_vector(face_points(opening=1.0))
    m_closed = facial_map(crop, tp, closed)[..., 2]
    m_open = facial_map(crop, tp, opened)[..., 2]
    ys_c = np.nonzero(m_closed)[0]
    ys_o = np.nonzero(m_open)[0]
    assert np.ptp(ys_o) > np.ptp(ys_c) + 10, "a wider predicted mouth draws taller lips"
    # lips are drawn exactly through the predicted points
    p = opened.reshape(29, 2)[:20]
    vals = m_open[np.round(p[:, 1]).astype(int), np.round(p[:, 0]).astype(int)]
    assert (vals > 0).all()


def test_old_mouth_removed_from_edges():
    crop, tp, pred = _inputs(open_t=1.0, open_p=0.0)
    edges_full = facial_map(crop, tp, pred, FacemapConfig(dilation=0.0))[..., 0]
    m = facial_map(crop, tp, pred)[..., 0]
    mask = lower_face_mask(tp, pred, 256, 6.0)
    assert (m[mask] == 0).all()
    mouth = np.zeros((256, 256), bool)
    x0, y0 = tp[48:68].min(0).astype(int)
    x1, y1 = tp[48:68].max(0).astype(int)
    mouth[y0:y1 + 1, x0:x1 + 1] = True
    assert (m[mouth] == 0).all(), "no template mouth edge survives"
    assert (m[~mask] > 0).sum() > 100, "edges elsewhere (eyes, brows, outline) are kept"
    assert edges_full.sum() >= m.sum()


def test_mask_covers_both_hulls():
    _, tp, pred = _inputs(open_t=0.0, open_p=1.0)
    mask = lower_face_mask(tp, pred, 256, 0.0)
    for pts in (tp[list(layout.TALKING)], pred.reshape(29, 2)):
        c = pts.mean(0).round().astype(int)
        assert mask[c[1], c[0]]
    chin_t, chin_p = tp[8], pred.reshape(29, 2)[20 + 4]
    assert chin_p[1] > chin_t[1] + 5
    y = int(round((chin_t[1] + chin_p[1]) / 2))
    assert mask[y - 1, int(round(chin_p[0]))], "the region between old and new chin is masked"


def test_canny_thresholds_configurable_and_edges_off():
    crop, tp, pred = _inputs()
    lo = facial_map(crop, tp, pred, FacemapConfig(canny_low=10, canny_high=30))[..., 0]
    hi = facial_map(crop, tp, pred, FacemapConfig(canny_low=200, canny_high=400))[..., 0]
    assert (lo > 0).sum() > (hi > 0).sum()
    none = facial_map(crop, tp, pred, FacemapConfig(edges=False))
    assert (none[..., 0] == 0).all()
    with pytest.raises(ValueError):
        FacemapConfig(canny_low=100, canny_high=50)


def test_line_width_scales_with_size():
    ink = {}
    for size in (256, 512):
        crop, tp, pred = _inputs(size)
        ink[size] = (facial_map(crop, tp, pred, FacemapConfig(edges=False))[..., 1] > 0).sum()
    assert 2.5 < ink[512] / ink[256] < 6, "lines get longer and thicker at 2x"


def test_cli_writes_map(tmp_path):
    import cv2

    from studio import media
    from studio.cli import main
    from studio.data.clip import Clip, ClipMeta
    from studio.face.normalize import face_scale, nose_centre

    t = 4
    lm = np.stack([face_points(128, 118, 40, opening=i / 3) for i in range(t)])
    video = tmp_path / "v.mp4"
    with media.VideoWriter(video, 25, (256, 256)) as w:
        for p in lm:
            w.write(face_image(p))
    meta = ClipMeta(source=str(video), source_sha256="x", fps=25.0, frames=t, width=256, height=256,
                    faces_found=t, backend="synthetic", audio_seconds=0.0, video=str(video))
    ones = np.ones(t, bool)
    Clip(meta, lm, ones, ones, np.zeros((t, 3), np.float32), nose_centre(lm).astype(np.float32),
         face_scale(lm).astype(np.float32), np.zeros((t, 4), np.float32),
         np.zeros((4 * t, 26), np.float32)).save(tmp_path / "clip")
    out = tmp_path / "map.png"
    assert main(["facemap", str(tmp_path / "clip"), "--frame", "2", "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    assert img.shape == (256, 256, 3) and img.any()
    assert main(["facemap", str(tmp_path / "clip"), "--frame", "9", "--out", str(out)]) == 2
