"""Every event handler of the studio, called directly (no server, no browser) on a tiny subject."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from ui_support import VARIANTS, speech_wav, studio_env, tiny_subject, video_stats

gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    subject = tiny_subject(base)
    mp = pytest.MonkeyPatch()
    for k, v in studio_env(base / "handlers", subject).items():
        mp.setenv(k, v)
    from studio.ui import session

    session.set_pipeline(None)
    yield {"subject": str(subject.resolve()), "speech": str(speech_wav(base / "handlers" / "speech.wav", 3.0)),
           "base": base / "handlers"}
    session.set_pipeline(None)
    mp.undo()


@pytest.fixture(scope="module")
def h(env):
    from studio.ui import handlers

    return handlers


@pytest.fixture(scope="module")
def predicted(env, h):
    from studio.ui.session import DubState

    return h.predict(DubState.new(), env["subject"], env["speech"], "synth", None, "ours")


def _values(**changes) -> list:
    from studio.ui.handlers import EditControls

    return EditControls(**changes).values()


# -- subjects --------------------------------------------------------------------------------------

def test_subject_info_lists_clips_variants_renderers(env, h):
    clips, variants, renderer, text = h.subject_info(env["subject"])
    assert clips["choices"] == ["synth"] and clips["value"] == "synth"
    assert [v for _, v in variants["choices"]] == list(VARIANTS) and variants["value"] == "ours"
    assert renderer["choices"] == ["retrieval"]
    assert "tiny" in text and "No pose" in text


def test_subject_info_without_subject_and_unknown_folder(env, h, tmp_path):
    clips, variants, _, text = h.subject_info(None)
    assert clips["choices"] == [] and "Subject" in text
    with pytest.raises(gr.Error, match="not one of the studio's subjects"):
        h.subject_info(str(tmp_path))


def test_open_pages_pick_up_subjects_built_elsewhere(env, h, tmp_path):
    """The poll sends nothing while the lists are unchanged, new choices (never a new value) when
    a subject appears on disk, and nothing again after that."""
    import shutil

    from studio.ui.session import DubState, user_subjects_dir

    state = DubState.new()
    first = h.poll_subjects(None, state)
    shown = first[2]
    assert first[0] == gr.skip() and env["subject"] in shown[0]
    assert h.poll_subjects(shown, state)[:2] == (gr.skip(), gr.skip())
    late = user_subjects_dir() / "built_elsewhere"
    shutil.copytree(env["subject"], late, symlinks=True)
    try:
        dub, ablation, now = h.poll_subjects(shown, state)
        assert str(late.resolve()) in [p for _, p in dub["choices"]] and "value" not in dub
        assert str(late.resolve()) in [p for _, p in ablation["choices"]]
        assert h.poll_subjects(now, state)[:2] == (gr.skip(), gr.skip())
    finally:
        shutil.rmtree(late)


def test_refresh_subjects_keeps_the_current_choice(env, h):
    update = h.refresh_subjects(env["subject"])
    assert env["subject"] in [p for _, p in update["choices"]] and update["value"] == env["subject"]
    assert h.refresh_subjects("/nowhere")["value"] == update["choices"][0][1]


# -- predict and the viewer ------------------------------------------------------------------------

def test_predict_returns_state_viewer_and_timeline(env, h, predicted):
    state, slider, image, fig, summary = predicted
    t = state.prediction.frames
    assert t == round(3.0 * state.prediction.fps)
    assert slider["maximum"] == t - 1 and slider["value"] == 0
    assert image.dtype == np.uint8 and image.shape == (384, 384, 3)
    names = {tr.name for tr in fig.data}
    assert {"mouth opening", "jaw opening", "PC1", "PC13", "yaw", "pitch", "roll"} <= names
    assert len(fig.data[0].x) == t
    assert f"{t} frames" in summary
    assert state.lms.points.shape == (t, 68, 2) and state.edits.is_identity


def test_predict_user_mistakes_are_gr_errors(env, h, tmp_path):
    import soundfile as sf

    from studio.ui.session import DubState

    st = DubState.new()
    with pytest.raises(gr.Error, match="No speech"):
        h.predict(st, env["subject"], None, "synth", None, "ours")
    with pytest.raises(gr.Error, match="No subject"):
        h.predict(st, None, env["speech"], "synth", None, "ours")
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(32000, np.float32), 16000)
    with pytest.raises(gr.Error, match="silent"):
        h.predict(st, env["subject"], str(silent), "synth", None, "ours")
    with pytest.raises(gr.Error, match="no trained 'lstm'"):
        h.predict(st, env["subject"], env["speech"], "synth", None, "lstm")
    with pytest.raises(gr.Error, match="has no clip"):
        h.predict(st, env["subject"], env["speech"], "/etc/hostname", None, "ours")
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(gr.Error, match="not an audio file"):
        h.predict(st, env["subject"], str(bad), "synth", None, "ours")
    corrupt = tmp_path / "broken.mp3"
    corrupt.write_bytes(b"\x00" * 2000)
    with pytest.raises(gr.Error) as info:
        h.predict(st, env["subject"], str(corrupt), "synth", None, "ours")
    assert "Traceback" not in str(info.value)


def test_unexpected_errors_are_short_messages(h):
    @h.user_errors
    def boom():
        raise KeyError("x")

    with pytest.raises(gr.Error, match="Something went wrong .*KeyError"):
        boom()


def test_show_frame_and_timeline_mark_the_frame(env, h, predicted):
    state = predicted[0]
    a, b = h.show_frame(state, 0), h.show_frame(state, 40)
    assert a.shape == b.shape and np.any(a != b)
    fig = h.timeline_view(state, 40)
    marks = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(marks) == 1 and marks[0].x0 == pytest.approx(40 / state.prediction.fps)
    assert h.timeline_view(None, 0) is None
    with pytest.raises(gr.Error, match="Nothing predicted"):
        h.show_frame(None, 0)


def test_play_with_speech_is_a_video_at_the_clips_frame_rate(env, h, predicted):
    state = predicted[0]
    path = h.landmark_video(state)
    stats = video_stats(Path(path))
    assert stats["frames"] == state.frames and abs(stats["fps"] - state.lms.fps) < 1e-3
    assert stats["has_audio"] and abs(stats["audio_seconds"] - state.frames / state.lms.fps) < 0.1
    assert (stats["width"], stats["height"]) == (384, 384) and Path(path).parent == state.folder()


def test_play_tick_advances_and_wraps(env, h, predicted):
    state = predicted[0]
    nxt, img = h.play_tick(state, 5)
    assert nxt == 6 and img.shape == (384, 384, 3)
    assert h.play_tick(state, state.frames - 1)[0] == 0
    playing, timer, button = h.toggle_play(False)
    assert playing is True and button["value"] == "Pause"
    assert h.toggle_play(True)[0] is False


def test_frame_range_limits_follow_the_clip(env, h, predicted):
    start, end = h.frame_range_limits(predicted[0])
    assert start["maximum"] == predicted[0].frames - 1 and end["value"] == predicted[0].frames


# -- edits -----------------------------------------------------------------------------------------

def test_edit_controls_round_trip(h):
    from studio.edits import Edits

    e = Edits(pca_offsets=(0.5,) + (0.0,) * 12, pca_gains=(1.5,) + (1.0,) * 12, mouth_open_gain=1.3,
              jaw_open_offset=0.1, lip_timing=-1.25, close_on_silence=True, frame_range=(3, 20))
    c = h.EditControls.from_edits(e, 50)
    assert h.EditControls.from_values(c.values()) == c
    assert c.to_edits(e) == e  # gains have no control: kept from the base
    assert c.to_edits().pca_gains == (1.0,) * 13
    with pytest.raises(Exception, match="empty"):
        dataclasses.replace(c, range_start=20, range_end=20).to_edits()
    with pytest.raises(ValueError):
        h.EditControls.from_values([0.0] * 5)


def test_edit_changes_only_the_landmarks(env, h, predicted):
    state, _, image = predicted[:3]
    new_state, img = h.edit(state, 0, *_values(pca_offsets=(3.0,) + (0.0,) * 12, mouth_open_gain=2.0))
    assert new_state.prediction is state.prediction  # no network re-run
    assert new_state.edits.mouth_open_gain == 2.0 and new_state.edits.pca_offsets[0] == 3.0
    assert not np.allclose(new_state.lms.talk, state.lms.talk)
    assert np.array_equal(new_state.lms.template, state.lms.template)
    assert np.any(img != image)
    # the identity edit gives back the unedited overlay
    same_state, same = h.edit(state, 0, *_values())
    assert np.array_equal(same, image) and same_state.edits.is_identity


def test_edit_frame_range_only_touches_that_range(env, h, predicted):
    state = predicted[0]
    s2, _ = h.edit(state, 0, *_values(mouth_open_gain=2.5, jaw_open_gain=2.0, range_on=True, range_start=10,
                                      range_end=30))
    diff = np.abs(s2.lms.talk - state.lms.talk).max(axis=1)
    assert diff[:10].max() == 0 and diff[30:].max() == 0 and diff[10:30].max() > 0
    with pytest.raises(gr.Error, match="empty"):
        h.edit(state, 0, *_values(range_on=True, range_start=30, range_end=10))


def test_edits_before_predict_are_kept_and_applied_by_predict(env, h, predicted):
    from studio.ui.session import DubState

    state, image = h.edit(DubState.new(), 0, *_values(mouth_open_gain=2.0))
    assert state.edits.mouth_open_gain == 2.0 and state.lms is None
    state = h.predict(state, env["subject"], env["speech"], "synth", None, "ours")[0]
    assert state.edits.mouth_open_gain == 2.0
    assert not np.allclose(state.lms.talk, predicted[0].lms.talk)


def test_reset_save_and_load_edits(env, h, predicted, tmp_path):
    state, _, image = predicted[:3]
    edited, _ = h.edit(state, 0, *_values(pca_offsets=(0.0, 1.5) + (0.0,) * 11, temporal_smoothing=2.0))
    path = h.save_edits(edited)
    saved = json.loads(Path(path).read_text())
    assert saved["pca_offsets"][1] == 1.5 and saved["temporal_smoothing"] == 2.0
    assert Path(path).parent == edited.folder()

    out = h.reset_edits(edited, 0)
    reset_state, values, img = out[0], list(out[1:-2]), out[-2]
    assert reset_state.edits.is_identity and values == _values(range_end=state.frames)
    assert np.array_equal(img, image)

    out = h.load_edits(reset_state, 0, path)
    assert out[0].edits == edited.edits and out[1 + 1] == 1.5
    assert np.allclose(out[0].lms.talk, edited.lms.talk)

    bad = tmp_path / "bad.json"
    bad.write_text('{"mouth_open_gain": 99}')
    with pytest.raises(gr.Error, match="mouth_open_gain"):
        h.load_edits(state, 0, str(bad))
    with pytest.raises(gr.Error, match="No edits file"):
        h.load_edits(state, 0, None)


def test_load_edits_before_predict_sets_the_controls(env, h, tmp_path):
    from studio.edits import Edits
    from studio.ui.session import DubState

    p = tmp_path / "e.json"
    p.write_text(Edits(jaw_open_gain=1.5).to_json())
    out = h.load_edits(DubState.new(), 0, str(p))
    assert out[0].edits.jaw_open_gain == 1.5 and out[1 + 13 + 1] == 1.5


# -- facial map, preview, render -------------------------------------------------------------------

def test_facemap_follows_canny_thresholds(env, h, predicted):
    state = predicted[0]
    low = h.facemap(state, 10, 10, 40)
    high = h.facemap(state, 10, 200, 250)
    assert low.shape == (256, 256, 3) and low.dtype == np.uint8
    assert np.count_nonzero(low[..., 0]) > np.count_nonzero(high[..., 0])
    assert np.array_equal(low[..., 1:], high[..., 1:])  # only the edge channel depends on Canny
    with pytest.raises(gr.Error, match="Canny low threshold"):
        h.facemap(state, 10, 200, 100)


def test_preview_frame_is_a_full_output_frame(env, h, predicted):
    state = predicted[0]
    img = h.preview_frame(state, 12, "retrieval", 50, 150)
    tpl_meta = json.loads((Path(env["subject"]) / "clips" / "synth" / "clip.json").read_text())
    assert img.shape == (tpl_meta["height"], tpl_meta["width"], 3)
    with pytest.raises(gr.Error, match="no trained neural renderer"):
        h.preview_frame(state, 12, "neural", 50, 150)


def test_render_range_has_those_frames_and_their_speech(env, h, predicted):
    state = predicted[0]
    path = h.render_range(state, 10, 35, "retrieval", 50, 150)
    stats = video_stats(Path(path))
    assert stats["frames"] == 25 and stats["has_audio"]
    assert abs(stats["audio_seconds"] - 25 / state.prediction.fps) < 0.1
    assert Path(path).parent == state.folder()


def test_render_full_writes_video_and_landmarks(env, h, predicted):
    state = predicted[0]
    edited, _ = h.edit(state, 0, *_values(mouth_open_gain=1.5))
    new_state, video, download, csv = h.render_full(edited, "retrieval", 50, 150)
    assert video == download and new_state.outputs[-1] == video
    stats = video_stats(Path(video))
    assert stats["frames"] == state.frames and stats["has_audio"]
    assert abs(stats["duration"] - 3.0) < 0.1 and abs(stats["audio_seconds"] - 3.0) < 0.1
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == state.frames and "x48" in table and "y67" in table
    mouth = table[[f"y{i}" for i in range(48, 68)]].to_numpy()
    assert np.allclose(mouth, edited.lms.points[:, 48:68, 1], atol=0.01)
    assert Path(h.download_landmarks(edited)).is_file()


def test_high_quality_render_is_encoded_for_delivery(env, h, predicted):
    """The Render section's quality choice reaches the encoder: x264 records its settings in the
    stream (crf 16 for "high", 18 for "standard")."""
    state = predicted[0]
    _, standard, _, _ = h.render_full(state, "retrieval", 50, 150, "standard")
    _, high, _, _ = h.render_full(state, "retrieval", 50, 150, "high")
    assert b"crf=18.0" in Path(standard).read_bytes() and b"crf=16.0" in Path(high).read_bytes()
    assert Path(high).stat().st_size > Path(standard).stat().st_size


def test_cancel_stops_a_render_and_leaves_no_file(env, h, predicted):
    state = predicted[0]
    before = set(state.folder().glob("dub-*"))

    def progress(frac, desc=None):
        h.cancel(state)  # the user presses Cancel while the first frames render

    with pytest.raises(gr.Error, match="cancelled"):
        h.render_full(state, "retrieval", 50, 150, progress=progress)
    assert set(state.folder().glob("dub-*")) == before
    # the next render starts afresh
    assert Path(h.render_range(state, 0, 5, "retrieval", 50, 150)).is_file()


# -- one step: any video + speech ------------------------------------------------------------------

SAMPLE_SPEECH = Path(__file__).resolve().parent.parent / "sample_media" / "speech.wav"


@pytest.fixture(scope="module")
def one_step(env, h, shared, tmp_path_factory):
    """The first one-step dub of 3 s of real footage, with the subject cache in a tmp folder (kept
    for the module, so that later dubs of the same video find the cached subject)."""
    import subprocess

    from studio import media
    from studio.ui.session import DubState

    root = tmp_path_factory.mktemp("one_step")
    video = root / "young_man_3s.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(shared / "media" / "video" /
                    "young_man_outdoors.mp4"), "-t", "3", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt",
                    "yuv420p", "-c:a", "aac", str(video)], check=True, capture_output=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_CACHE_DIR", str(root / "cache"))
    mp.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
    stages = []
    state = DubState.new()
    out = h.dub_video(state, str(video), str(SAMPLE_SPEECH), progress=lambda f, desc=None: stages.append((f, desc)))
    yield {"video": video, "cache": root / "cache", "state": state, "out": out, "stages": stages}
    mp.undo()


@pytest.mark.slow
def test_one_step_dub_writes_the_dub_into_the_session_folder(env, h, one_step):
    from studio.media import read_audio

    new_state, video, status, dropdown, speech = one_step["out"]
    stats = video_stats(Path(video))
    seconds = len(read_audio(SAMPLE_SPEECH)) / 16000
    assert stats["frames"] == round(seconds * stats["fps"]) and stats["has_audio"]
    assert stats["width"] == stats["height"] == 480
    assert Path(video).parent == one_step["state"].folder() and new_state.outputs[-1] == video
    # progress by stage: the subject's build, then predict, then render, never going back
    descs = [d for _, d in one_step["stages"]]
    assert descs[0].startswith("subject: ") and "predict landmarks" in descs and descs[-1].startswith("render: ")
    fracs = [f for f, _ in one_step["stages"]]
    assert fracs == sorted(fracs) and 0 <= fracs[0] and fracs[-1] <= 1.0
    assert "young_man_3s.mp4" in status and "built the video's subject" in status
    assert re.search(r"in \d+\.\d s", status)
    assert speech == str(SAMPLE_SPEECH)
    assert any(p.is_dir() for p in (one_step["cache"] / "subjects").iterdir())


@pytest.mark.slow
def test_one_step_subject_can_be_edited_in_this_session_only(env, h, one_step):
    new_state, _, _, dropdown, _ = one_step["out"]
    folder = dropdown["value"]
    assert tuple(dropdown["choices"][-1]) == ("young_man_3s (one step)", folder)
    assert env["subject"] in [p for _, p in dropdown["choices"]]  # the other subjects stay
    clips, variants, renderer, text = h.subject_info(folder, new_state)
    assert clips["value"] and variants["value"] == "ours" and "young_man_3s" in text
    state = h.predict(new_state, folder, env["speech"], clips["value"], None, "ours")[0]
    assert state.frames == round(3.0 * state.prediction.fps)
    assert h.refresh_subjects(folder, new_state)["value"] == folder
    # another session does not see it
    from studio.ui.session import DubState

    with pytest.raises(gr.Error, match="not one of the studio's subjects"):
        h.predict(DubState.new(), folder, env["speech"], None, None, "ours")
    with pytest.raises(gr.Error, match="not one of the studio's subjects"):
        h.subject_info(folder)


@pytest.mark.slow
def test_one_step_second_dub_of_the_same_video_reuses_the_subject(env, h, one_step, monkeypatch):
    from studio import subject as subject_module

    def no_build(*args, **kwargs):
        raise AssertionError("the cached subject was rebuilt")

    monkeypatch.setattr(subject_module, "make_subject", no_build)
    stages = []
    state, video, status, dropdown, _ = h.dub_video(one_step["out"][0], str(one_step["video"]), env["speech"],
                                                    progress=lambda f, desc=None: stages.append(desc))
    assert "reused the cached subject" in status and "second dub of the same video" in status
    assert not any(d.startswith("subject: ") for d in stages)
    assert video_stats(Path(video))["frames"] == round(3.0 * video_stats(Path(video))["fps"])
    assert [e[1] for e in state.one_step_subjects] == [dropdown["value"]]  # listed once


@pytest.mark.slow
def test_one_step_dub_of_silent_footage_shows_the_notice(env, h, one_step, tmp_path, monkeypatch):
    import subprocess

    from studio import media
    from studio.ui.session import DubState

    silent = tmp_path / "silent.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(one_step["video"]), "-c:v", "copy", "-an",
                    str(silent)], check=True, capture_output=True)
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    state, video, status, _, _ = h.dub_video(DubState.new(), str(silent), env["speech"])
    assert video_stats(Path(video))["has_audio"]
    assert "**Note:**" in status and "no audible sound" in status and "prior alone" in status


def test_one_step_dub_missing_or_wrong_inputs_are_messages(env, h, tmp_path):
    from studio.ui.session import DubState

    st = DubState.new()
    with pytest.raises(gr.Error, match="No video given.*Upload a video"):
        h.dub_video(st, None, env["speech"])
    with pytest.raises(gr.Error, match="No speech given.*Upload or record"):
        h.dub_video(st, str(tmp_path / "any.mp4"), None)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(gr.Error, match="not an audio file"):
        h.dub_video(st, str(tmp_path / "any.mp4"), str(notes))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(gr.Error) as info:
        h.dub_video(st, str(broken), env["speech"])
    assert "Traceback" not in str(info.value) and "Something went wrong" not in str(info.value)
    assert not list(st.folder().glob("one-step-*"))


# -- Subject tab -----------------------------------------------------------------------------------

def test_separate_speech_pairs_with_footage_by_name_or_order(tmp_path):
    from studio.errors import InputError
    from studio.subject import command_line, pair_speech

    vids = [tmp_path / "anna_1.mp4", tmp_path / "anna_2.mov"]
    assert pair_speech(vids, None) == [None, None]
    assert pair_speech(vids, [tmp_path / "anna_2.wav"]) == [None, tmp_path / "anna_2.wav"]
    assert pair_speech(vids, ["b.wav", "a.mp3"]) == [Path("b.wav"), Path("a.mp3")]  # no names match: order
    with pytest.raises(InputError, match="match no footage"):
        pair_speech(vids, [tmp_path / "anna_1.wav", tmp_path / "other.wav"])
    with pytest.raises(InputError, match="1 speech file"):
        pair_speech(vids, ["x.wav"])
    # the studio runs make-subject with exactly the arguments its parser reads back
    import argparse

    from studio.subject import add_cli_arguments
    cmd = command_line(vids, tmp_path / "out", audios=[None, tmp_path / "anna_2.wav"], variants=("ours", "lstm"),
                       name="Anna", preset="cpu", neural=True, neural_steps=50)
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(cmd[1:])
    assert cmd[0] == "make-subject" and args.videos == [str(v) for v in vids] and args.audio == ["-", str(tmp_path / "anna_2.wav")]
    assert (args.variants, args.name, args.neural, args.neural_steps) == ("ours,lstm", "Anna", True, 50)


def test_build_subject_input_errors(env, h, tmp_path):
    from studio.ui.session import DubState

    with pytest.raises(gr.Error, match="No footage"):
        list(h.build_subject(DubState.new(), [], "x", ["ours"], False, 0))
    broken = tmp_path / "clip.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(gr.Error):
        list(h.build_subject(DubState.new(), [str(broken)], "x", ["ours"], False, 0))
    with pytest.raises(gr.Error, match="cannot be used"):
        list(h.build_subject(DubState.new(), [env["subject"] + "/clips/synth/video.mp4"], "///", ["ours"], False, 0))


def test_subject_progress_is_read_from_disk(tmp_path):
    from studio.ui import jobs

    out = tmp_path / "s"
    p = jobs.subject_progress(out, 2, ["ours"], False)
    assert p.fraction == 0 and "preprocessing" in p.stage
    for name in ("a", "b"):
        (out / "clips" / name).mkdir(parents=True)
        (out / "clips" / name / "clip.json").write_text("{}")
    state = out / "mapping" / "ours" / ".train_state"
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 2.0}]}))
    p = jobs.subject_progress(out, 2, ["ours"], False, max_epochs=10)
    assert 0.5 < p.fraction < 0.75 and "epoch 1" in p.stage and p.histories["ours"][0]["val_loss"] == 2.0
    (out / "mapping" / "ours" / "config.json").write_text("{}")
    p = jobs.subject_progress(out, 2, ["ours"], False)
    assert p.stage == "building the retrieval pool" and p.fraction == 0.75
    (out / "subject.json").write_text("{}")  # an earlier build's manifest: not done yet
    assert jobs.subject_progress(out, 2, ["ours"], False).fraction < 1.0
    (out / "retrieval").mkdir()
    (out / "retrieval" / "pool.json").write_text("{}")
    assert jobs.subject_progress(out, 2, ["ours"], False).fraction == 1.0


def test_a_job_can_be_cancelled(tmp_path):
    from studio.ui import jobs

    job = jobs.start("test-session", ["synth", "--out", str(tmp_path / "c"), "--seconds", "600", "--seed", "0"],
                     tmp_path / "job.log")
    with pytest.raises(RuntimeError):
        jobs.start("test-session", ["--help"], tmp_path / "other.log")
    assert jobs.cancel("test-session")
    assert not job.running and job.cancelled and job.returncode != 0
    assert not (tmp_path / "c" / "clip.json").exists()


# -- Ablations tab ---------------------------------------------------------------------------------

def _write_results(directory: Path) -> None:
    import pandas as pd

    from studio.train.ablate import aggregate

    rows = [{"variant": v, "seed": s, "mouth_mse": 0.01 * (k + 1) + 0.001 * s, "jaw_mse": 0.02 + 0.001 * s,
             "train_seconds": 10.0 + s, "inference_seconds_5min": 0.5, "mouth_rmse_px": 3.0, "jaw_rmse_px": 4.0,
             "velocity_rmse_px": 1.0, "epochs": 5}
            for k, v in enumerate(("no-pose", "ours", "lstm")) for s in range(3)]
    directory.mkdir(parents=True, exist_ok=True)
    aggregate(pd.DataFrame(rows)).to_csv(directory / "table.csv", index=False)


def test_ablation_results_table_and_figure(env, h):
    from studio.ui.handlers import ablation_dir

    d = ablation_dir(env["subject"])
    table, fig, note = h.ablation_results(env["subject"])
    if table is None:
        assert "Run ablation" in note
    _write_results(d)
    table, fig, note = h.ablation_results(env["subject"])
    assert list(table["model"]) == ["No pose", "Ours", "LSTM"]
    assert "±" in table["Mouth MSE"][1]
    bars = [t for t in fig.data if t.type == "bar"]
    assert bars and bars[0].error_y.array is not None
    table, _, _ = h.ablation_results(env["subject"], ["ours"])
    assert list(table["model"]) == ["Ours"]
    out = h.ablation_subject(env["subject"])
    assert out[3]["choices"] == ["synth"] and [v for _, v in out[4]["choices"]] == list(VARIANTS)


def test_run_ablation_input_errors(env, h):
    from studio.ui.session import DubState

    with pytest.raises(gr.Error, match="No variants"):
        list(h.run_ablation(DubState.new(), env["subject"], [], 1, 1))
    with pytest.raises(gr.Error, match="No subject"):
        list(h.run_ablation(DubState.new(), None, ["ours"], 1, 1))


def _table(rows):
    """table.csv rows (as ``studio ablate`` aggregates them) from per-(variant, seed) rows."""
    import pandas as pd

    from studio.train.ablate import aggregate

    return aggregate(pd.DataFrame(rows))


def _run_rows(seeds: int, variants=("no-pose", "ours", "lstm"), **extra):
    return [{"variant": v, "seed": s, "mouth_mse": 0.01 * (k + 1) + 0.001 * s,
             "jaw_mse": None if v in ("lstm", "bilstm") else 0.02 + 0.001 * s,
             "train_seconds": 10.0 + s, "train_cpu_seconds": 9.0 + s, "inference_seconds_5min": 0.5,
             "inference_cpu_seconds_5min": 0.04, "dub_inner_r": 0.5 + 0.1 * k + 0.001 * s, "epochs": 5, **extra}
            for k, v in enumerate(variants) for s in range(seeds)]


def _own_run(h, subject: str, state, rows) -> None:
    """A finished run of ``state``'s session holding ``rows`` (no training)."""
    from studio.ui import ablations

    settings = ablations.RunSettings(tuple(sorted({r["variant"] for r in rows})), 1, None, "cpu")
    folder, _ = ablations.run_folder(h.ablation_root(subject), state.session_id, settings)
    ablations.write_run(ablations.RunInfo(folder, state.session_id, time.time(), settings))
    _table(rows).to_csv(folder / ablations.TABLE_CSV, index=False)


