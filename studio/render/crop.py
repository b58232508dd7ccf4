"""Square face crops that follow the head smoothly, with an exact mapping back to the frame.

A :class:`CropTrack` holds, per frame, the crop's centre (x, y) and side length in frame pixels.
They come from the STABLE landmarks (brows, eyes, nose: they do not move with speech), so an
opening jaw does not shake the crop:

- side   = ``cfg.side_scale`` x face scale (RMS radius of the stable points; the default 5.5
  keeps brows to chin inside with ~8% margin on real footage, like the paper's 720x720 crops)
- centre = mean of the stable points + ``cfg.down_offset`` x face scale along the face's "down"
  direction (perpendicular to the eye line, so it follows head roll)

both smoothed over time with a Savitzky-Golay filter (centre: ``cfg.centre_window`` frames,
side: ``cfg.side_window``), after bridging frames without a face by linear interpolation.

Coordinates: pixel centres sit at integer coordinates in both the frame and the crop. For a crop
of ``size`` S with centre c and side L, k = S / L and

    crop = k * (frame - c) + (S - 1) / 2          frame = (crop - (S - 1) / 2) / k + c

:meth:`CropTrack.matrix` is exactly this 2x3 affine; :meth:`crop` resamples the frame with it
(cv2.warpAffine, edges replicated where the crop leaves the frame) and :meth:`to_frame` is the
exact inverse of :meth:`to_crop`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from studio.errors import InputError, NoFaceError
from studio.face.layout import EYE_LEFT, EYE_RIGHT, STABLE
from studio.face.normalize import face_scale
from studio.render import RESAMPLE

SIZES = (256, 512, 720)  # the render sizes the project uses (paper: 720)


@dataclass(frozen=True)
class CropConfig:
    side_scale: float = 5.5  # crop side / face scale
    down_offset: float = 1.2  # centre shift from the stable-point mean towards the chin, in face scales
    centre_window: int = 9  # Savitzky-Golay window (frames, odd) for the centre
    side_window: int = 31  # ... and for the side (the face size changes slowly)
    polyorder: int = 2

    def __post_init__(self) -> None:
        if self.side_scale <= 0:
            raise ValueError("side_scale must be positive")
        if self.centre_window < 1 or self.side_window < 1:
            raise ValueError("smoothing windows must be >= 1 frame")


def raw_boxes(landmarks: np.ndarray, cfg: CropConfig = CropConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Unsmoothed crop boxes. landmarks (T, 68, 2) px -> centres (T, 2), sides (T,)."""
    p = np.asarray(landmarks, dtype=np.float64)
    scale = face_scale(p)
    across = p[..., EYE_LEFT, :].mean(axis=-2) - p[..., EYE_RIGHT, :].mean(axis=-2)
    across /= np.maximum(np.linalg.norm(across, axis=-1, keepdims=True), 1e-9)
    down = np.stack([-across[..., 1], across[..., 0]], axis=-1)  # across rotated +90 deg (y down)
    centre = p[..., STABLE, :].mean(axis=-2) + cfg.down_offset * scale[..., None] * down
    return centre, cfg.side_scale * scale


def _smooth(x: np.ndarray, window: int, polyorder: int) -> np.ndarray:
    """Savitzky-Golay along axis 0; the window shrinks to fit short sequences.

    The same as ``scipy.signal.savgol_filter(x, w, polyorder, axis=0, mode="interp")`` (the
    interior: the least-squares polynomial's value at each window's centre; the first and last
    half-windows: the polynomial fitted to the first / last window, evaluated there), in numpy:
    importing scipy.signal costs about two seconds, more than smoothing any clip.
    """
    x = np.asarray(x, np.float64)
    t = x.shape[0]
    w = min(window, t if t % 2 else t - 1)
    if w <= polyorder or w < 3:
        return x.copy()
    half = w // 2
    u = np.arange(-half, half + 1, dtype=np.float64)
    vander = u[:, None] ** np.arange(polyorder + 1)  # (w, p+1)
    fit = np.linalg.pinv(vander)  # (p+1, w): window values -> polynomial coefficients
    flat = x.reshape(t, -1)
    out = np.empty_like(flat)
    windows = np.lib.stride_tricks.sliding_window_view(flat, w, axis=0)  # (t-w+1, D, w)
    out[half:t - half] = np.einsum("ndw,w->nd", windows, fit[0])
    for rows, block in ((slice(0, half), flat[:w]), (slice(t - half, t), flat[t - w:])):
        coef = fit @ block  # (p+1, D)
        at = u[:half] if rows.start == 0 else u[half + 1:]
        out[rows] = (at[:, None] ** np.arange(polyorder + 1)) @ coef
    return out.reshape(x.shape)


