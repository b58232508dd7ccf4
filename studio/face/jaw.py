"""The dub's mouth and jaw placed by the template's own face: pose-robust placement.

The mapping network predicts the 9 jaw points (iBUG 4-12) from the speech and a leak-free view
of the template's head pose (``studio.models.conditioning``: the cheek contour it is told is the
one a ridge regression expects for that pose, not the template's). Where that regression is off
(strong pitch or yaw, few such frames in the footage) the predicted jaw lands beside the
template's: on a three-quarter view of katie_hill the predicted chin sat 0.23 face scales from
where the head put it, and a renderer that draws what it is asked then draws a second jaw line
into the cheek.

What the speech decides about the jaw is one number per frame: how far the chin hangs below the
upper lip. :func:`anchor_jaw` keeps the template's own jaw contour (which is right for its pose
by construction, far side included) and moves it by the difference between the predicted and
the template's chin drop, each point along its own direction: :func:`fit_jaw_motion` measures
on the template footage how far each jaw point moves per unit of chin drop (the chin about
fully, the points near the ears hardly). Jaw edits (gain, offset, close-on-silence) act through
the predicted chin drop, so they keep working.

The mouth has the same trouble in a milder form: on a synthetic head turned 35 degrees the
predicted mouth was as wide as a frontal one and reached past the cheek's outline. Its
articulation (how open, how wide relative to its usual width) changes at syllable rates; where
it sits and how foreshortened it looks at a given turn changes with the head, slowly.
:func:`mouth_placement` measures, per frame, each mouth point's sideways offset and the upper
lip's height offset between the template's and the predicted mouth, low-passed over
``PLACEMENT_SIGMA_S`` seconds, and :func:`place_mouth` applies them: the mouth then sits where
the template's does and is as foreshortened, while its opening and its fast changes of shape
are the prediction's.

All points are normalized as in ``studio.face.normalize`` (nose centre, face scale, rotation
kept); the motion directions are measured with the head roll removed and turned back into each
frame's roll.
"""

from __future__ import annotations

import numpy as np

from studio.face import layout

UPPER_LIP = 51  # the top of the upper lip: the chin drop is measured from it
CHIN = 8
PLACEMENT_SIGMA_S = 0.3  # seconds: Gaussian low-pass of the mouth placement (slower than syllables)


def _roll(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...,): the eye line's angle (radians, image coordinates)."""
    across = points[..., layout.EYE_LEFT, :].mean(-2) - points[..., layout.EYE_RIGHT, :].mean(-2)
    return np.arctan2(across[..., 1], across[..., 0])