class _FinishedJob:
    running, cancelled, returncode = False, False, 0

    def cancel(self):
        pass

    def error_text(self):
        return ""


def test_ablation_runs_are_per_session_and_keep_the_reference(env, h, monkeypatch):
    """Two sessions' runs write their own folders; each sees its own table; neither touches the
    subject's reference table; the estimate comes before the job starts; timing on one thread."""
    import pandas as pd

    from studio.ui import jobs
    from studio.ui.session import DubState

    started = []

    def fake_start(session_id, args, log_path):  # `studio ablate` without the training
        out, seeds = Path(args[args.index("--out") + 1]), int(args[args.index("--seeds") + 1])
        started.append(args)
        out.mkdir(parents=True, exist_ok=True)
        _table(_run_rows(seeds, ("no-pose", "ours"))).to_csv(out / "table.csv", index=False)
        return _FinishedJob()

    monkeypatch.setattr(jobs, "start", fake_start)
    reference = Path(env["subject"]) / "ablation" / "table.csv"
    if not reference.is_file():
        reference.parent.mkdir(parents=True, exist_ok=True)
        _table(_run_rows(3, ("no-pose", "ours", "lstm"))).to_csv(reference, index=False)
    before = reference.read_bytes()
    a, b = DubState.new(), DubState.new()

    run_a = h.run_ablation(a, env["subject"], ["ours", "no-pose"], 3, 2)
    first = next(run_a)
    estimate_first = "Estimate" in first[2] and not started  # on screen before the job starts
    table_a = list(run_a)[-1][0]
    table_b = list(h.run_ablation(b, env["subject"], ["ours", "no-pose"], 1, 2))[-1][0]
    outs = [Path(args[args.index("--out") + 1]) for args in started]
    assert len(set(outs)) == 2  # one folder per run: B's did not overwrite A's
    assert [len(pd.read_csv(o / "table.csv")) for o in outs] == [2, 2]
    assert list(table_a["seeds"]) == [3, 3] and all("±" in c for c in table_a["Mouth MSE"])
    assert list(table_b["seeds"]) == [1, 1] and not any("±" in c for c in table_b["Mouth MSE"])
    assert estimate_first
    assert all(args[args.index("--threads") + 1] == "1" for args in started)

    # after B's 1-seed run, A still sees its own 3-seed table, and a page without a session the reference
    again_a, _, note_a = h.ablation_results(env["subject"], None, a)
    assert list(again_a["seeds"]) == [3, 3] and "your run" in note_a
    assert h.ablation_subject(env["subject"], b)[0]["seeds"].tolist() == [1, 1]
    ref_table, _, ref_note = h.ablation_results(env["subject"])
    assert "reference" in ref_note and len(ref_table) == len(pd.read_csv(reference))
    assert reference.read_bytes() == before


