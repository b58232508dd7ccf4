"""Landmark normalization as in the paper: relative to the nose centre, divided by a face scale.

Rotation is deliberately NOT removed: the mapping network is asked to produce mouth shapes that
already follow the template's head pose. ``denormalize`` is the exact inverse of ``normalize``.

Face scale: the RMS distance of the STABLE points (brows, nose, eyes; they do not move with
speech) from their mean. It is insensitive to mouth and jaw motion, and shrinks only mildly
(cos of the angle, on one axis) under out-of-plane rotation.
"""

from __future__ import annotations

import numpy as np

from studio.face.layout import NOSE, STABLE


def nose_centre(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 2): the mean of the 9 nose points."""
    return np.asarray(points)[..., NOSE, :].mean(axis=-2)


def face_scale(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...,): RMS distance of the stable points from their mean (> 0)."""
    s = np.asarray(points)[..., STABLE, :]
    d = s - s.mean(axis=-2, keepdims=True)
    return np.sqrt((d**2).sum(axis=-1).mean(axis=-1))


def normalize(points: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Pixels -> normalized. points (..., N, 2); centre (..., 2); scale (...,). Same shape out."""
    p = np.asarray(points, dtype=np.float64)
    return ((p - np.asarray(centre)[..., None, :]) / np.asarray(scale)[..., None, None]).astype(np.float32)


def denormalize(points: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Normalized -> pixels; the exact inverse of :func:`normalize` (up to float rounding)."""
    p = np.asarray(points, dtype=np.float64)
    return (p * np.asarray(scale)[..., None, None] + np.asarray(centre)[..., None, :]).astype(np.float32)


def normalize_flat(vec: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Like :func:`normalize` for flattened (..., 2N) vectors (talking or cheek)."""
    v = np.asarray(vec)
    pts = v.reshape(*v.shape[:-1], -1, 2)
    return normalize(pts, centre, scale).reshape(v.shape)


def denormalize_flat(vec: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Like :func:`denormalize` for flattened (..., 2N) vectors."""
    v = np.asarray(vec)
    pts = v.reshape(*v.shape[:-1], -1, 2)
    return denormalize(pts, centre, scale).reshape(v.shape)
