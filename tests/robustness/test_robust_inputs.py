"""The bad-input matrix: every case through the pipeline AND through the studio's event handlers.

Each case is a file (speech, template video, edits JSON) or a subject folder that is empty,
corrupt, mislabelled, tampered with, or merely awkward (4K, 1 fps, a phone's rotation, 6-channel
audio, ...). The rule for every case, on both paths: either a correct result (checked) or a
StudioError whose message says what is wrong and whose hint says what to do (in the UI: a
``gr.Error`` carrying that text, never "Internal error"); nothing hangs (see ``bounded``); and the
process stays healthy afterwards (no stray ffmpeg, no temporary files, the sample still works).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import robust_media as rm
from conftest import assert_healthy, bounded
from studio.edits import Edits
from studio.errors import CheckpointError, InputError, NoFaceError, StudioError

gr = pytest.importorskip("gradio")

pytestmark = [pytest.mark.slow,  # about 1-5 s per case on two cores, real MediaPipe tracking
              pytest.mark.filterwarnings("ignore:The speech .* is longer than the template")]


@dataclass(frozen=True)
class Case:
    """kind: speech | template | edits | subject. build(folder, marker) -> the input's path.

    error: the StudioError subclass expected (None: the input must work); ``match``: a regex the
    message + hint must contain; ``either``: the error is acceptable but so is a correct result
    (detector-dependent inputs). ``check(result)`` verifies a success."""

    id: str
    kind: str
    build: Callable[[Path, Path], Path]
    error: type[StudioError] | None = None
    match: str = ""
    either: bool = False
    check: Callable | None = None


@dataclass
class Result:
    speech: object = None
    template: object = None
    prediction: object = None
    lms: object = None
    plain: object = None  # the landmarks without edits
    preview: np.ndarray | None = None
    preview_index: int = 0


def _seconds(expected: float, tol: float = 0.01):
    def check(r: Result) -> None:
        assert abs(r.speech.seconds - expected) <= tol, r.speech.seconds
        assert r.speech.signal.dtype == np.float32 and np.isfinite(r.speech.signal).all()
        assert np.abs(r.speech.signal).max() <= 1.0
        assert r.prediction.frames == round(r.speech.seconds * r.prediction.fps)
    return check


def _template(width: int, height: int, frames: int | None = None, faces_at_least: int = 1):
    def check(r: Result) -> None:
        m = r.template.meta
        assert (m.width, m.height) == (width, height)
        if frames is not None:
            assert m.frames == frames
        assert m.faces_found >= faces_at_least
        assert r.preview.shape == (height, width, 3) and r.preview.dtype == np.uint8
        assert r.prediction.frames == round(r.speech.seconds * m.fps)
        inside = r.lms.points[r.template.valid[r.lms.frame_index]]
        assert ((inside >= -0.25 * width) & (inside <= 1.25 * max(width, height))).all()
    return check


def _two_faces(r: Result) -> None:
    _template(640, 384, 12, 12)(r)
    assert (r.template.centre[:, 0] < 384).all()  # the larger (left) face was tracked


def _partial(r: Result) -> None:
    _template(384, 384, 16, 6)(r)
    assert not r.template.valid[-6:].any()
    # frames without a face pass through the renderer untouched
    from studio import media

    tf = int(r.lms.frame_index[r.preview_index])
    assert not r.template.valid[tf]
    np.testing.assert_array_equal(r.preview, media.read_frames(r.template.video_path, [tf])[0])


def _long_speech(r: Result) -> None:
    _template(384, 384, 25)(r)
    assert r.prediction.frames >= 10 * 25
    idx = r.lms.frame_index
    assert idx.max() == 24 and idx.min() == 0 and (np.abs(np.diff(idx)) <= 1).all()  # ping-pong


def _rotated(r: Result) -> None:
    _template(288, 384, 10, 10)(r)
    # upright: the nose (centre) is above the chin in every frame
    assert (r.template.landmarks[:, 8, 1] > r.template.centre[:, 1]).all()


def _identity(r: Result) -> None:
    # edits confined to frames past the end change nothing: the same landmarks as no edits at all
    np.testing.assert_array_equal(r.lms.talk, r.plain.talk)
    np.testing.assert_array_equal(r.lms.points, r.plain.points)


def _edits_applied(r: Result) -> None:
    from studio.edits import talk_mouth_gap

    assert talk_mouth_gap(r.lms.talk).mean() > talk_mouth_gap(r.prediction.talk).mean()


M = rm  # builders
CASES: list[Case] = [
    # ---- speech -------------------------------------------------------------------------------
    Case("speech-empty-file", "speech", lambda d, _: M.audio_empty(d), InputError, "empty"),
    Case("speech-text-named-wav", "speech", lambda d, _: M.audio_text(d), InputError, "not a recognised|could not"),
    Case("speech-image-renamed-wav", "speech", lambda d, _: M.audio_is_image(d), InputError, "image"),
    Case("speech-video-without-sound", "speech", lambda d, _: M.audio_is_silent_video(d), InputError,
         "no audio track"),
    Case("speech-8kHz", "speech", lambda d, _: M.audio_rate(d, 8000), check=_seconds(3.0)),
    Case("speech-96kHz", "speech", lambda d, _: M.audio_rate(d, 96000), check=_seconds(3.0)),
    Case("speech-24bit", "speech", lambda d, _: M.audio_subtype(d, "PCM_24"), check=_seconds(3.0)),
    Case("speech-32bit-float", "speech", lambda d, _: M.audio_subtype(d, "FLOAT"), check=_seconds(3.0)),
    Case("speech-6-channels", "speech", lambda d, _: M.audio_six_channels(d), check=_seconds(3.0)),
    Case("speech-silent", "speech", lambda d, _: M.audio_silent(d), InputError, "silent"),
    Case("speech-one-sample", "speech", lambda d, _: M.audio_one_sample(d), InputError, r"0 ms long"),
    Case("speech-one-video-frame", "speech", lambda d, _: M.audio_one_video_frame(d), InputError, r"40 ms long"),
    Case("speech-nan-inf-samples", "speech", lambda d, _: M.audio_nonfinite(d), check=_seconds(3.0)),
    Case("speech-truncated-wav", "speech", lambda d, _: M.audio_truncated(d), check=_seconds(1.5, 0.05)),
    Case("speech-unicode-spaces-name", "speech", lambda d, _: M.audio_unicode_name(d), check=_seconds(3.0)),
    Case("speech-wav-named-mp3", "speech", lambda d, _: M.audio_wrong_extension(d), check=_seconds(3.0)),
    Case("speech-video-with-sound", "speech", lambda d, _: M.video_with_sound(d), check=_seconds(2.0, 0.05)),
    # ---- template video -----------------------------------------------------------------------
    Case("video-empty-file", "template", lambda d, _: M.video_empty(d), InputError, "empty"),
    Case("video-truncated-mp4", "template", lambda d, _: M.video_truncated(d), InputError,
         "truncated|incomplete|corrupt"),
    Case("video-text-named-mp4", "template", lambda d, _: M.video_text(d), InputError, "not a recognised"),
    Case("video-audio-only", "template", lambda d, _: M.video_is_audio(d), InputError, "no video stream"),
    Case("video-image-renamed-mp4", "template", lambda d, _: M.video_is_image(d), InputError, "still image"),
    Case("video-one-frame", "template", lambda d, _: M.video_one_frame(d), InputError, "still image"),
    Case("video-no-face", "template", lambda d, _: M.video_no_face(d), NoFaceError, "No face"),
    Case("video-face-in-part", "template", lambda d, _: M.video_partial_face(d), check=_partial),
    Case("video-two-faces", "template", lambda d, _: M.video_two_faces(d), check=_two_faces),
    Case("video-face-leaving-frame", "template", lambda d, _: M.video_face_leaving(d),
         check=_template(384, 384, 14, 5)),
    Case("video-extreme-yaw", "template", lambda d, _: M.video_profile(d), NoFaceError, "No face", either=True,
         check=_template(384, 384, 10)),
    Case("video-tiny-face", "template", lambda d, _: M.video_tiny_face(d), NoFaceError, "No face", either=True,
         check=_template(320, 320, 10)),
    Case("video-4k", "template", lambda d, _: M.video_4k(d), check=_template(3840, 2160, 4, 4)),
    Case("video-1fps", "template", lambda d, _: M.video_fps(d, 1.0, 5), check=_template(384, 384, 5, 5)),
    Case("video-60fps", "template", lambda d, _: M.video_fps(d, 60.0, 25), check=_template(384, 384, 25, 25)),
    Case("video-variable-frame-rate", "template", lambda d, _: M.video_vfr(d), check=_template(384, 384, 20, 20)),
    Case("video-rotated-phone", "template", lambda d, _: M.video_rotated(d), check=_rotated),
    # odd sizes are padded to even by the encoder (yuv420p), so the template becomes 382x384
    Case("video-odd-size", "template", lambda d, _: M.video_odd_size(d), check=_template(382, 384, 10, 10)),
    Case("video-unicode-spaces-name", "template", lambda d, _: M.video_unicode_name(d),
         check=_template(384, 384, 10, 10)),
    Case("speech-10x-template", "long", lambda d, _: M.video_short_template(d), check=_long_speech),
    # ---- edits JSON ---------------------------------------------------------------------------
    Case("edits-wrong-keys", "edits", lambda d, _: M.edits_file(d, "keys", '{"mouth_gain": 2.0}'),
         InputError, "Unknown edit key.*Valid keys"),
    Case("edits-out-of-range", "edits", lambda d, _: M.edits_file(d, "range", '{"mouth_open_gain": 99}'),
         InputError, "out of range.*Allowed range"),
    Case("edits-wrong-type", "edits", lambda d, _: M.edits_file(d, "type", '{"jaw_open_gain": "big"}'),
         InputError, "must be a number"),
    Case("edits-nan", "edits", lambda d, _: M.edits_file(d, "nan", '{"jaw_open_offset": NaN}'),
         InputError, "finite"),
    Case("edits-huge-number", "edits", lambda d, _: M.edits_file(d, "huge", '{"temporal_smoothing": 1e999}'),
         InputError, "finite"),
    Case("edits-pca-length", "edits", lambda d, _: M.edits_file(d, "pca", '{"pca_offsets": [1, 2]}'),
         InputError, "list of 13"),
    Case("edits-reversed-range", "edits", lambda d, _: M.edits_file(d, "rev", '{"frame_range": [40, 10]}'),
         InputError, "not a valid range"),
    Case("edits-range-past-end", "edits", lambda d, _: M.edits_file(d, "past", '{"frame_range": [5000, 6000],'
                                                                    ' "mouth_open_gain": 2}'), check=_identity),
    Case("edits-not-json", "edits", lambda d, _: M.edits_file(d, "syntax", "{mouth_open_gain: 2"), InputError,
         "not valid JSON"),
    Case("edits-binary", "edits", lambda d, _: M.edits_file(d, "binary", b"\xff\xfe\x00\x81garbage\x00"), InputError,
         "not valid JSON|not text"),
    Case("edits-deep-nesting", "edits", lambda d, _: M.edits_file(d, "deep", "[" * 200_000), InputError,
         "not valid JSON|nested"),
    Case("edits-top-level-list", "edits", lambda d, _: M.edits_file(d, "list", "[1, 2, 3]"), InputError,
         "JSON object"),
    Case("edits-utf8-bom", "edits", lambda d, _: M.edits_file(d, "bom", b'\xef\xbb\xbf{"mouth_open_gain": 1.5}'),
         check=_edits_applied),
    # ---- subject folders and caches -----------------------------------------------------------
    Case("cache-nan-landmarks", "subject", lambda d, _: M.subject_nan_clip(d), CheckpointError, "NaN"),
    Case("cache-inf-audio-features", "subject", lambda d, _: M.subject_inf_clip(d), CheckpointError, "NaN or inf"),
    Case("checkpoint-other-variant", "subject", lambda d, _: M.subject_other_variant(d), CheckpointError,
         "lstm.*ours|ours.*lstm"),
    Case("checkpoint-swapped-weights", "subject", lambda d, _: M.subject_swapped_weights(d), CheckpointError,
         "do not match"),
    Case("checkpoint-corrupt-weights", "subject", lambda d, _: M.subject_corrupt_weights(d), CheckpointError,
         "unreadable"),
    Case("checkpoint-pickle-weights", "subject", lambda d, m: M.subject_pickle_weights(d, m), CheckpointError,
         "unreadable"),
    Case("checkpoint-pickled-npz", "subject", lambda d, m: M.subject_pickle_npz(d, m), CheckpointError,
         "unreadable"),
    Case("retrieval-pool-corrupt", "subject", lambda d, _: M.subject_corrupt_pool(d), CheckpointError,
         "pool|unreadable|corrupt"),
    Case("cache-clip-json-binary", "subject", lambda d, _: M.subject_binary_json(d, "clip"), CheckpointError,
         "clip.json is unreadable"),
    Case("checkpoint-config-binary", "subject", lambda d, _: M.subject_binary_json(d, "checkpoint"),
         CheckpointError, "config.json is unreadable"),
    # the studio does not even list a subject whose manifest is unreadable
    Case("subject-manifest-binary", "subject", lambda d, _: M.subject_binary_json(d, "manifest"), StudioError,
         "subject.json is unreadable|not one of the studio's subjects"),
    Case("subject-video-missing", "subject", lambda d, _: M.subject_missing_video(d), StudioError,
         "video.*(missing|does not exist)"),
]


def _ids(cases):
    return [c.id for c in cases]


@pytest.fixture(scope="module")
def folders(rob_env):
    media_dir = rob_env / "media"
    return {"media": media_dir, "subjects": rob_env / "subjects", "marker": rob_env / "UNPICKLED"}


_built: dict[str, Path] = {}


def _input(case: Case, folders) -> Path:
    """Each case's input is built once and shared by its pipeline and handler runs."""
    if case.id not in _built:
        where = folders["subjects"] if case.kind == "subject" else folders["media"] / case.id
        where.mkdir(parents=True, exist_ok=True)
        _built[case.id] = case.build(where, folders["marker"])
    return _built[case.id]