def test_ablation_estimate_before_the_run(env, h):
    """The cost of a run is shown for the settings before Run is pressed, and says how it was worked out."""
    from studio.ui import ablations

    text = h.ablation_estimate(env["subject"], ["ours", "no-pose", "lstm"], 2, 0)
    assert "Estimate" in text and "6 models" in text and "3 variants × 2 seeds" in text
    assert "measured on this subject's earlier trainings" in text
    assert "Ours" in text and "LSTM" in text and "not measured yet" in text  # the tiny subject has no LSTM
    assert h.ablation_estimate(env["subject"], [], 2, 0) == ""
    # the arithmetic: seeds x sum(epochs x s/epoch + evaluation); unmeasured: the measured median, the cap
    settings = ablations.RunSettings(("ours", "lstm"), 2, None, "cpu")
    est = ablations.estimate_run(settings, 60, {"ours": ablations.EpochCost(2.0, 10.0, 1)})
    per_seed = (10 * 2.0 + ablations.EVAL_SECONDS) + (60 * 2.0 + ablations.EVAL_SECONDS)
    assert est.seconds == ablations.STARTUP_SECONDS + 2 * per_seed
    assert "about 5 min" in est.text and "a rough constant" in est.text
    measured = ablations.estimate_run(settings, 60, {"ours": ablations.EpochCost(2.0, 10.0, 1)}, evaluation=65.0)
    assert measured.seconds == est.seconds + 2 * 2 * (65.0 - ablations.EVAL_SECONDS)
    assert "measured in earlier runs" in measured.text


