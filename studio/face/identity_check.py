"""Is the person in a template the subject's person? A hand-made appearance check.

A subject's models and renderer are one person's: dubbing a video of someone else with them puts
the subject's jaw line and (retrieval renderer) nose, lips and chin on the other face. This module
scores how alike two sets of face images are, so that the pipeline can refuse such a template.

Method (measured in ``docs/results/identity_check.md``):

1. Sample up to ``frames`` frames evenly from the frames where a face was found, the head is
   turned less than ``max_yaw`` degrees and the eyes are at least ``min_eye_distance`` apart.
2. Align each face to the 2D mean face (``studio.face.meanface``, millimetres) by a similarity
   transform of the points that do not move with speech or expression: the eye corners
   (36, 39, 42, 45), the nose bridge (27-30) and the nose base (31-35); resample a grey crop of
   the upper face (``region``: brows, eyes, nose; not the mouth or jaw, which speech and the dub
   change) at ``px_per_mm``. Larger faces are first halved with an image pyramid, so small and
   large faces are compared at the same detail.
3. Describe each crop by its image gradient orientations (unit vectors (cos t, sin t) per pixel):
   unchanged by brightness, contrast and gamma, so no further lighting normalization is needed.
4. A clip's (or a subject's) descriptor is the mean over its frames; the score of two
   descriptors is their cosine similarity. Orientations that are the person's add up; those of
   noise, blinks and expressions average out.

Landmark shape alone was measured not to separate people (eyes + nose shape after alignment: a
same-person distance larger than a different-person one), so the score is appearance only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from studio.errors import InputError, StudioError
from studio.face.meanface import mean_face

log = logging.getLogger(__name__)

ALIGN_POINTS = (36, 39, 42, 45, 27, 28, 29, 30, 31, 32, 33, 34, 35)  # eye corners, nose bridge and base
EYE_OUTER = (36, 45)  # outer eye corners: their distance is the face's size in pixels


class OtherPersonError(InputError):
    """A template shows another person than the subject it is to be dubbed with."""


@dataclass(frozen=True)
class IdentityConfig:
    """How faces are compared, and when a template counts as another person.

    threshold: a score below it is another person. Measured on the real footage of ../shared
    (``docs/results/identity_check.md``: 8 people in 16 clips, five of them re-encoded, shrunk,
    darkened or pasted small): the same person scored 0.77-0.96 (lowest: Obama clips against his
    other recordings), different people 0.61 at most (a young man against Obama, AOC against
    Katie Hill), over five frame samplings. 0.69 sits in the middle of that gap, about 0.08 from
    either side.
    """

    frames: int = 16  # frames sampled from a template clip
    subject_frames: int = 48  # frames sampled over all of a subject's clips (min_frames at least per clip)
    max_yaw: float = 25.0  # degrees; more turned frames are not used
    region: tuple[float, float, float, float] = (-70.0, 70.0, -80.0, 10.0)  # x0, x1, y0, y1 mm of the
    # mean face (y down; eyes at y = -40, nose base at y = 5, mouth corners at y = 28)
    px_per_mm: float = 0.5  # crop resolution: the outer eye corners end up 45 px apart
    min_frames: int = 8  # fewer usable frames: the clip cannot be judged (4 frames on both sides let
    # the same person score 0.64; 8 template frames against the subject's 48: 0.78 at worst)
    min_eye_distance: float = 24.0  # pixels between the outer eye corners; smaller faces cannot be judged
    threshold: float = 0.69

    def __post_init__(self) -> None:
        x0, x1, y0, y1 = self.region
        assert x1 > x0 and y1 > y0, f"region {self.region} must be (x0, x1, y0, y1) with x0 < x1, y0 < y1"
        assert self.px_per_mm > 0 and self.frames >= 1 and self.min_frames >= 1, "sizes must be positive"

    @property
    def crop_size(self) -> tuple[int, int]:
        """(width, height) of the aligned crop in pixels."""
        x0, x1, y0, y1 = self.region
        return int(round((x1 - x0) * self.px_per_mm)), int(round((y1 - y0) * self.px_per_mm))


@dataclass(frozen=True, eq=False)
class IdentityDescriptor:
    """One person's appearance in a set of frames.

    mean    (D,) float32 mean gradient-orientation field, D = 2 * crop width * crop height
    frames  number of frames averaged
    """

    mean: np.ndarray
    frames: int


@dataclass(frozen=True)
class IdentityMatch:
    score: float  # cosine similarity of the two descriptors, -1..1
    threshold: float

    @property
    def same_person(self) -> bool:
        return self.score >= self.threshold


# -- pure functions ---------------------------------------------------------------------------------

def canonical_points(config: IdentityConfig = IdentityConfig()) -> np.ndarray:
    """(68, 2) float64: the mean face's x, y in crop pixels."""
    x0, _, y0, _ = config.region
    return (mean_face()[:, :2] - (x0, y0)) * config.px_per_mm


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares rotation + uniform scale + translation taking ``src`` (K, 2) onto
    ``dst`` (K, 2), without reflection (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    assert src.shape == dst.shape and src.ndim == 2 and src.shape[1] == 2 and len(src) >= 2, \
        f"need matching (K, 2) point sets, got {src.shape} and {dst.shape}"
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ e @ vt
    var = (s ** 2).sum(1).mean()
    scale = float(np.trace(np.diag(sig) @ e) / var) if var > 0 else 1.0
    return np.hstack([scale * rot, (md - scale * rot @ ms)[:, None]])


def aligned_crop(frame: np.ndarray, landmarks: np.ndarray, config: IdentityConfig = IdentityConfig()) -> np.ndarray:
    """The upper face of ``frame`` (H, W, 3) RGB uint8 (or (H, W) grey) with its 68 ``landmarks``
    (68, 2) pixels, aligned to the mean face: (h, w) float32 grey, ``config.crop_size``."""
    assert landmarks.shape == (68, 2), f"landmarks must be (68, 2), got {landmarks.shape}"
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    grey = grey.astype(np.float32)
    pts = np.asarray(landmarks, np.float64)
    idx = list(ALIGN_POINTS)
    m = similarity_transform(pts[idx], canonical_points(config)[idx])
    # halve the image while the crop would shrink it by more than 2: resampling alone would alias
    while np.hypot(m[0, 0], m[0, 1]) < 0.5 and min(grey.shape) >= 4:
        grey = cv2.pyrDown(grey)
        pts = pts / 2  # pyrDown's pixel i is centred on pixel 2i
        m = similarity_transform(pts[idx], canonical_points(config)[idx])
    return cv2.warpAffine(grey, m, config.crop_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def orientation_field(crop: np.ndarray) -> np.ndarray:
    """(2 * h * w,) float32 [cos t, sin t] of the gradient direction t at each pixel of ``crop``
    (h, w). Flat pixels (no gradient) point along +x; across many frames they average out."""
    g = np.asarray(crop, np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    t = np.arctan2(gy, gx)
    return np.concatenate([np.cos(t).ravel(), np.sin(t).ravel()]).astype(np.float32)


def describe_frames(frames: Sequence[np.ndarray], landmarks: np.ndarray,
                    config: IdentityConfig = IdentityConfig()) -> IdentityDescriptor:
    """Descriptor of N face images: ``frames`` N x (H, W, 3) RGB uint8, ``landmarks`` (N, 68, 2)."""
    landmarks = np.asarray(landmarks, np.float32)
    assert len(frames) == len(landmarks) > 0, f"{len(frames)} frames for {len(landmarks)} landmark sets"
    fields = np.stack([orientation_field(aligned_crop(f, p, config)) for f, p in zip(frames, landmarks)])
    return IdentityDescriptor(fields.mean(0).astype(np.float32), len(frames))


def combine(descriptors: Sequence[IdentityDescriptor]) -> IdentityDescriptor:
    """One descriptor of the frames of several (frame-weighted mean)."""
    assert descriptors, "nothing to combine"
    n = np.array([d.frames for d in descriptors], np.float64)
    mean = (np.stack([d.mean for d in descriptors]) * n[:, None]).sum(0) / n.sum()
    return IdentityDescriptor(mean.astype(np.float32), int(n.sum()))


def score(a: IdentityDescriptor, b: IdentityDescriptor) -> float:
    """Cosine similarity of two descriptors, -1..1 (1: identical appearance)."""
    assert a.mean.shape == b.mean.shape, f"descriptors of different crops: {a.mean.shape} vs {b.mean.shape}"
    den = float(np.linalg.norm(a.mean) * np.linalg.norm(b.mean))
    return float(a.mean @ b.mean) / den if den > 0 else 0.0


def match(template: IdentityDescriptor, subject: IdentityDescriptor,
          config: IdentityConfig = IdentityConfig()) -> IdentityMatch:
    return IdentityMatch(score(template, subject), config.threshold)


def eye_distance(landmarks: np.ndarray) -> np.ndarray:
    """(...,) pixels between the outer eye corners of (..., 68, 2) landmarks."""
    a, b = EYE_OUTER
    return np.linalg.norm(landmarks[..., a, :] - landmarks[..., b, :], axis=-1)


def usable_frames(found: np.ndarray, pose: np.ndarray, landmarks: np.ndarray,
                  config: IdentityConfig = IdentityConfig()) -> np.ndarray:
    """Indices of the frames fit to judge: a face found (``found`` (T,) bool), turned less than
    ``max_yaw`` (``pose`` (T, 3) degrees), eyes at least ``min_eye_distance`` apart
    (``landmarks`` (T, 68, 2))."""
    ok = (np.asarray(found, bool) & (np.abs(pose[:, 0]) <= config.max_yaw)
          & (eye_distance(landmarks) >= config.min_eye_distance) & np.isfinite(landmarks).all(axis=(1, 2)))
    return np.flatnonzero(ok)


def spread(indices: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``indices`` (sorted), evenly spread over them."""
    if len(indices) <= n:
        return np.asarray(indices)
    return np.asarray(indices)[np.linspace(0, len(indices) - 1, n).round().astype(int)]


# -- clips (reads video frames) ---------------------------------------------------------------------

def clip_descriptor(clip, config: IdentityConfig = IdentityConfig(), frames: int | None = None
                    ) -> IdentityDescriptor | None:
    """Descriptor of a :class:`studio.data.clip.Clip` from ``frames`` (default ``config.frames``)
    of its video, or None when fewer than ``config.min_frames`` frames can be judged (no frontal
    enough face, a face too small) or the video cannot be read."""
    from studio import media

    usable = usable_frames(clip.found, clip.pose, clip.landmarks, config)
    if len(usable) < config.min_frames:
        log.info("%s: %d frames fit to compare faces (< %d)", clip.meta.source, len(usable), config.min_frames)
        return None
    pick = spread(usable, frames or config.frames)
    try:
        images = media.read_frames(clip.video_path, pick.tolist())
    except (StudioError, OSError) as exc:
        log.warning("cannot read %s to compare faces: %s", clip.video_path, exc)
        return None
    return describe_frames(images, clip.landmarks[pick], config)


def clips_descriptor(clips: Sequence, config: IdentityConfig = IdentityConfig()) -> IdentityDescriptor | None:
    """Descriptor of a subject's footage: ``config.subject_frames`` frames spread over ``clips``
    (at least ``min_frames`` from each), or None when none of them can be judged."""
    if not clips:
        return None
    per_clip = max(config.min_frames, config.subject_frames // len(clips))
    found = [d for d in (clip_descriptor(c, config, per_clip) for c in clips) if d is not None]
    return combine(found) if found else None
