"""Paste-back and export: only the face region changes, fallbacks, atomic output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from render_faces import face_image, face_points
from studio.errors import CancelledError
from studio.face import layout
from studio.render.compose import ComposeConfig, border_mask, compose_frame, export, face_mask, render_sequence
from studio.render.crop import CropTrack
from studio.render.retrieval import RetrievalConfig, RetrievalPool, RetrievalRenderer

H, W, S = 240, 320, 128


def _frames(t: int = 12):
    pts = np.stack([face_points(150 + i, 110, 28, opening=(i % 5) / 4) for i in range(t)])
    return np.stack([face_image(p, H, W, seed=4) for p in pts]), pts


def _dilated_face_box(track: CropTrack, pts: np.ndarray, i: int, pad: float = 6.0):
    x0, y0 = pts[i].min(0) - pad
    x1, y1 = pts[i].max(0) + pad
    return int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))


def test_compose_changes_only_the_masked_face():
    frames, pts = _frames(3)
    track = CropTrack.from_landmarks(pts, (W, H))
    crop_pts = track.to_crop(pts[1], 1, S)
    mask = face_mask(crop_pts, S)
    rendered = np.full((S, S, 3), 255, np.uint8)
    out = compose_frame(frames[1], rendered, track, 1, mask)
    assert out.shape == frames[1].shape and out.dtype == np.uint8
    cfg = ComposeConfig()
    reach = (cfg.face_dilation + 3 * cfg.face_feather + 1) * track.sides[1] / 256 + 2  # mask extent
    x0, y0, x1, y1 = _dilated_face_box(track, pts, 1, pad=reach)
    outside = np.ones((H, W), bool)
    outside[max(y0, 0):y1, max(x0, 0):x1] = False
    np.testing.assert_array_equal(out[outside], frames[1][outside])
    cy, cx = pts[1, 30].round().astype(int)[::-1]
    assert (out[cy, cx] > 250).all(), "inside the face the rendered crop shows"


def test_identity_roundtrip_is_close():
    frames, pts = _frames(2)
    track = CropTrack.from_landmarks(pts, (W, H))
    size = 512  # upsampling crop: paste-back is nearly lossless
    crop = track.crop(frames[0], 0, size)
    out = compose_frame(frames[0], crop, track, 0, face_mask(track.to_crop(pts[0], 0, size), size))
    diff = np.abs(out.astype(int) - frames[0]).mean()
    assert diff < 2.0


def test_crop_and_paste_back_keep_fine_texture():
    """A dub resamples the footage at least twice (crop, paste-back): with bilinear resampling this
    round trip alone kept 0.59 of the Laplacian variance of fine texture; cubic keeps ~1.0."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (H, W, 3)).astype(np.float32), (0, 0), 1.0)
    frame = np.clip((texture - 128) * 3 + 128, 0, 255).astype(np.uint8)
    pts = np.stack([face_points(150 + 0.37 * i, 110 + 0.21 * i, 28) for i in range(3)])  # sub-px offsets
    track = CropTrack.from_landmarks(pts, (W, H))
    size = int(round(track.sides[1] * 1.4))  # the usual case: the crop upsamples the face ~1.4x
    out = compose_frame(frame, track.crop(frame, 1, size), track, 1, np.ones((size, size), np.float32))
    x0, y0, x1, y1 = (int(v) for v in track.box(1))
    inner = (slice(y0 + 10, y1 - 10), slice(x0 + 10, x1 - 10))

    def sharpness(img):
        return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[inner], cv2.CV_64F).var()

    assert 0.85 <= sharpness(out) / sharpness(frame) <= 1.2


def test_invalid_frame_and_none_pass_through():
    frames, pts = _frames(3)
    valid = np.array([True, False, True])
    track = CropTrack.from_landmarks(pts, (W, H), valid=valid)
    crop = np.zeros((S, S, 3), np.uint8)
    f0, f1 = frames[0], frames[1]
    assert compose_frame(f1, crop, track, 1) is f1
    assert compose_frame(f0, None, track, 0) is f0
    changed = compose_frame(f0, crop, track, 0)  # default mask: the whole crop, feathered
    assert (changed != frames[0]).any()


