"""Visual quality measures of rendered dubs (``studio quality``) on small synthetic frame sequences."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from render_faces import face_image, face_points
from studio.cli import COMMANDS, build_parser
from studio.errors import InputError
from studio.render.retrieval import RetrievalConfig
from studio.render.quality import (measure_frames, mouth_box, normalised_frames, quality_check,
                                   ratios, seam_band, seam_gradient)

S = 256
T = 10


def talking(t: int = T) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """t RGB frames (S, S, 3) of a synthetic face whose mouth opens and closes smoothly, and their
    (68, 2) points."""
    pts = [face_points(opening=0.3 + 0.25 * math.sin(i / 2.0)) for i in range(t)]
    return [face_image(p) for p in pts], pts


def gray(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


def measures(grays: list[np.ndarray], pts: list[np.ndarray], valid=None) -> dict:
    valid = [True] * len(grays) if valid is None else valid
    return measure_frames(zip(grays, pts, valid))


@pytest.fixture(scope="module")
def clean():
    frames, pts = talking()
    g = gray(frames)
    return frames, g, pts, measures(g, pts)


def test_mouth_box_follows_mouth_and_face_scale():
    small, big = face_points(s=30), face_points(s=60)
    x0, y0, x1, y1 = mouth_box(small, S)
    X0, Y0, X1, Y1 = mouth_box(big, 2 * S)
    cx, cy = small[48:68].mean(0)
    assert x0 < cx < x1 and y0 < cy < y1
    assert (X1 - X0) / (x1 - x0) == pytest.approx(2.0, rel=0.05)
    assert (Y1 - Y0) / (y1 - y0) == pytest.approx(2.0, rel=0.05)
    assert (x1 - x0) > (y1 - y0)  # wider than tall, like a mouth
    assert mouth_box(face_points(cx=5), S)[0] == 0  # clipped to the crop
    assert mouth_box(face_points(cy=S - 40), S)[3] == S


def test_a_video_against_itself_scores_one(clean):
    _, _, _, m = clean
    assert m["frames"] == T and m["valid_frames"] == T and m["pairs"] == T - 1
    assert all(np.isfinite(m[k]) and m[k] > 0 for k in ("flicker", "sharpness", "seam"))
    assert ratios(m, m) == pytest.approx({"flicker": 1.0, "sharpness": 1.0, "seam": 1.0})


def test_noise_in_the_mouth_flickers_noise_elsewhere_does_not(clean):
    _, g, pts, m = clean
    rng = np.random.default_rng(0)

    def noisy(where):
        out = []
        for img, p in zip(g, pts):
            x0, y0, x1, y1 = where(p)
            img = img.astype(np.int16)
            img[y0:y1, x0:x1] += rng.integers(-12, 13, (y1 - y0, x1 - x0), dtype=np.int16)
            out.append(np.clip(img, 0, 255).astype(np.uint8))
        return out

    mouth = measures(noisy(lambda p: mouth_box(p, S)), pts)
    assert ratios(mouth, m)["flicker"] > 1.5
    brow = measures(noisy(lambda p: (0, 0, S, int(p[17:27, 1].max()))), pts)  # noise above the brows only
    assert ratios(brow, m)["flicker"] == pytest.approx(1.0, abs=0.02)


def test_a_still_mouth_flickers_less_than_a_talking_one(clean):
    _, g, pts, m = clean
    still = measures([g[0]] * T, [pts[0]] * T)
    assert still["flicker"] == pytest.approx(0.0, abs=1e-6)
    assert ratios(still, m)["flicker"] < 0.1


def test_blur_lowers_sharpness(clean):
    _, g, pts, m = clean
    blurred = measures([cv2.GaussianBlur(x, (0, 0), 1.5) for x in g], pts)
    r = ratios(blurred, m)
    assert r["sharpness"] < 0.5
    unsharp = [np.clip(1.8 * x.astype(np.float32) - 0.8 * cv2.GaussianBlur(x, (0, 0), 1.5).astype(np.float32), 0, 255)
               for x in g]
    sharpened = measures(unsharp, pts)
    assert ratios(sharpened, m)["sharpness"] > 1.2


def test_seam_band_is_a_ring_outside_the_lower_face():
    p = face_points(cy=100, s=30)
    band, normal = seam_band(p, S)
    assert band.any() and normal.shape == (S, S, 2)
    cx, chin = int(round(p[8, 0])), int(round(p[8, 1]))
    # 4 to 16 px out: the feathered mask border 8 px out, clear of the jaw line itself
    assert band[chin + 8, cx] and band[chin + 14, cx]
    assert not band[chin + 1, cx] and not band[chin + 20, cx]
    mouth = np.round(p[48:68].mean(0)).astype(int)
    assert not band[mouth[1], mouth[0]]  # nor inside the pasted region
    assert normal[chin + 8, cx, 1] > 0.9  # below the chin "across" points down
    assert np.linalg.norm(normal[band], axis=1) == pytest.approx(1.0, abs=1e-3)
    bigger, _ = seam_band(p * 2 + 0.5, 2 * S)
    assert bigger.sum() / band.sum() == pytest.approx(4.0, rel=0.15)  # scales with the crop


def test_a_hard_edged_paste_shows_more_seam_than_a_feathered_one(clean):
    _, g, pts, m = clean

    def pasted(sigma: float) -> list[np.ndarray]:
        out = []
        for img, p in zip(g, pts):
            # the pasted region as the retrieval renderer draws it: the hull of jaw, lower nose and
            # mouth dilated by 8 px; 30 grey levels brighter (a colour mismatch)
            hull = cv2.convexHull(p[[*range(2, 15), *range(31, 36), *range(48, 68)]]).reshape(-1, 2)
            alpha = np.zeros((S, S), np.uint8)
            cv2.fillConvexPoly(alpha, np.round(hull).astype(np.int32), 1)
            alpha = cv2.dilate(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17))).astype(np.float32)
            if sigma > 0:
                alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
            out.append(np.clip(img + 30.0 * alpha, 0, 255).astype(np.uint8))
        return out

    hard = measures(pasted(0), pts)
    soft = measures(pasted(RetrievalConfig.feather), pts)
    assert ratios(hard, m)["seam"] > 1.5
    assert hard["seam"] > 1.4 * soft["seam"]
    assert 1.0 < ratios(soft, m)["seam"] < 1.3
    # the mouth box lies inside the pasted region: a flat brightness offset does not flicker there
    assert ratios(hard, m)["flicker"] == pytest.approx(1.0, abs=0.05)


def test_seam_gradient_is_the_derivative_across_the_border():
    ramp = np.tile(np.arange(S, dtype=np.float32) * 2.0, (S, 1))  # 2 grey levels per px along x
    band = np.zeros((S, S), bool)
    band[100:120, 100:120] = True
    across_x = np.zeros((S, S, 2), np.float32)
    across_x[..., 0] = 1
    across_y = np.zeros((S, S, 2), np.float32)
    across_y[..., 1] = 1
    assert seam_gradient(ramp, band, across_x) == pytest.approx(2.0, abs=1e-4)
    assert seam_gradient(ramp, band, across_y) == pytest.approx(0.0, abs=1e-4)
    assert math.isnan(seam_gradient(ramp, np.zeros((S, S), bool), across_x))


def test_frames_without_a_face_are_skipped(clean):
    _, g, pts, m = clean
    valid = [True] * T
    valid[4] = False
    res = measures(g, pts, valid)
    assert res["valid_frames"] == T - 1 and res["pairs"] == T - 3  # the pairs (3, 4) and (4, 5) are gone
    assert all(np.isfinite(res[k]) for k in ("flicker", "sharpness", "seam"))
    none = measures(g, pts, [False] * T)
    assert none["valid_frames"] == 0 and math.isnan(none["flicker"])
    assert math.isnan(ratios(none, m)["sharpness"]) and math.isnan(ratios(m, none)["seam"])


def test_normalised_crops_make_frame_sizes_comparable(clean):
    frames, _, pts, _ = clean
    lm = np.stack(pts)
    valid = np.ones(T, bool)
    # the same video at 256 and at 2x (1:1 crops of a face in a larger frame, then shrunk back)
    small = measure_frames(normalised_frames(frames, lm, valid, (S, S)))
    up = [cv2.resize(f, (2 * S, 2 * S), interpolation=cv2.INTER_CUBIC) for f in frames]
    large = measure_frames(normalised_frames(up, lm * 2 + 0.5, valid, (2 * S, 2 * S)))
    r = ratios(large, small)
    assert r["flicker"] == pytest.approx(1.0, abs=0.15)
    assert r["seam"] == pytest.approx(1.0, abs=0.15)
    assert r["sharpness"] == pytest.approx(1.0, abs=0.3)


def test_cli_is_registered_and_checks_its_inputs(tmp_path):
    assert COMMANDS["quality"][0] == "studio.render.quality"
    top, _ = build_parser().parse_known_args(["quality", "a.mp4", "b.mp4"])
    assert top.command == "quality"
    with pytest.raises(InputError, match="does not exist"):
        quality_check(tmp_path / "missing.mp4", tmp_path / "also_missing.mp4")