def _rotate(v: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Rotate (..., N, 2) vectors by (...,) angles."""
    c, s = np.cos(ang)[..., None], np.sin(ang)[..., None]
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def chin_drop(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) normalized -> (...,): the chin's distance below the upper lip along the face's
    down direction (perpendicular to the eye line), in face scales."""
    p = np.asarray(points, np.float64)
    d = _rotate((p[..., CHIN, :] - p[..., UPPER_LIP, :])[..., None, :], -_roll(p))[..., 0, :]
    return d[..., 1]


def pose_proxies(points: np.ndarray) -> np.ndarray:
    """(N, 68, 2) normalized -> (N, 2): the nose tip's offset from the eyes' centre, head roll
    removed, across (a yaw proxy) and down (a pitch proxy), in face scales."""
    p = np.asarray(points, np.float64)
    eyes = p[:, list(layout.EYE_RIGHT + layout.EYE_LEFT), :].mean(1)
    return _rotate((p[:, 30, :] - eyes)[:, None, :], -_roll(p))[:, 0, :]


# A jaw opens by turning about its hinges near the ears: its points move down with the chin,
# none far sideways.
MOTION_ACROSS = 0.3  # per face scale of chin drop, at most this much sideways


def fit_jaw_motion(points: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """(N, 68, 2) normalized footage frames -> (9, 2): how far each jaw point (4-12) moves, head
    roll removed, per face scale of chin drop.

    Least squares over the frames. The sideways part is fitted with the head's yaw and pitch
    (:func:`pose_proxies`) beside the chin drop and clipped to ``MOTION_ACROSS``: a head turning
    while the person speaks otherwise passes for jaw motion (obama_weekly_address: 1.0 face
    scales sideways at the jaw's corners, the jaw line then swung across the cheek). The
    downward part is the chin drop's alone: partialling the pose out of it, or clipping it to the
    chin's, lowered the rendered opening's correlation with the real mouth on the
    self-reenactment of katie_hill from 0.46 to 0.29-0.32 (docs/results/integrity.md).
    ``ridge`` keeps footage whose chin never moves from amplifying noise.
    """
    p = np.asarray(points, np.float64)
    drop = chin_drop(p)
    jaw = _rotate(p[:, list(layout.JAW), :] - p[:, None, UPPER_LIP, :], -_roll(p))
    y = jaw - jaw.mean(0)
    x = drop - drop.mean()
    down = np.einsum("n,nk->k", x, y[..., 1]) / ((x ** 2).sum() + ridge * len(x))
    both = np.column_stack([drop, pose_proxies(p)])
    both = both - both.mean(0)
    gram = both.T @ both + ridge * len(p) * np.eye(both.shape[1])
    across = np.linalg.solve(gram, both.T @ y[..., 0])[0]
    return np.stack([np.clip(across, -MOTION_ACROSS, MOTION_ACROSS), down], -1).astype(np.float32)


def anchor_jaw(talk: np.ndarray, template: np.ndarray, motion: np.ndarray,
               lips: np.ndarray | None = None) -> np.ndarray:
    """The wanted jaw on the template's contour. talk (T, 58) normalized wanted talking points
    (mouth and jaw, edits applied); template (T, 68, 2) normalized template points of the same
    frames; motion (9, 2) from :func:`fit_jaw_motion`; lips (T, 58) the talking points whose
    upper lip the wanted chin drop is measured from (default ``talk``; the unedited prediction,
    so that a mouth edit does not move the jaw). -> (T, 58): ``talk`` with its 9 jaw points
    replaced by the template's, moved by (wanted - template) chin drop along ``motion``."""
    t = np.asarray(template, np.float64)
    wanted = layout.with_talking(t, np.asarray(talk, np.float64))
    if lips is not None:
        ref = layout.with_talking(t, np.asarray(lips, np.float64))
        wanted[:, UPPER_LIP] = ref[:, UPPER_LIP]
    delta = chin_drop(wanted) - chin_drop(t)  # (T,)
    move = _rotate(delta[:, None, None] * np.asarray(motion, np.float64)[None], _roll(t))
    jaw = t[:, list(layout.JAW), :] + move
    out = np.array(talk, np.float32, copy=True)
    out[:, layout.TALK_JAW] = jaw.reshape(len(t), -1)
    return out


def _derolled_mouth(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 68, 2) normalized -> ((T, 20, 2) mouth points with the head roll removed, (T,) roll)."""
    roll = _roll(points)
    return _rotate(points[:, list(layout.MOUTH), :], -roll), roll


def mouth_placement(talk: np.ndarray, template: np.ndarray, fps: float,
                    sigma_s: float = PLACEMENT_SIGMA_S) -> np.ndarray:
    """(T, 21) low-passed placement of the template's mouth relative to the predicted one, head
    roll removed: for each of the 20 mouth points its sideways offset (on a turned head the far
    side's points bunch together, near the silhouette: a per-point offset moves them as the
    template shows them), and the height offset of the upper lip (the opening stays the
    prediction's). talk (T, 58) normalized prediction; template (T, 68, 2) normalized."""
    from studio.models.conditioning import gaussian_lowpass

    t = np.asarray(template, np.float64)
    pred, _ = _derolled_mouth(layout.with_talking(t, np.asarray(talk, np.float64)))
    tpl, _ = _derolled_mouth(t)
    up = layout.MOUTH.index(UPPER_LIP)
    dx = tpl[:, :, 0] - pred[:, :, 0]
    dy = tpl[:, up, 1] - pred[:, up, 1]
    return gaussian_lowpass(np.concatenate([dx, dy[:, None]], 1), sigma_s * fps).astype(np.float64)


def place_mouth(talk: np.ndarray, template: np.ndarray, placement: np.ndarray) -> np.ndarray:
    """Apply :func:`mouth_placement` ``placement`` (T, 21) to the mouth of ``talk`` (T, 58),
    template (T, 68, 2) normalized; the jaw is left as it is. -> (T, 58) float32."""
    t = np.asarray(template, np.float64)
    mouth, roll = _derolled_mouth(layout.with_talking(t, np.asarray(talk, np.float64)))
    x = mouth[:, :, 0] + placement[:, :layout.N_MOUTH]
    y = mouth[:, :, 1] + placement[:, layout.N_MOUTH:]
    placed = _rotate(np.stack([x, y], -1), roll)
    out = np.array(talk, np.float32, copy=True)
    out[:, layout.TALK_MOUTH] = placed.reshape(len(t), -1)
    return out
