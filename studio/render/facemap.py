"""The synthetic facial map: what a renderer is asked to turn into a face.

``facial_map`` draws the template frame's 68 landmarks, with the 29 talking points (20 mouth +
9 jaw) replaced by the predicted ones, together with Canny edges of the template crop. Edges
inside the lower face (union of the template's and the prediction's mouth/jaw hulls, dilated)
are removed so the template's old mouth cannot leak into the render.

Channel layout of the (S, S, 3) uint8 map (RGB order as stored in arrays; PNG files keep it):

    channel 0  Canny edges of the template crop, lower face removed          (0 or 255)
    channel 1  face structure: jaw contour 0-16, brows, nose bridge and lower nose, both eyes
               (anti-aliased polylines, 255 on the line)
    channel 2  lips: outer lip 48-59 at 255, inner lip 60-67 at ``inner_lip_value`` (128)

Line width and the dilation are given at a 256 px crop and scale with the crop size, so a map
at 720 px looks like the 256 px map enlarged.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from studio.face import layout
from studio.render import REFERENCE_SIZE

log = logging.getLogger(__name__)

LIP_CONTOURS = ("outer_lip", "inner_lip")


@dataclass(frozen=True)
class FacemapConfig:
    canny_low: int = 50
    canny_high: int = 150
    blur_sigma: float = 1.0  # Gaussian blur before Canny, px at 256 (texture noise -> fewer edges)
    line_width: float = 1.0  # polyline thickness, px at 256
    dilation: float = 6.0  # lower-face hull dilation, px at 256
    inner_lip_value: int = 128
    edges: bool = True  # False: landmarks only (channel 0 stays empty)

    def __post_init__(self) -> None:
        if not 0 <= self.canny_low <= self.canny_high:
            raise ValueError("need 0 <= canny_low <= canny_high")
        if not 0 < self.inner_lip_value < 256:
            raise ValueError("inner_lip_value must be in 1..255")


def _px(value: float, size: int) -> float:
    return value * size / REFERENCE_SIZE


def lower_face_mask(template_points: np.ndarray, predicted_talk: np.ndarray, size: int,
                    dilation_px: float) -> np.ndarray:
    """(S, S) bool: union of the template's and the prediction's talking-point hulls, dilated.

    template_points (68, 2) crop px; predicted_talk (58,) crop px.
    """
    mask = np.zeros((size, size), np.uint8)
    pred = np.asarray(predicted_talk, np.float64).reshape(layout.N_TALKING, 2)
    for pts in (np.asarray(template_points, np.float64)[list(layout.TALKING)], pred):
        hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    r = int(round(dilation_px))
    if r > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)


def draw_landmarks(points: np.ndarray, size: int, cfg: FacemapConfig = FacemapConfig()) -> np.ndarray:
    """(68, 2) crop px -> (S, S, 2) uint8: channel 0 face structure, channel 1 lips (see module doc)."""
    out = np.zeros((2, size, size), np.uint8)
    thickness = max(1, int(round(_px(cfg.line_width, size))))
    shift = 4  # sub-pixel precision for cv2 drawing
    p = np.round(np.asarray(points, np.float64) * (1 << shift)).astype(np.int32)
    for name, idx, closed in layout.CONTOURS:
        if name in LIP_CONTOURS:
            plane, value = out[1], 255 if name == "outer_lip" else cfg.inner_lip_value
        else:
            plane, value = out[0], 255
        cv2.polylines(plane, [p[list(idx)].reshape(-1, 1, 2)], closed, int(value), thickness,
                      lineType=cv2.LINE_AA, shift=shift)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def template_edges(template_crop: np.ndarray, cfg: FacemapConfig = FacemapConfig()) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (S, S) uint8 Canny edges (0 / 255)."""
    gray = cv2.cvtColor(np.ascontiguousarray(template_crop), cv2.COLOR_RGB2GRAY)
    sigma = _px(cfg.blur_sigma, gray.shape[0])
    if sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    return cv2.Canny(gray, cfg.canny_low, cfg.canny_high)


def facial_map(template_crop: np.ndarray, template_points: np.ndarray, predicted_talk: np.ndarray,
               cfg: FacemapConfig = FacemapConfig()) -> np.ndarray:
    """The synthetic facial map of one frame (pure function).

    template_crop (S, S, 3) uint8 RGB; template_points (68, 2) crop px; predicted_talk (58,)
    crop px (20 mouth then 9 jaw points, x/y interleaved). Returns (S, S, 3) uint8, channels as in
    the module docstring.
    """
    crop = np.asarray(template_crop)
    assert crop.ndim == 3 and crop.shape[0] == crop.shape[1] and crop.shape[2] == 3, \
        f"template_crop must be (S, S, 3), got {crop.shape}"
    tp = np.asarray(template_points, np.float64)
    assert tp.shape == (68, 2), f"template_points must be (68, 2), got {tp.shape}"
    talk = np.asarray(predicted_talk, np.float64).reshape(-1)
    assert talk.shape == (layout.TALK_DIM,), f"predicted_talk must be (58,), got {talk.shape}"
    size = crop.shape[0]
    out = np.zeros((size, size, 3), np.uint8)
    if cfg.edges:
        edges = template_edges(crop, cfg)
        edges[lower_face_mask(tp, talk, size, _px(cfg.dilation, size))] = 0
        out[..., 0] = edges
    out[..., 1:] = draw_landmarks(layout.with_talking(tp, talk), size, cfg)
    return out


def facial_maps(template_crops: np.ndarray, template_points: np.ndarray, predicted_talk: np.ndarray,
                cfg: FacemapConfig = FacemapConfig()) -> np.ndarray:
    """Batched :func:`facial_map`: (T, S, S, 3), (T, 68, 2), (T, 58) -> (T, S, S, 3) uint8."""
    return np.stack([facial_map(c, p, t, cfg)
                     for c, p, t in zip(template_crops, template_points, predicted_talk)])


# -- CLI ---------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clip_dir", help="a preprocessed clip folder (python -m studio preprocess)")
    parser.add_argument("--frame", type=int, default=0, help="frame index")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--size", type=int, default=256, help="crop size in px (256, 512, 720)")
    parser.add_argument("--side-by-side", action="store_true",
                        help="write crop | map side by side instead of the map alone")
    parser.add_argument("--canny-low", type=int, default=FacemapConfig.canny_low)
    parser.add_argument("--canny-high", type=int, default=FacemapConfig.canny_high)


def cli(args: argparse.Namespace) -> int:
    from studio import media
    from studio.data.clip import Clip
    from studio.errors import InputError
    from studio.render.crop import CropTrack

    clip = Clip.load(args.clip_dir)
    t = clip.meta.frames
    if not 0 <= args.frame < t:
        raise InputError(f"Frame {args.frame} is outside the clip (it has {t} frames).",
                         f"Pick --frame between 0 and {t - 1}.")
    cfg = FacemapConfig(canny_low=args.canny_low, canny_high=args.canny_high)
    track = CropTrack.from_landmarks(clip.landmarks, (clip.meta.width, clip.meta.height),
                                     valid=clip.valid)
    frame = media.read_frames(clip.video_path, [args.frame])[0]
    crop = track.crop(frame, args.frame, args.size)
    pts = track.to_crop(clip.landmarks[args.frame], args.frame, args.size)
    fmap = facial_map(crop, pts, layout.talking_vector(pts), cfg)
    image = np.concatenate([crop, fmap], axis=1) if args.side_by_side else fmap
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise InputError(f"Could not write {out}.", "Use a .png path in a writable folder.")
    log.info("wrote %s (frame %d, %d px)", out, args.frame, args.size)
    return 0
