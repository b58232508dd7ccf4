"""Lip-sync measures that compare two landmark tracks the way a viewer compares two videos.

Used by ``studio evaluate --protocol dubbing`` (predicted landmarks vs the real landmarks of the
speech's own video), by ``studio sync-check`` (landmarks re-detected on a rendered dub vs on the
real video) and by the benchmark. All functions are pure numpy.

Every measure is expressed in each track's OWN face frame, so that two faces in different head
poses, positions and sizes (a template and the real video of the speech) can be compared:

- the face frame of a frame: origin at the nose centre (mean of the 9 nose points), x axis along
  the outer eye corners (36 -> 45), unit = the face scale (RMS radius of the stable points,
  ``studio.face.normalize.face_scale``);
- ``inner`` opening: mean gap of the three inner-lip pairs (61-67, 62-66, 63-65) along the face's
  down axis, in face-scale units;
- ``outer`` opening: the gap 51-57 (outer lip, middle) the same way;
- ``chin`` drop: distance along the face's down axis from the nose centre to the chin (8). The
  chin sits ~25 mm behind the nose, so head pitch moves it in the image about as much as speech
  does: when template and reference move their heads differently, trust the lip openings more
  (undoing the pose with the mean face's depths did not fix it on synthetic heads: r with the
  true jaw opening 0.14 -> 0.23, while the inner-lip gap gives 0.96);
- mouth-shape LMD: mean Euclidean distance between the 20 mouth points of both tracks in their
  face frames, each with its mouth centroid removed (shape, not position), in face-scale units.

Series at different frame rates are put on a common time base (the reference's frames) by
linear interpolation before they are compared. ``best lag`` is the shift in frames (of the
reference's rate) that maximises Pearson r, searched in +-``max_lag``; a positive lag means the
compared track is LATE (it follows the reference after ``lag`` frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from studio.face import layout
from studio.face.normalize import face_scale, nose_centre

OPENINGS = ("inner", "outer", "chin")
MAX_LAG = 8  # frames each way searched for the best lag (0.27 s at 30 fps)


def face_frame(points: np.ndarray) -> np.ndarray:
    """(T, 68, 2) pixels -> (T, 68, 2) in each frame's own face frame (see module docstring)."""
    p = np.asarray(points, np.float64)
    eye = p[:, 45] - p[:, 36]
    ang = np.arctan2(eye[:, 1], eye[:, 0])
    c, s = np.cos(-ang), np.sin(-ang)
    rel = (p - nose_centre(p)[:, None]) / face_scale(p)[:, None, None]
    x = c[:, None] * rel[..., 0] - s[:, None] * rel[..., 1]
    y = s[:, None] * rel[..., 0] + c[:, None] * rel[..., 1]
    return np.stack([x, y], axis=-1)


def openings(points: np.ndarray) -> dict[str, np.ndarray]:
    """(T, 68, 2) landmarks (any units) -> {"inner", "outer", "chin"}: (T,) each, see docstring."""
    f = face_frame(points)
    inner = np.mean([f[:, lo, 1] - f[:, up, 1] for up, lo in layout.INNER_LIP_PAIRS], axis=0)
    outer = f[:, 57, 1] - f[:, 51, 1]
    chin = f[:, 8, 1]  # the origin is the nose centre
    return {"inner": inner, "outer": outer, "chin": chin}


