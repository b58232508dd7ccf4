"""Edits: identity, what each edit moves, JSON round trip and strictness, silence closing, ranges."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from studio.audio import SAMPLE_RATE, frame_energy
from studio.edits import (
    RANGES,
    Edits,
    apply_edits,
    closed_mouth_shape,
    talk_chin_distance,
    talk_mouth_gap,
    range_weights,
    voice_activity,
    voice_activity_from_energy,
)
from studio.errors import InputError
from studio.face import layout
from studio.face.meanface import mean_face
from studio.face.normalize import face_scale, nose_centre, normalize
from studio.face.pca import MouthPCA

FPS = 25.0
MOUTH = slice(0, layout.MOUTH_DIM)
JAW = slice(layout.MOUTH_DIM, layout.TALK_DIM)


def _talking_sequence(n: int = 200, seed: int = 0) -> np.ndarray:
    """(n, 58) normalized talking points: the mean face, mouth opening and closing with the jaw,
    some spread/rounding, slight head roll and landmark noise."""
    rng = np.random.default_rng(seed)
    base = np.asarray(mean_face(), np.float64).reshape(68, 3)[:, :2]
    t = np.arange(n) / FPS
    opening = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t) + 0.2 * np.sin(2 * np.pi * 3.1 * t), 0, 1.2)
    spread = 0.6 * np.sin(2 * np.pi * 0.7 * t + 1.0)
    frames = np.repeat(base[None], n, axis=0)
    lower = [55, 56, 57, 58, 59, 65, 66, 67]
    upper = [49, 50, 51, 52, 53, 61, 62, 63]
    frames[:, lower, 1] += 10.0 * opening[:, None]
    frames[:, upper, 1] -= 2.0 * opening[:, None]
    jaw_w = np.array([0.6, 0.8, 0.95, 1.0, 1.0, 1.0, 0.95, 0.8, 0.6])
    frames[:, 4:13, 1] += 8.0 * opening[:, None] * jaw_w
    mouth = list(layout.MOUTH)
    cx = base[mouth, 0].mean()
    frames[:, mouth, 0] = cx + (frames[:, mouth, 0] - cx) * (1 + 0.12 * spread[:, None])
    roll = np.deg2rad(3.0 * np.sin(2 * np.pi * 0.2 * t))
    c, s = np.cos(roll), np.sin(roll)
    centre = base.mean(axis=0)
    rel = frames - centre
    frames = centre + np.stack([c[:, None] * rel[..., 0] - s[:, None] * rel[..., 1],
                                s[:, None] * rel[..., 0] + c[:, None] * rel[..., 1]], axis=-1)
    frames += rng.normal(0, 0.3, frames.shape)
    norm = normalize(frames, nose_centre(frames), face_scale(frames))
    return layout.talking_vector(norm).astype(np.float32)


@pytest.fixture(scope="module")
def talk() -> np.ndarray:
    return _talking_sequence()


@pytest.fixture(scope="module")
def pca(talk) -> MouthPCA:
    return MouthPCA.fit(talk[:, MOUTH])


# -- identity and determinism ---------------------------------------------------------------------

def test_identity_edits_return_the_input_bit_identical(talk, pca):
    edits = Edits()
    assert edits.is_identity
    out = apply_edits(talk, edits, pca)
    assert out.dtype == talk.dtype and out is not talk
    assert np.array_equal(out, talk)
    # Identity even without a PCA, energy or closed shape.
    assert np.array_equal(apply_edits(talk, Edits(frame_range=(5, 50))), talk)


def test_apply_edits_is_pure_and_deterministic(talk, pca):
    before = talk.copy()
    edits = Edits(pca_offsets=(1.0,) + (0.0,) * 12, mouth_open_gain=1.5, jaw_open_gain=0.5,
                  temporal_smoothing=2.0, jawline_smoothing=1.0)
    a = apply_edits(talk, edits, pca)
    b = apply_edits(talk, edits, pca)
    assert np.array_equal(a, b)
    assert np.array_equal(talk, before)


# -- each edit moves what it should and nothing else -----------------------------------------------

def test_pca_offset_moves_the_mouth_by_that_many_stds_and_not_the_jaw(talk, pca):
    offsets = [0.0] * 13
    offsets[0] = 2.0
    out = apply_edits(talk, Edits(pca_offsets=tuple(offsets)), pca)
    assert np.array_equal(out[:, JAW], talk[:, JAW])
    shift = pca.transform(out[:, MOUTH]) - pca.transform(talk[:, MOUTH])
    np.testing.assert_allclose(shift[:, 0], 2.0 * pca.coef_std[0], rtol=1e-3)
    np.testing.assert_allclose(shift[:, 1:], 0.0, atol=1e-4)


def test_pca_gain_scales_a_coefficient_and_keeps_the_residual(talk, pca):
    gains = [1.0] * 13
    gains[1] = 0.0
    out = apply_edits(talk, Edits(pca_gains=tuple(gains)), pca)
    c_in, c_out = pca.transform(talk[:, MOUTH]), pca.transform(out[:, MOUTH])
    np.testing.assert_allclose(c_out[:, 1], 0.0, atol=1e-4)
    np.testing.assert_allclose(c_out[:, [0, 2, 3]], c_in[:, [0, 2, 3]], atol=1e-4)
    # What the 13 components do not explain is kept (applied as a delta, not a projection).
    resid_in = talk[:, MOUTH] - pca.project(talk[:, MOUTH])
    resid_out = out[:, MOUTH] - pca.project(out[:, MOUTH])
    np.testing.assert_allclose(resid_out, resid_in, atol=1e-4)
    assert np.abs(resid_in).max() > 1e-3  # the noise leaves a real residual to keep


def test_mouth_open_gain_scales_the_gap_and_moves_only_the_lips(talk):
    out = apply_edits(talk, Edits(mouth_open_gain=2.0), None)
    np.testing.assert_allclose(talk_mouth_gap(out), 2.0 * talk_mouth_gap(talk), rtol=0.03, atol=1e-3)
    assert np.array_equal(out[:, JAW], talk[:, JAW])
    pts_in = talk.reshape(-1, 29, 2)
    pts_out = out.reshape(-1, 29, 2)
    corners = [layout.MOUTH.index(i) for i in (48, 54, 60, 64)]
    np.testing.assert_allclose(pts_out[:, corners], pts_in[:, corners], atol=1e-6)
    # Lip thickness is kept: outer lower lip moves with the inner lower lip.
    k57, k66 = layout.MOUTH.index(57), layout.MOUTH.index(66)
    np.testing.assert_allclose(pts_out[:, k57] - pts_out[:, k66], pts_in[:, k57] - pts_in[:, k66], atol=1e-5)
    closed = apply_edits(talk, Edits(mouth_open_gain=0.0), None)
    assert np.abs(talk_mouth_gap(closed)).max() < 0.02 * np.abs(talk_mouth_gap(talk)).max()


def test_jaw_gain_and_offset_move_only_the_jaw(talk):
    chin = 8  # jaw point 4 of 9 = iBUG 8
    wider = apply_edits(talk, Edits(jaw_open_gain=2.0), None)
    assert np.array_equal(wider[:, MOUTH], talk[:, MOUTH])
    d_in, d_out = talk_chin_distance(talk), talk_chin_distance(wider)
    rest = np.percentile(d_in, 5)
    moving = d_in > rest + 0.02
    assert np.all(d_out[moving] > d_in[moving])
    # The chin's motion above rest doubles (measured along the face's vertical, roll ~ 3 deg).
    np.testing.assert_allclose(d_out[moving] - rest, 2.0 * (d_in[moving] - rest), rtol=0.06)
    lowered = apply_edits(talk, Edits(jaw_open_offset=0.2), None)
    assert np.array_equal(lowered[:, MOUTH], talk[:, MOUTH])
    chin_y = lowered.reshape(-1, 29, 2)[:, 20 + chin - 4, 1] - talk.reshape(-1, 29, 2)[:, 20 + chin - 4, 1]
    np.testing.assert_allclose(chin_y, 0.2, atol=0.01)
    # Jaw points near the hinge move less than the chin.
    ends = lowered.reshape(-1, 29, 2)[:, 20, 1] - talk.reshape(-1, 29, 2)[:, 20, 1]
    assert np.all(ends < chin_y)


def test_temporal_smoothing_reduces_frame_to_frame_jitter(talk):
    out = apply_edits(talk, Edits(temporal_smoothing=2.0), None)
    jitter_in = np.abs(np.diff(talk, 2, axis=0)).mean()
    jitter_out = np.abs(np.diff(out, 2, axis=0)).mean()
    assert jitter_out < 0.3 * jitter_in
    assert np.abs(out.mean(axis=0) - talk.mean(axis=0)).max() < 0.01  # no drift


def test_lip_timing_moves_the_mouth_earlier_or_later(talk):
    gap = talk_mouth_gap(talk)
    earlier = talk_mouth_gap(apply_edits(talk, Edits(lip_timing=3.0), None))
    later = talk_mouth_gap(apply_edits(talk, Edits(lip_timing=-2.0), None))
    np.testing.assert_allclose(earlier[:-3], gap[3:], atol=1e-6)  # frame t shows frame t + 3
    np.testing.assert_allclose(later[2:], gap[:-2], atol=1e-6)
    assert earlier[-1] == pytest.approx(gap[-1]) and later[0] == pytest.approx(gap[0])  # ends held
    half = apply_edits(talk, Edits(lip_timing=0.5), None)  # between frames: halfway
    np.testing.assert_allclose(half[:-1], 0.5 * (talk[:-1] + talk[1:]), atol=1e-6)
    assert not Edits(lip_timing=0.5).is_identity and Edits(lip_timing=0.0).is_identity


def test_lip_timing_is_range_checked():
    with pytest.raises(InputError, match="lip_timing"):
        Edits(lip_timing=RANGES["lip_timing"][1] + 1)
    assert Edits.from_json(Edits(lip_timing=-1.5).to_json()).lip_timing == -1.5


def test_jawline_smoothing_removes_wiggles_but_keeps_the_curve(talk):
    wiggly = talk.copy()
    wiggly[:, JAW][:, 0::2] += 0.03 * np.array([1, -1, 1, -1, 1, -1, 1, -1, 1])  # x of the 9 points
    out = apply_edits(wiggly, Edits(jawline_smoothing=1.5), None)
    assert np.array_equal(out[:, MOUTH], wiggly[:, MOUTH])
    alternate = np.array([1, -1, 1, -1, 1, -1, 1, -1, 1]) / 9

    def wiggle(v):  # the alternating (highest-frequency) component of the contour's x
        return np.abs(v[:, JAW].reshape(-1, 9, 2)[:, :, 0] @ alternate).mean()

    assert wiggle(out) < 0.3 * wiggle(wiggly)
    # The contour's overall curve (its cubic part) is kept, so the chin hardly moves.
    np.testing.assert_allclose(talk_chin_distance(out), talk_chin_distance(wiggly), atol=0.03)
    smooth = apply_edits(talk, Edits(jawline_smoothing=1.5), None)
    np.testing.assert_allclose(smooth, talk, atol=0.05)  # a smooth contour stays nearly as it was


# -- close on silence ------------------------------------------------------------------------------

def _speech_with_gap(seconds: float = 8.0, gap: tuple[float, float] = (3.5, 4.5), level: float = 0.3,
                     seed: int = 1) -> np.ndarray:
    """Syllable-like bursts of harmonic noise with a silent gap (and a faint noise floor)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    voiced = np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t) + 0.3 * rng.standard_normal(n)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)  # ~4 syllables per second, never silent
    x = level * voiced * envelope
    x[int(gap[0] * SAMPLE_RATE):int(gap[1] * SAMPLE_RATE)] = 0.0
    return (x + 1e-4 * rng.standard_normal(n)).astype(np.float32)


