"""Face shape apart from articulation: one offset per person, so one mapping fits every face.

A person-specific mapping learns the person's mouth shape along with how it moves. A model shared
by many people (the multi-speaker prior, ``studio.train.prior``) must not: lip thickness, mouth
width and jaw shape differ between people (and between landmark detectors) by more than most
articulation does. So each person p gets an identity offset, in a FRONTAL view
(``studio.face.frontal``)::

    delta_p = mean over p's frames of frontalize(talk, pose)  -  REFERENCE          (58,)

with REFERENCE the 3D mean face's talking points seen frontally (a constant: nothing to store or
fit). The shared model is trained on every person's targets with their offset taken out, drawn
in each frame's head pose::

    canonical(t) = talk(t) - L(pose(t)) delta_p

where L(pose) is the linear part of re-posing (``frontal.repose`` is affine: a rotation and a
projection, plus the mean face's depth term, which cancels in a difference). At inference the
person's offset is put back: talk = prediction + L(pose) delta_p. The offset of a new person is
measured on their footage alone (any number of frames with a face), which is what makes the
prior usable on a person it never saw, with no training.

The same file carries the recording's timing: ``audio_shift`` (video frames), how far the speech
features are moved before the network hears them, chosen on the person's own footage
(``studio.train.prior.estimate_audio_shift``). Recordings differ in audio-video offset (capture
and encoding delays) and people in how far their mouth leads their voice; a shared model cannot
know either.

Stored in a checkpoint folder as ``identity.npz`` (``frontal_offset`` (58,), ``audio_shift`` (),
allow_pickle=False); a checkpoint without one predicts in its training person's own coordinates
(person-specific training), as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from studio.errors import CheckpointError, InputError
from studio.face import frontal, layout

IDENTITY_NAME = "identity.npz"
MAX_SHIFT = 12  # video frames (~0.4-0.5 s): beyond this the "speech" is not this video's


@lru_cache(maxsize=1)
def reference() -> np.ndarray:
    """(58,) the 3D mean face's talking points, frontal, in normalized coordinates."""
    pts = frontal._mean_face_centred()[list(layout.TALKING), :2] * frontal._frontal_scale()
    return pts.reshape(-1).astype(np.float32)


def posed(delta: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """L(pose) delta: a frontal offset (58,) seen in each head pose (T, 3) -> (T, 58)."""
    t = len(pose)
    d = np.broadcast_to(np.asarray(delta, np.float32).reshape(1, layout.N_TALKING, 2), (t, layout.N_TALKING, 2))
    zero = np.zeros_like(d)
    moved = frontal.repose(d, pose) - frontal.repose(zero, pose)
    return moved.reshape(t, layout.TALK_DIM).astype(np.float32)


def measure(talks, poses, valids=None) -> np.ndarray:
    """A person's offset from their footage: lists of talk (T, 58), pose (T, 3) degrees (the
    conditioning's low-passed pose), optional valid (T,) -> delta (58,) float32."""
    fronts = []
    for k, (talk, pose) in enumerate(zip(talks, poses)):
        sel = np.ones(len(talk), bool) if valids is None else np.asarray(valids[k], bool)
        if sel.any():
            fronts.append(frontal.move_to_frontal(np.asarray(talk)[sel], np.asarray(pose)[sel]))
    if not fronts:
        raise InputError("No frame with a detected face to measure the person's mouth shape from.",
                         "Use footage in which the face is visible.")
    return (np.concatenate(fronts).astype(np.float64).mean(axis=0) - reference()).astype(np.float32)


def shift_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """(4T, 26) features -> the same moved by ``frames`` video frames: out[i] = audio[i + 4 frames]
    (ends held). frames > 0: the network hears each moment earlier, so its mouth moves earlier."""
    from studio.audio import FEATURES_PER_VIDEO_FRAME as APF

    audio = np.asarray(audio, np.float32)
    if frames == 0 or len(audio) == 0:
        return audio
    idx = np.clip(np.arange(len(audio)) + APF * int(frames), 0, len(audio) - 1)
    return audio[idx]


@dataclass(frozen=True, eq=False)
class IdentityOffset:
    """delta (58,): the person's mean frontal talking points minus :func:`reference`;
    audio_shift: video frames (:func:`shift_audio`) for this person's recordings."""

    delta: np.ndarray
    audio_shift: int = 0

    @classmethod
    def zero(cls) -> "IdentityOffset":
        return cls(np.zeros(layout.TALK_DIM, np.float32))

    def add(self, talk: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Canonical talk (T, 58) seen in ``pose`` (T, 3) -> the person's."""
        return (np.asarray(talk, np.float32) + posed(self.delta, pose)).astype(np.float32)

    def remove(self, talk: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """The person's talk (T, 58) seen in ``pose`` (T, 3) -> canonical."""
        return (np.asarray(talk, np.float32) - posed(self.delta, pose)).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        from studio.fsutil import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, frontal_offset=self.delta.astype(np.float32), audio_shift=np.int64(self.audio_shift))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "IdentityOffset":
        hint = "Rebuild the subject (`python -m studio make-subject`); the checkpoint is damaged."
        from studio.fsutil import read_npz

        z = read_npz(path, "Identity file", hint, ("frontal_offset",), optional=("audio_shift",))
        delta = z["frontal_offset"].astype(np.float32)
        try:
            shift = int(z.get("audio_shift", 0))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"Identity file {path} is unreadable: {exc}.", hint) from None
        if delta.shape != (layout.TALK_DIM,) or not np.isfinite(delta).all() or abs(shift) > MAX_SHIFT:
            raise CheckpointError(f"{path} holds an invalid identity offset.", hint)
        return cls(delta, shift)
