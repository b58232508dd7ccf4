"""Visual quality of a rendered dub, measured against a REAL video: flicker, sharpness, seams.

    python -m studio quality DUB.mp4 REAL.mp4 [--template TEMPLATE.mp4]

Mouth PSNR on single stills (``retrieval.reconstruction_scores``) needs the true frame; a dub has
none. These measures need only a real video of a face talking (ideally the same person saying the
same speech) and compare STATISTICS of the two, so they work on any dub:

Every video is read through the same normalisation: landmarks are detected with the project's
own detection (``studio.data.preprocess``, cached by content in a work folder), each frame is cut
to a square crop that follows the face (:class:`studio.render.crop.CropTrack`: 5.5 face scales
wide, from the stable brow / eye / nose points) resampled to ``size`` px and turned to grayscale
(0-255). A face therefore has the same size in crop pixels in every video, whatever the video's
resolution, and boxes and bands below are given in face scales (the RMS radius of the stable
points, :func:`studio.face.normalize.face_scale`; ~46 px in a 256 crop) or in px at a 256 crop.

- **flicker** (:func:`frame_change`): the mean absolute grayscale change between consecutive
  frames inside the mouth box (:func:`mouth_box`: ``mouth_width`` x ``mouth_height`` face scales
  centred on the mean of the 20 mouth points; for a pair of frames the box of their mean points,
  the same pixels in both). Averaged over every pair of consecutive frames with a face in both.
  Real speech moves the mouth, so a real video flickers too; a dub whose mouth jumps between
  retrieved frames, or shimmers, changes more. Report: dub / real (issue 12 target <= 1.3).
- **sharpness** (:func:`laplacian_variance`): the variance of the 3x3 Laplacian of the grayscale
  crop inside the mouth box of the frame, averaged over the frames with a face. Blur lowers it.
  Report: dub / real (target >= 0.8). Compression and noise raise it: compare videos encoded alike.
- **seam** (:func:`seam_band`, :func:`seam_gradient`): how abrupt the border of the pasted
  lower face is. The retrieval renderer replaces the hull of the jaw (points 2-14), the lower nose
  (31-35) and the mouth (``retrieval.REGION``), dilated by ``RetrievalConfig.mask_dilation``
  (8 px at 256) and feathered (Gaussian sigma ``feather``, 4 px at 256): its alpha falls from ~1
  on the hull to 0.5 at 8 px out and ~0 at 16 px out. The seam band is the ring of crop pixels
  from ``seam_inner`` = 4 px to ``seam_outer`` = 16 px (at 256) outside that hull, drawn from the
  video's own landmarks. It starts 4 px out so that the face's own jaw line (ON the hull) stays
  out of it, and reaches further out than in because the renderer's real mask is the union of
  the predicted hull (which the dub's re-detected landmarks follow) and the template's, which
  can only lie further out. The score of a frame is the RMS over the band of the grayscale
  derivative ACROSS the border (along the hull's outward normal, central differences, grey
  levels per px). RMS rather than the mean because a step of height h feathered over w px adds
  about h^2 / w to the mean square, the same step pasted with a hard edge adds h^2 (the mean
  absolute derivative would be h for both). Averaged over the frames with a face. The same ring
  of a real video measures the face's own edges there (cheek folds, nostrils, chin, neck), so
  the report is dub / real: > 1, the border carries extra edges (a seam, a colour step); < 1,
  the ring is smoother than real (e.g. a blurred or soft patch), which says nothing about a seam.
  The template row (the footage the dub was made from, identical to the dub outside the pasted
  region up to re-encoding) is the fairest reference: ``dub_vs_template`` gives dub / template
  for each measure. On synthetic faces a hard-edged 10-grey-level step raises the score by ~14 %
  and the same step feathered by 4 px by ~2 %; 30 levels: ~90 % and ~15 % (tests/test_quality.py).

Videos are compared over their common duration from t = 0 (a template shorter than that is not
looped: its row covers its own length). Each measure is per frame (or per pair of frames) and the
videos should have the same frame rate: a note says when they do not.

The command prints a short table on stderr and ONE JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from studio import media
from studio.errors import InputError, NoFaceError
from studio.face import layout
from studio.face.normalize import face_scale
from studio.fsutil import json_safe
from studio.render import REFERENCE_SIZE
from studio.render.crop import CropConfig, CropTrack
from studio.render.retrieval import REGION, RetrievalConfig
from studio.sync import (add_video_pair_arguments, check_video, check_videos, default_work_dir, detect_landmarks,
                         print_report)

log = logging.getLogger(__name__)

MIN_FRAMES = 10  # fewer frames with a face than this: nothing worth averaging
MEASURES = ("flicker", "sharpness", "seam")
TARGETS = {"flicker": ("<=", 1.3), "sharpness": (">=", 0.8)}  # issue 12, dub / real


@dataclass(frozen=True)
class QualityConfig:
    size: int = 256  # side of the normalised face crop, px
    mouth_width: float = 2.0  # mouth box, face scales (a mouth is ~1.45 wide, 0.5-1.0 tall)
    mouth_height: float = 1.4
    # seam band: px at 256 outside the hull of the pasted region (the renderer's mask border lies
    # mask_dilation = 8 px out, feathered with sigma feather = 4 px)
    seam_inner: float = RetrievalConfig.mask_dilation - RetrievalConfig.feather  # 4: clear of the jaw line
    seam_outer: float = RetrievalConfig.mask_dilation + 2 * RetrievalConfig.feather  # 16

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError("size must be >= 32 px")
        if self.mouth_width <= 0 or self.mouth_height <= 0 or self.seam_outer <= self.seam_inner:
            raise ValueError("mouth box sizes must be positive and seam_outer > seam_inner")


# -- pure measures ------------------------------------------------------------------------------------
def mouth_box(points: np.ndarray, size: int, cfg: QualityConfig = QualityConfig()) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) of ``cfg.mouth_width`` x ``cfg.mouth_height`` face scales
    centred on the mean of the 20 mouth points; points (68, 2) crop px; clipped to (size, size)."""
    p = np.asarray(points, np.float64)
    assert p.shape == (68, 2), f"points must be (68, 2), got {p.shape}"
    scale = float(face_scale(p))
    cx, cy = p[list(layout.MOUTH)].mean(axis=0)
    hw, hh = cfg.mouth_width * scale / 2, cfg.mouth_height * scale / 2
    x0, y0 = int(math.floor(cx - hw)), int(math.floor(cy - hh))
    x1, y1 = int(math.ceil(cx + hw)) + 1, int(math.ceil(cy + hh)) + 1
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