# -- the pipeline path ---------------------------------------------------------------------------

def _run_pipeline(pipe, staged, case: Case, path: Path) -> Result:
    r = Result()
    if case.kind == "speech":
        r.speech = pipe.speech(path)
        r.template = staged.template
        r.prediction = pipe.predict(staged.subject, r.speech, r.template, "ours")
        r.lms = pipe.landmarks(r.prediction, r.template, staged.subject)
        return r
    if case.kind == "edits":
        r.speech, r.template, r.prediction = staged.speech, staged.template, staged.prediction
        r.lms = pipe.landmarks(r.prediction, r.template, staged.subject, Edits.load(path))
        r.plain = pipe.landmarks(r.prediction, r.template, staged.subject)
        return r
    subject = staged.subject
    if case.kind == "subject":
        subject = pipe.subject(path)
        r.template = pipe.template(subject)
    else:
        r.template = pipe.template(subject, path)
    r.speech = pipe.speech(rm.audio_long(path.parent) if case.kind == "long" else staged.speech_path)
    r.prediction = pipe.predict(subject, r.speech, r.template, "ours")
    r.lms = pipe.landmarks(r.prediction, r.template, subject)
    r.preview_index = min(r.lms.points.shape[0] - 1, 40 if case.kind == "long" else 11)
    r.preview = pipe.preview_frame(subject, r.template, r.lms, r.preview_index)
    return r


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_pipeline(case: Case, pipe, staged, folders):
    path = _input(case, folders)
    try:
        result = bounded(_run_pipeline, pipe, staged, case, path)
    except StudioError as exc:
        assert case.error is not None, f"{case.id}: unexpected {type(exc).__name__}: {exc}"
        assert isinstance(exc, case.error), f"{case.id}: {type(exc).__name__} instead of {case.error.__name__}: {exc}"
        _check_message(case, exc.message, exc.hint)
    else:
        assert case.error is None or case.either, f"{case.id}: no error raised, expected {case.error.__name__}"
        if case.check:
            case.check(result)
    assert not folders["marker"].exists(), "a pickle was executed"
    assert_healthy(pipe, staged, path.parent if case.kind != "subject" else None)


