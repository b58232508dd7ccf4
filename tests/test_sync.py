"""End-to-end sync check (``studio sync-check``): a rendered dub against the real video of its speech."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from studio import media
from studio.audio import SAMPLE_RATE
from studio.config import REPO_ROOT
from studio.errors import InputError, NoFaceError
from studio.sync import sync_check, table

SAMPLE = REPO_ROOT / "presets" / "sample_subject"
TEMPLATE = REPO_ROOT / "sample_media" / "template.mp4"
TEMPLATE_SPEECH = REPO_ROOT / "sample_media" / "template_speech.wav"
FPS = 30  # the sample template's frame rate (sample_media/README.md)


@pytest.fixture(autouse=True)
def shared_weights(monkeypatch, weights_dir):
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))


def cut(path: Path, start: int, stop: int, audio: np.ndarray | None, repeat: int = 1) -> Path:
    """Frames start..stop of the sample template (each written ``repeat`` times, at ``repeat`` x its
    frame rate, so the timing is unchanged) with ``audio`` as the sound track."""
    info = media.probe_video(TEMPLATE)
    with media.VideoWriter(path, info.fps * repeat, (info.width, info.height), audio=audio) as w:
        for frame in media.iter_frames(TEMPLATE, start, stop):
            for _ in range(repeat):
                w.write(frame)
    return path


def speech_between(start_s: float, stop_s: float | None) -> np.ndarray:
    x = media.read_audio(TEMPLATE_SPEECH)
    return x[int(round(start_s * SAMPLE_RATE)): None if stop_s is None else int(round(stop_s * SAMPLE_RATE))]


# -- plumbing ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short(tmp_path_factory) -> Path:
    """The sample template's first 3 s (90 frames at 30 fps) with its speech."""
    d = tmp_path_factory.mktemp("short")
    return cut(d / "short.mp4", 0, 3 * FPS, speech_between(0.0, 3.0))


def test_video_against_itself(short, tmp_path):
    res = sync_check(short, short, template_video=short, work_dir=tmp_path)
    assert res["frames"] == 3 * FPS and res["fps"] == FPS and res["valid_frames"] == 3 * FPS
    for row in ("dub", "template"):
        r = res[row]
        for name in ("inner", "outer", "chin"):
            assert r[f"{name}_r"] == pytest.approx(1.0, abs=1e-6)
            assert r[f"{name}_lag"] == 0 and r[f"{name}_r_best"] == pytest.approx(1.0, abs=1e-6)
            assert r[f"{name}_amplitude"] == pytest.approx(1.0, abs=1e-6)
        assert r["mouth_lmd"] == pytest.approx(0.0, abs=1e-6)
    assert res["energy"]["source"] == "dub" and -1 <= res["energy"]["inner_r"] <= 1
    assert res["audio_match"]["r"] == pytest.approx(1.0, abs=1e-6) and res["audio_match"]["lag"] == 0
    assert res["notes"] == []
    json.dumps(res, allow_nan=False)  # JSON-clean: no NaN, no numpy types
    assert "dub" in table(res) and "template" in table(res)
    # one detection for the three roles: the same file is cached once in the work folder
    assert len([p for p in tmp_path.iterdir() if (p / "clip.json").exists()]) == 1


def test_other_frame_rate_is_resampled(short, tmp_path):
    """The same frames at twice the rate (each twice) land on the frame times of the original."""
    double = cut(tmp_path / "double.mp4", 0, 3 * FPS, speech_between(0.0, 3.0), repeat=2)
    res = sync_check(double, short, work_dir=tmp_path / "work")
    assert res["fps"] == FPS and res["dub_fps"] == 2 * FPS and res["frames"] == 3 * FPS
    d = res["dub"]
    assert d["inner_r"] > 0.95 and d["inner_lag"] == 0 and d["inner_amplitude"] == pytest.approx(1.0, abs=0.1)
    assert res["template"] is None


def test_real_video_with_separate_speech(shared, tmp_path):
    """A real video without sound and its speech in a wav (as the Obama clips come)."""
    video, wav = shared / "media/video/obama_clip1.mp4", shared / "media/video/obama_clip1.wav"
    info = media.probe_video(video)
    assert not info.has_audio
    real = tmp_path / "real.mp4"
    with media.VideoWriter(real, info.fps, (info.width, info.height)) as w:
        for frame in media.iter_frames(video, 0, 90):
            w.write(frame)
    dub = media.mux_audio(real, media.read_audio(wav)[: 3 * SAMPLE_RATE], tmp_path / "dub.mp4")
    res = sync_check(dub, real, real_audio=wav, work_dir=tmp_path / "w")
    assert res["frames"] == 90 and res["dub"]["inner_r"] == pytest.approx(1.0, abs=1e-6)
    assert res["energy"]["source"] == "dub" and res["audio_match"]["r"] > 0.99
    assert res["real_audio"] == str(wav)