def test_ablation_table_fits_with_one_number_format(env, h):
    """At most 7 columns with short headers, every cell 'mean ± std' to 3 significant digits (the
    same decimals for both), no '± 0' for one seed, units and the LSTM/BiLSTM note in the legend."""
    from studio.ui import ablations
    from studio.ui.session import DubState

    state = DubState.new()
    _own_run(h, env["subject"], state, _run_rows(3, ("no-pose", "g2-pose", "ours", "lstm", "bilstm")))
    table, _, _ = h.ablation_results(env["subject"], None, state)
    assert len(table.columns) <= 7 and all(len(c) <= 12 for c in table.columns)
    cell = re.compile(r"^(n/a|-?\d+(\.(\d+))? ± \d+(\.(\d+))?)$")
    for col in table.columns[1:-1]:
        for value in table[col]:
            m = cell.match(value)
            assert m, (col, value)
            if value != "n/a":
                mean, std = value.split(" ± ")
                assert len(mean.partition(".")[2]) == len(std.partition(".")[2])
                assert len(mean.replace("-", "").replace(".", "").lstrip("0")) == 3, value
    assert list(table.set_index("model").loc[["LSTM", "BiLSTM"], "Jaw MSE"]) == ["n/a", "n/a"]
    assert table["Mouth MSE"][0] == "11.0 ± 1.0"  # 0.011 ± 0.001 shown x 10^3, as the legend says
    one = DubState.new()
    _own_run(h, env["subject"], one, _run_rows(1))
    assert not any("±" in c for c in h.ablation_results(env["subject"], None, one)[0]["Mouth MSE"])
    assert "LSTM/BiLSTM predict the mouth only (jaw n/a)" in ablations.LEGEND
    assert "×10⁻³" in ablations.LEGEND and "CPU seconds" in ablations.LEGEND


