"""Edits of predicted talking points: the studio's sliders, as one serializable value.

An :class:`Edits` is a frozen, JSON-serializable description of what to change in the mapping
network's output (``(T, 58)`` normalized talking points, see :mod:`studio.face.layout`);
:func:`apply_edits` applies it. The function is pure and deterministic, so a saved edits file
reproduces a dub exactly, and identity edits return the input unchanged (bit-identical).

What each edit moves (and nothing else):

- ``pca_offsets`` / ``pca_gains``: the 20 mouth points, through the subject's mouth PCA. Each
  frame's 13 coefficients ``c`` become ``c * gain + offset * std`` (offset in units of that
  coefficient's standard deviation over the training data); the change is added as a delta
  ``inverse(c') - inverse(c)``, so whatever the 13 components do not explain is kept.
- ``mouth_open_gain``: the lips only. Each inner-lip pair's vertical gap (along the direction
  perpendicular to the mouth-corner line, so head roll is respected) is multiplied by the gain
  about the pair's midpoint; each outer lip point moves with its inner partner (points next to
  the corners by half), so lip thickness is kept and the corners stay put.
- ``jaw_open_gain`` / ``jaw_open_offset``: the 9 jaw points (iBUG 4-12, chin = 8). The jaw
  opens as a rotation about a hinge axis at the level of the nose centre (the normalized
  origin), parallel to the line from jaw point 4 to 12; seen from the front that is a stretch
  of each jaw point's distance below that axis. The chin's distance below the axis, above its
  resting value (the sequence's 5th percentile), is multiplied by the gain; the offset (in
  normalized units, i.e. face scales) is then added.
- ``close_on_silence``: where :func:`voice_activity_from_energy` finds no voice, all 29 points
  are blended (with short ramps) toward the subject's closed mouth (``closed_shape``, e.g. from
  :func:`closed_mouth_shape`), rigidly aligned to each frame's mouth corners and upper lip so
  it follows the head's roll and position.
- ``temporal_smoothing``: a centred Gaussian filter over time (sigma in frames), all 58 values.
- ``jawline_smoothing``: a Gaussian filter along the 9-point jaw contour (sigma in points),
  applied to each frame's deviation from a cubic fit, so the contour's overall curve (and the
  chin's height) is kept while wiggles go.

The order is: PCA, mouth opening, jaw, silence closing, temporal smoothing, jawline smoothing.
With ``frame_range = (start, end)`` the edits apply to frames ``start <= t < end`` only, eased in
and out over :data:`RANGE_RAMP_FRAMES` frames inside the range; frames outside are untouched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.ndimage import gaussian_filter1d

from studio.audio import SAMPLE_RATE, frame_energy
from studio.errors import InputError
from studio.face.layout import (
    INNER_LIP_PAIRS,
    MOUTH,
    MOUTH_DIM,
    N_JAW,
    N_MOUTH,
    N_TALKING,
    PCA_DIM,
    TALK_DIM,
)

RANGE_RAMP_FRAMES = 4  # frames over which a frame-range edit eases in and out
# Smaller smoothing sigmas are the identity anyway (a one-tap kernel); scipy divides by sigma**2,
# which underflows to 0 for sigma < 1e-154 (found by fuzzing an edits file).
MIN_SIGMA = 1e-3
MAX_EDITS_BYTES = 1_000_000  # an edits file is a few hundred bytes; anything this big is not one
JAW_REST_PERCENTILE = 5.0  # the chin distance counted as "jaw closed" for the jaw gain

# Positions within the 29 talking points (0-19 mouth = iBUG 48-67, 20-28 jaw = iBUG 4-12).
_M = {ibug: k for k, ibug in enumerate(MOUTH)}
_CORNERS = (_M[48], _M[54])
_CHIN = N_MOUTH + 4  # iBUG 8
_JAW_ENDS = (N_MOUTH, N_MOUTH + N_JAW - 1)  # iBUG 4 and 12
# Upper-lip points with a fixed position relative to the mouth corners (for aligning shapes).
_UPPER_ANCHORS = tuple(_M[i] for i in (48, 49, 50, 51, 52, 53, 54))
# Lip points that move with each inner-lip pair when the mouth opens: (point, pair, weight, side)
# with side -1 = upper lip, +1 = lower lip.
_PAIR_INDEX = {pair: j for j, pair in enumerate(INNER_LIP_PAIRS)}
_OPENING_MOVERS: tuple[tuple[int, int, float, int], ...] = (
    (_M[61], 0, 1.0, -1), (_M[62], 1, 1.0, -1), (_M[63], 2, 1.0, -1),
    (_M[67], 0, 1.0, +1), (_M[66], 1, 1.0, +1), (_M[65], 2, 1.0, +1),
    (_M[50], 0, 1.0, -1), (_M[51], 1, 1.0, -1), (_M[52], 2, 1.0, -1),
    (_M[58], 0, 1.0, +1), (_M[57], 1, 1.0, +1), (_M[56], 2, 1.0, +1),
    (_M[49], 0, 0.5, -1), (_M[53], 2, 0.5, -1),
    (_M[59], 0, 0.5, +1), (_M[55], 2, 0.5, +1),
)


class PCAModel(Protocol):
    """What :func:`apply_edits` needs of :class:`studio.face.pca.MouthPCA`."""

    def transform(self, mouth: np.ndarray) -> np.ndarray: ...  # (..., 40) -> (..., 13)

    def inverse(self, coeffs: np.ndarray) -> np.ndarray: ...  # (..., 13) -> (..., 40)


# ---------------------------------------------------------------------------------------------
# The edits value
# ---------------------------------------------------------------------------------------------

# Allowed ranges, inclusive: (low, high). Also what the UI sliders use.
RANGES: dict[str, tuple[float, float]] = {
    "pca_offsets": (-3.0, 3.0),
    "pca_gains": (0.0, 3.0),
    "mouth_open_gain": (0.0, 3.0),
    "jaw_open_gain": (0.0, 3.0),
    "jaw_open_offset": (-0.5, 0.5),
    "jawline_smoothing": (0.0, 4.0),
    "temporal_smoothing": (0.0, 12.0),
    "lip_timing": (-10.0, 10.0),
    "silence_threshold": (6.0, 60.0),
}


@dataclass(frozen=True)
class Edits:
    """Slider values. Defaults are the identity (nothing changes).

    pca_offsets: 13 offsets, in units of each PCA coefficient's std, range [-3, 3].
    pca_gains: 13 gains on the PCA coefficients, range [0, 3].
    mouth_open_gain: gain on the inner-lip gap, range [0, 3].
    jaw_open_gain: gain on the jaw opening above its resting value, range [0, 3].
    jaw_open_offset: added chin drop in normalized units (face scales), range [-0.5, 0.5].
    jawline_smoothing: Gaussian sigma along the jaw contour in points, range [0, 4].
    temporal_smoothing: Gaussian sigma over time in frames, range [0, 12].
    lip_timing: frames the mouth and jaw move EARLIER against the speech (negative: later), range
        [-10, 10]; fractions interpolate between frames. Recordings differ by a few frames in
        how their sound sits against their picture (docs/results/dubbing_protocol.md: one model
        of Obama was 2 frames late against the real video of one of his recordings and 3-4
        frames early against another's), so an editor matching a dub to its reference, or to
        taste, nudges it here.
    close_on_silence: blend to the subject's closed mouth where the speech is silent.
    silence_threshold: dB below the speech level (95th percentile frame energy) under which a
        frame is silent, range [6, 60].
    frame_range: (start, end) frames, end exclusive, 0 <= start < end; None = every frame.
    """

    pca_offsets: tuple[float, ...] = (0.0,) * PCA_DIM
    pca_gains: tuple[float, ...] = (1.0,) * PCA_DIM
    mouth_open_gain: float = 1.0
    jaw_open_gain: float = 1.0
    jaw_open_offset: float = 0.0
    jawline_smoothing: float = 0.0
    temporal_smoothing: float = 0.0
    lip_timing: float = 0.0
    close_on_silence: bool = False
    silence_threshold: float = 30.0
    frame_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("pca_offsets", "pca_gains"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != PCA_DIM:
                raise InputError(f"Edit {name!r} must be a list of {PCA_DIM} numbers, got {value!r}.",
                                 f"Give {PCA_DIM} values in {_range_text(name)}.")
            values = tuple(_number(name, v) for v in value)
            for v in values:
                _check_range(name, v)
            object.__setattr__(self, name, values)
        for name in ("mouth_open_gain", "jaw_open_gain", "jaw_open_offset", "jawline_smoothing",
                     "temporal_smoothing", "lip_timing", "silence_threshold"):
            v = _number(name, getattr(self, name))
            _check_range(name, v)
            object.__setattr__(self, name, v)
        if not isinstance(self.close_on_silence, (bool, np.bool_)):
            raise InputError(f"Edit 'close_on_silence' must be true or false, got {self.close_on_silence!r}.",
                             "Use true or false.")
        object.__setattr__(self, "close_on_silence", bool(self.close_on_silence))
        if self.frame_range is not None:
            object.__setattr__(self, "frame_range", _check_frame_range(self.frame_range))

    # -- identity tests, per group of edits ----------------------------------------------------
    @property
    def is_identity(self) -> bool:
        """True when applying these edits changes nothing."""
        return not (self.edits_pca or self.edits_mouth_opening or self.edits_jaw or self.lip_timing != 0.0
                    or self.close_on_silence or self.temporal_smoothing > 0 or self.jawline_smoothing > 0)

    @property
    def edits_pca(self) -> bool:
        return any(o != 0.0 for o in self.pca_offsets) or any(g != 1.0 for g in self.pca_gains)

    @property
    def edits_mouth_opening(self) -> bool:
        return self.mouth_open_gain != 1.0

    @property
    def edits_jaw(self) -> bool:
        return self.jaw_open_gain != 1.0 or self.jaw_open_offset != 0.0

    # -- serialization -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, not tuples)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    def to_json(self) -> str:
        """Indented JSON with every field; :meth:`from_json` reads it back to an equal value."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "Edits":
        """Strict: unknown keys, wrong types and out-of-range values raise InputError."""
        if not isinstance(data, dict):
            raise InputError(f"Edits must be a JSON object, got {type(data).__name__}.",
                             "Write the edits as {\"mouth_open_gain\": 1.2, ...}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputError(f"Unknown edit key(s) {unknown}.", f"Valid keys are: {names}.")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Edits":
        """Parse JSON text (bytes: UTF-8/16/32, with or without a BOM); see :meth:`from_dict`."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"Edits are not valid JSON: {exc}.", "Fix the file's syntax.") from exc
        except RecursionError:  # "[[[[..." deeper than the parser's recursion limit
            raise InputError("Edits are not valid JSON: nested too deeply.",
                             "Use a flat object such as {\"mouth_open_gain\": 1.2}.") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Edits":
        """Read an edits JSON file (at most :data:`MAX_EDITS_BYTES`)."""
        p = Path(path)
        try:
            if p.stat().st_size > MAX_EDITS_BYTES:
                raise InputError(f"{p.name} is too large for an edits file ({p.stat().st_size} bytes).",
                                 "Upload the edits.json saved by 'Save edits' (a few hundred bytes).")
            data = p.read_bytes()  # bytes: json detects UTF-16/32 and a BOM itself
        except OSError as exc:
            raise InputError(f"Cannot read edits file {p.name}: {exc.strerror}.", "Check the path.") from exc
        return cls.from_json(data)


def _range_text(name: str) -> str:
    lo, hi = RANGES[name]
    return f"[{lo:g}, {hi:g}]"


def _number(name: str, v: Any) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"Edit {name!r} must be a number, got {v!r}.", f"Use a number in {_range_text(name)}.")
    f = float(v)
    if not math.isfinite(f):
        raise InputError(f"Edit {name!r} must be finite, got {v!r}.", f"Use a number in {_range_text(name)}.")
    return f


def _check_range(name: str, v: float) -> None:
    lo, hi = RANGES[name]
    if not lo <= v <= hi:
        raise InputError(f"Edit {name!r} = {v:g} is out of range.", f"Allowed range is {_range_text(name)}.")


def _check_frame_range(value: Any) -> tuple[int, int]:
    hint = "Give frame_range as [start, end] with 0 <= start < end (end exclusive), or null for all frames."
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(f"Edit 'frame_range' must be two frame numbers, got {value!r}.", hint)
    start, end = value
    for v in (start, end):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) and not (
                isinstance(v, (float, np.floating)) and float(v).is_integer()):
            raise InputError(f"Edit 'frame_range' must hold whole frame numbers, got {value!r}.", hint)
    start, end = int(start), int(end)
    if not 0 <= start < end:
        raise InputError(f"Edit 'frame_range' = {[start, end]} is not a valid range.", hint)
    return start, end


# ---------------------------------------------------------------------------------------------
# Measurements on (..., 58) talking vectors
# ---------------------------------------------------------------------------------------------

def _points(talk: np.ndarray) -> np.ndarray:
    t = np.asarray(talk)
    if t.shape[-1] != TALK_DIM:
        raise ValueError(f"expected (..., {TALK_DIM}) talking vectors, got shape {t.shape}")
    return t.reshape(*t.shape[:-1], N_TALKING, 2)


def talk_mouth_gap(talk: np.ndarray) -> np.ndarray:
    """(..., 58) talking vectors -> (...,): mean inner-lip gap (lower minus upper y); the same
    measure as ``layout.mouth_opening`` of 68 points."""
    p = _points(talk)
    up = p[..., [_M[a] for a, _ in INNER_LIP_PAIRS], 1]
    lo = p[..., [_M[b] for _, b in INNER_LIP_PAIRS], 1]
    return (lo - up).mean(axis=-1)


def talk_chin_distance(talk: np.ndarray) -> np.ndarray:
    """(..., 58) normalized -> (...,): the chin's distance from the nose centre (the origin of
    normalized coordinates; ``layout.jaw_opening`` measures from the nose tip instead)."""
    return np.linalg.norm(_points(talk)[..., _CHIN, :], axis=-1)


def closed_mouth_shape(talk: np.ndarray, percentile: float = 10.0) -> np.ndarray:
    """The subject's own closed mouth: (N, 58) normalized talking points -> (58,).

    Among the frames whose mouth opening is at or below ``percentile``, the one whose jaw
    opening is nearest those frames' median jaw opening (a real frame, not an average, so the
    shape stays plausible; the median keeps away from clenched or odd outliers).
    """
    t = np.asarray(talk, dtype=np.float32)
    if t.ndim != 2 or t.shape[1] != TALK_DIM or t.shape[0] == 0:
        raise ValueError(f"expected (N, {TALK_DIM}) talking vectors with N > 0, got {t.shape}")
    opening = talk_mouth_gap(t)
    candidates = np.flatnonzero(opening <= np.percentile(opening, percentile))
    jaw = talk_chin_distance(t[candidates])
    best = candidates[int(np.argmin(np.abs(jaw - np.median(jaw))))]
    return t[best].copy()


# ---------------------------------------------------------------------------------------------
# Voice activity
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VadConfig:
    """Energy voice-activity rules (times in seconds).

    threshold_db: a frame is voiced when its energy is within this many dB of the speech level
        (the ``speech_percentile`` of frame energies); the threshold is raised to the midpoint
        between the noise floor (``floor_percentile``) and the speech level when that is higher,
        so a noisy recording does not count its noise as speech.
    hangover: voiced runs are extended by this much after they end (and ``preroll`` before).
    min_silence: silent runs shorter than this count as voiced (the mouth does not close).
    min_speech: voiced runs shorter than this (clicks) count as silent.
    """

    threshold_db: float = 30.0
    speech_percentile: float = 95.0
    floor_percentile: float = 5.0
    hangover: float = 0.08
    preroll: float = 0.04
    min_silence: float = 0.2
    min_speech: float = 0.06


def voice_activity_from_energy(energy: np.ndarray, fps: float, cfg: VadConfig = VadConfig()) -> np.ndarray:
    """Per-frame RMS energy (T,) -> (T,) bool, True where someone speaks.

    Independent of the recording's level: thresholds are relative to the clip's own speech
    level in dB, so scaling the signal by any factor gives the same answer.
    """
    e = np.asarray(energy, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return np.zeros(0, bool)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    peak = float(e.max())
    if peak <= 0:
        return np.zeros(e.size, bool)
    db = 20.0 * np.log10(np.maximum(e / peak, 1e-10))  # relative to the loudest frame: level-free
    speech = float(np.percentile(db, cfg.speech_percentile))
    floor = float(np.percentile(db, cfg.floor_percentile))
    threshold = max(speech - cfg.threshold_db, 0.5 * (speech + floor))
    voiced = db > threshold

    def frames(seconds: float) -> int:
        return int(round(seconds * fps))

    voiced = _drop_short_runs(voiced, True, frames(cfg.min_speech))
    voiced = _dilate(voiced, frames(cfg.preroll), frames(cfg.hangover))
    voiced = _drop_short_runs(voiced, False, frames(cfg.min_silence))
    return voiced


def voice_activity(signal: np.ndarray, fps: float, n_frames: int, *, sample_rate: int = SAMPLE_RATE,
                   cfg: VadConfig = VadConfig()) -> np.ndarray:
    """Waveform (S,) -> (n_frames,) bool voice activity per video frame; see :class:`VadConfig`."""
    return voice_activity_from_energy(frame_energy(signal, n_frames, fps, sample_rate), fps, cfg)


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """(T,) bool -> [(start, end, value)] maximal runs, end exclusive."""
    if mask.size == 0:
        return []
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [mask.size]])
    return [(int(a), int(b), bool(mask[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def _drop_short_runs(mask: np.ndarray, value: bool, min_len: int) -> np.ndarray:
    """Flip interior runs of ``value`` shorter than ``min_len`` (runs touching an end stay)."""
    out = mask.copy()
    for a, b, v in _runs(mask):
        if v == value and b - a < min_len and a > 0 and b < mask.size:
            out[a:b] = not value
    return out


def _dilate(mask: np.ndarray, before: int, after: int) -> np.ndarray:
    out = mask.copy()
    idx = np.flatnonzero(mask)
    for shift in range(1, after + 1):
        out[np.minimum(idx + shift, mask.size - 1)] = True
    for shift in range(1, before + 1):
        out[np.maximum(idx - shift, 0)] = True
    return out


# ---------------------------------------------------------------------------------------------
# Applying edits
# ---------------------------------------------------------------------------------------------

def apply_edits(talk: np.ndarray, edits: Edits, pca: PCAModel | None = None, *,
                speech_energy: np.ndarray | None = None, closed_shape: np.ndarray | None = None,
                fps: float | None = None, pca_std: np.ndarray | None = None,
                vad: VadConfig = VadConfig()) -> np.ndarray:
    """Apply ``edits`` to normalized talking points.

    talk: (T, 58) normalized (mapping network output). Returns (T, 58), same dtype; the input
        itself (a copy) when ``edits.is_identity``.
    pca: the subject's MouthPCA; needed only for PCA edits. ``pca_std`` (13,) overrides the
        coefficient std it carries.
    speech_energy: (T,) RMS energy of the speech per video frame (``studio.audio.frame_energy``)
        and ``fps``: needed for ``close_on_silence``, with ``closed_shape`` (58,) or (T, 58),
        the subject's closed mouth in the same normalized units (:func:`closed_mouth_shape`).
    """
    talk = np.asarray(talk)
    if talk.ndim != 2 or talk.shape[1] != TALK_DIM:
        raise ValueError(f"talk must be (T, {TALK_DIM}), got {talk.shape}")
    if edits.is_identity or talk.shape[0] == 0:
        return talk.copy()
    n = talk.shape[0]
    x = talk.astype(np.float64)

    if edits.lip_timing != 0.0:
        x = shift_in_time(x, edits.lip_timing)
    if edits.edits_pca:
        if pca is None:
            raise ValueError("PCA edits need the subject's MouthPCA (pca=...)")
        x[:, :MOUTH_DIM] += _pca_delta(x[:, :MOUTH_DIM], edits, pca, pca_std)
    if edits.edits_mouth_opening:
        x = _scale_mouth_opening(x, edits.mouth_open_gain)
    if edits.edits_jaw:
        x = _move_jaw(x, edits.jaw_open_gain, edits.jaw_open_offset)
    if edits.close_on_silence:
        if speech_energy is None or closed_shape is None or fps is None:
            raise ValueError("close_on_silence needs speech_energy, closed_shape and fps")
        energy = np.asarray(speech_energy).reshape(-1)
        if energy.shape[0] != n:
            raise ValueError(f"speech_energy has {energy.shape[0]} frames, talk has {n}")
        voiced = voice_activity_from_energy(energy, fps, dataclasses.replace(vad, threshold_db=edits.silence_threshold))
        x = _close_on_silence(x, voiced, np.asarray(closed_shape, dtype=np.float64), fps)
    if edits.temporal_smoothing >= MIN_SIGMA and n > 1:
        x = gaussian_filter1d(x, edits.temporal_smoothing, axis=0, mode="nearest")
    if edits.jawline_smoothing >= MIN_SIGMA:
        x = _smooth_jawline(x, edits.jawline_smoothing)

    out = x.astype(talk.dtype)
    if edits.frame_range is None:
        return out
    w = range_weights(n, edits.frame_range)
    result = talk.copy()
    inside = w > 0
    blend = talk[inside].astype(np.float64) + w[inside, None] * (x[inside] - talk[inside])
    result[inside] = np.where(w[inside, None] >= 1.0, out[inside], blend.astype(talk.dtype))
    return result


def shift_in_time(x: np.ndarray, lead: float) -> np.ndarray:
    """(T, D) -> (T, D): frame t takes the value at time t + ``lead`` frames (linear interpolation
    between frames, the first and last frames held beyond the ends). lead > 0: earlier."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    src = np.clip(np.arange(n) + float(lead), 0.0, n - 1.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo)[:, None]
    return x[lo] * (1.0 - w) + x[hi] * w