def test_voice_activity_finds_the_gap_at_any_level():
    n = int(8.0 * FPS)
    reference = None
    signal = _speech_with_gap()
    for scale in (1.0, 0.1, 0.005):
        voiced = voice_activity(signal * np.float32(scale), FPS, n)
        frames = np.arange(n) / FPS
        inside = (frames > 3.7) & (frames < 4.3)
        assert not voiced[inside].any()
        assert voiced[(frames < 3.2) | (frames > 4.8)].mean() > 0.97
        if reference is None:
            reference = voiced
        assert np.array_equal(voiced, reference)  # the level does not matter


def test_voice_activity_rules_hangover_and_minimum_durations():
    e = np.full(100, 1.0)
    e[40:43] = 1e-4  # a 3-frame pause: shorter than min_silence, stays voiced
    e[60:80] = 1e-4  # a 20-frame pause: silent, shortened by the hangover/preroll
    e[70] = 1.0  # a one-frame click inside it: shorter than min_speech, ignored
    v = voice_activity_from_energy(e, FPS)
    assert v[40:43].all()
    assert not v[63:79].any()
    assert v[60:62].all()  # hangover: 0.08 s = 2 frames after speech
    assert v[79]  # preroll: 0.04 s = 1 frame before speech
    assert not voice_activity_from_energy(np.zeros(10), FPS).any()


