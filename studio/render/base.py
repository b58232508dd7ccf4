"""The renderer interface, and the one place that builds what a renderer gets for a frame.

A renderer turns the template's face crop plus the wanted landmarks into a new face crop; the
rest (crop track, paste-back, video) is shared (``studio.render.compose``). Every renderer:

- owns its crop settings (``crop_config``) and the crop size it renders at
  (``render_size(requested)``): a trained network renders at the size it was trained for;
- prepares once per output sequence (``prepare(lms, track)`` -> its own state, e.g. the
  retrieval renderer's Viterbi picks over the whole sequence, so that frame i of a preview equals
  frame i of the full render);
- draws one frame from a :class:`FrameInputs` (``draw(inputs, i, state)`` -> :class:`Rendered`).

``FrameInputs`` for output frame i are built by :func:`frame_inputs` only: rendering, the preview
frame and the facial-map panel all call it, with the track from :func:`sequence_track`. Adding a
renderer is one module with a class of this shape, named in ``studio.pipeline.RENDERERS``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import cv2
import numpy as np

from studio.face import layout


class FrameInputs(NamedTuple):
    """Output frame i as a renderer sees it, all in crop px of an S x S crop.

    crop (S, S, 3) uint8 the template frame's face crop; template_points (68, 2) the template's own
    landmarks; points (68, 2) the wanted face (the template's landmarks with the predicted mouth
    and jaw); talk (58,) the predicted talking points (``layout.talking_vector(points)``).
    """

    crop: np.ndarray
    template_points: np.ndarray
    points: np.ndarray
    talk: np.ndarray


class Rendered(NamedTuple):
    """One rendered crop: image (S, S, 3) uint8; mask (S, S) float32 in [0, 1] (where it changed
    the template); pool_index: the footage frame used (retrieval), -1 otherwise."""

    image: np.ndarray
    mask: np.ndarray
    pool_index: int = -1


@runtime_checkable
class Renderer(Protocol):
    @property
    def crop_config(self) -> Any: ...

    def render_size(self, requested: int) -> int: ...

    def prepare(self, lms: Any, track: Any) -> Any: ...

    def draw(self, inputs: FrameInputs, i: int, state: Any) -> Rendered: ...


def sequence_track(crop_config, lms, template):
    """The crop track of an output sequence: ``lms`` (``studio.pipeline.Landmarks``: template
    (T, 68, 2) frame px, frame_index (T,)), ``template`` the template Clip (its size, and which
    frames have a face), with a renderer's ``crop_config``."""
    from studio.render.crop import CropTrack

    valid = np.asarray(template.valid)[np.asarray(lms.frame_index)]
    return CropTrack.from_landmarks(lms.template, (template.meta.width, template.meta.height),
                                    crop_config, valid=valid)


def frame_inputs(track, frame: np.ndarray, lms, i: int, size: int) -> FrameInputs:
    """What a renderer gets for output frame ``i``: ``frame`` is its template frame (H, W, 3)."""
    tp = track.to_crop(lms.template[i], i, size)
    dst = track.to_crop(lms.points[i], i, size)
    # bilinear: inside the renderer's mask these pixels are replaced, and it is 6x cheaper than bicubic
    return FrameInputs(track.crop(frame, i, size, cv2.INTER_LINEAR), tp, dst, layout.talking_vector(dst))
