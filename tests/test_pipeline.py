"""The dubbing pipeline end to end on the bundled sample subject (offline, CPU)."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from studio import media
from studio.config import REPO_ROOT
from studio.edits import Edits
from studio.errors import CancelledError, CheckpointError, InputError
from studio.face import layout
from studio.pipeline import Pipeline, PipelineConfig, landmarks_table

SAMPLE = REPO_ROOT / "presets" / "sample_subject"
SPEECH = REPO_ROOT / "sample_media" / "speech.wav"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline(work_dir=tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def staged(pipe):
    subject = pipe.subject(SAMPLE)
    speech = pipe.speech(SPEECH)
    tpl = pipe.template(subject)
    pred = pipe.predict(subject, speech, tpl, "ours")
    return subject, speech, tpl, pred


def test_prediction_shapes_and_caching(pipe, staged):
    subject, speech, tpl, pred = staged
    n = int(round(speech.seconds * tpl.meta.fps))
    assert pred.talk.shape == (n, 58) and pred.coefs.shape == (n, 13) and pred.energy.shape == (n,)
    assert np.isfinite(pred.talk).all()
    assert pipe.predict(subject, speech, tpl, "ours") is pred  # cached: no second network run
    lms = pipe.landmarks(pred, tpl, subject)
    assert lms.points.shape == (n, 68, 2)
    # only the 29 talking points differ from the template's
    other = [i for i in range(68) if i not in layout.TALKING]
    np.testing.assert_array_equal(lms.points[:, other], lms.template[:, other])
    table = landmarks_table(lms)
    assert len(table) == n and "x67" in table


def test_predicted_mouth_follows_speech(staged, pipe):
    subject, speech, tpl, pred = staged
    lms = pipe.landmarks(pred, tpl, subject)
    opening = layout.mouth_opening(lms.points)
    loud = pred.energy > np.percentile(pred.energy, 70)
    quiet = pred.energy < np.percentile(pred.energy, 15)
    assert opening[loud].mean() > opening[quiet].mean()


def test_edit_changes_landmarks_without_rerunning_network(staged, pipe):
    subject, speech, tpl, pred = staged
    base = pipe.landmarks(pred, tpl, subject)
    wider = pipe.landmarks(pred, tpl, subject, Edits(mouth_open_gain=2.0))
    assert (layout.mouth_opening(wider.points) - layout.mouth_opening(base.points)).mean() > 0
    np.testing.assert_array_equal(wider.points[:, layout.JAW], base.points[:, layout.JAW])


def test_close_on_silence(staged, pipe):
    subject, speech, tpl, pred = staged
    closed = pipe.landmarks(pred, tpl, subject, Edits(close_on_silence=True))
    # the sample speech has a 1 s pause in the middle (5.3 s .. 6.2 s)
    fps = pred.fps
    gap = slice(int(5.5 * fps), int(6.0 * fps))
    clip_talk = np.concatenate([c.talk for c in subject.clips()])
    ref = layout.mouth_opening(_talk_points(clip_talk))
    assert (layout.mouth_opening(_talk_points(closed.talk[gap])) < np.percentile(ref, 10)).all()


def _talk_points(talk):
    """(T, 58) -> (T, 68, 2) with only the talking points filled (enough for mouth_opening)."""
    pts = np.zeros((len(talk), 68, 2), np.float32)
    return layout.with_talking(pts, np.asarray(talk))


@pytest.fixture(scope="module")
def rendered(staged, pipe, tmp_path_factory):
    subject, speech, tpl, pred = staged
    lms = pipe.landmarks(pred, tpl, subject)
    out = pipe.render(subject, tpl, speech, lms, tmp_path_factory.mktemp("dub") / "dub.mp4")
    return lms, out


def test_render_mp4(staged, pipe, rendered):
    subject, speech, tpl, pred = staged
    lms, out = rendered
    info = media.probe_video(out)
    assert abs(info.frames - speech.seconds * tpl.meta.fps) <= 1
    assert info.has_audio and (info.width, info.height) == (tpl.meta.width, tpl.meta.height)
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    assert ok and frame.shape == (tpl.meta.height, tpl.meta.width, 3)
    # the preview of a frame is that frame of the full render (within codec tolerance)
    i = 40
    preview = pipe.preview_frame(subject, tpl, lms, i)
    rendered = media.read_frames(out, [i])[0]
    assert np.abs(preview.astype(int) - rendered.astype(int)).mean() < 3.0


def test_render_cancel_leaves_no_file(staged, pipe, tmp_path):
    subject, speech, tpl, pred = staged
    lms = pipe.landmarks(pred, tpl, subject)
    cancel = threading.Event()

    def progress(frac, desc):
        if frac > 0.1:
            cancel.set()

    with pytest.raises(CancelledError):
        pipe.render(subject, tpl, speech, lms, tmp_path / "x.mp4", progress=progress, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_template_frames_ping_pong(pipe, staged):
    from studio.models.checkpoint import extend_template

    subject, speech, tpl, pred = staged
    idx = extend_template(12, 5)  # 0 1 2 3 4 3 2 1 0 1 2 3
    small = Pipeline(config=PipelineConfig(frame_chunk=2))
    frames = list(small.template_frames(tpl, idx))
    direct = media.read_frames(tpl.video_path, list(range(5)))
    for k, i in enumerate(idx):
        np.testing.assert_array_equal(frames[k], direct[i])


def test_bad_inputs(pipe, tmp_path):
    subject = pipe.subject(SAMPLE)
    silent = tmp_path / "silent.wav"
    silent.write_bytes(media.wav_bytes(np.zeros(16_000 * 2, np.float32)))
    with pytest.raises(InputError, match="silent"):
        pipe.speech(silent)
    text = tmp_path / "speech.wav"
    text.write_text("not audio")
    with pytest.raises(InputError):
        pipe.speech(text)
    with pytest.raises(InputError):
        pipe.template(subject, "no_such_clip")
    with pytest.raises(CheckpointError):
        pipe.subject(tmp_path)


@pytest.mark.slow
def test_sync_redetected_mouth_follows_prediction(rendered, tmp_path, weights_dir, monkeypatch):
    """The video shows what the model predicted: re-detect landmarks on the output video."""
    from studio.data.preprocess import preprocess

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    lms, out = rendered
    clip = preprocess(out, tmp_path / "redetected", progress=False)
    seen = layout.mouth_opening(clip.landmarks) / clip.scale
    predicted = layout.mouth_opening(lms.points) / clip.scale
    r = np.corrcoef(seen, predicted)[0, 1]
    assert r >= 0.8, r


def test_dubbing_imports_no_trainer(tmp_path):
    """Inference lives outside studio.train: a whole dub with an existing subject loads none of it."""
    import subprocess
    import sys

    code = ("import sys\nfrom studio.pipeline import Pipeline\n"
            f"Pipeline(work_dir={str(tmp_path / 'w')!r}).dub({str(SAMPLE)!r}, {str(SPEECH)!r}, {str(tmp_path / 'o.mp4')!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith('studio.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_output_keeps_the_speech_files_sample_rate_and_channels(staged, pipe, tmp_path, shared, monkeypatch):
    """The dub carries the speech file as given (48 kHz stereo stays so, AAC >= 192 kb/s); the
    16 kHz mono decode only feeds the network."""
    import re
    import subprocess

    subject, _, tpl, _ = staged
    speech = pipe.speech(shared / "media" / "speech" / "macron_48k_stereo.wav")
    lms = pipe.landmarks(pipe.predict(subject, speech, tpl, "ours"), tpl, subject)
    seen = {}
    real_writer = media.VideoWriter

    class Short(real_writer):  # the audio is what matters: write a few frames only
        def __init__(self, *a, audio=None, **k):
            seen["audio"] = audio
            super().__init__(*a, audio=audio, **k)

        def write(self, frame):
            if self.frames_written < 5:
                super().write(frame)

    monkeypatch.setattr(media, "VideoWriter", Short)
    out = pipe.render(subject, tpl, speech, lms, tmp_path / "hq.mp4")
    assert str(seen["audio"]).endswith("macron_48k_stereo.wav")
    err = subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True, text=True).stderr
    line = next(x for x in err.splitlines() if "Audio:" in x)
    assert "48000 Hz" in line and "stereo" in line, line
    assert int(re.search(r"(\d+) kb/s", line).group(1)) >= 180, line  # the encoder's average; set to 192
    # the picture keeps the template's size, frame rate and colour tags
    mine, theirs = media.probe_video(out), media.probe_video(tpl.video_path)
    assert (mine.width, mine.height, mine.fps, mine.colour) == (theirs.width, theirs.height, theirs.fps, theirs.colour)


def test_high_quality_encoding_is_offered_and_checked(staged, tmp_path):
    subject, speech, tpl, pred = staged
    with pytest.raises(InputError, match="quality"):
        PipelineConfig(quality="best")
    hq = Pipeline(config=PipelineConfig(quality="high"), work_dir=tmp_path / "w")
    lms = hq.landmarks(pred, tpl, subject)
    short = type(lms)(lms.talk[:10], lms.points[:10], lms.template[:10], lms.frame_index[:10], lms.fps)
    out = hq.render(subject, tpl, speech, short, tmp_path / "hq.mp4")
    assert media.probe_video(out).frames == 10
