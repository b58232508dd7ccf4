"""Determinism on CPU: the same inputs, seed and edits give bit-identical landmarks and the same
video frames -- across fresh pipelines (no shared caches), torch thread counts, a JSON round trip
of the edits, and separate processes (the CLI)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import robust_media as rm
from studio import media
from studio.edits import Edits
from studio.pipeline import Pipeline

pytestmark = pytest.mark.slow

EDITS = Edits(pca_offsets=(0.5,) + (0.0,) * 12, mouth_open_gain=1.3, jaw_open_gain=1.2, jaw_open_offset=0.02,
              jawline_smoothing=1.0, temporal_smoothing=2.0, close_on_silence=True, silence_threshold=25.0,
              frame_range=(5, 40))


def _staged(work, threads: int, edits: Edits = EDITS):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pipe = Pipeline(work_dir=work)  # its own ModelManager: nothing cached from another run
        subject = pipe.subject(rm.SAMPLE_SUBJECT)
        tpl = pipe.template(subject)
        speech = pipe.speech(rm.audio_short(work, 2.0))
        pred = pipe.predict(subject, speech, tpl, "ours")
        return pipe, subject, tpl, speech, pred, pipe.landmarks(pred, tpl, subject, edits)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    a = _staged(tmp_path_factory.mktemp("det_a"), 1)
    b = _staged(tmp_path_factory.mktemp("det_b"), 2, Edits.from_json(EDITS.to_json()))
    return a, b


def test_landmarks_are_bit_identical(two_runs):
    (*_, pa, la), (*_, pb, lb) = two_runs
    for name in ("talk", "coefs", "frame_index", "energy"):
        np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name), err_msg=name)
    np.testing.assert_array_equal(la.points, lb.points)
    np.testing.assert_array_equal(la.talk, lb.talk)
    assert not np.array_equal(la.talk, pa.talk)  # the edits did something


@pytest.fixture(scope="module")
def rendered(two_runs, tmp_path_factory):
    """The whole dub rendered by each pipeline: (path a, path b)."""
    d = tmp_path_factory.mktemp("det_mp4")
    (pipe_a, subj_a, tpl_a, sp_a, _, la), (pipe_b, subj_b, tpl_b, sp_b, _, lb) = two_runs
    return (pipe_a.render(subj_a, tpl_a, sp_a, la, d / "a.mp4"), pipe_b.render(subj_b, tpl_b, sp_b, lb, d / "b.mp4"))


def test_rendered_frames_are_identical(two_runs, rendered):
    (pipe_a, subj_a, tpl_a, sp_a, _, la), (pipe_b, subj_b, tpl_b, sp_b, _, lb) = two_runs
    fa = list(pipe_a.render_frames(subj_a, tpl_a, la, "retrieval", 0, 12))
    fb = list(pipe_b.render_frames(subj_b, tpl_b, lb, "retrieval", 0, 12))
    for k, (x, y) in enumerate(zip(fa, fb)):
        np.testing.assert_array_equal(x, y, err_msg=f"frame {k}")
    # the whole mp4: same decoded frames (and, with the same encoder settings, the same bytes)
    out_a, out_b = rendered
    for x, y in zip(media.iter_frames(out_a), media.iter_frames(out_b)):
        np.testing.assert_array_equal(x, y)
    assert media.probe_video(out_a).frames == la.points.shape[0]
    assert out_a.read_bytes() == out_b.read_bytes()


def test_preprocessing_is_deterministic(tmp_path, shared, monkeypatch):
    from studio.data.preprocess import preprocess

    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
    video = rm.write_video(tmp_path / "v.mp4", rm.sample_frames()[:15], audio=rm.sample_signal()[:9600])
    a = preprocess(video, tmp_path / "a", progress=False)
    b = preprocess(video, tmp_path / "b", progress=False, force=True)
    for name, x in a.arrays().items():
        np.testing.assert_array_equal(x, b.arrays()[name], err_msg=name)


def test_cli_dub_in_another_process(two_runs, rendered, tmp_path):
    """`python -m studio dub` in a fresh process: the same landmarks (to the CSV's 2 decimals) and
    the very same mp4 bytes as the in-process render."""
    (*_, speech, _, lms), _ = two_runs
    edits = tmp_path / "edits.json"
    edits.write_text(EDITS.to_json())
    out, csv = tmp_path / "dub.mp4", tmp_path / "lms.csv"
    env = dict(os.environ, PYTHONPATH=str(rm.REPO))
    proc = subprocess.run([sys.executable, "-m", "studio", "dub", "--subject", str(rm.SAMPLE_SUBJECT),
                           "--speech", speech.path, "--edits", str(edits), "--out", str(out),
                           "--landmarks-csv", str(csv)], cwd=rm.REPO, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    import pandas as pd

    table = pd.read_csv(csv)
    xy = np.stack([table[[f"x{i}" for i in range(68)]].to_numpy(), table[[f"y{i}" for i in range(68)]].to_numpy()], -1)
    np.testing.assert_allclose(xy, lms.points, atol=0.006)  # the CSV holds 2 decimals
    assert out.read_bytes() == rendered[0].read_bytes()
