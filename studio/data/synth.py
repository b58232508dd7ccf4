"""Synthetic talking heads with ground truth: a 3D face that speaks, turns and is "detected".

Purpose: test the paper's claims (head-pose conditioning helps under out-of-plane rotation;
the cheek points locate the mouth) against landmarks whose truth is known. The generator is
built from plain physical and signal-processing assumptions, none tuned to the paper's numbers.

One clip (``synthesize``) is made of, in order:

1. **Speech** (16 kHz): a file (``studio.media.read_audio``) or, by default, a procedural
   speech-like signal (:func:`procedural_speech`). It is cut or looped (with crossfades) to the
   clip's length, starting at a seed-dependent offset, so that several seeds over one file give
   different data.
2. **Face shape**: ``studio.face.meanface.MEAN_FACE_68`` (mm, OpenCV axes: x right, y down,
   z away from the camera; the nose tip has z < 0) with its mouth closed, deformed per seed by
   smooth modes (face width, jaw width, lower-face length, mouth width, lip thickness, nose
   length, head depth): :func:`identity_shape`.
3. **Articulation** (T, 3) = open in [0, 1], spread in [-1, 1] (> 0 spread, < 0 rounded),
   protrude in [0, 1], a deterministic function of the speech (:func:`articulation`):

   - log filterbank (``studio.audio.logfbank``, 100 Hz) -> log mean energies of the low
     (mel bands 0-7, up to ~0.8 kHz), mid (8-15, ~0.8-2 kHz) and high (18-25, > ~2.7 kHz) bands;
   - loudness = low+mid band energy mapped to [0, 1.25] between the clip's 5th and 99th
     percentile; sonority = sigmoid(low - high - 1) (vowels ~1, fricatives ~0);
     brightness = z-score of (mid - low) over speech frames (front vowels > 0, back < 0);
     vowel height = z-score of (bands 3-7 minus bands 0-2), i.e. a first-formant proxy;
   - context: each is smoothed with a Hann window spanning +-``context_ms`` (zero phase), and
     opening also mixes in the maximum of loudness within +-``context_ms`` (running speech keeps
     the jaw partly open between syllables):
     ``open* = (0.55 loud + 0.45 max_ctx(loud)) * (0.3 + 0.7 sonority) * (0.5 + 0.5 sigmoid(1.5 height))``;
     ``spread* = tanh(1.3 brightness) * sonority``;
     ``protrude* = 0.8 relu(-spread*) + 0.5 (1 - sonority) loud`` (rounding, and /sh/-like
     fricatives);
   - saturation: ``open = tanh(1.4 g open*) / tanh(1.4)`` clipped to [0, 1] (g = a per-seed
     speaker gain in [0.8, 1.2]), ``protrude = tanh(1.5 protrude*) / tanh(1.5)``;
   - a small per-seed slow (0.15-1.5 Hz) idiosyncratic variation not explained by the audio;
   - look-ahead (anticipatory coarticulation): the articulator at video time t takes the value
     of its target at t + lead, lead = 80 / 100 / 120 ms for open / spread / protrude.
4. **Articulated 3D points** (:func:`articulate`): the jaw rotates down and back about a hinge
   (the temporomandibular joint, behind and above the jaw angle) by up to ``jaw_max_deg``;
   the jaw points 4-12 and the lower lip follow it fully, the cheek points 0-3 and 13-16 with
   weights falling to 0 near the ear (so they move little); the lower lip drops and the upper lip
   lifts a little beyond the jaw; spread widens and thins the mouth and pulls the corners back,
   rounding narrows it; protrusion moves the lips toward the camera.
5. **Head motion** (:func:`head_motion`): yaw / pitch / roll as sums of low-frequency sinusoids
   (a dominant 12-30 s sweep plus faster components and a little tremor), soft-limited with tanh
   to +-``yaw_max`` / ``pitch_max`` / ``roll_max``; camera distance varies so that the face scale
   changes by +-``scale_variation``; the head translates in the image by +-``shift_fraction``.
   The head rotates about a pivot behind the face. Pinhole projection, focal = image width.
6. **Observed landmarks** (:func:`observe`): what a 2D detector would report. Far-side contour
   points hidden by the turned head slide to the visible outline (the silhouette of an elliptic
   cheek cross-section through each contour point, computed with the true perspective view rays);
   then per-point Gaussian jitter (``jitter`` x face size, contour points ``contour_jitter_factor``
   times more), temporally correlated drift (AR(1), per point and for the whole face), and
   occasional larger errors (a region shifted by ~``outlier_size`` x face size for 1-6 frames).
   Face size = sqrt(area of the true landmarks' bounding box).
7. **Pose**: estimated from the observed landmarks with ``studio.face.pose.head_pose`` and
   smoothed with ``smooth_pose`` as preprocessing does, so it is what a real run would have;
   the true pose, articulation and noise-free visible points are in ``synth_truth.npz``
   (:func:`load_truth`).
8. **Video** (optional): frames drawn from the noise-free visible points (face, neck, eyes, brows,
   nose, lips, mouth interior; the far side shaded) into ``video.mp4`` with the speech as audio.

``gt_landmarks`` are the noise-free projections of the true 3D points (occluded ones included);
``landmarks`` are the observed points.

**Speech sources.** ``speech`` (CLI ``--speech FILE`` / ``--speech-seed K``) is a file, a 16 kHz
array, an int K (procedural speech made with seed K) or None (procedural speech made with the
clip's seed; identical to ``speech=seed``). The clip's seed still picks the start offset.

**Random streams.** Speech, face shape, articulation style (speaker gain and idiosyncrasy),
head motion, detector noise and rendering colours each draw from their own stream of the seed,
and no draw count depends on the speech. So two clips with the same seed, length, fps, size and
config but different speech have identical ``pose_true``, ``translation`` and ``shape`` and the
same detector-noise draws (the same jitter, drift and outliers in units of the face size; in
pixels they are scaled by the face size, which the opening jaw changes by up to ~2 %).

**Dub mode** (``template_speech=...``, CLI ``--template-speech FILE`` /
``--template-speech-seed K``): the template's own face articulates with a DIFFERENT speech B than
the clip's audio A (``speech``), as in a real dub, where the template's jaw and cheeks follow its
own words. Head motion, face shape and noise draws are those of the seed, as above; B is cut
from the template speech with the same seed-dependent offset rule as A. Which array follows
which speech:

- speech A (the clip's audio, and the dub target):
  ``audio.wav``, the clip's ``audio`` features, the audio track of ``video.mp4``;
  ``gt_landmarks`` = noise-free true projections of the face articulating with A (what a
  perfect dub produces; equal to ``gt_landmarks`` of an ordinary clip with speech A and the same
  seed); in ``synth_truth.npz``: ``articulation``, ``visible``, ``hidden`` (so ``--target gt``
  and ``--target visible`` of ``studio evaluate`` score against A), and ``observed`` = the
  detector observation of that face with the same noise draws (equal to ``landmarks`` of the
  ordinary clip with speech A).
- template speech B (what the template shows):
  ``landmarks`` = detector observation of the face articulating with B (equal to ``landmarks``
  of an ordinary clip with speech B and the same seed), hence ``pose``, ``centre``, ``scale``,
  ``boxes``, the clip's ``talk`` and ``cheek`` views, and the frames of ``video.mp4``;
  ``template_audio.wav`` (B itself); in ``synth_truth.npz``: ``template_articulation``,
  ``template_gt`` (noise-free true projections, B's ``gt_landmarks``), ``template_visible``
  and ``template_hidden`` (what ``landmarks`` observe).
- both: ``pose_true``, ``translation``, ``shape``, ``focal``.

``clip.json`` extras then hold ``"mode": "dub"``, ``"template_speech"`` (its source),
``"template_speech_digest"`` and ``"follows"`` (array name -> "speech" / "template_speech" /
"both"). Without ``template_speech`` the output is exactly that of the ordinary mode (no
``mode`` key). A dub clip is for evaluation: its ``landmarks`` do not follow its audio, so do
not train on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.ndimage
import scipy.signal

from studio.audio import SAMPLE_RATE, features_for_video, logfbank
from studio.data.clip import Clip, ClipMeta
from studio.errors import InputError
from studio.face import layout
from studio.face.normalize import face_scale, nose_centre

log = logging.getLogger(__name__)

TRUTH_FILE = "synth_truth.npz"
VIDEO_FILE = "video.mp4"
TEMPLATE_AUDIO_FILE = "template_audio.wav"  # dub mode only: the template's own speech
ARTICULATORS = ("open", "spread", "protrude")
FEATURE_HOP_S = 0.01  # logfbank hop
FEATURE_CENTRE_S = 0.0125  # centre of the first 25 ms analysis window

# Independent random streams per component, so that changing one part leaves the others alone.
_STREAM_SPEECH, _STREAM_SHAPE, _STREAM_STYLE, _STREAM_MOTION, _STREAM_NOISE, _STREAM_LOOK = range(6)

# Weight with which each jaw-contour point (0-16) follows the jaw rotation: the mandible (4-12)
# fully, the cheek points less and less toward the ear.
_CONTOUR_JAW_WEIGHT = np.array([0.0, 0.03, 0.12, 0.4, 0.75, 0.95, 1, 1, 1, 1, 1, 0.95, 0.75, 0.4, 0.12, 0.03, 0.0])
_UPPER_LIP = (49, 50, 51, 52, 53, 61, 62, 63)
_LOWER_LIP = (55, 56, 57, 58, 59, 65, 66, 67)
_CORNERS = (48, 54, 60, 64)
_OUTER_UPPER = (49, 50, 51, 52, 53)
_OUTER_LOWER = (55, 56, 57, 58, 59)
_INNER_UPPER = (61, 62, 63)
_INNER_LOWER = (65, 66, 67)
_HINGE = np.array([0.0, -20.0, 70.0])  # jaw hinge (TMJ) in mean-face mm; the rotation axis is x
_PIVOT = np.array([0.0, 10.0, 65.0])  # head rotation centre (behind the face)


@dataclass(frozen=True)
class SynthConfig:
    # head motion: soft limits in degrees, scale and image translation
    yaw_max: float = 35.0
    pitch_max: float = 15.0
    roll_max: float = 10.0
    scale_variation: float = 0.2  # face scale changes by +- this fraction (camera distance)
    shift_fraction: float = 0.08  # head translation, fraction of the image width
    face_fraction: float = 0.45  # mean face width / image width
    # articulation
    lead_open_ms: float = 80.0
    lead_spread_ms: float = 100.0
    lead_protrude_ms: float = 120.0
    context_ms: float = 100.0
    jaw_max_deg: float = 7.0
    idiosyncrasy: float = 0.06
    # identity: multiplier of the per-seed deformation standard deviations (0 = the mean face)
    shape_variation: float = 1.0
    # detector model (fractions of the face size)
    jitter: float = 0.01
    contour_jitter_factor: float = 1.8
    drift: float = 0.008
    drift_seconds: float = 0.4
    outlier_rate: float = 0.01  # error events starting per frame
    outlier_size: float = 0.06
    silhouette: bool = True  # far-side contour points slide to the visible outline
    pose_window: int = 5  # head-pose smoothing, as preprocessing does (PreprocessConfig.pose_window)
    # speech looping
    crossfade_ms: float = 40.0

    def __post_init__(self) -> None:
        for name in ("yaw_max", "pitch_max", "roll_max", "scale_variation", "shift_fraction",
                     "jitter", "drift", "outlier_rate", "outlier_size", "idiosyncrasy", "shape_variation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.face_fraction < 1:
            raise ValueError(f"face_fraction must be in (0, 1), got {self.face_fraction}")
        if self.scale_variation >= 1:
            raise ValueError(f"scale_variation must be < 1, got {self.scale_variation}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stream])


# -- speech ---------------------------------------------------------------------------------------
# (F1, F2, F3) in Hz, adult averages after Peterson & Barney (1952).
_VOWELS = np.array([
    (730, 1090, 2440),  # a
    (270, 2290, 3010),  # i
    (300, 870, 2240),  # u
    (530, 1840, 2480),  # e
    (570, 840, 2410),  # o
    (660, 1720, 2410),  # ae
    (520, 1190, 2390),  # uh
    (490, 1350, 1690),  # er
], dtype=np.float64)
_FORMANT_BW = (80.0, 100.0, 140.0)
_FRICATIVE_BANDS = ((3800.0, 7500.0, 0.30), (2000.0, 4500.0, 0.30), (1200.0, 7000.0, 0.12))  # s, sh, f


def _formant_sos(formants: np.ndarray, bandwidths: tuple[float, ...], sr: int) -> np.ndarray:
    """Cascade of unit-DC-gain two-pole resonators (Klatt): (n, 6) second-order sections."""
    rows = []
    for f, bw in zip(formants, bandwidths):
        r = np.exp(-np.pi * bw / sr)
        c1, c2 = -2 * r * np.cos(2 * np.pi * f / sr), r * r
        rows.append([1 + c1 + c2, 0.0, 0.0, 1.0, c1, c2])
    return np.array(rows)


def procedural_speech(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic speech-like signal: (S,) float32 in [-1, 1], S = round(seconds * rate).

    Phrases of 0.8-3 s separated by 0.15-0.7 s pauses; syllables at 3-6 Hz, each an optional
    onset (plosive closure + burst, fricative noise, nasal murmur) and a vowel (glottal pulses
    through three formant resonators, per-syllable stress); a per-seed voice (f0 95-210 Hz,
    vocal-tract scale 0.9-1.15) with phrase declination and a wandering pitch.
    """
    rng = _rng(seed, _STREAM_SPEECH)
    sr = int(sample_rate)
    n = int(round(seconds * sr))
    if n <= 0:
        return np.zeros(0, np.float32)
    f0_base = rng.uniform(95, 210)
    tract = rng.uniform(0.9, 1.15)  # shorter tract -> higher formants
    wander_f, wander_ph = rng.uniform(0.3, 0.9), rng.uniform(0, 2 * np.pi)
    events: list[tuple[str, int, int, float, Any, tuple[int, int]]] = []  # kind, start, stop, amp, param, phrase
    pos = int(rng.uniform(0.1, 0.4) * sr)
    while pos < n:
        phrase = (pos, min(n, pos + int(rng.uniform(0.8, 3.0) * sr)))
        while pos < phrase[1]:
            syl = int(sr / rng.uniform(3.0, 6.0))
            stress = rng.uniform(0.45, 1.0)
            onset = rng.choice(["none", "plosive", "fricative", "nasal"], p=[0.3, 0.3, 0.25, 0.15])
            cur = pos
            if onset == "plosive":
                cur += int(rng.uniform(0.03, 0.06) * sr)  # closure: silence
                burst = int(rng.uniform(0.008, 0.02) * sr)
                events.append(("burst", cur, cur + burst, 0.35 * stress, None, phrase))
                cur += burst
            elif onset == "fricative":
                dur = int(rng.uniform(0.06, 0.12) * sr)
                kind = int(rng.integers(len(_FRICATIVE_BANDS)))
                events.append(("fricative", cur, cur + dur, stress, kind, phrase))
                cur += dur
            elif onset == "nasal":
                dur = int(rng.uniform(0.05, 0.08) * sr)
                events.append(("nasal", cur, cur + dur, 0.3 * stress, None, phrase))
                cur += dur
            stop = max(cur + int(0.06 * sr), pos + syl)
            events.append(("vowel", cur, stop, stress, int(rng.integers(len(_VOWELS))), phrase))
            pos = stop
        pos += int(rng.uniform(0.15, 0.7) * sr)

    r = 0.97
    fade = int(0.012 * sr)
    fric_sos = [scipy.signal.butter(4, (lo, min(hi, 0.45 * sr)), btype="bandpass", fs=sr, output="sos")
                for lo, hi, _ in _FRICATIVE_BANDS]
    nasal_sos = _formant_sos(np.array([250.0, 2200.0]), (100.0, 300.0), sr)
    out = np.zeros(n)
    for kind, a, b, amp, param, (p0, p1) in events:
        a, b = min(a, n), min(b, n)
        m = b - a
        if m < 8:
            continue
        if kind in ("vowel", "nasal"):
            # Glottal source: one pulse per period of f0 (per-seed base, phrase declination,
            # slow wander), a -12 dB/octave glottal low-pass, +6 dB/octave lip radiation
            # (first difference), a little aspiration noise.
            idx = np.arange(a, b)
            f0 = f0_base * (1.12 - 0.24 * (idx - p0) / max(p1 - p0, 1))
            f0 *= 1 + 0.06 * np.sin(2 * np.pi * wander_f * idx / sr + wander_ph)
            pulses = np.diff(np.floor(np.cumsum(f0 / sr)), prepend=0.0)
            source = np.diff(scipy.signal.lfilter([1.0], [1.0, -2 * r, r * r], pulses), prepend=0.0)
            source = source / (np.abs(source).max() + 1e-12) + 0.02 * rng.standard_normal(m)
            sos = nasal_sos if kind == "nasal" else _formant_sos(_VOWELS[param] * tract, _FORMANT_BW, sr)
            seg = scipy.signal.sosfilt(sos, source)
        elif kind == "fricative":
            seg = scipy.signal.sosfilt(fric_sos[param], rng.standard_normal(m)) * _FRICATIVE_BANDS[param][2] * 8
        else:  # burst
            seg = 0.5 * rng.standard_normal(m)
        env = np.ones(m)
        k = min(fade, m // 2)
        env[:k] = np.linspace(0, 1, k)
        env[m - k:] = np.linspace(1, 0, k)
        if kind == "vowel":  # syllable-shaped: rise, then a slow decay
            env *= np.linspace(1.0, 0.55, m) ** 0.7
        seg = seg / (np.sqrt(np.mean(seg**2)) + 1e-9) * 0.1 * amp
        out[a:b] += seg * env
    out *= 0.6 / (np.max(np.abs(out)) + 1e-9)
    out += 3e-4 * _rng(seed, _STREAM_SPEECH + 100).standard_normal(n)  # room noise floor
    return np.clip(out, -1, 1).astype(np.float32)


def loop_speech(signal: np.ndarray, n_samples: int, offset: int, crossfade: int) -> np.ndarray:
    """(S,) -> (n_samples,): the signal from ``offset`` on, wrapped around with linear crossfades
    of ``crossfade`` samples wherever it restarts. Deterministic; no clicks at the seams."""
    x = np.asarray(signal, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return np.zeros(n_samples, np.float32)
    offset %= x.size
    cf = int(min(crossfade, x.size // 4))
    out = np.empty(0, np.float32)
    piece = x[offset:]
    while out.size < n_samples:
        if out.size == 0 or cf == 0:
            out = np.concatenate([out, piece])
        else:
            ramp = np.linspace(0, 1, cf, dtype=np.float32)
            head = piece[:cf]
            if head.size < cf:
                head = np.pad(head, (0, cf - head.size))
            out[-cf:] = out[-cf:] * (1 - ramp) + head * ramp
            out = np.concatenate([out, piece[cf:]])
        piece = x
    return out[:n_samples].copy()


# -- articulation ---------------------------------------------------------------------------------
def _log_band(feats: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Log of the mean energy of filterbank bands lo..hi-1: (F,)."""
    f = feats[:, lo:hi].astype(np.float64)
    m = f.max(axis=1, keepdims=True)
    return (m[:, 0] + np.log(np.exp(f - m).mean(axis=1)))


def _hann_smooth(x: np.ndarray, half_width: int) -> np.ndarray:
    if half_width < 1:
        return x
    w = np.hanning(2 * half_width + 3)[1:-1]
    return scipy.ndimage.convolve1d(x, w / w.sum(), axis=0, mode="nearest")


def _smooth_noise(n: int, rate: float, rng: np.random.Generator, f_lo: float, f_hi: float,
                  k: int = 4) -> np.ndarray:
    """Sum of ``k`` random sinusoids with frequencies in [f_lo, f_hi] Hz, |x| <= 1: (n,)."""
    t = np.arange(n) / rate
    freqs = np.exp(rng.uniform(np.log(f_lo), np.log(f_hi), k))
    amps = rng.uniform(0.5, 1.0, k)
    phases = rng.uniform(0, 2 * np.pi, k)
    x = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(axis=0)
    return x / amps.sum()


def articulation_targets(feats: np.ndarray, cfg: SynthConfig = SynthConfig(), gain: float = 1.0) -> np.ndarray:
    """Speech features -> articulator targets on the feature grid, before the look-ahead.

    feats: (F, 26) logfbank at 100 Hz. Returns (F, 3) float64: open, spread, protrude
    (see the module docstring for the function).
    """
    feats = np.asarray(feats, dtype=np.float64)
    if feats.shape[0] == 0:
        return np.zeros((0, 3))
    low, mid, high = _log_band(feats, 0, 8), _log_band(feats, 8, 16), _log_band(feats, 18, 26)
    f1 = _log_band(feats, 3, 8) - _log_band(feats, 0, 3)  # first-formant height (open vowels high)
    total = _log_band(feats, 0, 16)
    floor, top = np.percentile(total, 5), np.percentile(total, 99)
    loud = np.clip((total - floor) / max(top - floor, 1.0), 0.0, 1.25)
    sonority = 1 / (1 + np.exp(-(low - high - 1.0)))
    bright = mid - low
    speech = loud > 0.3

    def zscore(x: np.ndarray) -> np.ndarray:
        ref = x[speech] if speech.sum() > 10 else x
        return (x - ref.mean()) / (ref.std() + 1e-6)

    bright, f1 = zscore(bright), zscore(f1)

    half = int(round(cfg.context_ms / 1000 / FEATURE_HOP_S))
    loud_s = _hann_smooth(loud, half)
    son_s = _hann_smooth(sonority, half)
    bright_s = _hann_smooth(bright, half)
    f1_s = _hann_smooth(f1, half)
    loud_ctx = scipy.ndimage.maximum_filter1d(loud_s, 2 * half + 1, mode="nearest")

    open_raw = (0.55 * loud_s + 0.45 * loud_ctx) * (0.3 + 0.7 * son_s) * (0.5 + 0.5 / (1 + np.exp(-1.5 * f1_s)))
    spread = np.tanh(1.3 * bright_s) * son_s
    protrude_raw = 0.8 * np.maximum(-spread, 0) + 0.5 * (1 - son_s) * loud_s
    opening = np.clip(np.tanh(1.4 * gain * open_raw) / np.tanh(1.4), 0, 1)
    protrude = np.clip(np.tanh(1.5 * protrude_raw) / np.tanh(1.5), 0, 1)
    return np.stack([opening, spread, protrude], axis=1)


def articulation(signal: np.ndarray, fps: float, n_frames: int, cfg: SynthConfig = SynthConfig(),
                 seed: int = 0) -> np.ndarray:
    """Speech (S,) 16 kHz -> articulation (T, 3) float32 (open, spread, protrude) per video frame.

    Frame k is sampled at its mid time (k + 0.5) / fps plus each articulator's lead.
    """
    rng = _rng(seed, _STREAM_STYLE)
    gain = rng.uniform(0.8, 1.2)
    feats = logfbank(signal)
    targets = articulation_targets(feats, cfg, gain)
    f = targets.shape[0]
    if f == 0 or n_frames == 0:
        return np.zeros((n_frames, 3), np.float32)
    # idiosyncratic variation, slow, not explained by the audio
    idio = np.stack([_smooth_noise(f, 1 / FEATURE_HOP_S, rng, 0.15, 1.5) for _ in range(3)], axis=1)
    targets[:, 0] = np.clip(targets[:, 0] * (1 + cfg.idiosyncrasy * 2 * idio[:, 0]), 0, 1)
    targets[:, 1] = np.clip(targets[:, 1] + cfg.idiosyncrasy * idio[:, 1], -1, 1)
    targets[:, 2] = np.clip(targets[:, 2] + cfg.idiosyncrasy * idio[:, 2] * targets[:, 2], 0, 1)
    targets = _hann_smooth(targets, 3)  # articulator inertia (+-30 ms)
    tau = FEATURE_CENTRE_S + FEATURE_HOP_S * np.arange(f)
    t = (np.arange(n_frames) + 0.5) / fps
    leads = np.array([cfg.lead_open_ms, cfg.lead_spread_ms, cfg.lead_protrude_ms]) / 1000
    out = np.stack([np.interp(t + leads[i], tau, targets[:, i]) for i in range(3)], axis=1)
    return out.astype(np.float32)


# -- face geometry --------------------------------------------------------------------------------
def _mean_face() -> np.ndarray:
    from studio.face.meanface import mean_face

    return np.asarray(mean_face(), dtype=np.float64).reshape(68, 3)


def closed_mouth(shape: np.ndarray) -> np.ndarray:
    """(68, 3) -> (68, 3): the lips moved together so that the inner lips meet (rest position)."""
    s = np.array(shape, dtype=np.float64, copy=True)
    gap = s[list(_INNER_LOWER), 1].mean() - s[list(_INNER_UPPER), 1].mean()
    s[list(_UPPER_LIP), 1] += gap / 2
    s[list(_LOWER_LIP), 1] -= gap / 2
    return s


def identity_shape(seed: int, cfg: SynthConfig = SynthConfig(), mean: np.ndarray | None = None) -> np.ndarray:
    """The per-seed neutral face (68, 3) mm: the closed-mouth mean face with smooth random modes."""
    rng = _rng(seed, _STREAM_SHAPE)
    g = np.clip(rng.standard_normal(8), -2, 2) * cfg.shape_variation
    s = closed_mouth(_mean_face() if mean is None else mean)
    y = s[:, 1].copy()
    lower = np.clip(y / 60.0, 0, 1)  # 0 above the nose base, 1 at the jaw
    s[:, 0] *= 1 + 0.05 * g[0] + 0.05 * g[1] * lower  # face width, jaw width
    y0 = 5.0
    below = y > y0
    s[below, 1] = y0 + (y[below] - y0) * (1 + 0.07 * g[2])  # lower-face length
    mouth = list(layout.MOUTH)
    cx = s[mouth, 0].mean()
    s[mouth, 0] = cx + (s[mouth, 0] - cx) * (1 + 0.08 * g[3])  # mouth width
    line = s[list(_INNER_UPPER + _INNER_LOWER), 1].mean()
    s[list(_OUTER_UPPER), 1] = line + (s[list(_OUTER_UPPER), 1] - line) * (1 + 0.2 * g[4])  # lips
    s[list(_OUTER_LOWER), 1] = line + (s[list(_OUTER_LOWER), 1] - line) * (1 + 0.2 * g[5])
    nose = list(layout.NOSE)
    s[nose, 1] = s[27, 1] + (s[nose, 1] - s[27, 1]) * (1 + 0.06 * g[6])  # nose length
    s[:, 2] *= 1 + 0.08 * g[7]  # head depth
    return s


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def articulate(shape: np.ndarray, params: np.ndarray, cfg: SynthConfig = SynthConfig()) -> np.ndarray:
    """Neutral face (68, 3) + articulation (T, 3) -> articulated faces (T, 68, 3) in head mm."""
    shape = np.asarray(shape, dtype=np.float64)
    p = np.asarray(params, dtype=np.float64)
    t = p.shape[0]
    o, sp, pr = p[:, 0], p[:, 1], p[:, 2]
    pts = np.broadcast_to(shape, (t, 68, 3)).copy()

    # 1. lips relative to the mouth: spread / round and protrusion (before the jaw moves them)
    mouth = np.array(layout.MOUTH)
    cx = shape[mouth, 0].mean()
    line = shape[list(_INNER_UPPER + _INNER_LOWER), 1].mean()
    widen = np.where(sp > 0, 0.14 * sp, 0.22 * sp)
    pts[:, mouth, 0] = cx + (shape[mouth, 0] - cx) * (1 + widen[:, None])
    thin = np.where(sp > 0, -0.15 * sp, -0.10 * sp)  # spread thins the lips, rounding thickens
    pts[:, mouth, 1] = line + (shape[mouth, 1] - line) * (1 + thin[:, None])
    corners = list(_CORNERS)
    pts[:, corners, 2] += 3.0 * np.maximum(sp, 0)[:, None]
    half_width = max(np.abs(shape[mouth, 0] - cx).max(), 1e-6)
    central = 1 - 0.6 * np.abs(shape[mouth, 0] - cx) / half_width
    pts[:, mouth, 2] -= 6.0 * pr[:, None] * central[None, :]
    # lip opening beyond the jaw: the lower lip drops, the upper lip lifts, the corners narrow
    pts[:, list(_LOWER_LIP), 1] += 3.0 * o[:, None]
    pts[:, list(_UPPER_LIP), 1] -= 1.0 * o[:, None]
    pts[:, corners, 0] -= 2.0 * o[:, None] * np.sign(shape[corners, 0] - cx)[None, :]

    # 2. jaw rotation about the hinge (x axis): chin down and back
    weights = np.zeros(68)
    weights[list(layout.JAW_LINE)] = _CONTOUR_JAW_WEIGHT
    weights[list(_LOWER_LIP)] = 1.0
    weights[list(_CORNERS)] = 0.45
    theta = np.deg2rad(cfg.jaw_max_deg) * o
    moving = np.flatnonzero(weights)
    rel = pts[:, moving] - _HINGE
    rot = _rot_x(theta[:, None] * weights[moving][None, :])  # (T, M, 3, 3)
    pts[:, moving] = _HINGE + (rot @ rel[..., None])[..., 0]
    return pts


def render_points_3d(shape: np.ndarray) -> np.ndarray:
    """Extra 3D points for drawing (not landmarks): a forehead above the brows, (10, 3)."""
    brows = np.asarray(shape)[17:27]
    fore = brows.copy()
    side = np.abs(brows[:, 0]) / max(np.abs(brows[:, 0]).max(), 1e-6)
    fore[:, 1] -= 30.0 - 8.0 * side
    fore[:, 2] += 8.0 + 14.0 * side
    return fore


# -- head motion and projection -------------------------------------------------------------------
def _bounded_motion(n: int, fps: float, rng: np.random.Generator, limit: float, sweep: tuple[float, float],
                    weight: float) -> np.ndarray:
    """A smooth signal in (-limit, limit): a dominant slow sweep + faster components, tanh-limited."""
    t = np.arange(n) / fps
    slow = np.sin(2 * np.pi * rng.uniform(*sweep) * t + rng.uniform(0, 2 * np.pi))
    fast = _smooth_noise(n, fps, rng, 0.08, 0.5, 3)
    tremor = _smooth_noise(n, fps, rng, 1.0, 3.0, 3)
    x = weight * slow + (1 - weight) * fast
    return limit * np.tanh(1.2 * x) / np.tanh(1.2) + 0.02 * limit * tremor


def head_motion(n_frames: int, fps: float, seed: int, size: int, cfg: SynthConfig = SynthConfig(),
                face_width_mm: float = 145.0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random head motion.

    Returns angles (T, 3) degrees (yaw, pitch, roll; see :func:`rotation_matrices`) and
    translation (T, 3) mm of the head pivot in camera coordinates (z = distance).
    """
    rng = _rng(seed, _STREAM_MOTION)
    yaw = _bounded_motion(n_frames, fps, rng, cfg.yaw_max, (1 / 30, 1 / 12), 0.6)
    pitch = _bounded_motion(n_frames, fps, rng, cfg.pitch_max, (1 / 25, 1 / 8), 0.5)
    roll = _bounded_motion(n_frames, fps, rng, cfg.roll_max, (1 / 25, 1 / 8), 0.5)
    focal = float(size)
    # face plane ~ 75 mm in front of the pivot; distance for the face to span face_fraction
    d0 = focal * face_width_mm / (cfg.face_fraction * size) + 75.0
    zoom = _bounded_motion(n_frames, fps, rng, 1.0, (1 / 40, 1 / 15), 0.6)
    dist = (d0 - 75.0) / (1 + cfg.scale_variation * zoom) + 75.0
    sx = _smooth_noise(n_frames, fps, rng, 1 / 30, 0.3, 3)
    sy = _smooth_noise(n_frames, fps, rng, 1 / 30, 0.3, 3)
    tx = cfg.shift_fraction * size * sx * dist / focal
    ty = 0.6 * cfg.shift_fraction * size * sy * dist / focal
    angles = np.stack([yaw, pitch, roll], axis=1)
    return angles.astype(np.float64), np.stack([tx, ty, dist], axis=1)


def rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """(T, 3) degrees (yaw, pitch, roll) -> (T, 3, 3) head-to-camera rotations.

    The convention of ``studio.face.pose.rotation_matrix``: R = Rz(roll) @ Rx(pitch) @ Ry(yaw);
    yaw > 0 turns the nose toward the image's right, pitch > 0 looks up, roll > 0 is clockwise.
    """
    a = np.deg2rad(np.asarray(angles, dtype=np.float64))
    yaw, pitch, roll = a[:, 0], a[:, 1], a[:, 2]
    o, z = np.ones_like(yaw), np.zeros_like(yaw)
    cy_, sy_ = np.cos(yaw), np.sin(yaw)
    ry = np.stack([np.stack([cy_, z, -sy_], -1), np.stack([z, o, z], -1), np.stack([sy_, z, cy_], -1)], -2)
    rx = _rot_x(-pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    rz = np.stack([np.stack([cr, -sr, z], -1), np.stack([sr, cr, z], -1), np.stack([z, z, o], -1)], -2)
    return rz @ rx @ ry


def _rotate(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """(T, N, 3) points, (T, 3, 3) rotations -> (T, N, 3) ``rot[t] @ points[t, n]``."""
    r = rot[:, None]
    return points[..., 0:1] * r[..., 0] + points[..., 1:2] * r[..., 1] + points[..., 2:3] * r[..., 2]


def to_camera(points: np.ndarray, rot: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Head mm (T, N, 3) -> camera mm (T, N, 3): rotate about the pivot, then translate."""
    return _rotate(points - _PIVOT, rot) + translation[:, None, :]


def project(cam: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole projection (T, N, 3) -> (T, N, 2) pixels."""
    z = np.maximum(cam[..., 2], 1e-3)
    return np.stack([focal * cam[..., 0] / z + cx, focal * cam[..., 1] / z + cy], axis=-1)


def contour_silhouette(head_pts: np.ndarray, rot: np.ndarray, translation: np.ndarray,
                       n_steps: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Where a 2D detector puts the jaw-contour points 0-16: on the visible outline.

    Each contour point is taken as the widest point of an elliptic horizontal cross-section of the
    cheek (semi-axes |x| and the depth to the face front, z + 12 mm). If its surface faces away
    from the camera (the far side of a turned head), it is replaced by the first point toward the
    face front whose normal is perpendicular to the view ray: the silhouette.
    head_pts (T, 68, 3) head mm. Returns (T, 17, 3) camera mm and (T, 17) bool "moved".
    """
    c = head_pts[:, :17]  # (T, 17, 3)
    a = np.maximum(np.abs(c[..., 0]), 1e-3)
    b = np.maximum(c[..., 2] + 12.0, 3.0)
    side = np.where(c[..., 0] >= 0, 1.0, -1.0)
    phi = np.linspace(0, np.pi / 2, n_steps + 1)  # 0 = the contour point, pi/2 = the face front
    cosp, sinp = np.cos(phi), np.sin(phi)
    # candidate points and outward normals in head coordinates: (T, 17, K, 3)
    cand = np.stack([
        c[..., 0, None] + side[..., None] * a[..., None] * (cosp - 1),
        np.broadcast_to(c[..., 1, None], c.shape[:2] + phi.shape),
        c[..., 2, None] - b[..., None] * sinp,
    ], axis=-1)
    normal = np.stack([
        side[..., None] * cosp / a[..., None],
        np.zeros(c.shape[:2] + phi.shape),
        -sinp / b[..., None],
    ], axis=-1)
    t, k = c.shape[0], phi.size
    cand_cam = to_camera(cand.reshape(t, -1, 3), rot, translation).reshape(t, 17, k, 3)
    normal_cam = _rotate(normal.reshape(t, -1, 3), rot).reshape(t, 17, k, 3)
    facing = (normal_cam * cand_cam).sum(-1)  # > 0: faces away from the camera
    # Near the chin (|x| < 25 mm) the contour is the jaw's lower edge, visible from any yaw here.
    hidden = (facing[..., 0] > 0) & (a > 25.0)
    front = facing <= 0
    first = np.where(front.any(-1), front.argmax(-1), k - 1)  # first visible step
    prev = np.maximum(first - 1, 0)
    fa = np.take_along_axis(facing, first[..., None], -1)[..., 0]
    fp = np.take_along_axis(facing, prev[..., None], -1)[..., 0]
    w = np.where(first > prev, fp / np.where(fp - fa == 0, 1, fp - fa), 0.0)[..., None]
    pa = np.take_along_axis(cand_cam, first[..., None, None], 2)[:, :, 0]
    pp = np.take_along_axis(cand_cam, prev[..., None, None], 2)[:, :, 0]
    sil = pp + np.clip(w, 0, 1) * (pa - pp)
    true_cam = cand_cam[:, :, 0]
    return np.where(hidden[..., None], sil, true_cam), hidden


# -- detector model -------------------------------------------------------------------------------
def face_size(points: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,): sqrt of the area of the points' bounding box."""
    span = points.max(axis=1) - points.min(axis=1)
    return np.sqrt(np.maximum(span[:, 0] * span[:, 1], 1e-6))


def _ar1(shape: tuple[int, ...], rho: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary unit-variance AR(1) noise along axis 0."""
    e = rng.standard_normal(shape)
    e[1:] *= np.sqrt(1 - rho**2)
    return scipy.signal.lfilter([1.0], [1.0, -rho], e, axis=0)


_REGIONS = (tuple(layout.MOUTH), tuple(layout.JAW_LINE), layout.EYE_RIGHT + layout.BROW_RIGHT,
            layout.EYE_LEFT + layout.BROW_LEFT, tuple(range(68)))


def observe(visible: np.ndarray, truth: np.ndarray, fps: float, seed: int,
            cfg: SynthConfig = SynthConfig()) -> np.ndarray:
    """Detector-like observation of noise-free visible points.

    visible (T, 68, 2): projections with far-side contour points on the outline; truth (T, 68, 2):
    the true projections (only their face size is used). Returns (T, 68, 2) float32.
    """
    rng = _rng(seed, _STREAM_NOISE)
    t = visible.shape[0]
    size = face_size(truth)[:, None, None]
    factor = np.ones(68)
    factor[list(layout.JAW_LINE)] = cfg.contour_jitter_factor
    jit = rng.standard_normal((t, 68, 2)) * factor[None, :, None] * cfg.jitter
    rho = float(np.exp(-1.0 / max(cfg.drift_seconds * fps, 1e-6)))
    drift = cfg.drift * (_ar1((t, 68, 2), rho, rng) + 0.6 * _ar1((t, 1, 2), rho, rng))
    err = np.zeros((t, 68, 2))
    starts = np.flatnonzero(rng.random(t) < cfg.outlier_rate)
    for s in starts:
        dur = int(rng.integers(1, 7))
        region = list(_REGIONS[int(rng.integers(len(_REGIONS)))])
        ang = rng.uniform(0, 2 * np.pi)
        mag = cfg.outlier_size * rng.uniform(0.5, 1.5)
        shift = mag * np.array([np.cos(ang), np.sin(ang)])
        wobble = 0.25 * mag * rng.standard_normal((len(region), 2))
        err[s:s + dur, region] += shift + wobble
    return (visible + (jit + drift + err) * size).astype(np.float32)


# -- rendering ------------------------------------------------------------------------------------
_SKINS = ((236, 200, 175), (224, 176, 140), (198, 142, 108), (160, 112, 82), (118, 80, 58), (242, 214, 196))


@dataclass(frozen=True)
class _Style:
    skin: tuple[int, int, int]
    background: tuple[int, int, int]
    lips: tuple[int, int, int]
    iris: tuple[int, int, int]
    brow: tuple[int, int, int]


def _style(seed: int) -> _Style:
    rng = _rng(seed, _STREAM_LOOK)
    skin = np.array(_SKINS[int(rng.integers(len(_SKINS)))], float)
    bg = rng.uniform(40, 200, 3)
    lips = skin * np.array([0.85, 0.55, 0.55])
    iris = rng.choice([(60, 40, 30), (70, 100, 140), (80, 110, 70), (40, 30, 25)])
    brow = skin * 0.35
    as_int = lambda c: tuple(int(v) for v in np.clip(c, 0, 255))  # noqa: E731
    return _Style(as_int(skin), as_int(bg), as_int(lips), as_int(iris), as_int(brow))


_SHIFT = 4  # cv2 sub-pixel bits


def _fix(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def render_frame(points: np.ndarray, forehead: np.ndarray, yaw: float, size: int, style: _Style) -> np.ndarray:
    """Draw one face: points (68, 2) visible landmarks, forehead (10, 2), pixels -> (size, size, 3) RGB."""
    import cv2

    img = np.empty((size, size, 3), np.uint8)
    img[:] = style.background
    aa = cv2.LINE_AA
    skin = np.array(style.skin, float)
    # neck
    chin_y = points[8, 1]
    half = 0.8 * np.linalg.norm(points[11] - points[5]) / 2
    cx = points[8, 0]
    neck = np.array([points[5], points[11], [cx + 1.1 * half, size + 5], [cx - 1.1 * half, size + 5]])
    neck[:2, 1] = np.minimum(neck[:2, 1], chin_y)
    cv2.fillConvexPoly(img, _fix(neck), tuple(int(v) for v in skin * 0.8), aa, _SHIFT)
    # face
    hull_pts = np.concatenate([points[list(layout.JAW_LINE)], forehead, points[[30]]])
    hull = cv2.convexHull(_fix(hull_pts))
    cv2.fillConvexPoly(img, hull, style.skin, aa, _SHIFT)
    # far side in shadow: the turned-away half between the nose line and the outline
    shade = min(abs(yaw) / 60.0, 0.5)
    if shade > 0.02:
        far = layout.JAW_LINE[:9] if yaw > 0 else layout.JAW_LINE[8:]
        mid = points[[27, 28, 29, 30, 33, 51, 57, 8]]
        poly = np.concatenate([points[list(far)], mid[::-1] if yaw > 0 else mid])
        fb = forehead[:5] if yaw > 0 else forehead[5:]
        poly = np.concatenate([poly, fb])
        overlay = img.copy()
        cv2.fillPoly(overlay, [cv2.convexHull(_fix(poly))], tuple(int(v) for v in skin * 0.7), aa, _SHIFT)
        img = cv2.addWeighted(overlay, shade, img, 1 - shade, 0)
    lw = max(1, size // 128)
    # eyes
    for eye in (layout.EYE_RIGHT, layout.EYE_LEFT):
        e = points[list(eye)]
        cv2.fillPoly(img, [_fix(e)], (240, 240, 235), aa, _SHIFT)
        width = np.linalg.norm(e[3] - e[0])
        centre = e.mean(axis=0)
        cv2.circle(img, tuple(_fix(centre)), int(0.28 * width * (1 << _SHIFT)), style.iris, -1, aa, _SHIFT)
        cv2.polylines(img, [_fix(e)], True, style.brow, lw, aa, _SHIFT)
    for brow in (layout.BROW_RIGHT, layout.BROW_LEFT):
        cv2.polylines(img, [_fix(points[list(brow)])], False, style.brow, 2 * lw, aa, _SHIFT)
    nose_col = tuple(int(v) for v in skin * 0.6)
    cv2.polylines(img, [_fix(points[list(layout.NOSE_BRIDGE)])], False, nose_col, lw, aa, _SHIFT)
    cv2.polylines(img, [_fix(points[list(layout.NOSE_LOWER)])], False, nose_col, lw, aa, _SHIFT)
    # mouth
    cv2.fillPoly(img, [_fix(points[list(layout.OUTER_LIP)])], style.lips, aa, _SHIFT)
    cv2.fillPoly(img, [_fix(points[list(layout.INNER_LIP)])], (70, 25, 30), aa, _SHIFT)
    cv2.polylines(img, [_fix(points[list(layout.INNER_LIP)])], True, tuple(int(v * 0.6) for v in style.lips),
                  lw, aa, _SHIFT)
    return img


# -- the whole clip -------------------------------------------------------------------------------
def _speech_signal(speech: str | os.PathLike[str] | np.ndarray | int | None, n_samples: int, seed: int,
                   cfg: SynthConfig) -> tuple[np.ndarray, str, str]:
    """The clip's speech (n_samples,), a description of its source and a content digest.

    speech: an audio file, a 16 kHz array, an int K (procedural speech with seed K) or None
    (procedural speech with the clip's seed). The start offset depends on the clip's seed only.
    """
    if isinstance(speech, (bool, np.bool_)):
        raise InputError(f"Invalid speech {speech!r}.", "Give a file, an array or an int seed of procedural speech.")
    if speech is None or isinstance(speech, (int, np.integer)):
        # generate a little more than needed and start at a seed-dependent offset, like a file
        k = seed if speech is None else int(speech)
        sig = procedural_speech(n_samples / SAMPLE_RATE + 2.0, k)
        source = digest = "procedural" if speech is None else f"procedural:{k}"
    elif isinstance(speech, np.ndarray):
        sig = np.asarray(speech, np.float32).reshape(-1)
        source, digest = "array", hashlib.sha256(sig.tobytes()).hexdigest()
    else:
        from studio import media
        from studio.fsutil import sha256_file

        path = Path(speech)
        sig = media.read_audio(path, SAMPLE_RATE)
        source, digest = str(path), sha256_file(path)
    if sig.size == 0:
        raise InputError(f"The speech {source} is empty.", "Give a file with at least a second of speech.")
    offset = int(_rng(seed, _STREAM_SPEECH + 200).integers(sig.size))
    crossfade = int(cfg.crossfade_ms / 1000 * SAMPLE_RATE)
    return loop_speech(sig, n_samples, offset, crossfade), source, digest


def _truth_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_truth(clip_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The ground truth of a synthetic clip (see ``synthesize``): a dict of arrays."""
    path = Path(clip_dir) / TRUTH_FILE
    if not path.exists():
        raise InputError(f"{clip_dir} has no {TRUTH_FILE}: it is not a synthetic clip.",
                         "Make one with `python -m studio synth --out DIR --seconds N --seed S`.")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _estimate_pose(landmarks: np.ndarray, size: int, window: int) -> np.ndarray:
    from studio.face.pose import head_pose, smooth_pose

    return np.asarray(smooth_pose(head_pose(landmarks, size, size), window), np.float32)


def _face_views(shape: np.ndarray, params: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float,
                c: float, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The face articulating with ``params`` in the given head motion.

    Returns head (T, 68, 3) articulated points in head mm, gt (T, 68, 2) true projections,
    visible (T, 68, 2) the points a detector aims at, hidden (T, 17) bool.
    """
    head = articulate(shape, params, cfg)
    gt = project(to_camera(head, rot, trans), focal, c, c)
    visible = gt.copy()
    hidden = np.zeros((params.shape[0], 17), bool)
    if cfg.silhouette:
        contour_cam, hidden = contour_silhouette(head, rot, trans)
        visible[:, :17] = project(contour_cam, focal, c, c)
    return head, gt, visible, hidden


# Dub mode: which clip array / truth array / file follows which speech (clip.json extras "follows").
_DUB_FOLLOWS = {
    "speech": ["audio.wav", "audio", "video.mp4 audio track", "gt_landmarks", "truth:articulation",
               "truth:visible", "truth:hidden", "truth:observed"],
    "template_speech": ["landmarks", "pose", "centre", "scale", "boxes", "talk", "cheek", "video.mp4 frames",
                        TEMPLATE_AUDIO_FILE, "truth:template_articulation", "truth:template_gt",
                        "truth:template_visible", "truth:template_hidden"],
    "both": ["truth:pose_true", "truth:translation", "truth:shape", "truth:focal"],
}


def synthesize(out_dir: str | os.PathLike[str], seconds: float, seed: int, *,
               speech: str | os.PathLike[str] | np.ndarray | int | None = None, fps: float = 25.0,
               size: int = 256, config: SynthConfig = SynthConfig(), render: bool = True,
               progress: Callable[[int, int], None] | None = None,
               template_speech: str | os.PathLike[str] | np.ndarray | int | None = None) -> Clip:
    """Generate one synthetic talking-head clip into ``out_dir`` (clip-cache format) and return it.

    seconds > 0, fps > 0, size >= 64 pixels (square frames). ``speech``: an audio file, a 16 kHz
    array, an int K (procedural speech with seed K), or None for procedural speech with ``seed``.
    ``render``: also write video.mp4 (slower). ``progress(done, total)`` is called while rendering.
    ``template_speech`` (same kinds, None = off): dub mode, see the module docstring: the face
    that ``landmarks``, ``pose`` and the video show articulates with this speech, while the audio
    and ``gt_landmarks`` follow ``speech``.

    The returned Clip has ``gt_landmarks`` (T, 68, 2) (true projections) beside the observed
    ``landmarks``; ``pose`` is estimated from the observed landmarks. ``synth_truth.npz``
    (:func:`load_truth`) holds pose_true (T, 3) degrees, translation (T, 3) mm of the head pivot,
    articulation (T, 3) (names in ``articulators``), visible (T, 68, 2) the noise-free points a
    detector aims at, hidden (T, 17) bool (contour point replaced by the outline), shape (68, 3)
    the neutral face in mm, and focal (pixels). In dub mode these follow ``speech``, and it also
    holds observed (T, 68, 2), template_articulation (T, 3), template_gt (T, 68, 2),
    template_visible (T, 68, 2) and template_hidden (T, 17).
    """
    if not seconds > 0:
        raise InputError(f"seconds must be positive, got {seconds}.", "Pass e.g. --seconds 60.")
    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}.", "Pass e.g. --fps 25.")
    if int(size) < 64:
        raise InputError(f"size must be at least 64 pixels, got {size}.", "Pass e.g. --size 256.")
    size = int(size)
    cfg = config
    t0 = time.perf_counter()
    n_frames = max(1, int(round(seconds * fps)))
    n_samples = int(round(n_frames / fps * SAMPLE_RATE))
    signal, speech_source, speech_digest = _speech_signal(speech, n_samples, seed, cfg)
    dub = template_speech is not None
    if dub:
        t_signal, t_source, t_digest = _speech_signal(template_speech, n_samples, seed, cfg)

    params = articulation(signal, fps, n_frames, cfg, seed)
    shape = identity_shape(seed, cfg)
    angles, trans = head_motion(n_frames, fps, seed, size, cfg,
                                face_width_mm=float(np.ptp(shape[:17, 0])))
    rot = rotation_matrices(angles)
    focal, c = float(size), size / 2.0
    head, gt, visible, hidden = _face_views(shape, params, rot, trans, focal, c, cfg)
    observed = observe(visible, gt, fps, seed, cfg)
    if dub:
        # the template's own face: same seed, so the same motion, shape, style and noise draws
        t_params = articulation(t_signal, fps, n_frames, cfg, seed)
        t_head, t_gt, t_visible, t_hidden = _face_views(shape, t_params, rot, trans, focal, c, cfg)
        shown, shown_head, shown_visible = observe(t_visible, t_gt, fps, seed, cfg), t_head, t_visible
    else:
        shown, shown_head, shown_visible = observed, head, visible
    pose = _estimate_pose(shown, size, cfg.pose_window)

    feats = features_for_video(signal, fps, n_frames)
    centre = nose_centre(shown).astype(np.float32)
    scale = face_scale(shown).astype(np.float32)
    boxes = np.concatenate([shown.min(axis=1), shown.max(axis=1)], axis=1).astype(np.float32)
    key_fields = {"seed": int(seed), "seconds": float(seconds), "fps": float(fps), "size": size,
                  "config": dataclasses.asdict(cfg), "speech": speech_digest, "render": bool(render)}
    if dub:
        key_fields["template_speech"] = t_digest
    key = json.dumps(key_fields, sort_keys=True)
    extras = {
        "seed": int(seed), "config": dataclasses.asdict(cfg), "truth": TRUTH_FILE, "rendered": bool(render),
        "pose_source": "studio.face.pose.smooth_pose(head_pose(observed landmarks))",
        "yaw_range": [float(angles[:, 0].min()), float(angles[:, 0].max())],
        "focal": focal,
    }
    if dub:
        extras.update({"mode": "dub", "template_speech": t_source, "template_speech_digest": t_digest,
                       "template_audio": TEMPLATE_AUDIO_FILE, "follows": _DUB_FOLLOWS})
    meta = ClipMeta(source="synthetic", source_sha256=hashlib.sha256(key.encode()).hexdigest(), fps=float(fps),
                    frames=n_frames, width=size, height=size, faces_found=n_frames, backend="synthetic",
                    audio_seconds=n_samples / SAMPLE_RATE, video=VIDEO_FILE if render else "",
                    audio_source=speech_source, synthetic=True, extras=extras)
    clip = Clip(meta=meta, landmarks=shown, found=np.ones(n_frames, bool), valid=np.ones(n_frames, bool),
                pose=pose, centre=centre, scale=scale, boxes=boxes, audio=feats.astype(np.float32),
                gt_landmarks=gt.astype(np.float32))
    truth = {
        "pose_true": angles.astype(np.float32), "translation": trans.astype(np.float32),
        "articulation": params, "articulators": np.array(ARTICULATORS), "visible": visible.astype(np.float32),
        "hidden": hidden, "shape": shape.astype(np.float32), "focal": np.float32(focal),
    }
    if dub:
        truth.update({
            "observed": observed.astype(np.float32), "template_articulation": t_params,
            "template_gt": t_gt.astype(np.float32), "template_visible": t_visible.astype(np.float32),
            "template_hidden": t_hidden,
        })
    from studio import media

    extra_files: dict[str, bytes | Path] = {TRUTH_FILE: _truth_bytes(truth)}
    if dub:
        extra_files[TEMPLATE_AUDIO_FILE] = media.wav_bytes(t_signal, SAMPLE_RATE)
    Path(out_dir).resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synth-", dir=Path(out_dir).resolve().parent) as tmp:
        if render:
            video = Path(tmp) / VIDEO_FILE
            _render_video(video, shown_visible, shown_head, rot, trans, angles[:, 0], fps, size, seed, signal,
                          progress)
            extra_files[VIDEO_FILE] = video
        clip = clip.save(out_dir, audio_wav=media.wav_bytes(signal, SAMPLE_RATE), extra_files=extra_files)
    log.info("synthetic clip%s: %d frames (%.1f s), yaw %.1f..%.1f deg, in %.1f s -> %s",
             f" (dub: template speech {t_source})" if dub else "", n_frames,
             n_frames / fps, angles[:, 0].min(), angles[:, 0].max(), time.perf_counter() - t0, out_dir)
    return clip


def _render_video(path: Path, visible: np.ndarray, head: np.ndarray, rot: np.ndarray, trans: np.ndarray,
                  yaw: np.ndarray, fps: float, size: int, seed: int, signal: np.ndarray,
                  progress: Callable[[int, int], None] | None) -> None:
    from studio import media

    style = _style(seed)
    focal, c = float(size), size / 2.0
    n = visible.shape[0]
    fore = np.stack([render_points_3d(h) for h in head[:, :27]]) if n else np.zeros((0, 10, 3))
    fore2d = project(to_camera(fore, rot, trans), focal, c, c)
    with media.VideoWriter(path, fps, size=(size, size), audio=signal) as writer:
        for i in range(n):
            writer.write(render_frame(visible[i], fore2d[i], float(yaw[i]), size, style))
            if progress is not None and (i % 50 == 0 or i == n - 1):
                progress(i + 1, n)


# -- benchmark and CLI ----------------------------------------------------------------------------
def benchmark(seconds: float = 60.0, render: bool = True, **_: Any) -> dict[str, float]:
    """Wall time to synthesize ``seconds`` of data without and with rendering."""
    out: dict[str, float] = {"seconds": float(seconds)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in ((False, True) if render else (False,)):
            t0 = time.perf_counter()
            synthesize(Path(tmp) / f"c{int(r)}", seconds, 0, render=r)
            wall = time.perf_counter() - t0
            name = "render" if r else "no_render"
            out[f"{name}_s"] = wall
            out[f"{name}_x_realtime"] = seconds / wall
    return out


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="clip folder to write (replaced if it exists)")
    parser.add_argument("--seconds", type=float, required=True, help="clip length in seconds")
    parser.add_argument("--seed", type=int, required=True, help="random seed (face, motion, noise, speech offset)")
    speech = parser.add_mutually_exclusive_group()
    speech.add_argument("--speech", default=None, help="speech audio file (default: procedural speech)")
    speech.add_argument("--speech-seed", type=int, default=None, metavar="K",
                        help="procedural speech made with seed K (default: the clip's --seed)")
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--template-speech", default=None, metavar="FILE",
                          help="dub mode: the template's face (landmarks, pose, video frames) articulates with "
                               "this speech, the audio and gt_landmarks with --speech (see the module docstring)")
    template.add_argument("--template-speech-seed", type=int, default=None, metavar="K",
                          help="dub mode with procedural template speech made with seed K")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    parser.add_argument("--size", type=int, default=256, help="square frame size in pixels (default 256)")
    parser.add_argument("--render", action=argparse.BooleanOptionalAction, default=True,
                        help="write video.mp4 (default on; --no-render for landmark-only training data)")


def cli(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    bar = tqdm(total=max(1, int(round(args.seconds * args.fps))), unit="frame", disable=not args.render)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        speech = args.speech if args.speech is not None else args.speech_seed
        template = args.template_speech if args.template_speech is not None else args.template_speech_seed
        clip = synthesize(args.out, args.seconds, args.seed, speech=speech, fps=args.fps, size=args.size,
                          render=args.render, progress=progress, template_speech=template)
    finally:
        bar.close()
    ex = clip.meta.extras
    log.info("wrote %s: %d frames, yaw %.1f..%.1f deg", clip.directory, clip.meta.frames, *ex["yaw_range"])
    return 0
