"""What the mapping network is told about the template: head pose and cheek points, leak-free.

The paper conditions G1/G2 on the template frame's head pose and its 8 cheek points (jaw contour
0-3 and 13-16). In a real dub the template shows the person saying OTHER words: its jaw contour
moves with that speech, so a network fed the raw cheek points learns to copy the template's
articulation (measured on Obama: predicted opening r = 0.51 with the template's own mouth, 0.05
with the real mouth for the new speech). The paper's evaluation hides this because there the
cheek points come from the very frame being predicted.

Two modes (``CascadeConfig.conditioning``; the checkpoint carries it):

``rigid`` (the default)
    The network must know where the head is and how it is turned (the mouth is drawn in the
    template's pose), but nothing that moves with speech. So:

    - pose: the template's yaw/pitch/roll (PnP on brows, eyes and nose only, never the mouth or
      jaw) low-passed with a zero-phase Gaussian of ``POSE_SIGMA_S`` seconds (-3 dB near 1.5 Hz,
      below syllable rates of 3-8 Hz), which also removes detector jitter that is correlated with
      the mouth;
    - cheek: the cheek points PREDICTED from that pose by a per-subject ridge regression
      (:class:`RigidCheek`, fitted on the subject's training frames) -- where the jaw contour of
      this face sits in this head pose with the jaw at its average position. What the
      regression cannot explain from pose (jaw opening, and noise) is discarded;
    - and the pose itself still moves with speech: on the Obama footage the low-passed pitch
      correlates with the chin drop at r = 0.71-0.90 and with the lip gap at 0.32-0.51 (people
      nod as they speak, and the landmark fit tilts with an open jaw). A network given the pose
      learned to read the mouth off it (dub r 0.05 with pose and cheek conditioning alike). So
      the trainer (``studio.train.mapping``, ``swap_conditioning``) gives each training window
      the pose of ANOTHER moment and re-draws its target in that pose
      (``studio.face.frontal``): pose then tells where the mouth goes, never how open it is.

    Chosen over the alternatives the issue lists: low-passed raw cheek points still carry the
    template's speaking rhythm at slow rates (louder phrases open the jaw for seconds), and
    predicting the cheek from the rigid points alone still leaves the pose channel open.

``paper``
    The paper-literal conditioning: raw per-frame pose and cheek points. Kept as the variant
    ``ours-paper`` so the ablation shows what leak-free conditioning changes.

Audio (both modes when ``audio_norm`` is ``utterance``): each sequence's log filterbank is
standardized over its own frames (per-utterance mean and variance normalization), so that the
recording chain (microphone, codec, level) of the template's footage and of new speech do not
shift the network's inputs; the subject's NormStats are applied on top.

``heq`` (histogram equalization, a speaker- and channel-normalised filterbank): each filter's
values over the sequence are replaced by the standard-normal quantiles of their ranks (ties share
their mean rank; a constant filter, e.g. silence, becomes 0), so that not only the mean and
spread but the whole distribution of every band is the same for every voice and recording.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from studio.errors import CheckpointError

CONDITIONINGS = ("rigid", "paper")
AUDIO_NORMS = ("utterance", "heq", "none")
POSE_SIGMA_S = 0.12  # seconds; Gaussian low-pass of the pose in ``rigid`` mode
RIDGE = 1e-2  # ridge penalty on the standardized pose features
CONDITIONING_NAME = "conditioning.npz"


def gaussian_lowpass(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing along axis 0 of (T, D) with edge reflection; float32."""
    x = np.asarray(x, np.float64)
    if sigma_frames <= 0 or len(x) < 2:
        return x.astype(np.float32)
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma_frames, axis=0, mode="nearest").astype(np.float32)


def pose_features(pose: np.ndarray) -> np.ndarray:
    """(T, 3) degrees -> (T, 10): 1, yaw, pitch, roll, and their products (a quadratic surface)."""
    p = np.asarray(pose, np.float64) / 30.0  # ~unit scale for talking-head poses
    y, x, r = p[:, 0], p[:, 1], p[:, 2]
    return np.stack([np.ones_like(y), y, x, r, y * y, x * x, r * r, y * x, y * r, x * r], axis=1)


@dataclass(frozen=True, eq=False)
class RigidCheek:
    """cheek (T, 16) ~ pose_features(pose) @ weights: where the jaw contour sits in a head pose.

    weights (10, 16). Fitted by ridge regression on training frames (intercept not penalised).
    """

    weights: np.ndarray

    @classmethod
    def fit(cls, pose: np.ndarray, cheek: np.ndarray, ridge: float = RIDGE) -> "RigidCheek":
        """pose (N, 3) low-passed degrees, cheek (N, 16) normalized points of the same frames."""
        f = pose_features(pose)
        pen = np.full(f.shape[1], ridge * len(f))
        pen[0] = 0.0
        w = np.linalg.solve(f.T @ f + np.diag(pen), f.T @ np.asarray(cheek, np.float64))
        return cls(w.astype(np.float32))

    def __call__(self, pose: np.ndarray) -> np.ndarray:
        """(T, 3) -> (T, 16) float32."""
        return (pose_features(pose) @ self.weights).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        from studio.fsutil import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, rigid_cheek_weights=self.weights)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "RigidCheek":
        hint = "Re-train the model with `python -m studio train-mapping` (the checkpoint is incomplete or damaged)."
        from studio.fsutil import read_npz

        w = read_npz(path, "Conditioning file", hint, ("rigid_cheek_weights",))["rigid_cheek_weights"].astype(np.float32)
        if w.shape != (10, 16) or not np.isfinite(w).all():
            raise CheckpointError(f"{path} holds a conditioning of the wrong shape or non-finite values.", hint)
        return cls(w)