def _fill_gaps(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation of rows where ``valid`` is False (ends hold the nearest value)."""
    if valid.all():
        return x
    t = np.arange(len(x))
    flat = x.reshape(len(x), -1)
    out = np.stack([np.interp(t, t[valid], flat[valid, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape(x.shape)


@dataclass(frozen=True, eq=False)
class CropTrack:
    """Per-frame square crops of one video.

    centres (T, 2) float64 frame px; sides (T,) float64 frame px; frame_size (width, height);
    valid (T,) bool: a face was found there (compose passes other frames through unchanged).
    """

    centres: np.ndarray
    sides: np.ndarray
    frame_size: tuple[int, int]
    valid: np.ndarray

    def __post_init__(self) -> None:
        t = len(self.sides)
        assert self.centres.shape == (t, 2), f"centres {self.centres.shape}, expected ({t}, 2)"
        assert self.valid.shape == (t,), f"valid {self.valid.shape}, expected ({t},)"

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, frame_size: tuple[int, int],
                       cfg: CropConfig = CropConfig(), valid: np.ndarray | None = None) -> "CropTrack":
        """landmarks (T, 68, 2) px; frame_size (width, height); valid (T,) bool or None (all)."""
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.ndim != 3 or lm.shape[1:] != (68, 2) or len(lm) == 0:
            raise InputError(f"Crop tracking needs landmarks of shape (T, 68, 2), got {lm.shape}.",
                             "Pass a clip's landmarks array (run `python -m studio preprocess`).")
        ok = np.ones(len(lm), bool) if valid is None else np.asarray(valid, bool).copy()
        ok &= np.isfinite(lm).all(axis=(1, 2))
        if not ok.any():
            raise NoFaceError("No frame of this video has a face to crop.",
                              "Use footage where the speaker's face is visible.")
        centre, side = raw_boxes(np.where(ok[:, None, None], lm, 0.0), cfg)
        centre = _smooth(_fill_gaps(centre, ok), cfg.centre_window, cfg.polyorder)
        side = _smooth(_fill_gaps(side, ok), cfg.side_window, cfg.polyorder)
        side = np.maximum(side, 1.0)
        w, h = frame_size
        return cls(centre, side, (int(w), int(h)), ok)

    def __len__(self) -> int:
        return len(self.sides)

    def select(self, indices: np.ndarray) -> "CropTrack":
        """The track of frames ``indices`` (e.g. a template extended to the speech's length)."""
        idx = np.asarray(indices, dtype=np.int64)
        return CropTrack(self.centres[idx], self.sides[idx], self.frame_size, self.valid[idx])

    def box(self, i: int) -> tuple[float, float, float, float]:
        """Crop i's outline in frame px: x0, y0, x1, y1 (may extend beyond the frame)."""
        (cx, cy), half = self.centres[i], self.sides[i] / 2
        return cx - half, cy - half, cx + half, cy + half

    def matrix(self, i: int, size: int) -> np.ndarray:
        """(2, 3) float64 affine: frame px -> crop px for frame i at crop ``size``."""
        k = size / self.sides[i]
        cx, cy = self.centres[i]
        o = (size - 1) / 2
        return np.array([[k, 0.0, o - k * cx], [0.0, k, o - k * cy]])

    def inverse_matrix(self, i: int, size: int) -> np.ndarray:
        """(2, 3) float64 affine: crop px -> frame px (the exact inverse of :meth:`matrix`)."""
        k = size / self.sides[i]
        cx, cy = self.centres[i]
        o = (size - 1) / 2
        return np.array([[1 / k, 0.0, cx - o / k], [0.0, 1 / k, cy - o / k]])

    def to_crop(self, points: np.ndarray, i: int, size: int) -> np.ndarray:
        """(..., 2) frame px -> (..., 2) crop px (float32 in, float32 out; float64 kept)."""
        return _apply(self.matrix(i, size), points)

    def to_frame(self, points: np.ndarray, i: int, size: int) -> np.ndarray:
        """(..., 2) crop px -> (..., 2) frame px; inverse of :meth:`to_crop`."""
        return _apply(self.inverse_matrix(i, size), points)

    def crop(self, frame: np.ndarray, i: int, size: int, interpolation: int = RESAMPLE) -> np.ndarray:
        """frame (H, W, 3) uint8 -> (size, size, 3) uint8 crop i; outside the frame: edges repeated.

        When the crop shrinks the face by more than 1.5x the frame is low-passed first so the crop
        does not alias. ``interpolation``: a cv2 flag (default bicubic, :data:`studio.render.RESAMPLE`).
        """
        m = self.matrix(i, size)
        k = m[0, 0]
        src = frame
        if k < 1 / 1.5:
            x0, y0, x1, y1 = self.box(i)
            h, w = frame.shape[:2]
            pad = int(np.ceil(3 / k))
            xa, ya = max(int(x0) - pad, 0), max(int(y0) - pad, 0)
            xb, yb = min(int(np.ceil(x1)) + pad, w), min(int(np.ceil(y1)) + pad, h)
            if xb > xa and yb > ya:
                # Only the crop's region (plus the filter's reach) is low-passed and sampled: the
                # warp reads inside it, and where the box leaves the frame the region ends at
                # the frame's edge, so edge replication is the same as on the whole frame.
                region = frame[ya:yb, xa:xb]
                m = m.copy()
                m[:, 2] += m[:, :2] @ np.array([xa, ya], np.float64)
                shrink = int(1 / (k * 1.5))  # an area (box) average down to >= 1.5x the crop's scale
                if shrink >= 2:
                    rh, rw = region.shape[0] // shrink, region.shape[1] // shrink
                    if rh >= 2 and rw >= 2:
                        region = cv2.resize(region[:rh * shrink, :rw * shrink], (rw, rh),
                                            interpolation=cv2.INTER_AREA)
                        # pixel j of the reduced region covers source pixels j*s .. j*s+s-1
                        m[:, :2] *= shrink
                        m[:, 2] += m[:, :2] @ np.array([(shrink - 1) / (2 * shrink)] * 2)
                        k = k * shrink
                sigma = 0.5 * (1 / k - 1)
                src = cv2.GaussianBlur(region, (0, 0), sigma) if sigma > 0.05 else region
        return cv2.warpAffine(src, m, (size, size), flags=interpolation,
                              borderMode=cv2.BORDER_REPLICATE)


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points)
    out = p.astype(np.float64) @ m[:, :2].T + m[:, 2]
    return out.astype(p.dtype if p.dtype.kind == "f" else np.float64)
