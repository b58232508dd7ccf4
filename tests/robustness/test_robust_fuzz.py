"""Bounded fuzzing (hypothesis) of the readers and parsers that take untrusted input.

Targets: the audio reader (random bytes, mutated and truncated wavs, any suffix), the video
prober and frame reader (mutated mp4s), the header-only length probe, the edits JSON parser and
``apply_edits``, the preset / config parsers (TOML text and section dicts), the limits from the
environment. The property is always the same: a correct value or a StudioError, nothing else.

Budget: ``STUDIO_FUZZ_EXAMPLES`` scales every target (default 1 = the short CI budget, about
20 s; 20 for a long local hunt); examples are derandomized in CI (``STUDIO_FUZZ_RANDOM=1`` for
fresh ones). Whatever a fuzz run found is pinned in ``test_regressions`` below.
"""

from __future__ import annotations

import io
import json
import math
import os
import wave
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import robust_media as rm  # noqa: E402
from studio import media  # noqa: E402
from studio.config import load_preset  # noqa: E402
from studio.edits import RANGES, Edits, apply_edits  # noqa: E402
from studio.errors import StudioError  # noqa: E402
from studio.face.layout import PCA_DIM  # noqa: E402

SCALE = float(os.environ.get("STUDIO_FUZZ_EXAMPLES", "1"))


def budget(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    derandomize=os.environ.get("STUDIO_FUZZ_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Valid files the mutations start from: a 0.5 s wav (16-bit and float) and a 6-frame mp4."""
    d = tmp_path_factory.mktemp("fuzz_seeds")
    sig = rm.sample_signal()[8000:16000]
    import soundfile as sf

    sf.write(str(d / "s16.wav"), sig, 16000, subtype="PCM_16")
    sf.write(str(d / "f32.wav"), sig, 16000, subtype="FLOAT")
    frames = [f[::4, ::4] for f in rm.sample_frames()[:6]]  # 96x96
    rm.write_video(d / "v.mp4", frames, audio=sig)
    return {p.name: p.read_bytes() for p in d.iterdir()}


mutations = st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.integers(0, 255)), min_size=1, max_size=12)


def mutate(data: bytes, edits, cut: float | None) -> bytes:
    b = bytearray(data)
    for where, value in edits:
        b[min(len(b) - 1, int(where * len(b)))] = value
    if cut is not None:
        b = b[: int(cut * len(b))]
    return bytes(b)


def _check_audio(path: Path) -> None:
    try:
        x = media.read_audio(path)
    except StudioError as exc:
        assert exc.message and exc.hint
        return
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) > 0
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0


# -- audio ------------------------------------------------------------------------------------------

@budget(15)
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".wav", ".mp3", ".m4a", ".ogg", ".flac", ""]))
def test_fuzz_read_audio_random_bytes(tmp_path_factory, data, suffix):
    p = tmp_path_factory.mktemp("fz") / f"input{suffix}"
    p.write_bytes(data)
    _check_audio(p)


@budget(20)
@given(which=st.sampled_from(["s16.wav", "f32.wav"]), edits=mutations,
       cut=st.one_of(st.none(), st.floats(0.0, 1.0, allow_nan=False)))
def test_fuzz_read_audio_mutated_wav(tmp_path_factory, seeds, which, edits, cut):
    p = tmp_path_factory.mktemp("fz") / which
    p.write_bytes(mutate(seeds[which], edits, cut))
    _check_audio(p)
    try:
        seconds = media.probe_audio_seconds(p)
    except StudioError:
        return
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@budget(15)
@given(channels=st.integers(1, 8), width=st.sampled_from([1, 2, 3, 4]), rate=st.integers(1000, 192000),
       frames=st.integers(0, 400), seed=st.integers(0, 2**16))
