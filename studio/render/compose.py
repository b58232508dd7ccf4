"""Paste rendered face crops back into the original frames and export the dubbed video.

``compose_frame`` maps a rendered (S, S) crop back into frame i with the exact inverse of the
crop's affine (:class:`studio.render.crop.CropTrack`) and blends it with a feathered mask, so only
the face region changes; every pixel where the mask is 0 keeps the original frame's value exactly.
The mask comes from the renderer (the retrieval renderer returns the region it changed) or from
:func:`face_mask` (the landmarks' hull, for the neural renderer, which redraws the whole crop).

Fallback (documented behaviour, not an error): a frame whose face was not found
(``track.valid[i]`` False) or that has no rendered crop (``None``) passes through unchanged.

``export`` streams frames through :class:`studio.media.VideoWriter` (H.264 yuv420p + AAC,
original resolution and fps, the new speech muxed in). The writer works on a temporary file that
is renamed only on success, so an error or a cancel mid-render never leaves a corrupt output.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from studio.errors import CancelledError, InputError
from studio.render import REFERENCE_SIZE, RESAMPLE
from studio.render.crop import CropTrack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComposeConfig:
    face_dilation: float = 6.0  # face_mask: hull dilation, px at 256
    face_feather: float = 5.0  # face_mask: Gaussian sigma of the edge, px at 256
    border_feather: float = 0.06  # mask=None: fade-out band at the crop border, fraction of S
    clip_to_face: bool = True  # render_sequence: a renderer's mask is cut to visible_face_mask
    face_inset: float = 1.0  # visible_face_mask: px at 256 inside the contour where it is still 0
    face_ramp: float = 3.0  # ... then rising to 1 over this many px at 256


def feathered_mask(polys: Sequence[np.ndarray], box: tuple[int, int, int, int], dilation: float,
                   sigma: float) -> np.ndarray:
    """(h, w) float32 alpha in [0, 1] over ``box`` = (x0, y0, x1, y1): the union of the convex
    polygons ``polys`` (each (M, 2) px), dilated by ``dilation`` px, with a Gaussian edge of
    ``sigma`` px. Drawn at reduced resolution (the edge is smooth anyway), then resized up."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    f = max(1, int(sigma // 2))
    hs, ws = -(-h // f), -(-w // f)
    m = np.zeros((hs, ws), np.uint8)
    shift = 4
    thick = int(round(2 * dilation / f))
    for poly in polys:
        q = np.round(((np.asarray(poly, np.float64) - [x0, y0] + 0.5) / f - 0.5) * (1 << shift)).astype(np.int32)
        cv2.fillConvexPoly(m, q, 255, cv2.LINE_AA, shift)
        if thick > 0:  # a thick outline = dilation of a convex polygon by a disc
            cv2.polylines(m, [q], True, 255, thick, cv2.LINE_AA, shift)
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigma / f)
    if f > 1:
        m = cv2.resize(m, (ws * f, hs * f), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return m.astype(np.float32) * (1 / 255)


OUTER_LIP = tuple(range(48, 60))
FACE_OUTLINE = tuple(range(0, 17)) + tuple(range(26, 16, -1))  # jaw contour, then the brows back


def face_outline(points: np.ndarray) -> np.ndarray:
    """(68, 2) -> (27, 2): the face's outline polygon: the jaw contour 0-16, closed over the
    brows (26-17). Not convex on turned heads; its inside is the visible face below the brows."""
    return np.asarray(points, np.float64)[list(FACE_OUTLINE)]


def outline_mask(faces: Sequence[np.ndarray], shape: tuple[int, int], inset: float, ramp: float) -> np.ndarray:
    """(h, w) float32 in [0, 1]: inside the union of the faces' outlines (each (68, 2) px, see
    :func:`face_outline`) and their outer lips' hulls, 0 outside and for ``inset`` px inside the edge, rising to 1 over
    ``ramp`` px."""
    inside = np.zeros(shape, np.uint8)
    for pts in faces:
        q = np.round(face_outline(pts) * 16).astype(np.int32)
        cv2.fillPoly(inside, [q], 255, cv2.LINE_8, 4)
        # the lips stand out of the cheek's outline on a strongly turned head: they are face too
        lips = cv2.convexHull(np.asarray(pts, np.float32)[list(OUTER_LIP)]).reshape(-1, 2)
        cv2.fillConvexPoly(inside, np.round(lips * 16).astype(np.int32), 255, cv2.LINE_8, 4)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    return np.clip((dist - inset) / max(ramp, 1e-6), 0.0, 1.0).astype(np.float32)


def visible_face_mask(template_points: np.ndarray, points: np.ndarray, size: int,
                      cfg: ComposeConfig = ComposeConfig()) -> np.ndarray:
    """(S, S) float32 in [0, 1]: where a dub may change the template crop.

    The inside of the template's face outline (:func:`face_outline`) and lips united with the
    wanted face's (the template's points with the predicted mouth and jaw, so a dropping chin may
    move down past the template's), exactly 0 outside both and for ``face_inset`` px inside, rising to 1 over
    ``face_ramp`` px. template_points, points (68, 2) crop px. The inset is at least 1.5 crop px,
    so the bilinear paste-back (:func:`compose_frame`) cannot reach a frame pixel outside the
    outline either: hair, background and the far side of a turned head stay the template's.
    """
    px = size / REFERENCE_SIZE
    return outline_mask((template_points, points), (size, size), max(cfg.face_inset * px, 1.5), cfg.face_ramp * px)


def face_mask(points: np.ndarray, size: int, cfg: ComposeConfig = ComposeConfig()) -> np.ndarray:
    """(S, S) float32: the hull of the 68 landmarks (crop px), dilated and feathered."""
    px = size / REFERENCE_SIZE
    hull = cv2.convexHull(np.asarray(points, np.float32)).reshape(-1, 2)
    return feathered_mask([hull], (0, 0, size, size), cfg.face_dilation * px, cfg.face_feather * px)


def border_mask(size: int, cfg: ComposeConfig = ComposeConfig()) -> np.ndarray:
    """(S, S) float32: 1 inside the crop, fading to 0 over ``border_feather`` x S at its edges."""
    band = max(cfg.border_feather * size, 1.0)
    ramp = np.clip((np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5) / band, 0, 1).astype(np.float32)
    return np.minimum(ramp[:, None], ramp[None, :])


def compose_frame(frame: np.ndarray, crop_img: np.ndarray | None, track: CropTrack, i: int,
                  mask: np.ndarray | None = None, cfg: ComposeConfig = ComposeConfig()) -> np.ndarray:
    """Blend rendered crop i into ``frame``.

    frame (H, W, 3) uint8; crop_img (S, S, 3) uint8 or None (pass through); mask (S, S) float
    in [0, 1] in crop px, or None for the whole crop with a feathered border. Returns a new
    (H, W, 3) uint8 frame (or ``frame`` itself when it passes through); pixels whose mask maps to
    0 are the original's exactly.
    """
    if crop_img is None or not track.valid[i]:
        return frame
    size = crop_img.shape[0]
    assert crop_img.shape == (size, size, 3), f"crop must be (S, S, 3), got {crop_img.shape}"
    alpha = border_mask(size, cfg) if mask is None else np.asarray(mask, np.float32)
    assert alpha.shape == (size, size), f"mask must be ({size}, {size}), got {alpha.shape}"
    ys, xs = np.nonzero(alpha > 0)
    if len(xs) == 0:
        return frame
    # the mask's bounding box in frame px (2 px margin for the bicubic footprint)
    corners = np.array([[xs.min() - 2, ys.min() - 2], [xs.max() + 2, ys.max() + 2]], np.float64)
    fc = track.to_frame(corners, i, size)
    h, w = frame.shape[:2]
    x0, y0 = max(int(np.floor(fc[0, 0])), 0), max(int(np.floor(fc[0, 1])), 0)
    x1, y1 = min(int(np.ceil(fc[1, 0])) + 1, w), min(int(np.ceil(fc[1, 1])) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return frame
    m = track.inverse_matrix(i, size).copy()
    m[:, 2] -= (x0, y0)
    dsize = (x1 - x0, y1 - y0)
    patch = cv2.warpAffine(np.ascontiguousarray(crop_img), m, dsize, flags=RESAMPLE,
                           borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, m, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = np.clip(a, 0, 1)
    out = frame.copy()
    region = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = cv2.blendLinear(patch, region, a, 1 - a)
    return out


def export(path: str | os.PathLike[str], frames: Iterable[np.ndarray],
           rendered: Iterable[object], track: CropTrack, fps: float,
           audio: np.ndarray | str | os.PathLike[str] | None = None, *,
           cfg: ComposeConfig = ComposeConfig(), progress: Callable[[int], None] | None = None,
           should_stop: Callable[[], bool] | None = None) -> Path:
    """Compose and write the dubbed video; returns ``path`` once it is complete.

    frames: T original frames (H, W, 3) uint8 RGB (the template frames in output order);
    rendered: T items, each None (pass through), a crop (S, S, 3), a (crop, mask) pair or a
    ``Rendered`` from a renderer (its ``image`` and ``mask`` are used); track: the crop track of
    the output sequence (``len(track) == T``; use ``track.select(indices)`` for an extended
    template); audio: 16 kHz float32 speech or a file with sound (muxed as is). ``should_stop()``
    returning True cancels (CancelledError); nothing is written then.
    """
    from studio.media import VideoWriter

    w, h = track.frame_size
    n = 0
    with VideoWriter(path, fps, (w, h), audio=audio) as writer:
        for frame, item in zip(frames, rendered, strict=True):
            if should_stop is not None and should_stop():
                raise CancelledError("Export cancelled.", "Start it again when you are ready.")
            if n >= len(track):
                raise InputError(f"More frames than the crop track holds ({len(track)}).",
                                 "Build the track for the whole output sequence (track.select).")
            if frame.shape != (h, w, 3):
                raise InputError(f"Frame {n} is {frame.shape[1]}x{frame.shape[0]}, the video is {w}x{h}.",
                                 "Pass the template's own frames (studio.media.iter_frames).")
            crop, mask = _unpack(item)
            writer.write(compose_frame(frame, crop, track, n, mask, cfg))
            n += 1
            if progress is not None:
                progress(n)
    log.info("wrote %s: %d frames at %.3f fps", path, n, fps)
    return Path(path)


def prepare_sequence(engine, lms, template) -> tuple:
    """(crop track, the renderer's state) of a whole output sequence: what every frame of it
    shares. Reusable across calls for the same ``lms`` (a preview, then another)."""
    from studio.render.base import sequence_track

    track = sequence_track(engine.crop_config, lms, template)
    return track, engine.prepare(lms, track)


def render_sequence(engine, frames: Iterable[np.ndarray], lms, template, *, start: int = 0,
                    stop: int | None = None, size: int = 256, cfg: ComposeConfig = ComposeConfig(),
                    prepared: tuple | None = None) -> Iterator[np.ndarray]:
    """Render and compose output frames ``start..stop`` (streamed, RGB uint8, template size).

    engine: a renderer (``studio.render.base.Renderer``); frames: the template frames of output
    frames start..stop, in order; lms: ``studio.pipeline.Landmarks`` (points / template (T, 68, 2)
    frame px, frame_index (T,)); template: the template Clip (size, and ``valid`` per frame:
    frames without a face pass through). The crop track and the renderer's preparation cover the
    whole sequence, so a preview of frame i equals frame i of the full render; ``prepared``
    (from :func:`prepare_sequence` for these ``lms``) skips recomputing them.
    """
    from studio.render.base import frame_inputs

    t = lms.points.shape[0]
    stop = t if stop is None else min(stop, t)
    size = engine.render_size(size)
    track, state = prepared if prepared is not None else prepare_sequence(engine, lms, template)
    for i, frame in zip(range(start, stop), frames):
        if not track.valid[i]:
            yield frame
            continue
        inputs = frame_inputs(track, frame, lms, i, size)
        out = engine.draw(inputs, i, state)
        mask = out.mask
        if cfg.clip_to_face:
            clip = visible_face_mask(inputs.template_points, inputs.points, size, cfg)
            mask = clip if mask is None else np.minimum(mask, clip)
        yield compose_frame(frame, out.image, track, i, mask, cfg)


def _unpack(item: object) -> tuple[np.ndarray | None, np.ndarray | None]:
    if item is None:
        return None, None
    if isinstance(item, np.ndarray):
        return item, None
    image = getattr(item, "image", None)
    if image is not None:
        return image, getattr(item, "mask", None)
    crop, mask = item  # a (crop, mask) pair
    return crop, mask