def _check_message(case: Case, message: str, hint: str) -> None:
    text = f"{message} {hint}"
    assert message.strip() and hint.strip(), f"{case.id}: message or hint missing: {text!r}"
    assert "Traceback" not in text and len(text) < 1200
    assert re.search(case.match, text, re.I | re.S), f"{case.id}: {text!r} does not match {case.match!r}"


# -- the handler path (what the web page calls) --------------------------------------------------

def _run_handlers(h, staged, case: Case, path: Path, sample_state):
    from studio.ui.session import DubState

    sample = str(rm.SAMPLE_SUBJECT.resolve())
    short = str(staged.speech_path)
    if case.kind == "speech":
        return h.predict(DubState.new(), sample, str(path), "template", None, "ours")
    if case.kind == "edits":
        return h.load_edits(sample_state, 0, str(path))
    if case.kind == "subject":
        state, *_ = h.predict(DubState.new(), str(path), short, "template", None, "ours")
    else:
        speech = str(rm.audio_long(path.parent)) if case.kind == "long" else short
        state, *_ = h.predict(DubState.new(), sample, speech, "template", str(path), "ours")
    frame = min(state.frames - 1, 11)
    image = h.preview_frame(state, frame, "retrieval", 50, 150)
    return state, image


@pytest.fixture(scope="module")
def h(pipe):
    from studio.ui import handlers

    return handlers