def mouth_shape(points: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T, 20, 2): mouth points in the face frame, mouth centroid removed."""
    m = face_frame(points)[:, list(layout.MOUTH)]
    return m - m.mean(axis=1, keepdims=True)


def resample(x: np.ndarray, fps: float, n: int, fps_to: float) -> np.ndarray:
    """Series ``x`` (T, ...) at ``fps`` -> ``n`` frames at ``fps_to`` (linear; ends held)."""
    x = np.asarray(x, np.float64)
    if abs(fps - fps_to) < 1e-6 and len(x) == n:
        return x
    t_src = np.arange(len(x)) / fps
    t_dst = np.arange(n) / fps_to
    flat = x.reshape(len(x), -1)
    out = np.stack([np.interp(t_dst, t_src, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape(n, *x.shape[1:])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two (T,) series; 0.0 when either is constant."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def lagged_r(x: np.ndarray, ref: np.ndarray, lag: int) -> float:
    """r between ``x`` shifted back by ``lag`` frames and ``ref``: x[t + lag] vs ref[t]."""
    n = len(ref)
    if lag >= 0:
        return pearson(x[lag:n], ref[:n - lag])
    return pearson(x[:n + lag], ref[-lag:n])


def best_lag(x: np.ndarray, ref: np.ndarray, max_lag: int = MAX_LAG) -> tuple[int, float]:
    """(lag, r) maximising :func:`lagged_r` over lags in [-max_lag, max_lag]; ties -> smallest |lag|."""
    lags = sorted(range(-max_lag, max_lag + 1), key=abs)
    rs = [lagged_r(x, ref, k) for k in lags]
    i = int(np.argmax(rs))
    return lags[i], float(rs[i])


@dataclass(frozen=True)
class SeriesScore:
    """How one (T,) series follows a reference series of the same length."""

    r: float  # Pearson r at lag 0
    lag: int  # best lag in frames (> 0: late)
    r_best: float  # r at the best lag
    amplitude: float  # std(x) / std(ref)

    def to_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_r": self.r, f"{prefix}_lag": self.lag, f"{prefix}_r_best": self.r_best,
                f"{prefix}_amplitude": self.amplitude}


def score_series(x: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
                 max_lag: int = MAX_LAG) -> SeriesScore:
    """Score ``x`` against ``ref`` (both (T,)); frames outside ``mask`` are filled by interpolation
    for the lag search and left out of the amplitude."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if mask is not None and not np.all(mask):
        keep = np.flatnonzero(mask)
        ref = np.interp(np.arange(len(ref)), keep, ref[keep])
        x_amp, ref_amp = x[keep], ref[keep]
    else:
        x_amp, ref_amp = x, ref
    lag, r_best = best_lag(x, ref, max_lag)
    sd = float(np.std(ref_amp))
    return SeriesScore(r=pearson(x, ref), lag=lag, r_best=r_best,
                       amplitude=float(np.std(x_amp)) / sd if sd > 1e-12 else float("nan"))


def compare_tracks(points: np.ndarray, ref_points: np.ndarray, mask: np.ndarray | None = None,
                   max_lag: int = MAX_LAG, shape: bool = True) -> dict[str, float]:
    """Score landmarks (T, 68, 2) against reference landmarks (T, 68, 2) of the same length.

    Returns ``<inner|outer|chin>_<r|lag|r_best|amplitude>`` and, with ``shape``, ``mouth_lmd``
    (mean point distance of the mouth shapes, face-scale units; frames in ``mask`` only).
    """
    assert points.shape == ref_points.shape, f"tracks differ in shape: {points.shape} vs {ref_points.shape}"
    mask = np.ones(len(points), bool) if mask is None else np.asarray(mask, bool)
    out: dict[str, float] = {}
    a, b = openings(points), openings(ref_points)
    for name in OPENINGS:
        out.update(score_series(a[name], b[name], mask, max_lag).to_dict(name))
    if shape:
        d = np.linalg.norm(mouth_shape(points) - mouth_shape(ref_points), axis=-1).mean(axis=-1)
        out["mouth_lmd"] = float(d[mask].mean())
    return out


def log_energy(energy: np.ndarray) -> np.ndarray:
    """Per-frame RMS energy (T,) -> log energy with a floor 60 dB below the loudest frame."""
    e = np.asarray(energy, np.float64)
    floor = max(float(e.max()), 1e-8) * 1e-3
    return np.log(np.maximum(e, floor))


def energy_predictor(energy: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The trivial baseline: a least-squares linear fit of per-frame log RMS energy to ``ref``.

    energy (T,) RMS per frame; ref (T,) the series to predict (fitted on the same frames, so the
    baseline is if anything optimistic). Returns the fitted (T,) series.
    """
    x = log_energy(energy)
    m = np.ones(len(x), bool) if mask is None else np.asarray(mask, bool)
    a = np.stack([x[m], np.ones(int(m.sum()))], axis=1)
    coef, *_ = np.linalg.lstsq(a, np.asarray(ref, np.float64)[m], rcond=None)
    return x * coef[0] + coef[1]


def score_energy(energy: np.ndarray, ref_points: np.ndarray, mask: np.ndarray | None = None,
                 max_lag: int = MAX_LAG) -> dict[str, float]:
    """The log-energy predictor's scores on each opening (same keys as :func:`compare_tracks`)."""
    b = openings(ref_points)
    out: dict[str, float] = {}
    for name in OPENINGS:
        pred = energy_predictor(energy, b[name], mask)
        out.update(score_series(pred, b[name], mask, max_lag).to_dict(name))
    return out