def test_errors(short, tmp_path):
    one_second = cut(tmp_path / "one.mp4", 0, FPS, speech_between(0.0, 1.0))
    with pytest.raises(InputError, match="overlap for only 1.00 s") as ei:
        sync_check(one_second, short, work_dir=tmp_path / "w")
    assert "at least 2 s" in ei.value.hint
    with pytest.raises(InputError, match="template"):
        sync_check(short, short, template_video=one_second, work_dir=tmp_path / "w")
    silent = cut(tmp_path / "silent.mp4", 0, 3 * FPS, None)
    with pytest.raises(InputError, match="has sound") as ei:
        sync_check(silent, silent, work_dir=tmp_path / "w")
    assert "--real-audio" in ei.value.hint
    assert not (tmp_path / "w").exists()  # all of these are refused before any landmark detection
    # a silent dub falls back to the real speech for the energy row
    res = sync_check(silent, short, work_dir=tmp_path / "w")
    assert res["energy"]["source"] == "real" and res["audio_match"] is None and res["notes"]
    noise = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    with media.VideoWriter(noise, 25, (160, 120), audio=speech_between(0.0, 3.0)) as w:
        for _ in range(75):
            w.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    with pytest.raises(NoFaceError, match="noise.mp4") as ei:
        sync_check(noise, short, work_dir=tmp_path / "w")
    assert "visible face" in ei.value.hint
    with pytest.raises(InputError, match="does not exist"):
        sync_check(tmp_path / "missing.mp4", short)
    with pytest.raises(InputError, match="backend"):
        sync_check(short, short, backend="nope")


# -- a real dub of the bundled sample ----------------------------------------------------------------
@pytest.fixture(scope="module")
def halves(tmp_path_factory, weights_dir):
    """Dub the SECOND half of the template's own speech onto the FIRST half of the template video.

    The real mouth motion for that speech is known: it is the template video's second half. (The
    sample subject's 'ours' was fine-tuned on about the template's first three quarters and
    validated on the rest, so about half of this speech is in its training data.)
    """
    from studio.pipeline import Pipeline

    d = tmp_path_factory.mktemp("halves")
    info = media.probe_video(TEMPLATE)
    half = info.frames // 2
    cut_s = half / info.fps
    first = cut(d / "first_half.mp4", 0, half, speech_between(0.0, cut_s))
    real = cut(d / "real_second_half.mp4", half, info.frames, speech_between(cut_s, None))
    speech = d / "second_half_speech.wav"
    speech.write_bytes(media.wav_bytes(speech_between(cut_s, None)))
    # module scope runs before the function-scoped autouse fixture: set the weights folder here too
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))
        dub = Pipeline(work_dir=d / "pipeline").dub(SAMPLE, speech, d / "dub.mp4", template=first)
    return {"dub": dub, "real": real, "template": first, "dir": d}


@pytest.mark.slow
def test_sample_dub_follows_real_mouth_cli(halves, weights_dir):
    env = dict(os.environ, STUDIO_WEIGHTS_DIR=str(weights_dir))
    proc = subprocess.run([sys.executable, "-m", "studio", "sync-check", str(halves["dub"]), str(halves["real"]),
                           "--template", str(halves["template"]), "--work-dir", str(halves["dir"] / "sync")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "inner r" in proc.stderr  # the human table
    dub, tpl, energy = res["dub"], res["template"], res["energy"]
    print(f"\nsample dub vs real: dub inner r {dub['inner_r']:.3f} (lag {dub['inner_lag']}, amplitude "
          f"{dub['inner_amplitude']:.2f}), template {tpl['inner_r']:.3f}, energy {energy['inner_r']:.3f}")
    half = media.probe_video(TEMPLATE).frames // 2
    assert res["frames"] == half and res["valid_frames"] >= half - 10
    assert res["audio_match"]["r"] > 0.99 and res["audio_match"]["lag"] == 0  # the dub carries this speech
    # The template (the same face, no lip sync) does not follow this speech; the dub clearly does.
    assert abs(tpl["inner_r"]) < 0.3
    assert dub["inner_r"] >= 0.5 and dub["inner_r"] - tpl["inner_r"] >= 0.4
    assert dub["outer_r"] - tpl["outer_r"] >= 0.4
    assert abs(dub["inner_lag"]) <= 2  # in time (+-80 ms)
    assert 0.3 <= dub["inner_amplitude"] <= 2.0  # the mouth moves, neither frozen nor wild


@pytest.mark.slow
def test_bench_sync_stage(halves, tmp_path):
    """The benchmark's sync stage: dub the real video's first seconds of speech, score them."""
    from studio.bench import sync_stage

    out = sync_stage(SAMPLE, halves["template"], halves["real"], None, 4.0, tmp_path)
    assert out["frames"] == 4 * FPS and out["speech_seconds"] == 4.0
    for key in ("dub_inner_r", "template_inner_r", "energy_inner_r", "dub_inner_lag", "dub_inner_amplitude"):
        assert key in out
    assert out["audio_match_r"] > 0.99 and out["dub_wall_s"] > 0
    json.dumps(out, allow_nan=False)