def test_ablation_timing_column_is_cpu_time_with_a_load_flag(env, h):
    """The time columns show CPU seconds, not the wall time a concurrent job inflated; a model timed
    on a busy machine is marked and the note says how busy."""
    from studio.ui.session import DubState

    rows = _run_rows(2, ("no-pose", "g2-pose"), load_1min=1.0, cores=2, timing_busy=0)
    for r in rows:
        if r["variant"] == "g2-pose":
            r.update(inference_seconds_5min=0.66, inference_cpu_seconds_5min=0.05, load_1min=3.4, timing_busy=1)
    state = DubState.new()
    _own_run(h, env["subject"], state, rows)
    table, _, note = h.ablation_results(env["subject"], None, state)
    infer = table.set_index("model")["Infer CPU s"]
    assert infer["G2 pose"] == "0.0500 ± 0.0000 *" and infer["No pose"] == "0.0400 ± 0.0000"
    assert "Train CPU s" in table.columns and "0.66" not in " ".join(infer)
    assert "G2 pose: timed while the machine was busy" in note and "3.4 on 2 cores" in note


def test_ablation_reading_names_the_winner_and_the_seed_spread(env, h):
    from studio.ui import ablations
    from studio.ui.session import DubState

    def rows(spread: float, seeds: int = 3):
        return [{"variant": v, "seed": s, "mouth_mse": 0.002, "jaw_mse": 0.002,
                 "dub_inner_r": mean + spread * (s - 1)}
                for v, mean in (("no-pose", 0.60), ("ours", 0.62), ("lstm", 0.40)) for s in range(seeds)]

    close = ablations.reading(_table(rows(0.05)))
    assert "**Ours** wins" in close and "No pose" in close and "0.020" in close
    assert "within seed spread" in close
    clear = ablations.reading(_table(rows(0.001)))
    assert "**Ours** wins" in clear and "beyond the seed spread" in clear
    assert "one seed" in ablations.reading(_table(rows(0.05, seeds=1)))
    state = DubState.new()
    _own_run(h, env["subject"], state, rows(0.05))
    assert "within seed spread" in h.ablation_results(env["subject"], None, state)[2]


