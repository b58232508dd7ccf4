"""Landmark backends: the 478->68 table, gap filling, MediaPipe on real footage, the FAN loading
path with weights the tests write themselves (2D-FAN weights are not available offline)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from studio import media
from studio.errors import InputError, NoFaceError, WeightsError
from studio.face import mp68, weights
from studio.face.landmarks import (Detection, FanBackend, LandmarkConfig, MediaPipeBackend, box_of, fill_gaps,
                                   make_backend)
from studio.face.layout import INNER_LIP, JAW_LINE, OUTER_LIP

# left/right swap of the iBUG layout (what a mirrored image does to the labels)
MIRROR = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
          + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
          + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


@pytest.fixture
def shared_weights(monkeypatch, weights_dir):
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    return weights_dir


@pytest.fixture(scope="module")
def katie_frames(shared):
    return list(media.iter_frames(shared / "media" / "video" / "katie_hill.mp4", 0, 24))


@pytest.fixture
def mediapipe(shared_weights):
    with make_backend("mediapipe") as be:
        yield be


# -- table and helpers ---------------------------------------------------------------------------
def test_mp68_table():
    assert len(mp68.MP68) == 68
    for a, b, w in mp68.MP68:
        assert 0 <= a < 468 and 0 <= b < 468 and 0.0 <= w <= 1.0
        assert (a == b) == (w == 0.0)
    w = mp68.mapping_matrix()
    assert w.shape == (68, 478)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    # jaw points interpolate between consecutive face-oval vertices
    oval = mp68.FACE_OVAL
    for i in JAW_LINE:
        a, b, _ = mp68.MP68[i]
        assert a in oval and b in oval
        assert a == b or abs(oval.index(a) - oval.index(b)) == 1


def test_to68_shapes():
    mesh = np.random.default_rng(0).random((3, 478, 2)).astype(np.float32)
    out = mp68.to68(mesh)
    assert out.shape == (3, 68, 2)
    np.testing.assert_allclose(out[0, 8], mesh[0, 152])  # chin is vertex 152
    np.testing.assert_allclose(out[1, 0], 0.55 * mesh[1, 127] + 0.45 * mesh[1, 234], rtol=1e-6)
    with pytest.raises(ValueError):
        mp68.to68(np.zeros((100, 2)))


def test_fill_gaps_short_long_and_edges():
    t = 20
    vals = np.arange(t, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    found = np.ones(t, bool)
    found[[0, 1]] = False  # leading gap (2)
    found[5:8] = False  # short inner gap (3)
    found[10:17] = False  # long inner gap (7)
    found[19] = False  # trailing gap (1)
    garbage = vals.copy()
    garbage[~found] = -999
    out, valid, gaps = fill_gaps(garbage, found, max_gap=5)
    np.testing.assert_allclose(out[5:8, 0], [5, 6, 7])  # linear between 4 and 8
    np.testing.assert_allclose(out[0:2, 0], 2)  # held
    assert out[19, 0] == 18
    assert gaps == [(10, 17)]
    assert not valid[10:17].any() and valid[:10].all() and valid[17:].all()
    assert set(out[10:17, 0].tolist()) <= {9.0, 17.0}  # nearest valid frame's values
    assert out[10, 0] == 9 and out[16, 0] == 17
    out, valid, gaps = fill_gaps(vals, np.zeros(t, bool), 5)
    assert not valid.any() and gaps == [(0, t)]


def test_config_validation_and_factory(shared_weights):
    with pytest.raises(ValueError):
        LandmarkConfig(max_gap=-1)
    with pytest.raises(ValueError):
        LandmarkConfig(fan_detector="dlib")
    with pytest.raises(InputError, match="Unknown landmark backend"):
        make_backend("openface")


def test_box_of():
    np.testing.assert_array_equal(box_of(np.array([[1, 5], [3, 2], [2, 9]])), [1, 2, 3, 9])


# -- MediaPipe -------------------------------------------------------------------------------------
def _check_face_geometry(lm: np.ndarray, box: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    assert (lm[:, 0] >= x0 - 1).all() and (lm[:, 0] <= x1 + 1).all()
    assert (lm[:, 1] >= y0 - 1).all() and (lm[:, 1] <= y1 + 1).all()
    nose_y = lm[30, 1]
    assert (lm[list(OUTER_LIP + INNER_LIP), 1] > nose_y).all()  # mouth below the nose tip
    assert (lm[36:48, 1] < nose_y).all()  # eyes above it
    assert lm[8, 1] > lm[57, 1]  # chin below the lower lip
    assert lm[36, 0] < lm[45, 0] and lm[48, 0] < lm[54, 0]  # subject's right on the image's left
    assert (lm[[62, 61, 63], 1] <= lm[[66, 67, 65], 1] + 0.5).all()  # inner upper lip above lower
    assert (lm[[50, 51, 52], 1] < lm[[61, 62, 63], 1]).all()  # outer upper lip above inner


def test_mediapipe_detect_real_frame(mediapipe, katie_frames):
    det = mediapipe.detect(katie_frames[0])
    assert isinstance(det, Detection)
    assert det.landmarks.shape == (68, 2) and det.landmarks.dtype == np.float32
    assert det.mesh.shape == (478, 3) and det.transform.shape == (4, 4)
    _check_face_geometry(det.landmarks, det.box)
    w = det.box[2] - det.box[0]
    assert 0.3 * 512 < w < 512  # the face fills a good part of this clip


def test_mediapipe_jaw_on_face_outline(mediapipe, katie_frames):
    """Jaw points lie on the outline of the face mesh (its convex hull in the image)."""
    for frame in katie_frames[::8]:
        det = mediapipe.detect(frame)
        hull = cv2.convexHull(det.mesh[:, :2].astype(np.float32))
        size = det.box[2] - det.box[0]
        d = [cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in det.landmarks[list(JAW_LINE)]]
        assert np.abs(d).max() < 0.04 * size, d
        inner = [cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in det.landmarks[27:68]]
        assert min(inner) > 0.05 * size  # the inner features are well inside


def test_mediapipe_mirror_consistency(mediapipe, katie_frames):
    """The table is left/right symmetric: a mirrored image gives the mirrored, relabelled points."""
    frame = katie_frames[0]
    a = mediapipe.detect(frame).landmarks
    b = mediapipe.detect(np.ascontiguousarray(frame[:, ::-1])).landmarks
    b = b[MIRROR].copy()
    b[:, 0] = frame.shape[1] - b[:, 0]
    size = np.ptp(a[:, 0])
    assert np.median(np.linalg.norm(a - b, axis=1)) < 0.02 * size


def test_mediapipe_no_face_image(mediapipe):
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert mediapipe.detect(noise) is None
    with pytest.raises(ValueError):
        mediapipe.detect(noise.astype(np.float32))


def test_mediapipe_track_gaps(mediapipe, katie_frames):
    rng = np.random.default_rng(0)
    frames = [f.copy() for f in katie_frames]
    short, long_ = [6, 7], list(range(11, 19))
    for i in short + long_:
        frames[i] = rng.integers(0, 256, frames[i].shape, dtype=np.uint8)
    res = mediapipe.track(iter(frames), fps=25, source="katie")
    assert res.landmarks.shape == (24, 68, 2) and res.boxes.shape == (24, 4)
    assert res.transforms.shape == (24, 4, 4)
    assert not res.found[short + long_].any()
    assert res.found[[i for i in range(24) if i not in short + long_]].all()
    assert res.valid[short].all() and not res.valid[long_].any()
    assert res.long_gaps == [(11, 19)]
    # short gap: linear between the neighbours
    np.testing.assert_allclose(res.landmarks[6], res.landmarks[5] * 2 / 3 + res.landmarks[8] / 3, atol=1e-3)
    np.testing.assert_allclose(res.landmarks[11], res.landmarks[10])  # long gap holds the nearest


def test_mediapipe_track_no_face(mediapipe):
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(5))
    with pytest.raises(NoFaceError, match="No face found in noise.mp4") as ei:
        mediapipe.track(frames, fps=25, source="noise.mp4")
    assert "clearly visible" in ei.value.hint
    with pytest.raises(InputError, match="no frames"):
        mediapipe.track(iter([]), source="empty.mp4")


def test_mediapipe_downscale_option(shared_weights, katie_frames):
    with make_backend("mediapipe") as full, make_backend("mediapipe", LandmarkConfig(max_side=256)) as small:
        a = full.detect(katie_frames[0]).landmarks
        b = small.detect(katie_frames[0]).landmarks
    assert np.median(np.linalg.norm(a - b, axis=1)) < 6  # same pixels of the source frame


def test_mediapipe_missing_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setitem(weights.REGISTRY, "face_landmarker",
                        weights.WeightSpec("face_landmarker.task", None, "http://127.0.0.1:9/x.task"))
    with pytest.raises(WeightsError, match="face_landmarker.task"):
        MediaPipeBackend()


# -- face-alignment (2D-FAN) -------------------------------------------------------------------------
@pytest.fixture
def fan_weights(tmp_path, monkeypatch, weights_dir):
    """A weights folder with a randomly initialised 2D-FAN saved under the expected name, plus the
    real BlazeFace files (the real 2D-FAN weights are not available offline)."""
    import torch
    from face_alignment.models import FAN

    root = tmp_path / "weights"
    (root / "face_alignment").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), root / weights.REGISTRY["fan_2d"].file)
    for name in ("blazeface_back", "blazeface_back_anchors"):
        shutil.copy(weights_dir / weights.REGISTRY[name].file, root / weights.REGISTRY[name].file)
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(root))
    return root


@pytest.mark.slow
def test_fan_loads_and_runs_with_written_weights(fan_weights, katie_frames, shared_weights_dir_mediapipe):
    be = make_backend("fan", LandmarkConfig(detect_every=2, fan_min_score=0.0))
    assert isinstance(be, FanBackend)
    # the BlazeFace detector is real: its box matches MediaPipe's face
    boxes = be._detect_boxes(katie_frames[0])
    assert len(boxes) == 1
    ref = shared_weights_dir_mediapipe.detect(katie_frames[0]).box
    assert _iou(boxes[0], ref) > 0.4
    res = be.track(iter(katie_frames[:2]), fps=25, source="katie")  # detect, then track the box
    assert res.found.all() and res.landmarks.shape == (2, 68, 2)
    assert np.isfinite(res.landmarks).all()
    # random weights give meaningless points, but they come back inside the crop around the face
    for lm, box in zip(res.landmarks, res.boxes):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1])
        assert (np.abs(lm[:, 0] - cx) < 1.5 * side).all() and (np.abs(lm[:, 1] - cy) < 1.5 * side).all()


@pytest.fixture
def shared_weights_dir_mediapipe(weights_dir):
    with MediaPipeBackend(model_path=weights_dir / "face_landmarker.task") as be:
        yield be


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_fan_no_face_detected(fan_weights):
    be = make_backend("fan")
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    assert be.detect(noise) is None


def test_fan_corrupt_weights(fan_weights):
    (fan_weights / weights.REGISTRY["fan_2d"].file).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="2D-FAN"):
        make_backend("fan")


def test_fan_wrong_architecture(fan_weights):
    import torch

    torch.save({"conv1.weight": torch.zeros(1)}, fan_weights / weights.REGISTRY["fan_2d"].file)
    with pytest.raises(WeightsError, match="2D-FAN"):
        make_backend("fan")


def test_fan_weights_missing_offline(fan_weights, monkeypatch):
    (fan_weights / weights.REGISTRY["fan_2d"].file).unlink()
    spec = weights.REGISTRY["fan_2d"]
    offline = weights.WeightSpec(spec.file, None, "http://127.0.0.1:9/2DFAN4.pth.tar")
    monkeypatch.setitem(weights.REGISTRY, "fan_2d", offline)
    with pytest.raises(WeightsError) as ei:
        make_backend("fan")
    assert "2DFAN4-11f355bf06.pth.tar" in ei.value.message and str(fan_weights) in ei.value.hint