def smooth_pose(pose: np.ndarray, fps: float) -> np.ndarray:
    """The ``rigid`` mode's pose: (T, 3) -> (T, 3) low-passed below articulation rates."""
    return gaussian_lowpass(pose, POSE_SIGMA_S * float(fps))


def condition(mode: str, pose: np.ndarray, cheek: np.ndarray, fps: float,
              rigid: RigidCheek | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (pose (T, 3), cheek (T, 16)) the network sees for a template's raw pose and cheek."""
    if mode == "paper":
        return np.asarray(pose, np.float32), np.asarray(cheek, np.float32)
    if mode != "rigid":
        raise ValueError(f"unknown conditioning {mode!r}; known: {CONDITIONINGS}")
    assert rigid is not None, "rigid conditioning needs the subject's fitted RigidCheek"
    p = smooth_pose(pose, fps)
    return p, rigid(p)


def normalize_audio(audio: np.ndarray, mode: str) -> np.ndarray:
    """(4T, 26) log filterbank -> the same, standardized over the sequence (``utterance``)."""
    a = np.asarray(audio, np.float32)
    if mode == "none" or len(a) < 2:
        return a
    if mode == "heq":
        return histogram_equalize(a)
    if mode != "utterance":
        raise ValueError(f"unknown audio_norm {mode!r}; known: {AUDIO_NORMS}")
    mean = a.mean(axis=0, dtype=np.float64)
    std = np.sqrt(np.maximum(np.mean(np.square(a, dtype=np.float64), axis=0) - mean ** 2, 0.0))
    return ((a - mean.astype(np.float32)) / np.maximum(std, 1e-3).astype(np.float32)).astype(np.float32)


def histogram_equalize(a: np.ndarray) -> np.ndarray:
    """(N, D) features -> (N, D) float32: each column's values mapped to the standard-normal
    quantiles (rank - 0.5) / N of their ranks; constant columns -> 0."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    a = np.asarray(a, np.float32)
    n = len(a)
    if n < 2:
        return np.zeros_like(a)
    q = ndtri((rankdata(a, axis=0) - 0.5) / n).astype(np.float32)
    flat = (a.max(axis=0) - a.min(axis=0)) < 1e-6
    q[:, flat] = 0.0
    return q


# -- articulation gain -----------------------------------------------------------------------------
CALIBRATION_NAME = "calibration.npz"
MAX_GAIN = 3.0


@dataclass(frozen=True, eq=False)
class ArticulationGain:
    """Undo the regression to the mean of an L2-trained mapping: scale each predicted frame's
    deviation from the subject's average mouth by ``gain``, in a FRONTAL view (``studio.face.
    frontal``), so that head pose and placement are untouched and only articulation grows.

    gain: std of the real opening features / std of the predicted ones, measured within 64-frame
    windows of the subject's held-out validation footage (never the test speech), clipped to
    [1, MAX_GAIN]; frontal_mean (58,): the training frames' average talking vector, frontal.
    The same correction as "global variance" compensation in statistical speech synthesis.
    """

    gain: float
    frontal_mean: np.ndarray

    @classmethod
    def fit(cls, pred_open: np.ndarray, true_open: np.ndarray, frontal_mean: np.ndarray) -> "ArticulationGain":
        """pred_open / true_open (N, W, K): opening features of N validation windows of W frames."""
        sp = np.asarray(pred_open, np.float64).std(axis=1).mean(axis=0)
        st = np.asarray(true_open, np.float64).std(axis=1).mean(axis=0)
        g = float(np.sqrt((st ** 2).sum() / max((sp ** 2).sum(), 1e-12)))
        return cls(float(np.clip(g, 1.0, MAX_GAIN)), np.asarray(frontal_mean, np.float32))

    def __call__(self, talk: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """talk (T, 58) seen in ``pose`` (T, 3) -> the same with articulation scaled by ``gain``.

        repose(mean + g (frontalize(talk) - mean)) = g talk + (1 - g) repose(mean): frontalizing and
        re-posing are affine per frame and inverse to each other, so only the mean is re-posed.
        """
        talk = np.asarray(talk, np.float32)
        if self.gain == 1.0:
            return talk
        from studio.face import frontal, layout

        t = len(talk)
        rest = frontal.repose(np.broadcast_to(self.frontal_mean.reshape(1, layout.N_TALKING, 2),
                                              (t, layout.N_TALKING, 2)), pose).reshape(t, -1)
        return (self.gain * talk + (1.0 - self.gain) * rest).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        from studio.fsutil import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, gain=np.float32(self.gain), frontal_mean=self.frontal_mean)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ArticulationGain":
        hint = "Re-train the model with `python -m studio train-mapping` (the checkpoint is incomplete or damaged)."
        from studio.fsutil import read_npz

        z = read_npz(path, "Calibration file", hint, ("gain", "frontal_mean"))
        try:
            gain, mean = float(z["gain"]), z["frontal_mean"].astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"Calibration file {path} is unreadable: {exc}.", hint) from None
        if mean.shape != (58,) or not np.isfinite(mean).all() or not 1.0 <= gain <= MAX_GAIN:
            raise CheckpointError(f"{path} holds an invalid articulation calibration.", hint)
        return cls(gain, mean)