def test_compare_variants_side_by_side(env, h):
    from studio.ui.session import DubState

    overlay, rendered = h.compare_variants(DubState.new(), env["subject"], env["speech"], "synth", list(VARIANTS),
                                           True)
    a, b = video_stats(Path(overlay)), video_stats(Path(rendered))
    assert a["frames"] == b["frames"] == round(3.0 * a["fps"])
    assert a["width"] == 2 * a["height"] and a["has_audio"] and b["has_audio"]
    with pytest.raises(gr.Error, match="at least two"):
        h.compare_variants(DubState.new(), env["subject"], env["speech"], "synth", ["ours"], False)
    with pytest.raises(gr.Error, match="no trained"):
        h.compare_variants(DubState.new(), env["subject"], env["speech"], "synth", ["ours", "bilstm"], False)


# -- the training jobs for real (child processes) ---------------------------------------------------

@pytest.fixture()
def tiny_preset(tmp_path, monkeypatch):
    from studio.config import PRESETS_DIR

    text = (PRESETS_DIR / "cpu.toml").read_text()
    text = re.sub(r"(?m)^max_epochs = \d+", "max_epochs = 2", text)
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    monkeypatch.setenv("STUDIO_TRAIN_PRESET", str(path))
    return path


@pytest.mark.slow
def test_build_subject_from_real_footage(env, h, shared, tiny_preset, monkeypatch, tmp_path):
    from studio.subject import Subject
    from studio.ui.session import DubState, user_subjects_dir

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
    # 20 s without a sound track, uploaded alone; its speech (the .wav beside it in ../shared) is
    # uploaded as a separate file under another name: it pairs with the only video by order
    video = tmp_path / "obama.mp4"
    video.symlink_to(shared / "media" / "video" / "obama_clip1.mp4")
    speech = tmp_path / "recorded_speech.wav"
    speech.symlink_to(shared / "media" / "video" / "obama_clip1.wav")
    updates = list(h.build_subject(DubState.new(), [str(video)], "obama test", ["ours"], False, 0, [str(speech)]))
    status, loss, sample, dropdown = updates[-1]
    assert "is ready" in status and sample is None
    folder = user_subjects_dir() / "obama_test"
    assert dropdown["value"] == str(folder.resolve())
    assert [t for t in loss.data if t.name.startswith("ours")]
    subject = Subject.load(folder)
    assert subject.manifest.variants == ("ours",) and subject.manifest.retrieval
    assert subject.clips()[0].meta.audio_seconds > 19  # the separate speech file was used
    # the new subject dubs
    state = h.predict(DubState.new(), str(folder), env["speech"], None, None, "ours")[0]
    assert state.frames == round(3.0 * state.prediction.fps)