def test_fuzz_read_audio_odd_wav_formats(tmp_path_factory, channels, width, rate, frames, seed):
    """Valid but unusual PCM wavs (any channel count, 8-32 bit, any rate, zero samples)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(rng.integers(0, 256, frames * channels * width, dtype=np.uint8).tobytes())
    p = tmp_path_factory.mktemp("fz") / "odd.wav"
    p.write_bytes(buf.getvalue())
    _check_audio(p)


# -- video ------------------------------------------------------------------------------------------

@budget(12)
@given(edits=mutations, cut=st.one_of(st.none(), st.floats(0.05, 1.0, allow_nan=False)))
def test_fuzz_video_mutated_mp4(tmp_path_factory, seeds, edits, cut):
    p = tmp_path_factory.mktemp("fz") / "v.mp4"
    p.write_bytes(mutate(seeds["v.mp4"], edits, cut))
    try:
        info = media.probe_video(p)
        frames = list(media.iter_frames(p, 0, 3))
    except StudioError as exc:
        assert exc.message and exc.hint
        return
    assert info.frames >= 1 and info.fps > 0 and math.isfinite(info.fps)
    assert len(frames) <= min(3, info.frames)
    for f in frames:
        assert f.dtype == np.uint8 and f.shape == (info.height, info.width, 3)


@budget(8)
@given(data=st.binary(min_size=1, max_size=2000))
def test_fuzz_video_random_bytes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fz") / "random.mp4"
    p.write_bytes(data)
    with pytest.raises(StudioError):
        media.probe_video(p)


# -- edits ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=15) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
edit_keys = st.sampled_from(list(Edits.__dataclass_fields__) + ["mouth_gain", ""])


@pytest.fixture(scope="module")
def talk_and_pca():
    from studio.face.pca import MouthPCA

    pca = MouthPCA.load(rm.SAMPLE_SUBJECT / "mapping" / "ours")
    from studio.data.clip import Clip

    talk = Clip.load(rm.SAMPLE_SUBJECT / "clips" / "template").talk[:60]
    energy = np.abs(np.sin(np.arange(60) / 5.0)).astype(np.float32)
    return talk, pca, energy


@budget(150)
@given(data=st.dictionaries(edit_keys, json_values, max_size=5))
def test_fuzz_edits_from_dict(talk_and_pca, data):
    try:
        edits = Edits.from_dict(data)
    except StudioError as exc:
        assert exc.message and exc.hint
        return
    _check_apply(edits, talk_and_pca)


def _check_apply(edits: Edits, talk_and_pca) -> None:
    talk, pca, energy = talk_and_pca
    closed = talk.mean(0)
    out = apply_edits(talk, edits, pca, speech_energy=energy, closed_shape=closed, fps=25.0)
    assert out.shape == talk.shape and np.isfinite(out).all()
    assert Edits.from_json(edits.to_json()) == edits


def _in_range(name):
    lo, hi = RANGES[name]
    return st.floats(lo, hi, allow_nan=False)


valid_edits = st.builds(
    Edits,
    pca_offsets=st.tuples(*[_in_range("pca_offsets")] * PCA_DIM),
    pca_gains=st.tuples(*[_in_range("pca_gains")] * PCA_DIM),
    mouth_open_gain=_in_range("mouth_open_gain"), jaw_open_gain=_in_range("jaw_open_gain"),
    jaw_open_offset=_in_range("jaw_open_offset"), jawline_smoothing=_in_range("jawline_smoothing"),
    temporal_smoothing=_in_range("temporal_smoothing"), lip_timing=_in_range("lip_timing"),
    close_on_silence=st.booleans(),
    silence_threshold=_in_range("silence_threshold"),
    frame_range=st.one_of(st.none(), st.tuples(st.integers(0, 80), st.integers(1, 120)).filter(lambda r: r[0] < r[1])))


@budget(60)
@given(edits=valid_edits)
def test_fuzz_valid_edits_apply_and_round_trip(talk_and_pca, edits):
    _check_apply(edits, talk_and_pca)


@budget(100)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200),
                      json_values.map(lambda v: json.dumps(v, allow_nan=True))))
def test_fuzz_edits_from_json(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fz") / "edits.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    for parse in (lambda: Edits.from_json(text), lambda: Edits.load(p)):
        try:
            edits = parse()
        except StudioError as exc:
            assert exc.message and exc.hint
            continue
        assert isinstance(edits, Edits)


# -- presets and configs ----------------------------------------------------------------------------

@budget(60)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=100)))
def test_fuzz_preset_toml(tmp_path_factory, text):
    from studio.train.mapping import settings_for

    p = tmp_path_factory.mktemp("fz") / "p.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        data = load_preset(p)
        settings_for("ours", data)
    except StudioError as exc:
        assert exc.message and exc.hint


sections = st.dictionaries(st.sampled_from(["channels", "dilations", "kernel_size", "dropout", "hidden", "layers",
                                            "window", "stride", "batch_size", "lr", "max_epochs", "patience",
                                            "threads", "bogus"]), json_values, max_size=4)


@budget(120)
@given(model=sections, train=sections, variant=st.sampled_from(["ours", "no-pose", "no-cheek", "lstm", "bilstm"]))
def test_fuzz_mapping_settings(model, train, variant):
    from studio.train.mapping import settings_for

    section = {"lstm": "mapping_lstm", "bilstm": "mapping_bilstm"}.get(variant, "mapping_model")
    try:
        settings_for(variant, {section: model, "mapping_train": train})
    except StudioError as exc:
        assert exc.message and exc.hint


@budget(80)
@given(data=st.dictionaries(st.sampled_from(["max_gap", "num_faces", "min_confidence", "max_side",
                                             "fan_detector", "detect_every", "fan_min_score", "nope"]),
                            json_values, max_size=4))
def test_fuzz_landmark_config(data):
    from studio.data.preprocess import PreprocessConfig

    try:
        PreprocessConfig.from_dict({"landmarks": data, "pose_window": 5})
    except StudioError as exc:
        assert exc.message and exc.hint


@budget(80)
@given(env=st.dictionaries(st.sampled_from(["STUDIO_MAX_FILE_MB", "STUDIO_MAX_WIDTH", "STUDIO_MAX_AUDIO_SECONDS"]),
                           st.text(max_size=12), max_size=3))
def test_fuzz_limits_from_env(env):
    try:
        limits = media.MediaLimits.from_env(env)
    except StudioError as exc:
        assert exc.message and exc.hint
        return
    assert all(v > 0 for v in (limits.max_file_mb, limits.max_width, limits.max_audio_seconds))


# -- what fuzzing found, pinned ---------------------------------------------------------------------

@pytest.mark.parametrize("content,outcome", [
    (b"\xff\xfe\x00\x81garbage\x00", "InputError"),  # binary: escaped as UnicodeDecodeError
    ("[" * 200_000, "InputError"),  # deep nesting: escaped as RecursionError
    (b'\xef\xbb\xbf{"mouth_open_gain": 1.5}', 1.5),  # a UTF-8 BOM (Windows editors): was refused
    ('{"mouth_open_gain": 1.5}'.encode("utf-16"), 1.5),  # UTF-16 with a BOM
    ('{"temporal_smoothing": 1.7554793133743444e-215}', 0.0),  # ZeroDivisionError in scipy's Gaussian
    ('{"jawline_smoothing": 1e-200}', 0.0),
], ids=["binary", "deep-nesting", "utf8-bom", "utf16", "tiny-temporal-sigma", "tiny-jaw-sigma"])
def test_regressions(tmp_path, talk_and_pca, content, outcome):
    """Inputs that once escaped as something other than a StudioError or a correct value (found by
    the bad-input matrix and by the fuzz runs above)."""
    from studio.errors import InputError

    p = tmp_path / "edits.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    if outcome == "InputError":
        with pytest.raises(InputError):
            Edits.load(p)
        return
    edits = Edits.load(p)
    _check_apply(edits, talk_and_pca)
    if outcome == 0.0:  # a vanishing sigma changes nothing
        talk, pca, energy = talk_and_pca
        np.testing.assert_array_equal(apply_edits(talk, edits, pca), talk)
    else:
        assert edits.mouth_open_gain == outcome


def test_regression_binary_preset(tmp_path):
    """A preset file that is not UTF-8 escaped load_preset as UnicodeDecodeError (fuzzing)."""
    from studio.errors import InputError

    p = tmp_path / "p.toml"
    p.write_bytes(b"\xff\xfe[mapping_model]\nchannels = 8\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_preset(p)
