"""The person-match check (studio.face.identity_check) and the pipeline's refusal of a template
that shows another person than the subject: synthetic faces first, then the real footage."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from studio.face import identity_check as idc
from studio.face.meanface import mean_face

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "presets" / "sample_subject"
SAMPLE_TEMPLATE = REPO / "sample_media" / "template.mp4"
CFG = idc.IdentityConfig()

# -- synthetic faces: a person is a smooth random texture laid on the mean face -------------------

TEX_PX_PER_MM = 2.0
TEX_HALF_MM = 100.0


def person_texture(seed: int) -> np.ndarray:
    """(400, 400) float32 0..255: a 'face' 200 mm wide with detail of about 4 mm."""
    side = int(2 * TEX_HALF_MM * TEX_PX_PER_MM)
    tex = cv2.GaussianBlur(np.random.default_rng(seed).normal(size=(side, side)).astype(np.float32), (0, 0), 8)
    return (tex - tex.min()) / np.ptp(tex) * 200 + 20


def render(tex: np.ndarray, scale: float, angle: float, size=(480, 360), gain=1.0, offset=0.0, gamma=1.0):
    """A frame (H, W, 3) uint8 showing ``tex`` turned by ``angle`` degrees and scaled by ``scale``
    (frame px per texture px), and its (68, 2) landmarks."""
    a = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre_tex = np.full(2, TEX_HALF_MM * TEX_PX_PER_MM)
    t = np.array(size, np.float64) / 2 - rot @ centre_tex
    m = np.hstack([rot, t[:, None]])
    grey = cv2.warpAffine(tex, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    grey = 255 * (np.clip(grey * gain + offset, 0, 255) / 255) ** gamma
    pts = (mean_face()[:, :2] + TEX_HALF_MM) * TEX_PX_PER_MM @ rot.T + t
    return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2), pts.astype(np.float32)


def views(tex: np.ndarray, seed: int, n: int = 10):
    """n frames of one texture at random sizes (eyes 40-270 px apart), angles and lighting."""
    rng = np.random.default_rng(seed)
    frames, lms = [], []
    for _ in range(n):
        f, p = render(tex, rng.uniform(0.22, 1.5), rng.uniform(-15, 15), size=(720, 720), gain=rng.uniform(0.6, 1.2),
                      offset=rng.uniform(-20, 20), gamma=rng.uniform(0.7, 1.4))
        frames.append(f)
        lms.append(p)
    return frames, np.stack(lms)


def test_similarity_transform_recovers_scale_rotation_translation():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(13, 2)) * 30
    a = np.deg2rad(25)
    m = np.array([[np.cos(a), -np.sin(a), 12.0], [np.sin(a), np.cos(a), -7.0]]) * [[2.5], [2.5]]
    m[:, 2] = (12.0, -7.0)
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(idc.similarity_transform(src, dst), m, atol=1e-9)
    mirrored = idc.similarity_transform(src, dst * [-1, 1])  # a mirror image is not a rotation
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_aligned_crop_undoes_size_and_rotation():
    tex = person_texture(1)
    ref = idc.aligned_crop(*render(tex, 0.25, 0.0), CFG)  # eyes 45 px apart: the crop's own scale
    assert ref.shape == (CFG.crop_size[1], CFG.crop_size[0])
    for scale, angle in [(1.6, 20.0), (0.6, -12.0), (0.2, 5.0)]:  # 290, 110 and 36 px between the eyes
        crop = idc.aligned_crop(*render(tex, scale, angle, size=(720, 720)), CFG)
        r = np.corrcoef(crop.ravel(), ref.ravel())[0, 1]
        assert r > 0.98, (scale, angle, r)


def test_orientation_field_ignores_brightness_contrast_and_gamma():
    crop = idc.aligned_crop(*render(person_texture(2), 0.5, 0.0), CFG)
    field = idc.orientation_field(crop)
    assert field.shape == (2 * crop.size,) and field.dtype == np.float32
    # the mean cosine of the angle between the two gradient directions, over the pixels
    assert float(field @ idc.orientation_field(0.5 * crop + 40)) / crop.size > 0.999
    assert float(field @ idc.orientation_field(255 * (crop / 255) ** 0.6)) / crop.size > 0.95


def test_same_texture_matches_and_another_does_not():
    a, b = person_texture(3), person_texture(4)
    one = idc.describe_frames(*views(a, seed=10), CFG)
    again = idc.describe_frames(*views(a, seed=11), CFG)
    other = idc.describe_frames(*views(b, seed=12), CFG)
    assert one.frames == 10 and one.mean.shape == (2 * CFG.crop_size[0] * CFG.crop_size[1],)
    assert idc.match(again, one, CFG).same_person and idc.score(again, one) > 0.9
    assert not idc.match(other, one, CFG).same_person and idc.score(other, one) < 0.3
    both = idc.combine([one, again])
    assert both.frames == 20 and idc.score(both, one) > idc.score(again, one)


def test_the_mouth_and_jaw_do_not_count():
    """The dub changes the mouth and jaw: below the nose base the face may be anything."""
    tex = person_texture(5)
    other_mouth = tex.copy()
    rows = int((15 + TEX_HALF_MM) * TEX_PX_PER_MM)  # 15 mm below the nose centre and down
    other_mouth[rows:] = person_texture(6)[rows:]
    f1, p1 = render(tex, 0.5, 3.0)
    f2, p2 = render(other_mouth, 0.5, 3.0)
    np.testing.assert_allclose(idc.orientation_field(idc.aligned_crop(f1, p1, CFG)),
                               idc.orientation_field(idc.aligned_crop(f2, p2, CFG)), atol=1e-5)


def test_usable_frames_need_a_found_frontal_large_face():
    t = 6
    lms = np.tile((mean_face()[:, :2] + 100).astype(np.float32), (t, 1, 1))  # eyes 91 px apart
    lms[3] *= 0.2  # eyes 18 px apart: too small
    lms[4, 10] = np.nan
    found = np.array([True, False, True, True, True, True])
    pose = np.zeros((t, 3), np.float32)
    pose[2, 0] = -40.0  # turned away
    assert idc.usable_frames(found, pose, lms, CFG).tolist() == [0, 5]
    assert idc.spread(np.arange(100), 5).tolist() == [0, 25, 50, 74, 99]
    assert idc.spread(np.arange(3), 5).tolist() == [0, 1, 2]


def test_a_clip_without_enough_usable_frames_is_not_judged():
    t = CFG.min_frames - 1
    clip = SimpleNamespace(found=np.ones(t, bool), pose=np.zeros((t, 3), np.float32),
                           landmarks=np.tile((mean_face()[:, :2] + 100).astype(np.float32), (t, 1, 1)),
                           meta=SimpleNamespace(source="short.mp4"), video_path=Path("/nonexistent.mp4"))
    assert idc.clip_descriptor(clip, CFG) is None
    assert idc.clips_descriptor([clip, clip], CFG) is None and idc.clips_descriptor([], CFG) is None


def test_a_synthetic_subject_is_not_checked(tmp_path):
    """A subject built from drawn (synthetic) faces is nobody: any template is accepted."""
    from studio.manager import ModelManager
    from studio.pipeline import Pipeline

    subject = SimpleNamespace(clips=lambda: [SimpleNamespace(meta=SimpleNamespace(synthetic=True))])
    assert Pipeline(ModelManager(device="cpu"), work_dir=tmp_path).check_identity(subject, None) is None


def test_cli_flag_turns_the_check_off():
    from studio import pipeline

    parser = argparse.ArgumentParser()
    pipeline.add_cli_arguments(parser)
    base = ["--subject", "s", "--speech", "a.wav", "--out", "o.mp4"]
    assert parser.parse_args(base).allow_other_person is False
    assert parser.parse_args(base + ["--allow-other-person"]).allow_other_person is True
    assert pipeline.PipelineConfig().check_identity is True


# -- real footage ---------------------------------------------------------------------------------

def cut(src: Path, out: Path, start: int, frames: int, step: int) -> Path:
    """``frames`` frames of ``src`` from ``start``, every ``step``-th (a few seconds of motion in a
    short file), as H.264 without sound."""
    from studio import media

    info = media.probe_video(src)
    with media.VideoWriter(out, info.fps / step, (info.width, info.height)) as w:
        for k, frame in enumerate(media.iter_frames(src, start, start + frames * step)):
            if k % step == 0:
                w.write(frame)
    return out


@pytest.fixture(scope="module")
def real(shared, tmp_path_factory):
    """Short cuts of real footage, and a pipeline with the weights folder of ../shared."""
    from studio.pipeline import Pipeline

    d = tmp_path_factory.mktemp("identity")
    video = shared / "media" / "video"
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
    yield SimpleNamespace(
        dir=d, video=video, pipe=Pipeline(work_dir=d / "work"),
        katie=cut(video / "katie_hill.mp4", d / "katie_hill_cut.mp4", 0, 50, 3),  # 6 s of her, 50 frames
        own=cut(SAMPLE_TEMPLATE, d / "sample_cut.mp4", 100, 50, 6))  # 10 s of the sample, re-encoded
    mp.undo()


@pytest.mark.slow
def test_sample_subject_refuses_another_persons_template(real):
    from studio.errors import InputError

    subject = real.pipe.subject(SAMPLE)
    with pytest.raises(idc.OtherPersonError) as err:
        real.pipe.template(subject, real.katie)
    assert isinstance(err.value, InputError)
    assert "katie_hill_cut.mp4" in err.value.message and "different person" in err.value.message
    assert "Subject tab" in err.value.hint and "'One step' in the Dub tab" in err.value.hint


@pytest.mark.slow
def test_sample_subject_accepts_its_own_face_in_another_file(real):
    subject = real.pipe.subject(SAMPLE)
    tpl = real.pipe.template(subject, real.own)  # not the subject's file: checked, and matching
    assert tpl.meta.frames == 50
    assert real.pipe.check_identity(subject, tpl) >= CFG.threshold + 0.05
    assert real.pipe.template(subject, SAMPLE_TEMPLATE) is subject.clip("template")  # its own video


@pytest.mark.slow
def test_experts_can_dub_another_person_anyway(real):
    from studio.pipeline import Pipeline, PipelineConfig

    pipe = Pipeline(real.pipe.manager, PipelineConfig(check_identity=False), work_dir=real.dir / "work")
    assert pipe.template(pipe.subject(SAMPLE), real.katie).meta.frames == 50


@pytest.mark.slow
def test_cli_refuses_and_names_the_override(real, monkeypatch, tmp_path):
    import tempfile

    from studio import pipeline
    from ui_support import speech_wav

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the CLI pipeline's work folder
    parser = argparse.ArgumentParser()
    pipeline.add_cli_arguments(parser)
    args = parser.parse_args(["--subject", str(SAMPLE), "--speech", str(speech_wav(tmp_path / "s.wav", 1.0)),
                              "--template", str(real.katie), "--out", str(tmp_path / "o.mp4")])
    with pytest.raises(idc.OtherPersonError, match="different person") as err:
        pipeline.cli(args)
    assert "--allow-other-person" in err.value.hint and "make-subject" in err.value.hint
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.slow
def test_obama_matches_across_recordings_and_not_katie_hill(real):
    """A subject-like set of two 256x256 Obama crops against his 1280x720 address (another
    recording, camera and light) and against Katie Hill."""
    from studio.data.preprocess import preprocess

    def clip(name: str):
        return preprocess(cut(real.video / f"{name}.mp4", real.dir / f"{name}.mp4", 0, 40, 4),
                          real.dir / "clips" / name, progress=False)

    subject = idc.clips_descriptor([clip("obama_clip1"), clip("obama_clip2")], CFG)
    address = idc.clip_descriptor(clip("obama_weekly_address"), CFG)
    katie = idc.clip_descriptor(preprocess(real.katie, real.dir / "clips" / "katie", progress=False), CFG)
    assert idc.match(address, subject, CFG).same_person, idc.score(address, subject)
    assert not idc.match(katie, subject, CFG).same_person, idc.score(katie, subject)


@pytest.mark.slow
def test_studio_predict_shows_the_refusal_as_a_message(real, tmp_path):
    """The Dub tab: the sample subject with another person's uploaded template -> a gr.Error that
    says what to do instead (not a dub of the wrong face)."""
    gr = pytest.importorskip("gradio")
    from ui_support import speech_wav, studio_env

    from studio.ui import handlers, session
    from studio.ui.session import DubState

    mp = pytest.MonkeyPatch()
    for k, v in studio_env(tmp_path, SAMPLE).items():
        mp.setenv(k, v)
    session.set_pipeline(None)
    try:
        with pytest.raises(gr.Error, match="different person") as err:
            handlers.predict(DubState.new(), str(SAMPLE.resolve()), str(speech_wav(tmp_path / "speech.wav", 2.0)),
                             None, str(real.katie), "ours")
        assert "Subject tab" in str(err.value) and "One step" in str(err.value)
    finally:
        session.set_pipeline(None)
        mp.undo()
