"""The neural renderer through the real pipeline and the studio's handlers: a tiny model trained for
a few steps on the tiny subject's clip dubs, previews and shows its facial map like retrieval does."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ui_support import speech_wav, studio_env, tiny_subject, video_stats

gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A copy of the tiny subject with a neural renderer trained for 3 steps at 64 px."""
    from studio.models.renderer import RendererConfig
    from studio.subject import MANIFEST
    from studio.train.renderer import TrainConfig, train_renderer

    base = tmp_path_factory.getbasetemp()
    subject = base / "neural_subject"
    if not subject.exists():
        shutil.copytree(tiny_subject(base), subject, symlinks=True)
        model = RendererConfig.for_size(64, ngf=8, ndf=8, n_blocks=1, with_template=True)
        train_renderer([subject / "clips" / "synth"], subject / "neural", size=64, steps=3, model=model,
                       train=TrainConfig(batch_size=2, val_fraction=0.2), device="cpu")
        manifest = json.loads((subject / MANIFEST).read_text())
        (subject / MANIFEST).write_text(json.dumps({**manifest, "neural": True}))
    mp = pytest.MonkeyPatch()
    for k, v in studio_env(base / "neural_handlers", subject).items():
        mp.setenv(k, v)
    from studio.ui import session

    session.set_pipeline(None)
    yield {"subject": str(subject.resolve()), "speech": str(speech_wav(base / "neural_handlers" / "s.wav", 2.0))}
    session.set_pipeline(None)
    mp.undo()


@pytest.fixture(scope="module")
def predicted(env):
    from studio.ui import handlers
    from studio.ui.session import DubState

    return handlers.predict(DubState.new(), env["subject"], env["speech"], "synth", None, "ours")[0]


def test_subject_offers_the_neural_renderer(env):
    from studio.ui import handlers

    _, _, renderer, _ = handlers.subject_info(env["subject"])
    assert renderer["choices"] == ["retrieval", "neural"]


def test_neural_dub_through_the_pipeline(env, tmp_path):
    """`Pipeline.dub(..., renderer="neural")` writes every frame with the speech; the face changes
    where the renderer drew and the frame outside the face is the template's."""
    from studio import media
    from studio.pipeline import Pipeline

    from studio.edits import Edits

    pipe = Pipeline()
    subject = pipe.subject(env["subject"])
    speech = pipe.speech(env["speech"])
    tpl = pipe.template(subject, None)
    lms = pipe.landmarks(pipe.predict(subject, speech, tpl, "ours"), tpl, subject, Edits())
    out = pipe.render(subject, tpl, speech, lms, tmp_path / "neural.mp4", "neural")
    stats = video_stats(out)
    assert stats["frames"] == 50 and stats["has_audio"] and abs(stats["audio_seconds"] - 2.0) < 0.1
    dubbed = media.read_frames(out, [0])[0]
    real = next(pipe.template_frames(tpl, lms.frame_index, 0, 1))
    diff = np.abs(dubbed.astype(int) - real.astype(int)).mean(axis=2)
    assert diff[:8].mean() < 6 and diff[-8:].mean() < 6  # top and bottom rows: the template's (codec noise)
    face = tpl.landmarks[lms.frame_index[0]]
    x0, y0 = face.min(axis=0).astype(int)
    x1, y1 = face.max(axis=0).astype(int)
    assert diff[y0:y1, x0:x1].mean() > 2 * diff[:8].mean() + 1  # the face was drawn by the network


def test_neural_preview_is_the_same_frame_as_the_full_render(env, predicted):
    from studio.ui.session import get_pipeline

    pipe = get_pipeline()
    subject = pipe.subject(env["subject"])
    tpl = pipe.template(subject, predicted.template)
    full = list(pipe.render_frames(subject, tpl, predicted.lms, "neural", 0, 12))
    one = pipe.preview_frame(subject, tpl, predicted.lms, 7, "neural")
    # one frame vs a sequence: the network runs on a batch of 1 either way; allow rounding by 1
    assert np.abs(one.astype(int) - full[7].astype(int)).max() <= 1


def test_facemap_panel_shows_exactly_the_neural_renderers_input(env, predicted, monkeypatch):
    from studio.render.neural import NeuralRenderer
    from studio.ui import handlers

    seen = []
    original = NeuralRenderer.render_frame

    def spy(self, template_crop, facemap, lower_face=None):
        seen.append(facemap.copy())
        return original(self, template_crop, facemap, lower_face)

    monkeypatch.setattr(NeuralRenderer, "render_frame", spy)
    handlers.preview_frame(predicted, 9, "neural", 50, 150)
    panel = handlers.facemap(predicted, 9, 50, 150, "neural")
    assert len(seen) == 1 and panel.shape == (64, 64, 3)
    np.testing.assert_array_equal(panel, seen[0])
    # the network draws its maps with its own (trained) settings: the Canny sliders do not change them
    np.testing.assert_array_equal(handlers.facemap(predicted, 9, 10, 20, "neural"), panel)
    assert handlers.facemap(predicted, 9, 50, 150, "retrieval").shape[0] != 64
