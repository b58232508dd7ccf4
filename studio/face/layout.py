"""The 68-point iBUG landmark layout and the index sets the paper uses.

All landmark arrays in the project are ``(..., 68, 2)`` float32 pixel (or normalized) x, y.
A "talking" vector is the 29 talking points flattened row-major: ``[x48, y48, x49, y49, ...]``
(20 mouth points first, then 9 jaw points), 58 numbers. A "cheek" vector is the 8 cheek points
flattened the same way, 16 numbers.
"""

from __future__ import annotations

import numpy as np

N_LANDMARKS = 68

JAW_LINE = tuple(range(0, 17))
BROW_RIGHT = tuple(range(17, 22))  # the subject's right brow: left in the image
BROW_LEFT = tuple(range(22, 27))
NOSE_BRIDGE = tuple(range(27, 31))
NOSE_LOWER = tuple(range(31, 36))
NOSE = NOSE_BRIDGE + NOSE_LOWER
EYE_RIGHT = tuple(range(36, 42))
EYE_LEFT = tuple(range(42, 48))
OUTER_LIP = tuple(range(48, 60))
INNER_LIP = tuple(range(60, 68))

MOUTH = OUTER_LIP + INNER_LIP  # 20 points, iBUG 48-67
JAW = tuple(range(4, 13))  # 9 points, iBUG 4-12
TALKING = MOUTH + JAW  # 29 points: what the mapping network predicts
CHEEK = (0, 1, 2, 3, 13, 14, 15, 16)  # 8 points: the rest of the jaw contour
STABLE = BROW_RIGHT + BROW_LEFT + NOSE + EYE_RIGHT + EYE_LEFT  # do not move with speech

N_MOUTH, N_JAW, N_TALKING, N_CHEEK = len(MOUTH), len(JAW), len(TALKING), len(CHEEK)
TALK_DIM = 2 * N_TALKING  # 58
CHEEK_DIM = 2 * N_CHEEK  # 16
MOUTH_DIM = 2 * N_MOUTH  # 40
PCA_DIM = 13

# Slices into a (..., 58) talking vector.
TALK_MOUTH = slice(0, MOUTH_DIM)
TALK_JAW = slice(MOUTH_DIM, TALK_DIM)

# Inner-lip top/bottom pairs (upper, lower) used to measure mouth opening.
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))

# Polylines for drawing (indices, closed).
CONTOURS: tuple[tuple[str, tuple[int, ...], bool], ...] = (
    ("jaw", JAW_LINE, False),
    ("brow_right", BROW_RIGHT, False),
    ("brow_left", BROW_LEFT, False),
    ("nose_bridge", NOSE_BRIDGE, False),
    ("nose_lower", (30,) + NOSE_LOWER + (30,), False),
    ("eye_right", EYE_RIGHT, True),
    ("eye_left", EYE_LEFT, True),
    ("outer_lip", OUTER_LIP, True),
    ("inner_lip", INNER_LIP, True),
)


def talking_vector(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 58): the 29 talking points, flattened."""
    p = np.asarray(points)
    return p[..., TALKING, :].reshape(*p.shape[:-2], TALK_DIM)


def cheek_vector(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 16): the 8 cheek points, flattened."""
    p = np.asarray(points)
    return p[..., CHEEK, :].reshape(*p.shape[:-2], CHEEK_DIM)


def mouth_vector(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 40): the 20 mouth points, flattened."""
    p = np.asarray(points)
    return p[..., MOUTH, :].reshape(*p.shape[:-2], MOUTH_DIM)


def with_talking(points: np.ndarray, talk: np.ndarray) -> np.ndarray:
    """Replace the 29 talking points of (..., 68, 2) ``points`` with (..., 58) ``talk``; a copy."""
    out = np.array(points, copy=True)
    out[..., TALKING, :] = np.asarray(talk).reshape(*talk.shape[:-1], N_TALKING, 2)
    return out


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...,): mean inner-lip gap (lower minus upper y), in the points' units."""
    p = np.asarray(points)
    up = p[..., [a for a, _ in INNER_LIP_PAIRS], 1]
    lo = p[..., [b for _, b in INNER_LIP_PAIRS], 1]
    return (lo - up).mean(axis=-1)


def jaw_opening(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...,): chin (8) to nose-tip (30) distance, in the points' units."""
    p = np.asarray(points)
    return np.linalg.norm(p[..., 8, :] - p[..., 30, :], axis=-1)