def test_border_mask_fades_out():
    m = border_mask(100)
    assert m[50, 50] == 1.0 and m[0, 50] < 0.2 and m[50, -1] < 0.2
    assert m.min() >= 0 and m.max() <= 1


def test_crop_partly_outside_frame():
    frames, pts = _frames(1)
    pts = pts + [140, 0]  # face near the right border: crop leaves the frame
    track = CropTrack.from_landmarks(pts, (W, H))
    assert track.box(0)[2] > W
    out = compose_frame(frames[0], np.full((S, S, 3), 9, np.uint8), track, 0)
    assert out.shape == (H, W, 3)


@pytest.fixture(scope="module")
def clip_like(tmp_path_factory):
    """Template frames + a small retrieval renderer built from the same synthetic person."""
    frames, pts = _frames(12)
    crops_pts = np.stack([face_points(128, 118, 40, opening=o) for o in np.linspace(0, 1, 30)])
    crops = [face_image(p, 256, 256, seed=4) for p in crops_pts]
    pool = RetrievalPool.from_crops(crops, crops_pts, cfg=RetrievalConfig(min_pool_frames=10))
    return frames, pts, RetrievalRenderer(pool)


def test_export_changes_only_face_region(clip_like, tmp_path):
    from studio import media

    frames, pts, renderer = clip_like
    track = CropTrack.from_landmarks(pts, (W, H))
    talk_px = np.stack([layout.talking_vector(face_points(150 + i, 110, 28, opening=1 - (i % 5) / 4))
                        for i in range(len(pts))])
    rendered = []
    for i, f in enumerate(frames):
        tp = track.to_crop(pts[i], i, S)
        pred = track.to_crop(talk_px[i].reshape(29, 2), i, S).reshape(58)
        rendered.append(renderer.render_frame(track.crop(f, i, S), tp, pred, i % 30))
    speech = 0.1 * np.sin(np.arange(int(16000 * len(frames) / 25)) / 7).astype(np.float32)
    out = export(tmp_path / "out.mp4", iter(frames), rendered, track, 25.0, speech)
    info = media.probe_video(out)
    assert (info.width, info.height, info.frames) == (W, H, len(frames)) and info.has_audio
    got = np.stack(list(media.iter_frames(out)))
    ref_out = export(tmp_path / "ref.mp4", iter(frames), [None] * len(frames), track, 25.0, speech)
    ref = np.stack(list(media.iter_frames(ref_out)))
    face_changed = 0
    for i in range(len(frames)):
        box = np.zeros((H, W), bool)
        allp = np.concatenate([pts[i], talk_px[i].reshape(29, 2)])
        x0, y0 = np.floor(allp.min(0) - 16).astype(int)
        x1, y1 = np.ceil(allp.max(0) + 16).astype(int)
        box[max(y0, 0):y1, max(x0, 0):x1] = True
        # before the codec: outside the dilated face box every pixel is the template's exactly
        composed = compose_frame(frames[i], rendered[i].image, track, i, rendered[i].mask)
        np.testing.assert_array_equal(composed[~box], frames[i][~box])
        # after it: equal to the untouched template through the same codec, within its tolerance
        d_ref = np.abs(got[i].astype(int) - ref[i])[~box]
        assert d_ref.mean() < 1.5 and np.percentile(d_ref, 99) <= 10, (i, d_ref.mean(), np.percentile(d_ref, 99))
        face_changed += np.abs(got[i].astype(int) - ref[i])[box].mean() > 1.0
    assert face_changed >= len(frames) // 2, "the mouth region did change"


