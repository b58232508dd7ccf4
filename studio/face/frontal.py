"""Move normalized landmarks between head poses: frontalize, and pose again.

Used to train the mapping network with conditioning from other moments (see
``studio.models.conditioning``): a training target seen in head pose A is re-drawn in the pose B
of another moment, so the network learns where a mouth sits in a pose without being able to
read articulation off the pose track.

Model (weak perspective, good for talking heads within about +-45 degrees): a point with
face-frame coordinates X = (x, y, z) (mm, the 3D mean face's axes, origin at its nose centre)
appears in normalized image coordinates (nose-centred, divided by the face scale; see
``studio.face.normalize``) at ``p = s(R) * (R @ X)[:2]``, where R is the head rotation
(``studio.face.pose.rotation_matrix``) and s(R) = 1 / the face scale of the mean face projected
with R, so that projected stable points have the unit RMS radius the normalization gives them.

``frontalize`` inverts this for each point with the DEPTH z taken from the mean face (mouth and
jaw move mostly in the face's own x-y plane), solving the 2x2 system ``R[:2, :2] (x, y) =
p / s - R[:2, 2] z``; it returns (x, y) scaled by the frontal s(I), i.e. the points as the same
normalization would give them in a frontal view. ``repose`` is the forward map. For one pose,
``repose(frontalize(p, pose), pose) == p`` up to float rounding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from studio.face import layout


@lru_cache(maxsize=1)
def _mean_face_centred() -> np.ndarray:
    from studio.face.meanface import mean_face

    m = np.asarray(mean_face(), np.float64)
    return m - m[list(layout.NOSE)].mean(axis=0)


def rotations(pose: np.ndarray) -> np.ndarray:
    """(T, 3) yaw, pitch, roll degrees -> (T, 3, 3) rotations R = Rz(roll) Rx(pitch) Ry(yaw)."""
    y, p, r = np.radians(np.asarray(pose, np.float64)).T
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.stack([np.cos(y), zero, -np.sin(y)], -1), np.stack([zero, one, zero], -1),
                   np.stack([np.sin(y), zero, np.cos(y)], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, np.cos(p), np.sin(p)], -1),
                   np.stack([zero, -np.sin(p), np.cos(p)], -1)], -2)
    rz = np.stack([np.stack([np.cos(r), -np.sin(r), zero], -1), np.stack([np.sin(r), np.cos(r), zero], -1),
                   np.stack([zero, zero, one], -1)], -2)
    return rz @ rx @ ry


def _scale(rot: np.ndarray) -> np.ndarray:
    """(T, 3, 3) -> (T,): 1 / face scale of the mean face's stable points projected with R."""
    # RMS radius of the projected points = sqrt(trace(P C P^T)), C their 3D covariance, P = R[:2]
    st = _mean_face_centred()[list(layout.STABLE)]
    d = st - st.mean(axis=0)
    cov = d.T @ d / len(d)
    p = rot[:, :2]
    return 1.0 / np.sqrt(np.einsum("tij,jk,tik->t", p, cov, p, optimize=True))


def _frontal_scale() -> float:
    return float(_scale(np.eye(3)[None])[0])


def frontalize(points: np.ndarray, pose: np.ndarray, index: tuple[int, ...] = layout.TALKING) -> np.ndarray:
    """points (T, N, 2) normalized, of the landmarks ``index`` (N of the 68), seen in ``pose``
    (T, 3) degrees -> (T, N, 2) the same points in a frontal view (same normalization)."""
    rot = rotations(pose)
    s = _scale(rot)
    z = _mean_face_centred()[list(index), 2]  # (N,)
    rhs = np.asarray(points, np.float64) / s[:, None, None] - rot[:, None, :2, 2] * z[None, :, None]
    a, b, c, d = rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1]
    inv = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2) / (a * d - b * c)[:, None, None]
    xy = rhs @ inv.transpose(0, 2, 1)  # one 2x2 inverse per frame, shared by its points
    return (xy * _frontal_scale()).astype(np.float32)


def repose(frontal: np.ndarray, pose: np.ndarray, index: tuple[int, ...] = layout.TALKING) -> np.ndarray:
    """The inverse of :func:`frontalize`: frontal (T, N, 2) -> (T, N, 2) seen in ``pose`` (T, 3)."""
    rot = rotations(pose)
    s = _scale(rot)
    z = _mean_face_centred()[list(index), 2]
    xyz = np.concatenate([np.asarray(frontal, np.float64) / _frontal_scale(),
                          np.broadcast_to(z[None, :, None], (*np.shape(frontal)[:2], 1))], axis=-1)
    p = xyz @ rot[:, :2].transpose(0, 2, 1)
    return (p * s[:, None, None]).astype(np.float32)


def move_talk(talk: np.ndarray, pose_from: np.ndarray, pose_to: np.ndarray) -> np.ndarray:
    """Talking vectors (T, 58) seen in ``pose_from`` (T, 3) -> as seen in ``pose_to`` (T, 3)."""
    pts = np.asarray(talk).reshape(len(talk), layout.N_TALKING, 2)
    return repose(frontalize(pts, pose_from), pose_to).reshape(len(talk), layout.TALK_DIM)


def move_to_frontal(talk: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Talking vectors (T, 58) seen in ``pose`` (T, 3) -> frontal (T, 58)."""
    pts = np.asarray(talk).reshape(len(talk), layout.N_TALKING, 2)
    return frontalize(pts, pose).reshape(len(talk), layout.TALK_DIM)