def frame_change(prev: np.ndarray, cur: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mean absolute difference of two grayscale frames (S, S) inside ``box`` (x0, y0, x1, y1)."""
    assert prev.shape == cur.shape and prev.ndim == 2, f"frames must be equal (S, S), got {prev.shape} {cur.shape}"
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return math.nan
    a = prev[y0:y1, x0:x1].astype(np.float32)
    b = cur[y0:y1, x0:x1].astype(np.float32)
    return float(np.abs(b - a).mean())


def laplacian_variance(gray: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Variance of the 3x3 Laplacian of grayscale (S, S) ``gray`` inside ``box``.

    The Laplacian is taken on the whole frame first, so the box's own edge adds nothing."""
    assert gray.ndim == 2, f"gray must be (S, S), got {gray.shape}"
    x0, y0, x1, y1 = box
    if x1 - x0 < 3 or y1 - y0 < 3:
        return math.nan
    lap = cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F, ksize=1)
    return float(lap[y0:y1, x0:x1].astype(np.float64).var())


def seam_band(points: np.ndarray, size: int, cfg: QualityConfig = QualityConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Where the pasted lower face's border lies, and which way is across it.

    points (68, 2) crop px of a (size, size) crop. Returns band (S, S) bool: pixels outside the
    hull of ``retrieval.REGION`` at a distance from ``seam_inner`` to ``seam_outer`` (px at 256,
    scaled with ``size``); normal (S, S, 2) float32: the unit outward normal of the hull (the
    gradient of the signed distance to it; (0, 0) where that is undefined).
    """
    p = np.asarray(points, np.float64)
    assert p.shape == (68, 2), f"points must be (68, 2), got {p.shape}"
    px = size / REFERENCE_SIZE
    hull = cv2.convexHull(p[list(REGION)].astype(np.float32)).reshape(-1, 2)
    inside = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(inside, np.round(hull * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d_in = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = d_out - d_in  # > 0 outside the hull
    band = (signed >= cfg.seam_inner * px) & (signed <= cfg.seam_outer * px)
    gy, gx = np.gradient(cv2.GaussianBlur(signed, (0, 0), 1.0))
    norm = np.hypot(gx, gy)
    ok = norm > 1e-3
    normal = np.zeros((size, size, 2), np.float32)
    normal[ok, 0] = gx[ok] / norm[ok]
    normal[ok, 1] = gy[ok] / norm[ok]
    return band & ok, normal


def seam_gradient(gray: np.ndarray, band: np.ndarray, normal: np.ndarray) -> float:
    """RMS over ``band`` of the grayscale derivative along ``normal`` (grey levels per px).

    gray (S, S); band (S, S) bool; normal (S, S, 2) unit vectors (x, y), from :func:`seam_band`."""
    assert gray.ndim == 2 and band.shape == gray.shape and normal.shape == gray.shape + (2,), \
        f"gray {gray.shape}, band {band.shape}, normal {normal.shape} do not match (S, S), (S, S), (S, S, 2)"
    if not band.any():
        return math.nan
    g = gray.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)  # central differences
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
    across = gx[band] * normal[band, 0] + gy[band] * normal[band, 1]
    return float(np.sqrt(np.mean(across.astype(np.float64) ** 2)))


def measure_frames(frames: Iterable[tuple[np.ndarray, np.ndarray, bool]],
                   cfg: QualityConfig = QualityConfig()) -> dict[str, float | int]:
    """The three measures of one video from its normalised frames, streamed.

    frames: (gray (S, S) uint8 or float, points (68, 2) crop px, valid) per frame, in order; a
    frame without a face (valid False) is skipped and breaks the pair chain for flicker.
    Returns {"flicker", "sharpness", "seam" (means; NaN when nothing was measured), "frames",
    "valid_frames", "pairs"}.
    """
    flicker: list[float] = []
    sharp: list[float] = []
    seam: list[float] = []
    n = valid_n = 0
    prev: tuple[np.ndarray, np.ndarray] | None = None
    for gray, points, valid in frames:
        n += 1
        if not valid:
            prev = None
            continue
        valid_n += 1
        size = gray.shape[0]
        assert gray.shape == (size, size), f"frames must be square grayscale (S, S), got {gray.shape}"
        pts = np.asarray(points, np.float64)
        if prev is not None:
            box = mouth_box((prev[1] + pts) / 2, size, cfg)
            flicker.append(frame_change(prev[0], gray, box))
        sharp.append(laplacian_variance(gray, mouth_box(pts, size, cfg)))
        band, normal = seam_band(pts, size, cfg)
        seam.append(seam_gradient(gray, band, normal))
        prev = (gray, pts)

    def mean(xs: list[float]) -> float:
        v = np.asarray(xs, np.float64)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else math.nan

    return {"flicker": mean(flicker), "sharpness": mean(sharp), "seam": mean(seam),
            "frames": n, "valid_frames": valid_n, "pairs": len(flicker)}


def ratios(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """{measure: a / b} for the three measures (NaN where b is 0 or either is missing)."""
    out = {}
    for k in MEASURES:
        x, y = a.get(k, math.nan), b.get(k, math.nan)
        out[k] = x / y if (math.isfinite(x) and math.isfinite(y) and y > 0) else math.nan
    return out


def normalised_frames(frames: Iterable[np.ndarray], landmarks: np.ndarray, valid: np.ndarray,
                      frame_size: tuple[int, int], size: int = 256,
                      crop_cfg: CropConfig = CropConfig()) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
    """Face-normalised grayscale crops of a video, for :func:`measure_frames`.

    frames: RGB (H, W, 3) uint8, the first T of them are used; landmarks (T, 68, 2) frame px;
    valid (T,) bool; frame_size (width, height). Yields (gray (size, size) uint8, points (68, 2)
    crop px, valid) per frame.
    """
    lm = np.asarray(landmarks, np.float64)
    track = CropTrack.from_landmarks(lm, frame_size, crop_cfg, valid=valid)
    for i, frame in zip(range(len(lm)), frames):
        # bilinear, as when the measure was defined: the ruler does not change with the renderers
        gray = cv2.cvtColor(track.crop(frame, i, size, cv2.INTER_LINEAR), cv2.COLOR_RGB2GRAY)
        yield gray, track.to_crop(lm[i], i, size), bool(track.valid[i])


# -- files ------------------------------------------------------------------------------------------------
def measure_video(video: str | os.PathLike[str], *, frames: int | None = None,
                  work_dir: str | os.PathLike[str] | None = None, backend: str = "mediapipe",
                  cfg: QualityConfig = QualityConfig(), progress: bool = False) -> dict[str, Any]:
    """Detect landmarks on the first ``frames`` frames of ``video`` (all when None; cached in
    ``work_dir``) and return :func:`measure_frames`' dict plus "fps". Raises InputError (missing
    or unreadable file), NoFaceError (fewer than MIN_FRAMES frames with a face)."""
    path, info = check_video(video, "video")
    work = Path(work_dir) if work_dir is not None else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    clip = detect_landmarks(path, info, info.frames if frames is None else int(frames), work, backend, progress,
                            check="quality check")
    n = clip.meta.frames
    res = measure_frames(normalised_frames(media.iter_frames(path, 0, n), clip.landmarks, clip.valid,
                                           (info.width, info.height), cfg.size), cfg)
    if res["valid_frames"] < MIN_FRAMES:
        raise NoFaceError(f"Only {res['valid_frames']} frames of {path.name} have a face.",
                          f"The quality check needs at least {MIN_FRAMES}: use footage where the face is visible.")
    return {**res, "fps": float(info.fps)}


def quality_check(dub_video: str | os.PathLike[str], real_video: str | os.PathLike[str], *,
                  template_video: str | os.PathLike[str] | None = None,
                  work_dir: str | os.PathLike[str] | None = None, backend: str = "mediapipe",
                  cfg: QualityConfig = QualityConfig(), progress: bool = False) -> dict[str, Any]:
    """Flicker, sharpness and seam of a dub (and of its template) against a real video.

    Returns {"dub": row, "template": row | None, "real": {measures}, "dub_vs_template": {ratios} |
    None, "seconds", "targets", "target_met", "notes", paths...} where a row is
    {"flicker": {"value", "real", "ratio"}, "sharpness": {...}, "seam": {...}, "frames",
    "valid_frames"} and ratio = value / real. Raises InputError, NoFaceError.
    """
    (dub_path, dub_info), (real_path, real_info), (tpl_path, tpl_info) = check_videos(
        dub_video, real_video, template_video, backend)
    seconds = min(dub_info.duration, real_info.duration)
    notes: list[str] = []
    if abs(dub_info.duration - real_info.duration) > 0.5:
        notes.append(f"the dub lasts {dub_info.duration:.2f} s and the real video {real_info.duration:.2f} s: "
                     f"the first {seconds:.2f} s of each are measured")
    for info, what in ((dub_info, "dub"), (tpl_info, "template")):
        if info is not None and abs(info.fps - real_info.fps) > 0.01:
            notes.append(f"the {what} runs at {info.fps:.3g} fps and the real video at {real_info.fps:.3g}: "
                         "flicker is per frame, so its ratio mixes frame rate and quality")

    def frames_of(info: media.VideoInfo) -> int:
        return int(min(info.frames, math.floor(seconds * info.fps + 1e-6)))

    kw = dict(work_dir=work_dir, backend=backend, cfg=cfg, progress=progress)
    real = measure_video(real_path, frames=frames_of(real_info), **kw)
    dub = measure_video(dub_path, frames=frames_of(dub_info), **kw)
    tpl = measure_video(tpl_path, frames=frames_of(tpl_info), **kw) if tpl_path is not None else None
    if tpl_info is not None and tpl_info.duration < seconds - 0.5:
        notes.append(f"the template ({tpl_info.duration:.2f} s) is shorter than the measured {seconds:.2f} s: "
                     "its row covers its own length (not looped)")

    for note in notes:
        log.warning("quality: %s", note)

    def row(m: dict[str, Any]) -> dict[str, Any]:
        r = ratios(m, real)
        return {**{k: {"value": m[k], "real": real[k], "ratio": r[k]} for k in MEASURES},
                "frames": m["frames"], "valid_frames": m["valid_frames"]}

    dub_row = row(dub)
    met = {k: (dub_row[k]["ratio"] <= t if op == "<=" else dub_row[k]["ratio"] >= t)
           if math.isfinite(dub_row[k]["ratio"]) else None for k, (op, t) in TARGETS.items()}
    result = {
        "dub": dub_row, "template": row(tpl) if tpl is not None else None,
        "real": {k: real[k] for k in (*MEASURES, "frames", "valid_frames")},
        "dub_vs_template": ratios(dub, tpl) if tpl is not None else None,
        "targets": {k: f"{op} {t}" for k, (op, t) in TARGETS.items()}, "target_met": met,
        "seconds": seconds, "fps": real_info.fps, "size": cfg.size, "backend": backend, "notes": notes,
        "dub_video": str(dub_path), "real_video": str(real_path),
        "template_video": str(tpl_path) if tpl_path else None,
    }
    return json_safe(result)


# -- report --------------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    """The rows as a small fixed-width text table (for people; the JSON is for programs)."""
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = "".join(f"{k + ' ' + c:>16}" for k in MEASURES for c in ("value", "ratio"))
    lines = [f"visual quality over {result['seconds']:.1f} s, crop {result['size']} px; ratio = row / real "
             f"(targets: flicker {result['targets']['flicker']}, sharpness {result['targets']['sharpness']})",
             f"{'row':<10}{head}"]
    real = result["real"]
    lines.append(f"{'real':<10}" + "".join(f"{f(real[k], '.3f'):>16}{'1':>16}" for k in MEASURES))
    for name in ("dub", "template"):
        r = result.get(name)
        if r is None:
            lines.append(f"{name:<10}{'(no template given)':>30}")
            continue
        lines.append(f"{name:<10}" + "".join(f"{f(r[k]['value'], '.3f'):>16}{f(r[k]['ratio'], '.3f'):>16}"
                                             for k in MEASURES))
    if result.get("dub_vs_template"):
        d = result["dub_vs_template"]
        lines.append("dub / template: " + ", ".join(f"{k} {f(d[k], '.3f')}" for k in MEASURES))
    met = result["target_met"]
    lines.append("targets met: " + ", ".join(f"{k} {'-' if v is None else ('yes' if v else 'NO')}"
                                              for k, v in met.items()))
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


# -- CLI -----------------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure the visual quality of a rendered dub against a real video: temporal flicker and "
        "sharpness of the mouth region and the visibility of the paste-back seam, each as dub / real, "
        "in face crops normalised for face scale (landmarks re-detected on every video). With "
        "--template, the same for the footage the dub was made from (no lip sync) as a baseline row. "
        "Prints a table on stderr and one JSON object on the last line of stdout.")
    add_video_pair_arguments(parser, "the rendered dub (mp4)",
                             "a real video of the same person (ideally of the same speech)",
                             "the dub's template video: adds the baseline row")
    parser.add_argument("--size", type=int, default=QualityConfig.size,
                        help="side of the normalised face crop in px (default %(default)s)")


def cli(args: argparse.Namespace) -> int:
    if args.size < 32:
        raise InputError(f"--size {args.size} is too small.", "Use a crop of at least 32 px (default 256).")
    result = quality_check(args.dub, args.real, template_video=args.template, work_dir=args.work_dir,
                           backend=args.backend, cfg=QualityConfig(size=args.size), progress=True)
    return print_report(result, table(result))