@pytest.mark.slow
def test_run_ablation_writes_table_1(env, h, tiny_preset):
    from studio.ui.session import DubState

    updates = list(h.run_ablation(DubState.new(), env["subject"], ["ours", "no-pose"], 1, 1))
    table, fig, note = updates[-1]
    assert sorted(table["model"]) == ["No pose", "Ours"] and "Results from" in note
    assert any(t.type == "bar" for t in fig.data)


def test_speech_over_the_limit_is_refused(env, h):
    from studio import media
    from studio.pipeline import Pipeline, PipelineConfig
    from studio.ui import session
    from studio.ui.session import DubState

    small = Pipeline(config=PipelineConfig(limits=media.MediaLimits(max_audio_seconds=1.0)),
                     work_dir=env["base"] / "limited")
    session.set_pipeline(small)
    try:
        with pytest.raises(gr.Error, match="limit|longer|too long"):
            h.predict(DubState.new(), env["subject"], env["speech"], "synth", None, "ours")
    finally:
        session.set_pipeline(None)


@pytest.mark.slow
def test_uploaded_template_is_tracked_and_a_faceless_one_refused(env, h, shared, monkeypatch, tmp_path):
    from studio import media
    from studio.ui.session import DubState

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
    video = shared / "media" / "video" / "katie_hill.mp4"
    state, slider, image, _, summary = h.predict(DubState.new(), env["subject"], env["speech"], "synth", str(video),
                                                 "ours")
    info = media.probe_video(video)
    assert state.template == str(video) and "katie_hill" in summary
    assert state.lms.template.shape == (round(3.0 * info.fps), 68, 2)
    assert state.lms.template[:, :, 0].max() <= info.width and image.shape == (384, 384, 3)

    blank = tmp_path / "wall.mp4"
    with media.VideoWriter(blank, 25, (128, 128)) as w:
        for k in range(50):
            w.write(np.full((128, 128, 3), 90 + k, np.uint8))
    with pytest.raises(gr.Error, match="(?i)face"):
        h.predict(DubState.new(), env["subject"], env["speech"], "synth", str(blank), "ours")


