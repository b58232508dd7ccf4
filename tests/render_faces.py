"""Synthetic 68-point faces and matching images for the render tests (no footage needed).

``face_points`` builds an iBUG-68 layout from simple curves; ``face_image`` paints a face whose
lips and mouth opening follow those points, over a textured background, so renderers have real
structure to match, warp and blend.
"""

from __future__ import annotations

import cv2
import numpy as np


def _arc(n: int, a0: float, a1: float, rx: float, ry: float, cx: float, cy: float) -> np.ndarray:
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def face_points(cx: float = 128, cy: float = 118, s: float = 40, opening: float = 0.0,
                width: float = 1.0, roll_deg: float = 0.0) -> np.ndarray:
    """(68, 2) float32 px. s ~ face scale (px); opening 0 (closed) .. 1 (wide open)."""
    p = np.zeros((68, 2))
    jaw_drop = 0.5 * opening
    jaw = _arc(17, np.pi, 0.0, 1.9, -1.0, 0.0, 0.0)  # upper half-ellipse flipped below
    jaw[:, 1] = -jaw[:, 1] * (2.7 + jaw_drop) + 0.2
    p[0:17] = jaw
    p[17:22] = _arc(5, np.pi * 1.1, np.pi * 1.45, 0.9, 0.25, -0.75, -0.55)
    p[22:27] = _arc(5, np.pi * 1.55, np.pi * 1.9, 0.9, 0.25, 0.75, -0.55)
    p[27:31] = np.stack([np.zeros(4), np.linspace(-0.3, 0.8, 4)], 1)
    p[31:36] = np.stack([np.linspace(-0.35, 0.35, 5), 1.0 + 0.08 * np.abs(np.linspace(-1, 1, 5))], 1)
    for start, ex in ((36, -0.75), (42, 0.75)):
        e = _arc(6, np.pi, -np.pi * 2 / 3, 0.3, 0.12, ex, -0.1)
        p[start:start + 6] = e
    mw = 0.75 * width
    my = 1.75 + 0.5 * jaw_drop
    gap = 0.45 * opening
    outer_top = _arc(7, np.pi, 2 * np.pi, mw, 0.22, 0, my - gap / 2)
    outer_bot = _arc(7, 0.0, np.pi, mw, 0.3, 0, my + gap / 2)
    p[48:55] = outer_top
    p[55:60] = outer_bot[1:6]
    inner_top = _arc(5, np.pi, 2 * np.pi, mw * 0.8, 0.05 + gap / 2, 0, my)
    inner_bot = _arc(5, 0.0, np.pi, mw * 0.8, 0.05 + gap / 2, 0, my)
    p[60:65] = inner_top
    p[65:68] = inner_bot[1:4]
    th = np.deg2rad(roll_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return (p @ rot.T * s + [cx, cy]).astype(np.float32)


def background(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 smooth random texture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def face_image(points: np.ndarray, h: int = 256, w: int = 256, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 RGB face painted from (68, 2) points."""
    img = background(h, w, seed)
    sh = 4
    q = lambda idx: np.round(points[list(idx)] * (1 << sh)).astype(np.int32)  # noqa: E731
    head = np.concatenate([points[0:17], points[17:27][::-1] - [0, 0.15 * np.ptp(points[:, 1])]])
    cv2.fillPoly(img, [np.round(head * 16).astype(np.int32)], (200, 160, 130), cv2.LINE_AA, sh)
    # skin shading so colour matching and warps have a gradient to keep
    yy, xx = np.mgrid[0:h, 0:w]
    shade = (8 * np.sin(xx / 9.0) + 6 * np.cos(yy / 7.0)).astype(np.int16)
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, [np.round(head * 16).astype(np.int32)], 1, cv2.LINE_8, sh)
    img = np.where(inside[..., None] > 0, np.clip(img.astype(np.int16) + shade[..., None], 0, 255),
                   img).astype(np.uint8)
    for idx in (range(36, 42), range(42, 48)):
        cv2.fillPoly(img, [q(idx)], (40, 40, 60), cv2.LINE_AA, sh)
    for idx in (range(17, 22), range(22, 27)):
        cv2.polylines(img, [q(idx)], False, (80, 50, 30), 3, cv2.LINE_AA, sh)
    cv2.polylines(img, [q(range(27, 36))], False, (150, 110, 90), 2, cv2.LINE_AA, sh)
    cv2.fillPoly(img, [q(range(48, 60))], (170, 60, 70), cv2.LINE_AA, sh)
    cv2.fillPoly(img, [q(range(60, 68))], (30, 10, 15), cv2.LINE_AA, sh)
    # teeth: a light band along the upper inner lip
    top = points[60:65].copy()
    band = np.concatenate([top, top[::-1] + [0, 0.35 * max(np.ptp(points[60:68, 1]), 0.1)]])
    clip_mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(clip_mask, [q(range(60, 68))], 1, cv2.LINE_8, sh)
    teeth = img.copy()
    cv2.fillPoly(teeth, [np.round(band * 16).astype(np.int32)], (235, 235, 225), cv2.LINE_AA, sh)
    img = np.where(clip_mask[..., None] > 0, teeth, img)
    return img


def painted_clip(root, sha: str, missing: tuple[int, ...] = (), t: int = 20, size: int = 128):
    """A preprocessed clip folder ``root/clip`` of ``t`` painted faces whose mouth opens and
    closes, with its video; frames in ``missing`` have no detection. -> the folder (Path)."""
    from pathlib import Path

    from studio import media
    from studio.data.clip import Clip, ClipMeta
    from studio.face.normalize import face_scale

    root = Path(root)
    points = np.stack([face_points(64, 58, 20, opening=0.5 + 0.5 * np.sin(i / 2)) for i in range(t)])
    video = root / "video.mp4"
    with media.VideoWriter(video, fps=25, size=(size, size)) as vw:
        for p in points:
            vw.write(face_image(p, size, size))
    found = np.ones(t, bool)
    found[list(missing)] = False
    meta = ClipMeta(source=str(video), source_sha256=sha, fps=25.0, frames=t, width=size, height=size,
                    faces_found=int(found.sum()), backend="synthetic", audio_seconds=0.0, video=str(video))
    clip = Clip(meta=meta, landmarks=points, found=found, valid=np.ones(t, bool), pose=np.zeros((t, 3), np.float32),
                centre=points[:, 31:36].mean(1), scale=face_scale(points).astype(np.float32),
                boxes=np.tile(np.array([0, 0, size, size], np.float32), (t, 1)),
                audio=np.zeros((4 * t, 26), np.float32))
    clip.save(root / "clip")
    return root / "clip"
