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
it sits and how wide it looks at a given turn changes with the head, slowly. :func:`mouth_placement`
measures, per frame, the sideways offset, the upper lip's height and the width ratio between
the predicted and the template's mouth, low-passed over ``PLACEMENT_SIGMA_S`` seconds, and
:func:`place_mouth` applies them: the mouth then sits where the template's does and is as
foreshortened, while its opening and its fast changes of width are the prediction's.

All points are normalized as in ``studio.face.normalize`` (nose centre, face scale, rotation
kept); the motion directions are measured with the head roll removed and turned back into each
frame's roll.
"""

from __future__ import annotations

import numpy as np

from studio.face import layout

UPPER_LIP = 51  # the top of the upper lip: the chin drop is measured from it
CHIN = 8
CORNERS = (48, 54)  # outer mouth corners: the mouth's width
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


def fit_jaw_motion(points: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """(N, 68, 2) normalized footage frames -> (9, 2): how far each jaw point (4-12) moves, head
    roll removed, per face scale of chin drop (least squares over the frames; ``ridge`` keeps
    footage whose chin never moves from amplifying noise)."""
    p = np.asarray(points, np.float64)
    drop = chin_drop(p)
    jaw = _rotate(p[:, list(layout.JAW), :] - p[:, None, UPPER_LIP, :], -_roll(p))
    x = drop - drop.mean()
    y = jaw - jaw.mean(0)
    return (np.einsum("n,nkd->kd", x, y) / ((x ** 2).sum() + ridge * len(x))).astype(np.float32)


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
    """(T, 3) low-passed placement of the template's mouth relative to the predicted one: sideways
    offset of the mouth corners' midpoint (on a turned head the points bunch on the far side, so
    their mean is not the mouth's middle), height offset of the upper lip (face scales, head roll removed)
    and log width ratio. talk (T, 58) normalized prediction; template (T, 68, 2) normalized."""
    from studio.models.conditioning import gaussian_lowpass

    t = np.asarray(template, np.float64)
    pred, _ = _derolled_mouth(layout.with_talking(t, np.asarray(talk, np.float64)))
    tpl, _ = _derolled_mouth(t)
    ci, cj = (layout.MOUTH.index(c) for c in CORNERS)
    up = layout.MOUTH.index(UPPER_LIP)
    mid = lambda m: (m[:, ci, 0] + m[:, cj, 0]) / 2  # noqa: E731
    dx = mid(tpl) - mid(pred)
    dy = tpl[:, up, 1] - pred[:, up, 1]
    width = lambda m: np.maximum(np.abs(m[:, cj, 0] - m[:, ci, 0]), 1e-3)  # noqa: E731
    log_ratio = np.log(width(tpl) / width(pred))
    return gaussian_lowpass(np.stack([dx, dy, log_ratio], 1), sigma_s * fps).astype(np.float64)


def place_mouth(talk: np.ndarray, template: np.ndarray, placement: np.ndarray) -> np.ndarray:
    """Apply :func:`mouth_placement` ``placement`` (T, 3) to the mouth of ``talk`` (T, 58),
    template (T, 68, 2) normalized; the jaw is left as it is. -> (T, 58) float32."""
    t = np.asarray(template, np.float64)
    mouth, roll = _derolled_mouth(layout.with_talking(t, np.asarray(talk, np.float64)))
    ci, cj = (layout.MOUTH.index(c) for c in CORNERS)
    centre = (mouth[:, ci, 0] + mouth[:, cj, 0])[:, None] / 2
    x = (mouth[:, :, 0] - centre) * np.exp(placement[:, 2:3]) + centre + placement[:, 0:1]
    y = mouth[:, :, 1] + placement[:, 1:2]
    placed = _rotate(np.stack([x, y], -1), roll)
    out = np.array(talk, np.float32, copy=True)
    out[:, layout.TALK_MOUTH] = placed.reshape(len(t), -1)
    return out