def test_close_on_silence_closes_the_mouth_in_a_1s_gap(talk, pca):
    signal = _speech_with_gap()
    n = int(8.0 * FPS)
    seq = _talking_sequence(n, seed=3)
    energy = frame_energy(signal, n, FPS)
    closed = closed_mouth_shape(seq)
    out = apply_edits(seq, Edits(close_on_silence=True), pca, speech_energy=energy, closed_shape=closed, fps=FPS)
    frames = np.arange(n) / FPS
    gap = (frames >= 3.5 + 0.2) & (frames < 4.5 - 0.2)
    p10 = np.percentile(talk_mouth_gap(seq), 10)
    assert np.all(talk_mouth_gap(out)[gap] < p10)
    assert talk_mouth_gap(seq)[gap].mean() > 1.5 * p10  # it was open there before
    # Away from the gap nothing changes.
    far = (frames < 3.2) | (frames > 4.8)
    assert np.array_equal(out[far], seq[far])


def test_closed_mouth_shape_is_a_real_low_opening_frame(talk):
    shape = closed_mouth_shape(talk)
    assert any(np.array_equal(shape, row) for row in talk)
    assert talk_mouth_gap(shape) <= np.percentile(talk_mouth_gap(talk), 10)


def test_close_on_silence_needs_its_inputs(talk):
    with pytest.raises(ValueError, match="close_on_silence"):
        apply_edits(talk, Edits(close_on_silence=True), None)


