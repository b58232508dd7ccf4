"""The integrity measure (issue 21): re-detected landmarks against what a dub was asked to draw, and
pixels changed outside the face, on real footage with head motion."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from studio import media
from studio.cli import main
from studio.errors import InputError
from studio.render.integrity import (IntegrityConfig, integrity_check, lip_bend, outside_change, points_columns,
                                     read_asked, region_errors, summarize)

N = 50  # frames of katie_hill used (2 s, the head turning)


def _write_csv(path, points, template, frames):
    cols = {"frame": np.arange(len(points)), "time": np.arange(len(points)) / 25.0, "template_frame": frames}
    cols |= dict(zip(points_columns(), points.reshape(len(points), -1).T))
    cols |= dict(zip(points_columns("t"), template.reshape(len(template), -1).T))
    pd.DataFrame(cols).to_csv(path, index=False, float_format="%.2f")


@pytest.fixture(scope="module")
def footage(shared, tmp_path_factory):
    """katie_hill's first N frames as a video of their own, and the project's landmarks of them."""
    from studio.data.preprocess import preprocess

    tmp = tmp_path_factory.mktemp("integrity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
        video = shared / "media" / "video" / "katie_hill.mp4"
        info = media.probe_video(video)
        frames = list(media.iter_frames(video, 0, N))
        tpl = tmp / "template.mp4"
        with media.VideoWriter(tpl, info.fps, (info.width, info.height)) as vw:
            for f in frames:
                vw.write(f)
        clip = preprocess(tpl, tmp / "clip", progress=False)
    return tmp, tpl, frames, clip.landmarks.astype(np.float64), info


def test_read_asked_refuses_what_is_not_a_landmarks_csv(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_asked(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="lacks the columns"):
        read_asked(tmp_path / "bad.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(InputError):
        read_asked(tmp_path / "bin.csv")


def test_errors_and_broken_frames_on_arrays():
    rng = np.random.default_rng(0)
    ref = np.tile(rng.uniform(50, 150, (1, 68, 2)), (10, 1, 1))
    ref[:, 36], ref[:, 45] = [60, 80], [140, 80]  # outer-eye distance 80 px
    found = ref + 0.5
    found[3, 2:15] += [12.0, 0.0]  # the jaw 0.15 off on frame 3
    found[7] = np.nan  # no face on frame 7
    e = region_errors(found, ref)
    assert e["jaw"][3] == pytest.approx(12.5 / 80, rel=1e-3) and e["mouth"][3] < 0.01
    s = summarize(e, None, IntegrityConfig())
    assert s["broken_frames"] == [3, 7] and s["no_face"] == 1 and s["broken"] == pytest.approx(0.2)


def test_a_lower_lip_torn_into_a_v_is_broken_though_the_points_are_near():
    from render_faces import face_points

    smooth = face_points(128, 118, 40)[None].astype(np.float64)
    torn = smooth.copy()
    torn[0, 57, 1] -= 1.2 * (torn[0, 57, 1] - torn[0, 66, 1])  # the lip's centre pulled up into a V
    bend = lip_bend(np.concatenate([smooth, torn]))
    assert bend[0] < 40 and bend[1] > 60
    e = {k: np.full(2, 0.03) for k in ("jaw", "mouth", "upper")}  # the re-detector sees a smooth lip
    s = summarize(e, None, IntegrityConfig(), bend, bend_limit=bend[0] + 20)
    assert s["broken_frames"] == [1] and s["bend"]["frames_over"] == pytest.approx(0.5)
    assert summarize(e, None, IntegrityConfig())["broken"] == 0.0  # without the bend it looks fine


def test_outside_change_sees_paint_outside_the_face_only():
    from render_faces import face_image, face_points

    pts = face_points(128, 118, 40)
    frame = face_image(pts)
    inside_edit, outside_edit = frame.copy(), frame.copy()
    inside_edit[150:170, 118:138] = 0  # the chin: may change
    outside_edit[20:60, 10:50] = 255  # the background: may not
    assert outside_change(inside_edit, frame, [pts]) == 0.0
    assert outside_change(outside_edit, frame, [pts]) > 0.05


def test_template_against_itself_is_at_the_floor_and_passes(footage):
    tmp, tpl, frames, lms, _ = footage
    _write_csv(tmp / "self.csv", lms, lms, np.arange(N))
    res = integrity_check(tpl, tmp / "self.csv", template_video=tpl)
    assert res["dub"]["broken"] == 0.0 and res["dub"]["outside"]["max"] == 0.0
    assert res["dub"]["jaw"]["p95"] == pytest.approx(res["floor"]["jaw"]["p95"], rel=1e-6)
    assert res["verdict"]["passed"]


def test_a_lower_face_pasted_beside_the_face_is_broken_on_exactly_those_frames(footage):
    tmp, tpl, frames, lms, info = footage
    bad = set(range(10, 20))
    out = tmp / "broken.mp4"
    with media.VideoWriter(out, info.fps, (info.width, info.height)) as vw:
        for i, f in enumerate(frames):
            if i in bad:  # the lower face shifted sideways by half a face: onto hair and background
                p = lms[i]
                x0, y0 = np.floor(p[2:15].min(0)).astype(int)
                x1, y1 = np.ceil(p[2:15].max(0)).astype(int)
                shift = min((x1 - x0) // 2, f.shape[1] - x1)
                f = f.copy()
                f[y0:y1, x0 + shift:x1 + shift] = f[y0:y1, x0:x1].copy()
            vw.write(f)
    _write_csv(tmp / "asked.csv", lms, lms, np.arange(N))
    sheet = tmp / "sheet.jpg"
    res = integrity_check(out, tmp / "asked.csv", template_video=tpl, sheet=sheet)
    assert set(res["dub"]["broken_frames"]) == bad
    assert not res["verdict"]["passed"]
    img = cv2.imread(str(sheet))
    cfg = IntegrityConfig()
    assert img is not None and img.shape == ((cfg.worst + cfg.random) * cfg.tile, 3 * cfg.tile, 3)
    assert set(res["sheet_frames"][:cfg.worst]) <= bad  # the worst frames come first


def test_cli_prints_json_and_exits_by_the_verdict(footage, capsys):
    tmp, tpl, frames, lms, _ = footage
    _write_csv(tmp / "cli.csv", lms, lms, np.arange(N))
    assert main(["integrity", str(tpl), "--asked", str(tmp / "cli.csv"), "--template", str(tpl)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"dub", "floor", "verdict"} <= result.keys() and result["verdict"]["passed"] is True
    short = tmp / "short.csv"
    _write_csv(short, lms[:10], lms[:10], np.arange(10))
    assert main(["integrity", str(tpl), "--asked", str(short)]) == 2  # a StudioError: told, not a traceback
    assert "frames" in capsys.readouterr().err