@pytest.fixture(scope="module")
def sample_state(h, staged):
    from studio.ui.session import DubState

    return h.predict(DubState.new(), str(rm.SAMPLE_SUBJECT.resolve()), str(staged.speech_path), "template",
                     None, "ours")[0]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_handlers(case: Case, h, pipe, staged, sample_state, folders):
    path = _input(case, folders)
    try:
        out = bounded(_run_handlers, h, staged, case, path, sample_state)
    except gr.Error as exc:
        assert case.error is not None, f"{case.id}: unexpected error in the UI: {exc.message}"
        assert exc.title not in ("Internal error", "Error"), f"{case.id}: shown as {exc.title!r}: {exc.message}"
        # the UI shows the pipeline's message and hint
        _check_message(case, exc.message, exc.message)
    else:
        assert case.error is None or case.either, f"{case.id}: the UI accepted it, expected {case.error.__name__}"
        _check_ui_success(case, out)
    assert not folders["marker"].exists(), "a pickle was executed"
    assert_healthy(pipe, staged, path.parent if case.kind != "subject" else None)


def _check_ui_success(case: Case, out) -> None:
    if case.kind == "edits":
        state, *values, image, fig = out
        assert image.dtype == np.uint8 and fig is not None
        assert state.lms.points.shape == state.prediction.talk.shape[:1] + (68, 2)
        return
    if case.kind == "speech":
        state, slider, image, fig, summary = out
        assert state.prediction.frames == slider["maximum"] + 1 and f"{state.prediction.frames} frames" in summary
        assert image.dtype == np.uint8 and np.isfinite(state.lms.points).all()
        return
    state, image = out
    m = state.prediction
    assert np.isfinite(state.lms.points).all() and m.frames >= 1
    assert image.ndim == 3 and image.dtype == np.uint8


