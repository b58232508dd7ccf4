"""Make the bundled, licence-clean sample media in sample_media/ (deterministic).

    .venv/bin/python scripts/make_sample_media.py [--out sample_media] [--weights FACE_LANDMARKER]

Writes
  template.mp4          37.5 s, 384x384, 25 fps, H.264 + AAC: a talking head with 3D head motion,
                        blinks and speech-driven mouth and jaw motion
  template_speech.wav   the template's speech (16 kHz mono 16-bit)
  speech.wav            a second, different sentence set to dub onto it (11.9 s, with a 1 s
                        pause in the middle)

How it is made
  Face: ``skimage.data.astronaut()``: scikit-image's copy of NASA's portrait of astronaut Eileen
  Collins (NASA Great Images database; "no known copyright restrictions, released into the
  public domain"), cropped around the head and upscaled.
  Speech: espeak-ng (formant synthesis; ``apt-get install espeak-ng``) reading English sentences
  written for this project, resampled to 16 kHz, with a faint noise floor so silences are not
  digitally empty.
  Animation: the face's 478-point MediaPipe mesh is detected once in the still photo. Per frame,
  the points move by (1) a speech-driven articulation: ``studio.data.synth.articulation`` gives
  open / spread / protrude from the speech (log filterbank energies, with a look-ahead), which
  closes the lips over the photo's teeth, opens the jaw as a rotation about a hinge behind the
  face (points move by their depth in front of the hinge), lifts the upper lip and widens or
  rounds the mouth; (2) blinks; (3) a smooth 3D head rotation (nominal yaw +-24, pitch +-8,
  roll +-5 degrees, sums of slow sinusoids; see YAW_MAX) about a pivot at the top of the neck,
  plus a small sway, projected orthographically. Two rings of extra points (the head outline
  with the hair, moving with the head; a static outer ring) and the image border hold the
  background still. The photo is warped piecewise-affinely over a Delaunay triangulation of the
  points (drawn far to near, so the turning face occludes itself), and the open mouth is filled
  with a dark interior and the photo's own upper teeth, which move with the skull.

Requirements: espeak-ng on PATH and the MediaPipe FaceLandmarker bundle (face_landmarker.task;
``--weights`` or the studio's weights folder, $STUDIO_WEIGHTS_DIR). Nothing else is downloaded.
The outputs are committed, so using the studio needs neither.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.signal
import soundfile as sf
from scipy.spatial import Delaunay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.audio import SAMPLE_RATE  # noqa: E402
from studio.data.synth import articulation  # noqa: E402

log = logging.getLogger("make_sample_media")

SIZE = 384
WIDEN = 1.2  # the rotation ellipsoid's size relative to the face outline (see rotation_depth)
# Nominal head rotation limits (degrees) of the warp. A photo warped under orthographic
# projection shows less parallax than a real head: landmark-based pose estimation (solvePnP on
# the 68 points) reads the yaw as about 0.45 x nominal, so 24 here is about +-10 measured.
YAW_MAX, PITCH_MAX, ROLL_MAX = 24.0, 8.0, 5.0
FPS = 25
CROP = (5, 107, 230)  # top, left, side of the square head crop in the 512x512 photo
LEAD_IN_S, LEAD_OUT_S = 0.6, 0.8  # silence before and after the template's speech
VOICE, SPEED = "en-us+f3", 150  # espeak-ng voice and words per minute
NOISE_DBFS = -62.0

TEMPLATE_TEXT = (
    "Hello, and welcome to the studio. Today I would like to tell you a little about flying in "
    "space. Before every mission, the crew trains for many months on the ground. We practise each "
    "step until it feels natural. When the engines start, you feel a deep "
    "rumble, and then a steady push that presses you into your seat. A few minutes later, "
    "everything becomes quiet, and you are floating. The view of the Earth is simply beautiful: "
    "blue oceans, white clouds, and city lights at night. Thank you for listening, "
    "and see you next time."
)
DUB_TEXT = (
    "<speak>Good morning, everyone. This short message was recorded for a dubbing test."
    "<break time=\"1000ms\"/>"
    "The weather is fine, the coffee is hot, and the robots are working very hard.</speak>"
)

# MediaPipe face-mesh vertex sets.
INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)  # corner to corner
INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
EYES = (  # (upper lid, lower lid) vertices, outer to inner corner, pairwise
    ((246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155)),
    ((466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382)),
)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
EARS = (234, 454)
UPPER_JAW_ANCHORS = (0, 37, 267, 39, 269, 2, 98, 327, 61, 291)  # move with the skull only


# ------------------------------------------------------------------------------------------------
# speech

def espeak(text: str, tmp: Path, ssml: bool = False) -> np.ndarray:
    """Synthesize ``text`` with espeak-ng -> (S,) float32 at 16 kHz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (apt-get install -y espeak-ng).")
    wav = tmp / "espeak.wav"
    args = [exe, "-v", VOICE, "-s", str(SPEED), "-w", str(wav)] + (["-m"] if ssml else []) + [text]
    subprocess.run(args, check=True, capture_output=True)
    x, rate = sf.read(wav, dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    g = np.gcd(int(rate), SAMPLE_RATE)
    return scipy.signal.resample_poly(x, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)


def finish_speech(x: np.ndarray, seed: int, lead_in: float = 0.3, lead_out: float = 0.3) -> np.ndarray:
    """Pad with silence, normalize to -3 dBFS peak and add a faint deterministic noise floor."""
    x = np.concatenate([np.zeros(int(lead_in * SAMPLE_RATE), np.float32), x,
                        np.zeros(int(lead_out * SAMPLE_RATE), np.float32)])
    x = x / max(np.abs(x).max(), 1e-6) * 10 ** (-3 / 20)
    noise = np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
    noise = scipy.signal.lfilter([1.0], [1.0, -0.9], noise).astype(np.float32)  # brownish
    noise *= 10 ** (NOISE_DBFS / 20) / noise.std()
    return np.clip(x + noise, -1, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the face and its mesh

def face_image() -> np.ndarray:
    """The astronaut photo's head, cropped square and resized to SIZE: (SIZE, SIZE, 3) RGB."""
    from skimage.data import astronaut

    top, left, side = CROP
    crop = astronaut()[top:top + side, left:left + side]
    return cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


def detect_mesh(image: np.ndarray, weights: Path) -> np.ndarray:
    """(H, W, 3) RGB -> (468, 3) mesh vertices in pixels (z in the same scale, + = away)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(weights)), num_faces=1)
    with vision.FaceLandmarker.create_from_options(opts) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
    if not result.face_landmarks:
        raise SystemExit("no face found in the photo")
    h, w = image.shape[:2]
    pts = np.array([[p.x * w, p.y * h, p.z * w] for p in result.face_landmarks[0][:468]], np.float64)
    return pts


def find_weights(path: str | None) -> Path:
    if path:
        return Path(path)
    from studio.face.weights import weights_path

    return weights_path("face_landmarker", download=False)


# ------------------------------------------------------------------------------------------------
# motion

def head_motion(n: int, fps: float) -> np.ndarray:
    """(n, 5): yaw, pitch, roll (degrees), x, y sway (pixels); smooth and bounded."""
    t = np.arange(n) / fps

    def waves(parts: tuple[tuple[float, float, float], ...]) -> np.ndarray:
        return sum(a * np.sin(2 * np.pi * t / period + phase) for a, period, phase in parts)

    def soft(x: np.ndarray, limit: float) -> np.ndarray:
        return limit * np.tanh(x / limit)

    yaw = soft(waves(((20.0, 14.0, 0.3), (8.0, 4.9, 1.1), (2.5, 1.7, 2.0))), YAW_MAX)
    pitch = soft(waves(((5.5, 8.3, 2.0), (3.0, 3.1, 0.4), (1.0, 1.3, 4.0))), PITCH_MAX)
    roll = soft(waves(((3.8, 10.1, 1.7), (1.6, 3.7, 5.1))), ROLL_MAX)
    sway_x = waves(((5.0, 12.2, 0.9), (1.5, 4.1, 2.2)))
    sway_y = waves(((2.5, 6.7, 3.3),))
    return np.stack([yaw, pitch, roll, sway_x, sway_y], axis=1)


def blinks(n: int, fps: float, seed: int = 7) -> np.ndarray:
    """(n,) eyelid closure in [0, 1]: a blink every 2.2-5.5 s (close 80 ms, open 150 ms)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    out = np.zeros(n)
    start = rng.uniform(1.0, 2.5)
    while start < t[-1]:
        rise = np.clip((t - start) / 0.08, 0, 1)
        fall = np.clip(1 - (t - start - 0.12) / 0.15, 0, 1)
        out = np.maximum(out, np.minimum(rise, fall) * (t >= start))
        start += rng.uniform(2.2, 5.5)
    return 0.95 * np.sin(0.5 * np.pi * out) ** 2  # 0.95: the lids meet without folding


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (degrees) in image axes (x right, y down, z away): roll @ pitch @ yaw."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0, 1)
    return u * u * (3 - 2 * u)


@dataclass
class Rig:
    """The photo, its points (mesh + rings + border) and the per-point motion weights."""

    image: np.ndarray
    src: np.ndarray  # (P, 3) all points, pixels
    n_mesh: int
    head_weight: np.ndarray  # (P,) how much each point follows the head's rotation
    jaw: np.ndarray  # (P,) jaw displacement per pixel of lower-lip drop (weight x lever arm)
    upper_lip: np.ndarray  # (P,) weight of moving with the upper lip
    lower_lip: np.ndarray  # (P,) weight of moving with the lower lip (closing)
    lip_gap: np.ndarray  # (P,) the photo's inner-lip gap at each point's x (closing scale)
    spread: np.ndarray  # (P,) horizontal displacement per unit of spread
    lids: np.ndarray  # (P,) eyelid displacement (pixels down) at full closure
    pivot: np.ndarray  # (3,)
    gap0: float  # the photo's inner-lip gap at the centre, pixels
    gap_max: float  # inner-lip gap at open = 1
    triangles: np.ndarray  # (K, 3)
    moving_triangles: np.ndarray  # (L,) indices of triangles with a moving vertex


def build_rig(image: np.ndarray, mesh: np.ndarray) -> Rig:
    n = mesh.shape[0]
    x, y, z = mesh[:, 0], mesh[:, 1], mesh[:, 2]
    face_w = float(np.linalg.norm(mesh[EARS[1], :2] - mesh[EARS[0], :2]))
    up = mesh[list(INNER_UPPER)]
    lo = mesh[list(INNER_LOWER)]
    corners = up[[0, -1], :2]
    mouth_w = float(corners[1, 0] - corners[0, 0])
    xs = up[:, 0]
    order = np.argsort(xs)

    def line(values: np.ndarray, at: np.ndarray) -> np.ndarray:
        return np.interp(at, xs[order], values[order])

    y_up, y_lo = line(up[:, 1], x), line(lo[:, 1], x)
    gap_at_x = np.clip(line(lo[:, 1] - up[:, 1], x), 0, None)
    gap0 = float(mesh[14, 1] - mesh[13, 1])
    y_mid = 0.5 * (y_up + y_lo)
    beyond = np.maximum(np.maximum(corners[0, 0] - x, x - corners[1, 0]), 0)  # lateral distance

    # Jaw: below the lip line (sharp between the lips, soft over the cheeks), times the lever arm.
    soft = 1.0 + 0.25 * beyond
    jaw_member = _smoothstep((y - y_mid + soft) / (2 * soft))
    hinge_z = float(z[list(EARS)].mean())
    lever = np.clip((hinge_z - z) / (hinge_z - mesh[14, 2]), 0, 1.3)
    lateral = np.exp(-(beyond / (0.35 * face_w)) ** 2)
    jaw = jaw_member * lever * (0.35 + 0.65 * lateral)
    jaw[list(EARS)] = 0.0

    # Lip regions: the lips' own thickness moves fully, the skin above / below falls off.
    sigma = 0.06 * face_w
    lat = np.exp(-(beyond / (0.04 * face_w)) ** 2)
    thick_up = line(up[:, 1] - mesh[[61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291], 1], x)
    thick_lo = line(mesh[[61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291], 1] - lo[:, 1], x)
    d_up = y_up - y  # > 0 above the upper inner lip
    d_lo = y - y_lo  # > 0 below the lower inner lip
    upper_lip = np.where(d_up >= -0.5, np.exp(-(np.maximum(d_up - thick_up, 0) / sigma) ** 2), 0.0) * lat
    lower_lip = np.where(d_lo >= -0.5, np.exp(-(np.maximum(d_lo - thick_lo, 0) / sigma) ** 2), 0.0) * lat
    upper_lip[list(INNER_UPPER)] = 1.0
    lower_lip[list(INNER_LOWER)] = 1.0
    for c in (78, 308, 61, 291):
        upper_lip[c] = lower_lip[c] = 0.0

    # Spread: horizontal, proportional to the position across the mouth, falling off around it.
    centre = mesh[list(INNER_UPPER + INNER_LOWER), :2].mean(axis=0)
    rx, ry = 0.8 * mouth_w, 0.6 * mouth_w
    r2 = ((x - centre[0]) / rx) ** 2 + ((y - centre[1]) / ry) ** 2
    spread = np.clip((x - centre[0]) / (0.5 * mouth_w), -1, 1) * np.exp(-r2) * 0.5 * mouth_w

    # Eyelids: the upper lid comes down to the lower; the skin above follows a little.
    lids = np.zeros(n)
    for upper, lower in EYES:
        gaps = mesh[list(lower), 1] - mesh[list(upper), 1]
        lids[list(upper)] = gaps
        ex = mesh[list(upper), 0]
        eo = np.argsort(ex)
        lid_y = np.interp(x, ex[eo], mesh[list(upper), 1][eo])
        lid_gap = np.interp(x, ex[eo], gaps[eo])
        inside = (x > ex.min() - 2) & (x < ex.max() + 2)
        above = (lid_y - y > 0.5) & inside
        fall = np.exp(-((lid_y - y) / (1.2 * gaps.max())) ** 2) * 0.6
        lids = np.where(above & (lids == 0), lid_gap * fall, lids)

    # Rings around the head: the outline with the hair follows the head; an outer ring stays.
    oval = mesh[list(FACE_OVAL)]
    cx, cy = oval[:, 0].mean(), oval[:, 1].mean()
    ang = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    head_c = np.array([cx, cy - 0.28 * face_w])
    ax_a, ax_b = 0.86 * face_w, 1.05 * face_w
    ring_a = np.stack([head_c[0] + ax_a * np.cos(ang), head_c[1] + ax_b * np.sin(ang)], 1)
    ring_b = np.stack([head_c[0] + 1.35 * ax_a * np.cos(ang), head_c[1] + 1.3 * ax_b * np.sin(ang)], 1)
    down = np.clip(np.sin(ang), 0, 1)  # 1 at the bottom (the neck)
    ring_a_w = 1.0 - 0.75 * down
    ring_a = np.clip(ring_a, 10, SIZE - 10)  # the hair's top is near the frame's edge
    keep_b = (ring_b[:, 0] > 2) & (ring_b[:, 0] < SIZE - 2) & (ring_b[:, 1] > 2) & (ring_b[:, 1] < SIZE - 2)
    ring_b = ring_b[keep_b]
    edge = np.linspace(-1, SIZE, 7)
    border = np.array([(a, b) for a in edge for b in edge if a in (edge[0], edge[-1]) or b in (edge[0], edge[-1])])
    pivot = np.array([cx, float(mesh[list(EARS), 1].mean()) + 0.45 * face_w, hinge_z + 0.1 * face_w])

    extra_2d = np.concatenate([ring_a, ring_b, border])
    depth, centre_z = rotation_depth(mesh, oval, WIDEN)
    pivot[2] = centre_z
    extra = np.concatenate([extra_2d, np.full((len(extra_2d), 1), centre_z)], axis=1)
    src = np.concatenate([mesh[:, :2], depth[:, None]], axis=1)
    src = np.concatenate([src, extra])
    zeros = np.zeros(len(extra))
    head_weight = np.concatenate([np.ones(n), ring_a_w, np.zeros(len(ring_b) + len(border))])
    tri = Delaunay(src[:, :2]).simplices
    moves = head_weight > 0
    moving = np.flatnonzero(moves[tri].any(axis=1))

    def ext(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, zeros])

    return Rig(image=image, src=src, n_mesh=n, head_weight=head_weight, jaw=ext(jaw),
               upper_lip=ext(upper_lip), lower_lip=ext(lower_lip), lip_gap=ext(gap_at_x),
               spread=ext(spread), lids=ext(lids), pivot=pivot, gap0=gap0, gap_max=0.42 * mouth_w,
               triangles=tri, moving_triangles=moving)


def rotation_depth(mesh: np.ndarray, oval: np.ndarray, widen: float = 1.1) -> tuple[np.ndarray, float]:
    """(N,) depths used for the head rotation: a smooth ellipsoid fitted to the mesh plus the
    mesh's own relief (smoothed) toward the centre of the face.

    The raw mesh depths change steeply where the face turns away at its outline; rotating them
    would fold the warp's triangles there. On the ellipsoid (``widen`` x the face outline) the
    outline is still away from the ellipsoid's silhouette, so the yaw used here folds nothing.
    """
    x, y, z = mesh[:, 0], mesh[:, 1], mesh[:, 2]
    cx, cy = oval[:, 0].mean(), oval[:, 1].mean()
    a = widen * 0.5 * np.ptp(oval[:, 0])
    b = widen * 0.5 * np.ptp(oval[:, 1])
    u2 = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    shell = np.sqrt(np.clip(1 - u2, 0, 1))
    design = np.stack([np.ones_like(shell), -shell], axis=1)
    (zc, depth), *_ = np.linalg.lstsq(design, z, rcond=None)
    ellipsoid = zc - depth * shell
    relief = z - ellipsoid
    d2 = ((mesh[:, None, :2] - mesh[None, :, :2]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2 * (0.05 * a) ** 2))
    relief = kernel @ relief / kernel.sum(axis=1)
    centre_weight = np.clip(1 - u2 / 0.64, 0, 1) ** 2
    return ellipsoid + centre_weight * relief, float(zc)


def pose_points(rig: Rig, pts3: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Rotate (P, 3) points about the pivot by the pose, blended by head weight; -> (P, 3)
    (x, y projected orthographically; z the depth after rotation, + = away)."""
    rot = rotation(*pose[:3])
    turned = (pts3 - rig.pivot) @ rot.T + rig.pivot
    turned[:, :2] += pose[3:5]
    return pts3 + rig.head_weight[:, None] * (turned - pts3)


def frame_points(rig: Rig, art: np.ndarray, blink: float, pose: np.ndarray) -> np.ndarray:
    """Articulation (open, spread, protrude), blink, pose -> (P, 3) destination points and depth."""
    opening, spread, protrude = (float(v) for v in art)
    gap = opening * rig.gap_max
    # fraction of the photo's gap closed; 0.92: the lips meet without folding the warp
    close = min(max(0.0, rig.gap0 - gap) / max(rig.gap0, 1e-6), 0.92)
    drop = max(0.0, gap - rig.gap0)
    p = rig.src.copy()
    dy = (0.4 * close * rig.lip_gap * rig.upper_lip - 0.6 * close * rig.lip_gap * rig.lower_lip
          + 0.88 * drop * rig.jaw - 0.12 * drop * rig.upper_lip + blink * rig.lids)
    width = np.where(spread > 0, 0.16 * spread, 0.24 * spread) - 0.08 * protrude
    p[:, 0] += width * rig.spread
    p[:, 1] += dy
    return pose_points(rig, p, pose)


# ------------------------------------------------------------------------------------------------
# rendering

def _affines(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Per-triangle affine maps dst -> src: (K, 3, 2) with [x, y, 1] @ M = source position."""
    ones = np.ones(dst.shape[:2] + (1,))
    a = np.concatenate([dst, ones], axis=2)  # (K, 3, 3)
    a = a + np.eye(3)[None] * 1e-9 * (np.abs(np.linalg.det(a)) < 1e-9)[:, None, None]
    return np.linalg.solve(a, src)


def _signed_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a = points[tri]
    return 0.5 * ((a[:, 1, 0] - a[:, 0, 0]) * (a[:, 2, 1] - a[:, 0, 1])
                  - (a[:, 2, 0] - a[:, 0, 0]) * (a[:, 1, 1] - a[:, 0, 1]))


def warp(rig: Rig, dst3: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp of the photo so that its points land on ``dst3[:, :2]`` (P, 3).

    Triangles are drawn far to near (painter's algorithm on the rotated depth), those that
    turned their back to the camera first of all, so the turning face occludes itself instead
    of folding, and no gap is left where the back-facing ones are.
    """
    tri = rig.triangles[rig.moving_triangles]
    dst = dst3[:, :2]
    front = np.sign(_signed_areas(dst, tri)) == np.sign(_signed_areas(rig.src[:, :2], tri))
    tri = tri[np.lexsort((-dst3[tri, 2].mean(axis=1), front))]
    m = _affines(rig.src[:, :2][tri], dst[tri])
    ids = np.full((SIZE, SIZE), -1, np.int32)
    shift = 4
    scaled = np.round(dst[tri] * (1 << shift)).astype(np.int32)
    for k in range(len(tri)):
        cv2.fillConvexPoly(ids, scaled[k], int(k), lineType=cv2.LINE_8, shift=shift)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    mapx, mapy = xx.copy(), yy.copy()
    sel = ids >= 0
    mk = m[ids[sel]].astype(np.float32)  # (n, 3, 2)
    px, py = xx[sel], yy[sel]
    mapx[sel] = px * mk[:, 0, 0] + py * mk[:, 1, 0] + mk[:, 2, 0]
    mapy[sel] = px * mk[:, 0, 1] + py * mk[:, 1, 1] + mk[:, 2, 1]
    return cv2.remap(rig.image, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _poly_mask(poly: np.ndarray, supersample: int = 4) -> np.ndarray:
    """Anti-aliased float mask (SIZE, SIZE) of a polygon given in pixels."""
    big = np.zeros((SIZE * supersample, SIZE * supersample), np.uint8)
    cv2.fillPoly(big, [np.round(poly * supersample).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    return cv2.resize(big, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def mouth_interior(rig: Rig, frame: np.ndarray, dst: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Fill the (destination) inner-lip polygon: dark mouth + the photo's teeth on the skull."""
    ring = list(INNER_UPPER) + list(INNER_LOWER[1:-1])[::-1]
    poly = dst[ring]
    inner = _poly_mask(poly)
    if inner.sum() < 1.0:
        return frame
    # The upper teeth move with the skull: the photo's mouth region under the pose alone.
    anchors = list(UPPER_JAW_ANCHORS)
    skull = pose_points(rig, rig.src.copy(), pose)[:, :2]
    a, _ = cv2.estimateAffine2D(rig.src[anchors, :2].astype(np.float32), skull[anchors].astype(np.float32),
                                method=cv2.LMEDS)
    teeth = cv2.warpAffine(rig.image, a, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    src_poly = rig.src[ring, :2]
    teeth_mask = cv2.warpAffine(_poly_mask(src_poly), a, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    # Keep the upper part of the photo's teeth crisp; fade their lower edge into the dark.
    top = skull[list(INNER_UPPER), 1].mean()
    yy = np.arange(SIZE, dtype=np.float32)[:, None] - top
    teeth_mask *= np.clip(1.5 - yy / max(rig.gap0, 1.0), 0, 1)
    # Dark interior, a little lighter (tongue) toward the lower lip.
    lo_y = dst[list(INNER_LOWER), 1].mean()
    up_y = dst[list(INNER_UPPER), 1].mean()
    t = np.clip((np.arange(SIZE, dtype=np.float32)[:, None] - up_y) / max(lo_y - up_y, 1.0), 0, 1)
    dark = np.array([34, 12, 12], np.float32) * (1 - t[..., None]) + np.array([118, 50, 46], np.float32) * t[..., None] ** 2
    dark = np.broadcast_to(dark, (SIZE, SIZE, 3))
    fill = teeth.astype(np.float32) * teeth_mask[..., None] + dark * (1 - teeth_mask[..., None])
    out = frame.astype(np.float32) * (1 - inner[..., None]) + fill * inner[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render(rig: Rig, art: np.ndarray, blink: float, pose: np.ndarray) -> np.ndarray:
    dst = frame_points(rig, art, blink, pose)
    frame = warp(rig, dst)
    return mouth_interior(rig, frame, dst[:, :2], pose)


# ------------------------------------------------------------------------------------------------

def make(out: Path, weights: Path, preview: Path | None = None, seconds: float | None = None) -> dict:
    from studio.media import VideoWriter, wav_bytes

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        template_speech = finish_speech(espeak(TEMPLATE_TEXT, Path(tmp)), seed=1, lead_in=LEAD_IN_S,
                                        lead_out=LEAD_OUT_S)
        dub_speech = finish_speech(espeak(DUB_TEXT, Path(tmp), ssml=True), seed=2)
    (out / "template_speech.wav").write_bytes(wav_bytes(template_speech))
    (out / "speech.wav").write_bytes(wav_bytes(dub_speech))

    image = face_image()
    rig = build_rig(image, detect_mesh(image, weights))
    n = int(round(len(template_speech) / SAMPLE_RATE * FPS))
    if seconds is not None:
        n = min(n, int(seconds * FPS))
    art = articulation(template_speech, FPS, n, seed=0)
    motion = head_motion(n, FPS)
    blink = blinks(n, FPS)
    audio = template_speech[: int(round(n / FPS * SAMPLE_RATE))]
    with VideoWriter(out / "template.mp4", FPS, (SIZE, SIZE), audio=audio, crf=20) as writer:
        for i in range(n):
            frame = render(rig, art[i], blink[i], motion[i])
            writer.write(frame)
            if preview is not None and i % 125 == 60:
                preview.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(preview / f"frame_{i:04d}.png"), frame[:, :, ::-1])
            if i % 250 == 0:
                log.info("frame %d / %d", i, n)
    return {"frames": n, "seconds": n / FPS, "template_speech_s": len(template_speech) / SAMPLE_RATE,
            "speech_s": len(dub_speech) / SAMPLE_RATE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "sample_media"))
    parser.add_argument("--weights", help="face_landmarker.task (default: the studio's weights folder)")
    parser.add_argument("--preview", help="also save a PNG every 5 s into this folder")
    parser.add_argument("--seconds", type=float, help="only render this much video (for a quick look)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = make(Path(args.out), find_weights(args.weights), Path(args.preview) if args.preview else None,
                args.seconds)
    log.info("%s", info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