def test_export_failure_leaves_no_file(clip_like, tmp_path):
    frames, pts, _ = clip_like
    track = CropTrack.from_landmarks(pts, (W, H))
    target = tmp_path / "out.mp4"

    def bad_frames():
        yield frames[0]
        yield frames[1]
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError):
        export(target, bad_frames(), [None] * 5, track, 25.0)
    with pytest.raises(CancelledError):
        export(target, iter(frames), [None] * len(frames), track, 25.0, should_stop=lambda: True)
    with pytest.raises(ValueError):
        export(target, iter(frames[:3]), [None] * 4, track, 25.0)
    assert list(tmp_path.iterdir()) == [], "no partial or temporary file is left"


def test_render_sequence_retrieval_matches_preview(clip_like):
    from types import SimpleNamespace

    frames, pts, renderer = clip_like
    t = len(frames)
    talk_px = np.stack([layout.talking_vector(face_points(150 + i, 110, 28, opening=0.9)) for i in range(t)])
    lms = SimpleNamespace(points=layout.with_talking(pts, talk_px), template=pts,
                          frame_index=np.arange(t), fps=25.0)
    valid = np.ones(t, bool)
    valid[3] = False
    template = SimpleNamespace(valid=valid, meta=SimpleNamespace(width=W, height=H))
    full = list(render_sequence(renderer, iter(frames), lms, template, size=S))
    assert len(full) == t
    np.testing.assert_array_equal(full[3], frames[3])  # a frame without a face passes through
    one = list(render_sequence(renderer, iter(frames[5:6]), lms, template, start=5, stop=6, size=S))
    np.testing.assert_array_equal(one[0], full[5])
    assert (full[5] != frames[5]).any()


def test_both_renderers_follow_one_interface_and_the_neural_one_renders_through_it(clip_like):
    """A tiny neural renderer (random weights) goes through the same sequence path as retrieval:
    same inputs (``frame_inputs``), same output type, frames without a face passed through."""
    from types import SimpleNamespace

    from studio.models.renderer import RendererConfig, build_generator
    from studio.render.base import Renderer, frame_inputs, sequence_track
    from studio.render.neural import NeuralRenderer

    frames, pts, retrieval = clip_like
    t = len(frames)
    talk_px = np.stack([layout.talking_vector(face_points(150 + i, 110, 28, opening=0.9)) for i in range(t)])
    lms = SimpleNamespace(points=layout.with_talking(pts, talk_px), template=pts, frame_index=np.arange(t), fps=25.0)
    valid = np.ones(t, bool)
    valid[2] = False
    template = SimpleNamespace(valid=valid, meta=SimpleNamespace(width=W, height=H))
    cfg = RendererConfig.for_size(64, ngf=8)
    neural = NeuralRenderer(build_generator(cfg), cfg, "cpu")
    for engine in (retrieval, neural):
        assert isinstance(engine, Renderer)
        size = engine.render_size(S)
        track = sequence_track(engine.crop_config, lms, template)
        out = engine.draw(frame_inputs(track, frames[4], lms, 4, size), 4, engine.prepare(lms, track))
        assert out.image.shape == (size, size, 3) and out.mask.shape == (size, size)
        assert 0.0 <= float(out.mask.min()) and float(out.mask.max()) <= 1.0
    # retrieval draws from the 68 wanted points directly; the 58-number call gives the same frame
    track = sequence_track(retrieval.crop_config, lms, template)
    inputs, picks = frame_inputs(track, frames[4], lms, 4, S), retrieval.prepare(lms, track)
    same = retrieval.render_frame(inputs.crop, inputs.template_points, inputs.talk, int(picks[4]))
    drawn = retrieval.draw(inputs, 4, picks)
    np.testing.assert_array_equal(drawn.image, same.image)
    np.testing.assert_array_equal(drawn.mask, same.mask)
    assert neural.render_size(S) == 64  # a network renders at the size it was built for
    seq = list(render_sequence(neural, iter(frames), lms, template, size=S))
    assert len(seq) == t and seq[0].shape == frames[0].shape
    np.testing.assert_array_equal(seq[2], frames[2])
    assert (seq[4] != frames[4]).any()
