"""The multi-speaker prior: face-shape offsets, fine-tuning, short footage and the one-step dub."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from studio import media
from studio.config import REPO_ROOT
from studio.data.synth import SynthConfig, synthesize
from studio.face import frontal
from studio.models import identity
from studio.models.conditioning import smooth_pose
from studio.models.checkpoint import MappingModel
from studio.train.mapping import to_canonical
from studio.train.prior import (PRIOR_DIR, REFIT_MIN_SECONDS, SELECT_DIR, adapt_prior, fine_tune, finetune_plan,
                                should_refit, speech_problem)
from studio.train.windows import clip_arrays

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEECH = REPO_ROOT / "sample_media" / "speech.wav"


def _cut(src, out, seconds: float, audio: bool = True):
    """The first ``seconds`` of a video (re-encoded; without sound unless ``audio``)."""
    cmd = [media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-t", f"{seconds}", "-c:v", "libx264",
           "-preset", "veryfast", "-pix_fmt", "yuv420p"] + (["-c:a", "aac"] if audio else ["-an"]) + [str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def heads(tmp_path_factory, shared):
    """Two synthetic people with different face shapes (no video), speaking real speech."""
    root = tmp_path_factory.mktemp("heads")
    cfg = SynthConfig(shape_variation=1.5)
    speech = shared / "media" / "speech" / "english_60s_16k.wav"
    return [synthesize(root / f"h{k}", 12.0, 300 + k, speech=speech, render=False, config=cfg) for k in range(2)]


# -- identity offsets ------------------------------------------------------------------------------
def test_offset_is_added_and_removed_exactly():
    rng = np.random.default_rng(0)
    talk = rng.normal(0, 0.3, (20, 58)).astype(np.float32)
    pose = rng.uniform(-25, 25, (20, 3)).astype(np.float32)
    off = identity.IdentityOffset(rng.normal(0, 0.05, 58).astype(np.float32))
    assert np.allclose(off.remove(off.add(talk, pose), pose), talk, atol=1e-5)
    # frontal: the offset is added as it is
    assert np.allclose(identity.posed(off.delta, np.zeros((1, 3))), off.delta, atol=1e-5)


def test_canonical_coordinates_take_out_the_face_shape(heads):
    blocks = [clip_arrays(h) for h in heads]
    poses = [smooth_pose(b.pose, b.fps) for b in blocks]

    def frontal_mean(bs):
        return [frontal.move_to_frontal(b.talk[b.valid], p[b.valid]).mean(axis=0) for b, p in zip(bs, poses)]

    before = frontal_mean(blocks)
    assert np.abs(before[0] - before[1]).max() > 0.03  # two different faces
    canon, offsets = to_canonical(blocks, ["a", "b"])
    after = frontal_mean(canon)
    for m in after:  # each person's average mouth is now the reference face's
        assert np.abs(m - identity.reference()).max() < 2e-3
    assert set(offsets) == {"a", "b"}


# -- the shipped prior -----------------------------------------------------------------------------
def test_shipped_prior_is_canonical_small_and_holds_out_the_test_clip():
    model = MappingModel.load(PRIOR_DIR)
    assert model.variant == "ours" and model.identity is not None
    assert np.all(model.identity.delta == 0)
    cfg = json.loads((PRIOR_DIR / "config.json").read_text())
    assert {"obama", "katie_hill", "aoc", "young_man"} <= set(cfg["identity"]["persons"])
    assert not any("obama_clip3" in c for c in cfg["data"]["clips"])  # the project's test speech
    assert sum(f.stat().st_size for f in PRIOR_DIR.iterdir()) < 2_000_000


def test_prior_alone_dubs_held_out_speech_onto_a_template(shared, tmp_path, weights_dir, monkeypatch):
    """obama_clip3 is in no training data of the prior: its speech, dubbed onto 10 s of obama_clip1
    by the prior with no training, must follow the real clip 3 mouth far better than no lip sync."""
    from studio.data.preprocess import preprocess
    from studio.train.evaluate import dubbing_pairs

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    v = shared / "media" / "video"
    tpl = preprocess(v / "obama_clip1.mp4", tmp_path / "c1", audio=v / "obama_clip1.wav", stop=300, progress=False)
    speech = preprocess(v / "obama_clip3.mp4", tmp_path / "c3", audio=v / "obama_clip3.wav", stop=300,
                        progress=False)
    # the prior with the recording's timing measured on the template footage, as one-step dubs
    # use it (without it the many-speaker prior's lag-0 r here is 0.26, 0.56 at its best lag +3)
    ckpt = fine_tune([clip_arrays(tpl)], tmp_path / "adapted", prior=PRIOR_DIR, plan=None)
    res = dubbing_pairs(MappingModel.load(ckpt), [(speech, (0.0, 1.0), tpl, (0.0, 1.0))])
    assert res["dub"]["inner_r"] > 0.3
    assert res["dub"]["inner_r"] > res["template"]["inner_r"] + 0.2
    assert abs(res["dub"]["inner_lag"]) <= 4


# -- fine-tuning -----------------------------------------------------------------------------------
def test_finetune_plan_shrinks_windows_and_gives_up_on_tiny_footage():
    assert finetune_plan([90]) is None  # 3 s at 30 fps
    short = finetune_plan([250])  # 10 s at 25 fps
    assert short is not None and 24 <= short["window"] <= 64 and short["window"] % 8 == 0
    assert finetune_plan([1500])["window"] == 64


def test_finetune_chooses_on_held_out_footage_then_trains_on_all_of_it(heads, tmp_path):
    ckpt = fine_tune([heads[0]], tmp_path / "ft", prior=PRIOR_DIR, seed=0, refit=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    chosen = json.loads((ckpt / SELECT_DIR / "config.json").read_text())
    sel = chosen["result"]
    # the choice is never worse than the prior on the held-out quarter: the prior is its epoch 0
    assert sel["base_val_loss"] is not None and sel["best_val_loss"] <= sel["base_val_loss"] + 1e-9
    assert sel["best_epoch"] > 0, "this head's footage should improve on the prior"
    # then the same number of epochs on all of the footage, with the held-out run's gain
    assert cfg["result"]["refit"]["epochs"] == sel["best_epoch"] == cfg["result"]["epochs"]
    assert cfg["data"]["val_frames"] == 0 and cfg["data"]["train_frames"] > chosen["data"]["train_frames"]
    model = MappingModel.load(ckpt)
    assert model.gain is not None and model.gain.gain == pytest.approx(sel["articulation_gain"])
    assert cfg["result"]["articulation_gain"] == pytest.approx(sel["articulation_gain"])
    # a second call finds both runs done and changes nothing
    before = (ckpt / "model.safetensors").read_bytes()
    fine_tune([heads[0]], tmp_path / "ft", prior=PRIOR_DIR, seed=0, refit=True)
    assert (ckpt / "model.safetensors").read_bytes() == before
    assert json.loads((ckpt / "config.json").read_text()) == cfg
    assert model.identity is not None and np.abs(model.identity.delta).max() > 0  # this person's face
    # the mouth PCA moved onto the person's mouth: their mouths have ~zero mean coefficients
    b = clip_arrays(heads[0])
    coefs = model.pca.transform(b.talk[b.valid][:, :40])
    assert np.abs(coefs.mean(axis=0)).max() < 0.5 * np.abs(MappingModel.load(PRIOR_DIR).pca.transform(
        b.talk[b.valid][:, :40]).mean(axis=0)).max() + 1e-3


def test_short_footage_is_not_refitted_by_default(heads, tmp_path):
    assert not should_refit(12.0) and should_refit(REFIT_MIN_SECONDS)
    ckpt = fine_tune([heads[0]], tmp_path / "ft", prior=PRIOR_DIR, seed=0)  # 12 s: auto = one run
    cfg = json.loads((ckpt / "config.json").read_text())
    assert not (ckpt / SELECT_DIR).exists() and "refit" not in cfg["result"]
    assert cfg["data"]["val_frames"] > 0 and cfg["result"]["best_val_loss"] <= cfg["result"]["base_val_loss"] + 1e-9


def test_finetune_keeps_the_prior_when_no_epoch_beats_it(heads, tmp_path):
    import torch

    plan = {**finetune_plan([heads[0].meta.frames]), "lr": 0.0, "max_epochs": 2}  # no epoch can improve
    ckpt = fine_tune([heads[0]], tmp_path / "ft", prior=PRIOR_DIR, plan=plan, refit=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["result"]["best_epoch"] == 0 and "refit" not in cfg["result"]
    prior, model = MappingModel.load(PRIOR_DIR), MappingModel.load(ckpt)
    for name, weight in prior.net.state_dict().items():
        torch.testing.assert_close(model.net.state_dict()[name], weight, rtol=0, atol=1e-7)
    assert model.gain.gain == pytest.approx(prior.gain.gain)


def test_three_seconds_of_footage_use_the_prior_without_error(heads, tmp_path):
    three = heads[1].meta.fps * 3
    ckpt = fine_tune([clip_arrays(heads[1], (0.0, three / heads[1].meta.frames))], tmp_path / "short",
                     prior=PRIOR_DIR)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["result"]["stopped"] == "prior_only"
    b = clip_arrays(heads[1])
    talk = MappingModel.load(ckpt).predict(b.audio, b.pose, b.cheek, fps=b.fps)
    assert talk.shape == (b.frames, 58) and np.isfinite(talk).all()


def test_fine_tuning_needs_a_prior(heads, tmp_path):
    from studio.errors import InputError
    from studio.train.mapping import train_mapping

    person = tmp_path / "person"
    adapt_prior(PRIOR_DIR, [clip_arrays(heads[0])], person)
    with pytest.raises(InputError, match="not a multi-speaker prior"):
        train_mapping([heads[1]], "ours", tmp_path / "x", base=person)


# -- subjects from short real footage, and the one-step dub ----------------------------------------
@pytest.fixture(scope="module")
def short_videos(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    src = shared / "media" / "video" / "young_man_outdoors.mp4"
    return {"three": _cut(src, root / "three.mp4", 3.0), "silent": _cut(src, root / "silent.mp4", 3.0, audio=False)}


def test_subject_from_three_seconds_of_footage(short_videos, tmp_path, weights_dir, monkeypatch):
    from studio.subject import make_subject

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    subject = make_subject([short_videos["three"]], tmp_path / "s", variants=("ours", "no-pose"))
    cfg = json.loads((subject.mapping_dir("ours") / "config.json").read_text())
    assert cfg["result"]["stopped"] == "prior_only" and subject.manifest.retrieval
    # an ablation variant cannot be trained from scratch on 3 s: left out, with a notice, no error
    assert subject.manifest.variants == ("ours",)
    assert any("too short" in n for n in subject.manifest.extras["notices"])


def test_scratch_training_fits_its_windows_to_the_footage():
    from studio.train.prior import scratch_plan

    assert scratch_plan([900]) == {}  # the preset's windows fit
    short = scratch_plan([250])  # 10 s at 25 fps: shrunk windows, no validation-window error
    assert short is not None and short["window"] < 64
    assert scratch_plan([75]) is None


def test_silent_footage_dubs_with_the_prior_and_a_notice(short_videos, tmp_path, weights_dir, monkeypatch):
    from studio.data.preprocess import preprocess
    from studio.subject import make_subject

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    clip = preprocess(short_videos["silent"], tmp_path / "clip", progress=False)
    assert "no audible sound" in speech_problem([clip])
    subject = make_subject([short_videos["silent"]], tmp_path / "s")
    assert any("prior alone" in n for n in subject.manifest.extras["notices"])


def test_one_step_dub_builds_once_and_reuses_the_subject(short_videos, tmp_path, weights_dir, monkeypatch):
    from studio import subject as subject_module
    from studio.pipeline import Pipeline

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    pipe = Pipeline(work_dir=tmp_path / "work")
    stages = []
    out = pipe.dub_video(short_videos["three"], SPEECH, tmp_path / "a.mp4", progress=lambda f, d: stages.append((f, d)))
    info = media.probe_video(out)
    assert info.frames > 0 and info.has_audio
    assert any(d.startswith("subject:") for _, d in stages) and any(d.startswith("render") for _, d in stages)
    fracs = [f for f, _ in stages]
    assert fracs == sorted(fracs) and fracs[-1] <= 1.0

    def no_build(*a, **k):
        raise AssertionError("the cached subject was rebuilt")

    monkeypatch.setattr(subject_module, "make_subject", no_build)
    again = Pipeline(work_dir=tmp_path / "work2").dub_video(short_videos["three"], SPEECH, tmp_path / "b.mp4")
    assert media.probe_video(again).frames == info.frames


def test_timing_is_measured_on_the_footage(heads):
    """Footage whose sound runs 6 frames behind its picture: the prior's timing estimate moves the
    speech back by about as much, and a checkpoint applies it when predicting."""
    import dataclasses

    from studio.models.identity import shift_audio
    from studio.train.prior import estimate_audio_shift

    b = clip_arrays(heads[0])
    late = dataclasses.replace(b, audio=shift_audio(b.audio, -6))  # the sound comes 6 frames late
    assert abs(estimate_audio_shift(PRIOR_DIR, [late]) - 6) <= 2
    assert abs(estimate_audio_shift(PRIOR_DIR, [b])) <= 2
    a = np.arange(40, dtype=np.float32)[:, None].repeat(26, 1)
    assert np.array_equal(shift_audio(a, 2)[:-8], a[8:]) and np.array_equal(shift_audio(a, 2)[-8:], a[-1:].repeat(8, 0))


def test_recordings_with_different_offsets_are_aligned_before_fine_tuning(heads):
    """Two recordings of one person whose sound runs 0 and 6 frames behind the picture: each is
    measured on its own and moved onto the median timing, so the training data share one timing
    and the checkpoint keeps the median for new speech."""
    import dataclasses

    from studio.models.identity import shift_audio
    from studio.train.prior import align_timing, estimate_audio_shift

    a = clip_arrays(heads[0])  # the same footage twice, once with its sound 6 frames late
    late = dataclasses.replace(a, audio=shift_audio(a.audio, -6))
    shifts = [estimate_audio_shift(PRIOR_DIR, [blk]) for blk in (a, late)]
    assert abs(shifts[0]) <= 2 and abs(shifts[1] - 6) <= 2
    aligned, person = align_timing([a, late], shifts)
    assert person == round(float(np.median(shifts)))
    for blk, s, out in zip((a, late), shifts, aligned):
        assert np.array_equal(out.audio, shift_audio(blk.audio, s - person))
    # shifted by the median on top (what the checkpoint does), each block gets its own shift
    assert np.array_equal(shift_audio(aligned[1].audio, person)[100:-100],
                          shift_audio(late.audio, shifts[1])[100:-100])
    with pytest.raises(ValueError):
        align_timing([a], [1, 2])
