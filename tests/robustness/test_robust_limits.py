"""Configurable limits (upload size, video duration, resolution, speech length) are enforced
before any heavy work: the decoders, the face tracker and the network are never reached, and the
message names the value, the limit and what to do.

The heavy stages are replaced by functions that fail the test if called, so "before heavy work"
is checked, not assumed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf

import robust_media as rm
from studio import media
from studio.errors import InputError, LimitError
from studio.media import MediaLimits
from studio.pipeline import Pipeline, PipelineConfig


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Decoding speech, preprocessing a template and running the network all fail the test."""
    import studio.data.preprocess as pre
    import studio.pipeline as pl

    def forbidden(*a, **k):
        raise AssertionError("heavy work started before the limits were checked")

    rm.sample_signal(), rm.sample_frames()  # the test material itself is decoded beforehand

    monkeypatch.setattr(media, "read_audio", forbidden)
    monkeypatch.setattr(pre, "preprocess", forbidden)
    monkeypatch.setattr(pl, "features_for_video", forbidden)


def _pipe(tmp_path, **limits) -> Pipeline:
    return Pipeline(config=PipelineConfig(limits=MediaLimits(**limits)), work_dir=tmp_path / "work")


def _wav(tmp_path, seconds: float, name: str = "speech.wav"):
    p = tmp_path / name
    sf.write(str(p), rm.sample_signal()[: int(seconds * 16000)], 16000)
    return p


def _assert_clear(exc: LimitError, *needles: str) -> None:
    text = f"{exc.message} {exc.hint}"
    assert exc.hint and all(n in text for n in needles), text


def test_speech_file_size(tmp_path, no_heavy_work):
    speech = _wav(tmp_path, 3.0)  # 96 kB
    with pytest.raises(LimitError) as info:
        _pipe(tmp_path, max_file_mb=0.05).speech(speech)
    _assert_clear(info.value, "MB", "0.05", "Trim or compress")


@pytest.mark.parametrize("fmt", ["wav", "m4a", "mp3"])
def test_speech_length_from_the_header(tmp_path, no_heavy_work, fmt):
    wav = _wav(tmp_path, 5.0)
    path = wav
    if fmt != "wav":
        path = tmp_path / f"speech.{fmt}"
        rm.ffmpeg("-i", str(wav), str(path))
    with pytest.raises(LimitError) as info:
        _pipe(tmp_path, max_audio_seconds=2.0).speech(path)
    _assert_clear(info.value, "5.0 s", "limit is 2 s", "Trim the speech")


def test_speech_within_limits_is_decoded(tmp_path):
    speech = _pipe(tmp_path, max_audio_seconds=4.0, max_file_mb=1.0).speech(_wav(tmp_path, 3.0))
    assert abs(speech.seconds - 3.0) < 1e-3


def test_lying_header_is_caught_after_decoding(tmp_path, monkeypatch):
    """A header that under-reports the length cannot slip past: the decoded length is checked too."""
    monkeypatch.setattr(media, "probe_audio_seconds", lambda p: 1.0)
    with pytest.raises(LimitError):
        _pipe(tmp_path, max_audio_seconds=2.0).speech(_wav(tmp_path, 3.0))


@pytest.mark.parametrize("limit,needles", [
    ({"max_video_seconds": 0.2}, ("0.4 s", "limit is 0.2 s", "Trim the video")),
    ({"max_width": 320}, ("384x384", "320x3840", "Downscale")),
    ({"max_height": 200}, ("384x384", "limit is 3840x200", "Downscale")),
    ({"max_file_mb": 0.001}, ("MB", "0.001")),
])
def test_template_limits_before_tracking(tmp_path, no_heavy_work, limit, needles):
    video = rm.write_video(tmp_path / "template.mp4", rm.sample_frames()[:10])  # 0.4 s, 384x384
    pipe = _pipe(tmp_path, **limit)
    subject = pipe.subject(rm.SAMPLE_SUBJECT)
    with pytest.raises(LimitError) as info:
        pipe.template(subject, video)
    _assert_clear(info.value, *needles)


