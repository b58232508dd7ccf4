"""Training data for the mapping network: per-clip arrays, time-block splits and 64-frame windows.

Split rule (no leakage between overlapping windows): inside the chosen span of each clip, the
LAST ``val_fraction`` of the frames is the validation block; training windows must end at least
``gap`` frames (default: one window) before it starts. A training window and a validation
window therefore never share a frame, and with ``gap`` >= the cascade's one-sided receptive
field they do not even share context. Windows containing a frame without a valid face are
skipped.

A window of W video frames covers audio feature frames 4s .. 4(s+W)-1 (4 per video frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from studio.audio import FEATURES_PER_VIDEO_FRAME as APF
from studio.data.clip import Clip
from studio.errors import InputError
from studio.face import layout
from studio.face.normalize import normalize


@dataclass(frozen=True, eq=False)
class ClipArrays:
    """One clip's frames in [start, stop): T = stop - start.

    audio (4T, 26), pose (T, 3), cheek (T, 16), talk (T, 58) training target (normalized,
    from the detected landmarks), valid (T,) bool, gt_talk (T, 58) or None (synthetic clips: the
    noise-free ground truth normalized with the clip's own centre and scale).
    """

    name: str
    start: int
    audio: np.ndarray
    pose: np.ndarray
    cheek: np.ndarray
    talk: np.ndarray
    valid: np.ndarray
    fps: float
    gt_talk: np.ndarray | None = None

    @property
    def frames(self) -> int:
        return int(self.pose.shape[0])

    def slice(self, a: int, b: int) -> "ClipArrays":
        """Frames [a, b) of this block (relative indices)."""
        return ClipArrays(self.name, self.start + a, self.audio[APF * a: APF * b], self.pose[a:b],
                          self.cheek[a:b], self.talk[a:b], self.valid[a:b], self.fps,
                          None if self.gt_talk is None else self.gt_talk[a:b])


def span_frames(n_frames: int, span: tuple[float, float]) -> tuple[int, int]:
    """Frame range [a, b) of the fractional time span (e.g. (0.0, 0.8) = the first 80%)."""
    lo, hi = float(span[0]), float(span[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise InputError(f"Invalid time span {span}.", "Give two fractions 0 <= start < end <= 1, e.g. 0 0.8.")
    return int(round(lo * n_frames)), int(round(hi * n_frames))


def clip_arrays(clip: Clip, span: tuple[float, float] = (0.0, 1.0)) -> ClipArrays:
    """The training arrays of ``clip`` restricted to a fractional time span."""
    a, b = span_frames(clip.meta.frames, span)
    gt = None
    if clip.gt_landmarks is not None:
        gt = layout.talking_vector(normalize(clip.gt_landmarks, clip.centre, clip.scale))
    name = str(clip.directory) if clip.directory is not None else clip.meta.source
    full = ClipArrays(name, 0, np.asarray(clip.audio, np.float32), np.asarray(clip.pose, np.float32),
                      clip.cheek.astype(np.float32), clip.talk.astype(np.float32),
                      np.asarray(clip.valid, bool), float(clip.meta.fps), gt)
    return full.slice(a, b)


def split_train_val(n_frames: int, val_fraction: float, gap: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((train_start, train_stop), (val_start, val_stop)) of a block of ``n_frames`` frames.

    Validation is the last ``val_fraction`` of the block; training stops ``gap`` frames before it.
    With ``val_fraction`` 0 the whole block is training and the validation range is empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}.", "Fix the preset.")
    n_val = int(round(val_fraction * n_frames))
    val_start = n_frames - n_val
    return (0, max(0, val_start - gap if n_val else val_start)), (val_start, n_frames)


def window_starts(valid: np.ndarray, start: int, stop: int, window: int, stride: int) -> np.ndarray:
    """Starts s in [start, stop - window] (step ``stride``) whose window is all valid frames."""
    if stop - start < window:
        return np.zeros(0, np.int64)
    starts = np.arange(start, stop - window + 1, stride, dtype=np.int64)
    bad = np.concatenate([[0], np.cumsum(~np.asarray(valid, bool))])
    ok = bad[starts + window] - bad[starts] == 0
    return starts[ok]


def gather(arrays: list[np.ndarray], index: np.ndarray, window: int, per_frame: int = 1) -> np.ndarray:
    """Stack windows: ``index`` (N, 2) rows (clip, start) -> (N, per_frame * window, D)."""
    return np.stack([arrays[c][per_frame * s: per_frame * (s + window)] for c, s in index])