def range_weights(n_frames: int, frame_range: tuple[int, int] | None, ramp: int = RANGE_RAMP_FRAMES) -> np.ndarray:
    """(n_frames,) weights in [0, 1]: 1 inside ``frame_range``, eased in/out over ``ramp`` frames
    inside its ends (the ramp shrinks for short ranges), 0 outside. None = all ones."""
    if frame_range is None:
        return np.ones(n_frames)
    start, end = frame_range
    w = np.zeros(n_frames)
    start, end = min(start, n_frames), min(end, n_frames)
    if end <= start:
        return w
    length = end - start
    r = min(ramp, (length - 1) // 2)
    k = np.arange(length, dtype=np.float64)
    d = np.minimum(k + 1, length - k)  # 1 at either end of the range
    # An end of the range at the clip's edge needs no easing.
    if start == 0:
        d = np.where(k < length / 2, np.inf, d)
    if end == n_frames:
        d = np.where(k >= length / 2, np.inf, d)
    w[start:end] = _smoothstep(np.minimum(d / (r + 1), 1.0)) if r > 0 else 1.0
    return w


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _pca_delta(mouth: np.ndarray, edits: Edits, pca: PCAModel, pca_std: np.ndarray | None) -> np.ndarray:
    """(T, 40) -> (T, 40) change of the mouth points from editing the PCA coefficients."""
    std = pca_std if pca_std is not None else _coefficient_std(pca)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if std.shape[0] != PCA_DIM:
        raise ValueError(f"PCA coefficient std must have {PCA_DIM} values, got {std.shape}")
    c = np.asarray(pca.transform(mouth.astype(np.float32)), dtype=np.float64)
    edited = c * np.asarray(edits.pca_gains) + np.asarray(edits.pca_offsets) * std
    before = np.asarray(pca.inverse(c.astype(np.float32)), dtype=np.float64)
    after = np.asarray(pca.inverse(edited.astype(np.float32)), dtype=np.float64)
    return after - before


def _coefficient_std(pca: Any) -> np.ndarray:
    for name in ("coef_std", "std", "coefficient_std"):
        if hasattr(pca, name):
            return np.asarray(getattr(pca, name))
    if hasattr(pca, "explained_variance"):
        return np.sqrt(np.asarray(pca.explained_variance))
    raise ValueError("the PCA carries no coefficient std; pass pca_std=")


def _frame_axes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors per frame: u along a -> b, v perpendicular to it, pointing down (+y).

    a, b: (T, 2). Returns u, v: (T, 2).
    """
    d = b - a
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    u = np.where(norm > 1e-12, d / np.maximum(norm, 1e-12), np.array([1.0, 0.0]))
    v = np.stack([-u[:, 1], u[:, 0]], axis=-1)  # u rotated +90 deg: (1, 0) -> (0, 1), down
    return u, v


def _scale_mouth_opening(x: np.ndarray, gain: float) -> np.ndarray:
    """Scale each inner-lip pair's gap about its midpoint; outer points follow (see module doc)."""
    p = x.reshape(-1, N_TALKING, 2).copy()
    _, v = _frame_axes(p[:, _CORNERS[0]], p[:, _CORNERS[1]])
    gaps = np.stack([np.einsum("td,td->t", p[:, _M[lo]] - p[:, _M[up]], v) for up, lo in INNER_LIP_PAIRS], 1)
    half = 0.5 * (gain - 1.0) * gaps  # (T, 3)
    for point, pair, weight, side in _OPENING_MOVERS:
        p[:, point] += (side * weight * half[:, pair])[:, None] * v
    return p.reshape(x.shape)


def soft_limit(x: np.ndarray, knee: float, limit: float) -> np.ndarray:
    """x unchanged up to ``knee``, then bent smoothly (slope 1 at the knee) toward ``limit``,
    which it never reaches: ``knee + (limit - knee) * tanh((x - knee) / (limit - knee))``."""
    x = np.asarray(x, np.float64)
    span = max(limit - knee, 1e-9)
    return np.where(x > knee, knee + span * np.tanh((x - knee) / span), x)


def chin_depth(talk: np.ndarray) -> np.ndarray:
    """(T, 58) normalized -> (T,): the chin's distance below the hinge axis of the jaw edit
    (through the nose centre, parallel to jaw point 4 -> 12)."""
    p = _points(np.asarray(talk, np.float64)).reshape(-1, N_TALKING, 2)
    jaw = p[:, N_MOUTH:]
    _, v = _frame_axes(jaw[:, 0], jaw[:, -1])
    return np.einsum("td,td->t", jaw[:, _CHIN - N_MOUTH], v)


def limit_shape(talk: np.ndarray, reference: np.ndarray, pca: PCAModel, *, z_knee: float = 2.0,
                z_max: float = 2.5, residual_factor: float = 2.0) -> np.ndarray:
    """Keep the mouth's shape one the person could make.

    talk (T, 58) normalized wanted talking points; reference (N, 58) the person's own (the
    template footage); pca the subject's mouth PCA. The mouth's PCA coefficients, in standard
    deviations of the reference's, have an rms size (0.8-1.7 on footage, 1.5 median on
    predictions); it is bent softly (:func:`soft_limit`) from ``z_knee`` toward ``z_max``; what the PCA does not explain is shrunk to at most ``residual_factor`` x
    its median size on the reference (on predictions it is often several times that: a lower
    lip pulled into a V lives there, not in the PCA). Only the 20 mouth points change. -> (T, 58).

    Why: at a speech onset the mapping network asked for a mouth at rms 4.3 deviations (one
    coefficient at 11) from what the footage shows (a lower lip folded into a V, the far corner torn up), and
    the renderer draws exactly what it is asked.
    """
    x = np.asarray(talk, np.float64).copy()
    ref = np.asarray(reference, np.float64)
    if len(x) == 0 or len(ref) < 2:
        return np.array(talk, copy=True)
    mouth = x[:, :MOUTH_DIM]
    c = np.asarray(pca.transform(mouth), np.float64)
    cr = np.asarray(pca.transform(ref[:, :MOUTH_DIM]), np.float64)
    mu, sd = cr.mean(0), np.maximum(cr.std(0), 1e-6)
    z = (c - mu) / sd
    size_z = np.sqrt((z ** 2).mean(axis=1))  # rms over the coefficients: 0.8-1.7 on the footage itself
    zl = z * (soft_limit(size_z, z_knee, z_max) / np.maximum(size_z, 1e-12))[:, None]
    c2 = mu + zl * sd
    residual = mouth - np.asarray(pca.inverse(c), np.float64)
    size = np.linalg.norm(residual, axis=1)
    own = ref[:, :MOUTH_DIM] - np.asarray(pca.inverse(cr), np.float64)
    cap = residual_factor * float(np.median(np.linalg.norm(own, axis=1)))
    shrink = np.where(size > cap, cap / np.maximum(size, 1e-12), 1.0)
    x[:, :MOUTH_DIM] = np.asarray(pca.inverse(c2), np.float64) + shrink[:, None] * residual
    return x.astype(np.asarray(talk).dtype)


def limit_opening(talk: np.ndarray, reference: np.ndarray, *, margin: float = 1.1,
                  knee: float = 0.85) -> np.ndarray:
    """Keep the mouth and jaw opening inside the range a person shows.

    talk (T, 58) normalized wanted talking points; reference (N, 58) the same person's own
    talking points (the template footage). The inner-lip gap and the chin depth are each bent
    softly (:func:`soft_limit`) from ``knee`` x to at most ``margin`` x the reference's largest;
    below the knee nothing changes. The gap is scaled as ``mouth_open_gain`` scales it (per
    frame), the jaw as ``jaw_open_gain`` stretches it. -> (T, 58), ``talk``'s dtype.

    Why: the mapping network can ask for more than the footage ever shows (at a loud speech onset
    it opened katie_hill's mouth to 1.4x her widest), and no renderer can draw a mouth it has no
    pixels for: the retrieval pick stretches its widest donor into a torn lip.
    """
    x = np.asarray(talk, np.float64)
    ref = np.asarray(reference, np.float64)
    if len(x) == 0 or len(ref) == 0:
        return np.array(talk, copy=True)
    gap = talk_mouth_gap(x)
    top = float(np.max(talk_mouth_gap(ref)))
    if top > 0:
        limited = soft_limit(gap, knee * margin * top, margin * top)
        gain = np.where(gap > 1e-9, limited / np.maximum(gap, 1e-9), 1.0)
        x = _scale_mouth_opening(x, gain[:, None])
    chin, deep = chin_depth(x), float(np.max(chin_depth(ref)))
    rest = float(np.percentile(chin_depth(ref), JAW_REST_PERCENTILE))
    if deep > rest:  # limit the chin's drop below the person's resting chin
        lo = rest + knee * margin * (deep - rest)
        limited = soft_limit(chin, lo, rest + margin * (deep - rest))
        scale = np.where(np.abs(chin) > 1e-9, limited / np.where(np.abs(chin) > 1e-9, chin, 1.0), 1.0)
        p = x.reshape(-1, N_TALKING, 2).copy()
        jaw = p[:, N_MOUTH:]
        _, v = _frame_axes(jaw[:, 0], jaw[:, -1])
        depth = np.einsum("tkd,td->tk", jaw, v)
        p[:, N_MOUTH:] += ((scale[:, None] - 1.0) * depth)[..., None] * v[:, None, :]
        x = p.reshape(x.shape)
    return x.astype(np.asarray(talk).dtype)


def _move_jaw(x: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Stretch the jaw points' distance below the hinge axis (see module doc)."""
    p = x.reshape(-1, N_TALKING, 2).copy()
    jaw = p[:, N_MOUTH:]
    _, v = _frame_axes(jaw[:, 0], jaw[:, -1])
    depth = np.einsum("tkd,td->tk", jaw, v)  # distance below the axis through the origin
    chin = depth[:, _CHIN - N_MOUTH]
    rest = np.percentile(chin, JAW_REST_PERCENTILE)
    target = rest + gain * (chin - rest) + offset
    scale = np.where(np.abs(chin) > 1e-9, target / np.where(np.abs(chin) > 1e-9, chin, 1.0), 1.0)
    p[:, N_MOUTH:] += ((scale[:, None] - 1.0) * depth)[..., None] * v[:, None, :]
    return p.reshape(x.shape)


def _rigid_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R (T, 2, 2) and translation t (T, 2) with dst ~ src @ R.T + t (Kabsch, no scale).

    src, dst: (T, K, 2).
    """
    ms, md = src.mean(axis=1, keepdims=True), dst.mean(axis=1, keepdims=True)
    h = np.einsum("tki,tkj->tij", src - ms, dst - md)  # cross-covariance
    angle = np.arctan2(h[:, 0, 1] - h[:, 1, 0], h[:, 0, 0] + h[:, 1, 1])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    t = md[:, 0] - np.einsum("tij,tj->ti", rot, ms[:, 0])
    return rot, t


def _close_on_silence(x: np.ndarray, voiced: np.ndarray, closed: np.ndarray, fps: float) -> np.ndarray:
    """Blend toward ``closed`` where not voiced; short cosine ramps inside each silent run."""
    n = x.shape[0]
    if closed.shape == (TALK_DIM,):
        closed = np.broadcast_to(closed, (n, TALK_DIM))
    if closed.shape != (n, TALK_DIM):
        raise ValueError(f"closed_shape must be ({TALK_DIM},) or ({n}, {TALK_DIM}), got {closed.shape}")
    w = silence_weights(voiced, fps)
    if not np.any(w > 0):
        return x
    p = x.reshape(n, N_TALKING, 2)
    c = closed.reshape(n, N_TALKING, 2)
    rot, t = _rigid_fit(c[:, _UPPER_ANCHORS], p[:, _UPPER_ANCHORS])
    aligned = np.einsum("tij,tkj->tki", rot, c) + t[:, None, :]
    out = p + w[:, None, None] * (aligned - p)
    return out.reshape(x.shape)


def silence_weights(voiced: np.ndarray, fps: float, ramp_seconds: float = 0.08) -> np.ndarray:
    """(T,) bool voice activity -> (T,) closing weight in [0, 1]: 0 where voiced, rising to 1
    within ``ramp_seconds`` inside each silent run (a run touching the clip's edge is 1 there)."""
    voiced = np.asarray(voiced, bool)
    n = voiced.size
    if n == 0 or voiced.all():
        return np.zeros(n)
    if not voiced.any():
        return np.ones(n)
    idx = np.flatnonzero(voiced)
    pos = np.arange(n)
    # Distance (frames) to the nearest voiced frame.
    right = np.searchsorted(idx, pos)
    d_next = np.where(right < idx.size, idx[np.minimum(right, idx.size - 1)] - pos, np.inf)
    d_prev = np.where(right > 0, pos - idx[np.maximum(right - 1, 0)], np.inf)
    d = np.minimum(d_next, d_prev)
    ramp = max(1.0, ramp_seconds * fps)
    return np.where(voiced, 0.0, _smoothstep(d / (ramp + 1.0)))


def _smooth_jawline(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian along the 9 jaw points of each frame's deviation from a cubic fit."""
    p = x.reshape(-1, N_TALKING, 2).copy()
    jaw = p[:, N_MOUTH:]  # (T, 9, 2)
    s = np.linspace(-1.0, 1.0, N_JAW)
    basis = np.stack([np.ones_like(s), s, s * s, s * s * s], axis=1)  # (9, 4)
    proj = basis @ np.linalg.pinv(basis)  # (9, 9) least-squares cubic fit
    fit = np.einsum("ij,tjd->tid", proj, jaw)
    resid = gaussian_filter1d(jaw - fit, sigma, axis=1, mode="nearest")
    p[:, N_MOUTH:] = fit + resid
    return p.reshape(x.shape)


def benchmark(minutes: float = 5.0, fps: float = 25.0, repeats: int = 3, **_: Any) -> dict[str, float]:
    """Time :func:`apply_edits` with every edit on, over ``minutes`` of frames (the cost of one
    slider change in the studio). Synthetic inputs: smooth random talking points, a PCA fitted
    on them and a speech energy with pauses."""
    import time

    from studio.face.pca import MouthPCA

    rng = np.random.default_rng(0)
    n = int(minutes * 60 * fps)
    base = rng.normal(0, 1, TALK_DIM)
    drift = gaussian_filter1d(rng.normal(0, 1, (n, TALK_DIM)), 3.0, axis=0)
    talk = (base + 0.1 * drift).astype(np.float32)
    pca = MouthPCA.fit(talk[:, :MOUTH_DIM])
    energy = np.abs(gaussian_filter1d(rng.normal(0, 1, n), 5.0)) * (np.sin(np.arange(n) / fps) > -0.8)
    edits = Edits(pca_offsets=(0.5,) * PCA_DIM, pca_gains=(1.2,) * PCA_DIM, mouth_open_gain=1.3,
                  jaw_open_gain=1.2, jaw_open_offset=0.05, jawline_smoothing=1.0, temporal_smoothing=2.0,
                  close_on_silence=True)
    closed = closed_mouth_shape(talk)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        apply_edits(talk, edits, pca, speech_energy=energy, closed_shape=closed, fps=fps)
        best = min(best, time.perf_counter() - start)
    return {"frames": float(n), "apply_edits_s": best, "frames_per_s": n / best}