def test_matrix_is_big_enough():
    assert len(CASES) >= 30
    kinds = {c.kind for c in CASES}
    assert {"speech", "template", "edits", "subject"} <= kinds


# -- control values only the web page sends (sliders, numbers, buttons) --------------------------

def _controls(**changes) -> list:
    """The /edit values (studio.ui.handlers.EditControls order) with short-named changes; a digit
    key is a raw index."""
    from studio.face.layout import PCA_DIM
    from studio.ui.handlers import SCALAR_EDITS, EditControls

    values = EditControls(range_end=1).values()
    scalars = {"mouth": "mouth_open_gain", "jaw": "jaw_open_gain", "offset": "jaw_open_offset",
               "jawline": "jawline_smoothing", "smooth": "temporal_smoothing", "timing": "lip_timing"}
    names = {short: PCA_DIM + SCALAR_EDITS.index(name) for short, name in scalars.items()}
    rest = PCA_DIM + len(SCALAR_EDITS)
    names.update(close=rest, db=rest + 1, range_on=rest + 2, start=rest + 3, end=rest + 4)
    for k, v in changes.items():
        values[names[k] if k in names else int(k)] = v
    return values


UI_CASES = [
    ("edit-gain-out-of-range", lambda h, s: h.edit(s, 0, *_controls(mouth=99.0)), "out of range"),
    ("edit-nan", lambda h, s: h.edit(s, 0, *_controls(jaw=float("nan"))), "finite"),
    ("edit-timing-out-of-range", lambda h, s: h.edit(s, 0, *_controls(timing=-40.0)), "out of range"),
    ("edit-pca-inf", lambda h, s: h.edit(s, 0, *_controls(**{"0": float("inf")})), "finite"),
    ("edit-empty-range", lambda h, s: h.edit(s, 0, *_controls(range_on=True, start=30, end=10)), "empty"),
    ("edit-range-past-end", lambda h, s: h.edit(s, 0, *_controls(range_on=True, start=4000, end=5000)), None),
    ("frame-far-past-end", lambda h, s: h.show_frame(s, 10**9), None),
    ("frame-negative", lambda h, s: h.show_frame(s, -5), None),
    ("facemap-canny-reversed", lambda h, s: h.facemap(s, 0, 200, 100), "Canny low threshold"),
    ("preview-unknown-renderer", lambda h, s: h.preview_frame(s, 0, "magic", 50, 150), "Unknown renderer"),
    ("render-range-reversed", lambda h, s: h.render_range(s, 40, 10, "retrieval", 50, 150), None),
    ("render-range-past-end", lambda h, s: h.render_range(s, 10**6, 10**6 + 5, "retrieval", 50, 150), None),
    ("edits-before-predict", lambda h, s: h.show_frame(None, 0), "Nothing predicted"),
    ("render-before-predict", lambda h, s: h.render_full(None, "retrieval", 50, 150), "Nothing predicted"),
    ("unknown-variant", lambda h, s: h.predict(s, str(rm.SAMPLE_SUBJECT.resolve()), s.speech_path, "template",
                                               None, "gpt-5"), "Unknown variant"),
]


@pytest.mark.parametrize("name,call,error", UI_CASES, ids=[c[0] for c in UI_CASES])
def test_ui_control_values(name, call, error, h, pipe, staged, sample_state):
    """Values the page's controls (or a client of its API) can send: clamped to something valid,
    or a gr.Error with the reason; never an internal error."""
    try:
        out = bounded(call, h, sample_state)
    except gr.Error as exc:
        assert error is not None, f"{name}: unexpected error {exc.message}"
        assert exc.title not in ("Internal error", "Error") and re.search(error, exc.message), exc.message
    else:
        assert error is None, f"{name}: accepted, expected an error matching {error!r}"
        if isinstance(out, str) and out.endswith(".mp4"):  # a clamped range still renders real frames
            import cv2

            cap = cv2.VideoCapture(out)
            ok, frame = cap.read()
            cap.release()
            assert ok and frame.shape == (384, 384, 3)
    assert_healthy(pipe, staged)
