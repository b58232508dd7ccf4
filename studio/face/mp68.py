"""MediaPipe's 478-point face mesh -> the 68-point iBUG layout.

Each iBUG point is a fixed mesh vertex or a weighted average of two neighbouring vertices
``(1 - w) * mesh[a] + w * mesh[b]``. The table was derived, and is reproducible, like this:

- Jaw contour (iBUG 0-16): the mesh's face-oval vertices are on the face outline, but are not
  spaced like the iBUG contour. The 3D mean face (``studio.face.meanface``) was aligned to
  MediaPipe's canonical face mesh (similarity Procrustes on eye corners, nose, mouth corners and
  chin) and each mean-face jaw point was projected, in the frontal view, onto the oval polyline
  ``127-234-93-132-58-172-136-150-149-176-148-152`` (and its mirror ``356-454-323-361-288-397-
  365-379-378-400-377-152``); the fractions found on both sides were averaged (symmetric table)
  and rounded to 0.05. So every jaw point lies on the oval between two outline vertices.
- Brows: the upper edge of each brow (iBUG annotates the brow's top contour), outer to inner.
- Nose: bridge 168 / 197 / 195 / 4 (4 is the most forward tip vertex), lower nose alar and
  subnasal vertices (nearest canonical-mesh vertices to the aligned mean face).
- Eyes: corners 33 / 133 and 362 / 263; the lid points at about thirds of the lids.
- Lips: corners 61 / 291 (outer) and 78 / 308 (inner), centres 0 / 17 and 13 / 14, cupid's-bow
  peaks 37 / 267 with 84 / 314 below them; the remaining points are placed along the lip contours
  at the x of the mean face's points scaled to the mesh's mouth width (inner 61/63/65/67 in line
  with the bow peaks, as annotated in iBUG).

MediaPipe's "right"/"left" follow the subject, like iBUG: vertex 33 is the subject's right eye's
outer corner, which is on the image's left for a face looking at the camera.
"""

from __future__ import annotations

import numpy as np

N_MESH = 478  # 468 face-mesh vertices + 10 iris points

# iBUG index -> (vertex a, vertex b, weight of b). A single vertex has b == a, w == 0.
MP68: tuple[tuple[int, int, float], ...] = (
    # jaw 0-8: subject's right (image left) ear level down to the chin
    (127, 234, 0.45), (234, 93, 0.55), (93, 132, 0.65), (132, 58, 0.65), (58, 172, 0.75),
    (136, 150, 0.15), (150, 149, 0.65), (176, 148, 0.45), (152, 152, 0.0),
    # jaw 9-16: chin up to the subject's left ear level (mirror of 7..0)
    (400, 377, 0.45), (379, 378, 0.65), (365, 379, 0.15), (288, 397, 0.75),
    (361, 288, 0.65), (323, 361, 0.65), (454, 323, 0.55), (356, 454, 0.45),
    # right brow 17-21 (outer -> inner), left brow 22-26 (inner -> outer)
    (70, 70, 0.0), (63, 63, 0.0), (105, 105, 0.0), (66, 66, 0.0), (107, 107, 0.0),
    (336, 336, 0.0), (296, 296, 0.0), (334, 334, 0.0), (293, 293, 0.0), (300, 300, 0.0),
    # nose bridge 27-30 (top -> tip), lower nose 31-35 (right alar -> subnasale -> left alar)
    (168, 168, 0.0), (197, 197, 0.0), (195, 195, 0.0), (4, 4, 0.0),
    (235, 235, 0.0), (99, 99, 0.0), (2, 2, 0.0), (328, 328, 0.0), (455, 455, 0.0),
    # right eye 36-41: outer corner, upper lid x2, inner corner, lower lid x2
    (33, 33, 0.0), (160, 160, 0.0), (158, 158, 0.0), (133, 133, 0.0), (153, 153, 0.0), (144, 144, 0.0),
    # left eye 42-47: inner corner, upper lid x2, outer corner, lower lid x2
    (362, 362, 0.0), (385, 385, 0.0), (387, 387, 0.0), (263, 263, 0.0), (373, 373, 0.0), (380, 380, 0.0),
    # outer lip 48-59: right corner, upper lip to left corner, lower lip back
    (61, 61, 0.0), (40, 39, 0.7), (37, 37, 0.0), (0, 0, 0.0), (267, 267, 0.0), (270, 269, 0.7),
    (291, 291, 0.0), (321, 405, 0.5), (314, 314, 0.0), (17, 17, 0.0), (84, 84, 0.0), (91, 181, 0.5),
    # inner lip 60-67: right corner, upper inner lip, left corner, lower inner lip back
    (78, 78, 0.0), (81, 82, 0.65), (13, 13, 0.0), (311, 312, 0.65),
    (308, 308, 0.0), (402, 317, 0.7), (14, 14, 0.0), (178, 87, 0.7),
)

# Face-oval vertices in order around the face (forehead, subject's left side, chin, right side).
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)


def mapping_matrix() -> np.ndarray:
    """(68, 478) float32 matrix W with ``points68 = W @ points478`` (rows sum to 1)."""
    w = np.zeros((len(MP68), N_MESH), np.float32)
    for i, (a, b, t) in enumerate(MP68):
        w[i, a] += 1.0 - t
        w[i, b] += t
    return w


_W = mapping_matrix()


def to68(mesh: np.ndarray) -> np.ndarray:
    """(..., 478 or 468, D) mesh points -> (..., 68, D) iBUG points (same dtype family, float32)."""
    m = np.asarray(mesh, dtype=np.float32)
    if m.shape[-2] not in (468, N_MESH):
        raise ValueError(f"expected 468 or 478 mesh points, got {m.shape[-2]}")
    return np.einsum("kn,...nd->...kd", _W[:, : m.shape[-2]], m)