def test_loso_results_are_shown_or_explained(monkeypatch, tmp_path):
    from studio.train import loso

    monkeypatch.setattr(loso, "results_dir", lambda: tmp_path)
    assert "python -m studio loso-groups" in h_module().loso_results()
    (tmp_path / "table.md").write_text("| method | obama |\n|---|---|\n| prior | 0.5 |\n")
    assert "| prior | 0.5 |" in h_module().loso_results()
    (tmp_path / "groups_table.md").write_text("| group | prior |\n|---|---|\n| lrs2 | 0.4 |\n")
    shown = h_module().loso_results()
    assert "| lrs2 | 0.4 |" in shown and "loso-groups" in shown and "| prior | 0.5 |" not in shown


def h_module():
    from studio.ui import handlers

    return handlers


def test_changed_inputs_drop_the_prediction_and_render_says_so(env, h, predicted):
    """Render after the inputs changed (e.g. a Predict that then failed) must not render the old dub."""
    state = predicted[0]
    assert state.prediction is not None
    new_state, summary = h.inputs_changed(state)
    assert new_state.prediction is None and new_state.lms is None and "Predict" in summary
    import gradio as gr

    with pytest.raises(gr.Error, match="Nothing predicted"):
        h.render_full(new_state, "retrieval", 50, 150)
    same, _ = h.inputs_changed(new_state)  # nothing to drop: unchanged
    assert same is new_state


def test_speech_is_checked_when_it_arrives(env, h, tmp_path):
    from studio.ui.session import DubState

    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all")
    state, summary = h.speech_changed(DubState.new(), str(bad))
    assert "cannot be used" in summary
    silent = tmp_path / "silent.wav"
    from studio import media

    silent.write_bytes(media.wav_bytes(np.zeros(16000, np.float32)))
    assert "silent" in h.speech_changed(state, str(silent))[1]
    ok = h.speech_changed(state, env["speech"])[1]
    assert "Speech ready" in ok
