"""Head pose (yaw, pitch, roll in degrees) from 68 2D landmarks, by PnP against the 3D mean face.

Camera: a pinhole with focal length = image width (in pixels), principal point = image centre,
no lens distortion. ``cv2.solvePnP`` (iterative Levenberg-Marquardt) finds the rotation R and
translation t with ``x_cam = R @ X_model + t`` for the mean face (``studio.face.meanface``,
OpenCV camera axes: x right, y down, z away from the camera). Each frame starts from the
previous frame's solution (``useExtrinsicGuess``), which keeps the sequence on one continuous
branch (PnP on a near-planar face has a mirror-ambiguous second minimum).

Only the STABLE points (brows, nose, eyes; ``studio.face.layout.STABLE``) are used, so a
talking mouth or an opening jaw does not tilt the estimated head.

Angle conventions (all in degrees, 0 0 0 = the face looks straight into the camera, upright):

- ``R = Rz(roll) @ Rx(pitch) @ Ry(yaw)``: yaw is applied first about the head's vertical axis,
  then pitch, then roll in the image plane.
- yaw > 0: the subject turns towards the image's right (the nose moves right in the image;
  that is the subject's own left).
- pitch > 0: the subject looks up (the nose moves up in the image).
- roll > 0: the face rotates clockwise as seen in the image (its image-right side goes down,
  i.e. the head tilts towards the subject's left shoulder).

Explicitly, with c/s the cosine/sine of the named angle::

    Ry(yaw)   = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    Rx(pitch) = [[1, 0, 0], [0, c, s], [0, -s, c]]
    Rz(roll)  = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import uniform_filter1d

from studio.face.layout import STABLE
from studio.face.meanface import mean_face

POSE_POINTS = STABLE


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) model -> camera rotation for angles in degrees (see the module docstring)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def euler_angles(rot: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrix`: (3, 3) -> (3,) yaw, pitch, roll in degrees."""
    r = np.asarray(rot, dtype=np.float64)
    pitch = np.arcsin(np.clip(-r[2, 1], -1.0, 1.0))
    yaw = np.arctan2(r[2, 0], r[2, 2])
    roll = np.arctan2(-r[0, 1], r[1, 1])
    return np.degrees([yaw, pitch, roll])


def camera_matrix(width: int, height: int) -> np.ndarray:
    """(3, 3) intrinsics: focal = width, principal point = image centre."""
    f = float(width)
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=np.float64)


def project(points3d: np.ndarray, rot: np.ndarray, tvec: np.ndarray, width: int, height: int) -> np.ndarray:
    """Project (N, 3) model points with pose (rot (3,3), tvec (3,)) -> (N, 2) pixels."""
    cam = np.asarray(points3d, np.float64) @ np.asarray(rot).T + np.asarray(tvec, np.float64).reshape(1, 3)
    k = camera_matrix(width, height)
    uv = cam @ k.T
    return (uv[:, :2] / uv[:, 2:3]).astype(np.float32)


def head_pose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """landmarks (T, 68, 2) pixels -> (T, 3) float32 yaw, pitch, roll in degrees.

    Frames are solved in order; each starts from the previous solution. A frame whose solution
    fails (degenerate points) repeats the previous angles (zeros before the first success).
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (T, 68, 2), got {pts.shape}")
    model = mean_face()[list(POSE_POINTS)]
    k = camera_matrix(width, height)
    dist = np.zeros(4)
    out = np.zeros((len(pts), 3), np.float32)
    rvec = tvec = None
    last = np.zeros(3, np.float32)
    for t, frame in enumerate(pts):
        img = np.ascontiguousarray(frame[list(POSE_POINTS)])
        if not np.isfinite(img).all():
            out[t] = last
            continue
        if rvec is None:
            ok, r, tr = cv2.solvePnP(model, img, k, dist, flags=cv2.SOLVEPNP_EPNP)
            if ok:
                ok, r, tr = cv2.solvePnP(model, img, k, dist, r, tr, useExtrinsicGuess=True,
                                         flags=cv2.SOLVEPNP_ITERATIVE)
        else:
            ok, r, tr = cv2.solvePnP(model, img, k, dist, rvec.copy(), tvec.copy(),
                                     useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if ok and np.isfinite(r).all() and np.isfinite(tr).all() and tr[2, 0] > 0:
            rvec, tvec = r, tr
            last = euler_angles(cv2.Rodrigues(r)[0]).astype(np.float32)
        out[t] = last
    return out


def smooth_pose(pose: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` frames of (T, 3) angles; edges repeat the end value.

    window <= 1 returns a copy. Angles are not wrapped (head poses stay far from +-180 degrees).
    """
    p = np.asarray(pose, dtype=np.float32)
    if window <= 1 or len(p) == 0:
        return p.copy()
    return uniform_filter1d(p, size=int(window), axis=0, mode="nearest").astype(np.float32)