# -- frame range ------------------------------------------------------------------------------------

def test_frame_range_limits_the_effect(talk):
    out = apply_edits(talk, Edits(mouth_open_gain=2.0, frame_range=(50, 120)), None)
    assert np.array_equal(out[:50], talk[:50])
    assert np.array_equal(out[120:], talk[120:])
    full = apply_edits(talk, Edits(mouth_open_gain=2.0), None)
    np.testing.assert_array_equal(out[60:110], full[60:110])  # full effect away from the ramps
    ramp = np.abs(talk_mouth_gap(out[50:54]) - talk_mouth_gap(talk[50:54]))
    assert np.all(ramp < np.abs(talk_mouth_gap(full[50:54]) - talk_mouth_gap(talk[50:54])) + 1e-7)


def test_range_weights_ramps():
    w = range_weights(20, (5, 15), ramp=2)
    assert np.all(w[:5] == 0) and np.all(w[15:] == 0)
    assert np.all(w[7:13] == 1) and 0 < w[5] < w[6] < 1
    assert np.all(range_weights(20, (0, 20)) == 1)  # edges of the clip need no easing
    assert np.all(range_weights(10, (30, 40)) == 0)


# -- JSON --------------------------------------------------------------------------------------------

def test_json_round_trip():
    edits = Edits(pca_offsets=tuple(np.linspace(-1, 1, 13).tolist()), pca_gains=(1.5,) * 13,
                  mouth_open_gain=1.2, jaw_open_gain=0.8, jaw_open_offset=-0.1, jawline_smoothing=1.0,
                  temporal_smoothing=3.0, close_on_silence=True, silence_threshold=25.0, frame_range=(10, 90))
    text = edits.to_json()
    again = Edits.from_json(text)
    assert again == edits
    assert json.loads(text)["frame_range"] == [10, 90]
    assert Edits.from_json(Edits().to_json()) == Edits()
    assert Edits.from_json("{}") == Edits()  # missing keys take the identity defaults


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "edits.json"
    path.write_text(Edits(mouth_open_gain=1.3).to_json())
    assert Edits.load(path).mouth_open_gain == 1.3
    with pytest.raises(InputError):
        Edits.load(tmp_path / "missing.json")