def test_4k_is_refused_by_a_1080p_limit_before_tracking(tmp_path, no_heavy_work):
    video = rm.write_video(tmp_path / "uhd.mp4", [np.zeros((2160, 3840, 3), np.uint8)] * 2)
    pipe = _pipe(tmp_path, max_width=1920, max_height=1920)
    with pytest.raises(LimitError, match="3840x2160"):
        pipe.template(pipe.subject(rm.SAMPLE_SUBJECT), video)


def test_limits_from_environment():
    env = {"STUDIO_MAX_FILE_MB": "25", "STUDIO_MAX_VIDEO_SECONDS": "30", "STUDIO_MAX_WIDTH": "1920",
           "STUDIO_MAX_HEIGHT": "1080.0", "STUDIO_MAX_AUDIO_SECONDS": "45.5"}
    assert MediaLimits.from_env(env) == MediaLimits(25.0, 30.0, 1920, 1080, 45.5)
    assert MediaLimits.from_env({}) == MediaLimits()
    for bad in ("-1", "0", "abc", "nan", "inf"):
        with pytest.raises(InputError, match="STUDIO_MAX_WIDTH"):
            MediaLimits.from_env({"STUDIO_MAX_WIDTH": bad})


def test_ui_uses_the_configured_limits(tmp_path, monkeypatch):
    """The studio's pipeline takes STUDIO_MAX_* and its handlers show a LimitError as
    "Input too large" with the message, before any decoding or training job."""
    gr = pytest.importorskip("gradio")
    from studio.ui import app, handlers, session

    monkeypatch.setenv("STUDIO_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("STUDIO_SUBJECTS_DIR", str(tmp_path / "subjects"))
    monkeypatch.setenv("STUDIO_MAX_AUDIO_SECONDS", "2")
    monkeypatch.setenv("STUDIO_MAX_VIDEO_SECONDS", "0.2")
    monkeypatch.setenv("STUDIO_MAX_FILE_MB", "3")
    session.set_pipeline(None)
    try:
        limits = session.get_pipeline().config.limits
        assert dataclasses.astuple(limits) == (3.0, 0.2, 3840, 3840, 2.0)
        assert app.launch_kwargs()["max_file_size"] == 3_000_000
        speech = _wav(tmp_path, 3.0)
        video = rm.write_video(tmp_path / "footage.mp4", rm.sample_frames()[:10])
        monkeypatch.setattr(media, "read_audio", lambda *a, **k: pytest.fail("decoded"))
        st = session.DubState.new()
        with pytest.raises(gr.Error, match="limit is 2 s") as info:
            handlers.predict(st, str(rm.SAMPLE_SUBJECT.resolve()), str(speech), "template", None, "ours")
        assert info.value.title == "Input too large"
        import studio.ui.jobs as jobs

        monkeypatch.setattr(jobs, "start", lambda *a, **k: pytest.fail("a job was started"))
        with pytest.raises(gr.Error, match="limit is 0.2 s"):
            list(handlers.build_subject(st, [str(video)], "anna", ["ours"], False, 0))
    finally:
        session.set_pipeline(None)


def test_served_studio_refuses_oversized_uploads(tmp_path, monkeypatch):
    """gradio's own upload route enforces the file limit before anything is stored."""
    pytest.importorskip("gradio_client")
    import httpx

    from studio.ui import app, session
    from ui_support import free_port

    monkeypatch.setenv("STUDIO_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("STUDIO_SUBJECTS_DIR", str(tmp_path / "subjects"))
    monkeypatch.setenv("STUDIO_MAX_FILE_MB", "0.2")
    session.set_pipeline(None)
    demo = app.launch(prevent_thread_lock=True, server_port=free_port())
    try:
        url = demo.local_url.rstrip("/") + "/gradio_api/upload"
        small = httpx.post(url, files={"files": ("small.wav", b"\0" * 100_000)}, timeout=30)
        big = httpx.post(url, files={"files": ("big.wav", b"\0" * 300_000)}, timeout=30)
        assert small.status_code == 200
        assert big.status_code in (400, 413) and "size" in big.text.lower()
    finally:
        demo.close()
        session.set_pipeline(None)