@pytest.mark.parametrize("text, key", [
    ('{"mouth_open_gain": 1.2, "smile": 3}', "smile"),
    ('{"mouth_open_gain": 9}', "mouth_open_gain"),
    ('{"jaw_open_offset": -2}', "jaw_open_offset"),
    ('{"pca_offsets": [0, 0]}', "pca_offsets"),
    ('{"pca_gains": [1,1,1,1,1,1,1,1,1,1,1,1,-1]}', "pca_gains"),
    ('{"temporal_smoothing": "lots"}', "temporal_smoothing"),
    ('{"close_on_silence": "yes"}', "close_on_silence"),
    ('{"silence_threshold": 1}', "silence_threshold"),
    ('{"frame_range": [10, 5]}', "frame_range"),
    ('{"frame_range": [1.5, 5]}', "frame_range"),
    ('{"jawline_smoothing": NaN}', "jawline_smoothing"),
    ('[1, 2]', "JSON object"),
    ('{"mouth_open_gain": ', "not valid JSON"),
])
def test_bad_json_raises_input_error_naming_the_key(text, key):
    with pytest.raises(InputError) as info:
        Edits.from_json(text)
    assert key in info.value.message
    assert info.value.hint


def test_out_of_range_message_gives_the_allowed_range():
    with pytest.raises(InputError) as info:
        Edits(mouth_open_gain=5.0)
    lo, hi = RANGES["mouth_open_gain"]
    assert f"[{lo:g}, {hi:g}]" in info.value.hint


def test_edits_are_frozen_and_replaceable():
    edits = Edits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        edits.mouth_open_gain = 2.0  # type: ignore[misc]
    assert dataclasses.replace(edits, mouth_open_gain=2.0).mouth_open_gain == 2.0


def test_benchmark_reports_plain_numbers():
    from studio.edits import benchmark

    report = benchmark(minutes=0.1, repeats=1)
    assert report["frames"] == 150.0
    assert all(isinstance(v, float) and v > 0 for v in report.values())


# -- limits to the person's own range (studio.pipeline asks for these before any edit) -----------

def test_soft_limit_is_the_identity_below_the_knee_and_never_reaches_the_limit():
    from studio.edits import soft_limit

    x = np.linspace(-1.0, 10.0, 500)
    y = soft_limit(x, 2.0, 3.0)
    below = x <= 2.0
    np.testing.assert_array_equal(y[below], x[below])
    assert (y < 3.0).all() and (np.diff(y) > 0).all()  # monotone, bounded
    assert abs(soft_limit(np.array([2.001]), 2.0, 3.0)[0] - 2.001) < 1e-5  # slope 1 at the knee


def test_limit_opening_caps_the_gap_and_the_chin_at_the_persons_widest(talk):
    from studio.edits import chin_depth, limit_opening

    wide = apply_edits(talk, Edits(mouth_open_gain=2.5, jaw_open_gain=2.5))
    out = limit_opening(wide, talk, margin=1.1)
    # the gap is scaled across the corner line, measured in y: 1 % for the head roll
    assert talk_mouth_gap(out).max() < 1.01 * 1.1 * talk_mouth_gap(talk).max()
    assert talk_mouth_gap(wide).max() > 2 * talk_mouth_gap(talk).max()
    assert chin_depth(out).max() < 1.01 * 1.1 * chin_depth(talk).max()
    # the person's own footage is inside its own range: nearly untouched (only above 0.85 x 1.1 x max)
    same = limit_opening(talk, talk, margin=1.1)
    assert np.abs(same - talk).max() < 0.02 * np.abs(talk).max()
    np.testing.assert_array_equal(same[talk_mouth_gap(talk) < 0.5 * talk_mouth_gap(talk).max(), :layout.MOUTH_DIM],
                                  talk[talk_mouth_gap(talk) < 0.5 * talk_mouth_gap(talk).max(), :layout.MOUTH_DIM])


def test_limit_shape_pulls_a_torn_lip_back_and_keeps_plausible_mouths(talk, pca):
    from studio.edits import limit_shape

    torn = talk.copy().reshape(len(talk), -1, 2)
    bad = np.arange(0, len(talk), 10)
    lower_mid = list(layout.MOUTH).index(57)
    torn[bad, lower_mid, 1] += 0.3  # the lower lip's centre pulled down into a V
    torn = torn.reshape(talk.shape)
    out = limit_shape(torn, talk, pca)
    v = lambda t: t.reshape(len(t), -1, 2)[:, lower_mid, 1]  # noqa: E731
    assert np.abs(v(out) - v(talk))[bad].max() < 0.6 * 0.3  # most of the V is gone
    good = np.setdiff1d(np.arange(len(talk)), bad)
    assert np.abs(out[good] - talk[good]).max() < 0.05  # normal frames barely move
    np.testing.assert_array_equal(out[:, JAW], torn[:, JAW])  # the jaw is not touched
