"""End to end: the studio served on 127.0.0.1 and driven over its API with gradio_client.

Predict on the sample subject (the tiny synthetic one until presets/sample_subject exists),
apply an edit, render, and check the mp4 that comes back (frames, audio, duration); two clients
at once keep their own state; a user mistake comes back as a readable error and the server
keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ui_support import free_port, sample_or_tiny, speech_wav, studio_env, video_stats

gradio_client = pytest.importorskip("gradio_client")


def _edit_values(**changes) -> list:
    """The /edit endpoint's values (after the frame) in the order the Edits panel wires them."""
    from studio.ui.handlers import EditControls

    return EditControls(range_end=1, **changes).values()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    subject = sample_or_tiny(base)
    mp = pytest.MonkeyPatch()
    for k, v in studio_env(base / "app", subject).items():
        mp.setenv(k, v)
    from studio.ui import app

    demo = app.launch(prevent_thread_lock=True, server_port=free_port())
    try:
        yield demo, subject, speech_wav(base / "app" / "speech.wav", seconds=3.0)
    finally:
        demo.close()
        mp.undo()


def _client(demo):
    return gradio_client.Client(demo.local_url, verbose=False)


def _path(value) -> str:
    """A file output as gradio_client returns it (a path, or a dict with one)."""
    if isinstance(value, dict):
        return value.get("video") or value.get("path") or value.get("value")
    return value


def test_page_and_api_are_served(served):
    import httpx

    demo, subject, _ = served
    page = httpx.get(demo.local_url, timeout=30)
    assert page.status_code == 200 and "Lip Sync Studio" in page.text
    # files outside the work folder and gradio's own cache are not served
    for path in (Path(__file__).resolve().parent.parent / "pyproject.toml", subject / "subject.json"):
        assert httpx.get(f"{demo.local_url}gradio_api/file={path}", timeout=30).status_code in (403, 404)
    info = _client(demo).view_api(print_info=False, return_format="dict")
    names = set(info["named_endpoints"])
    for name in ("/predict", "/edit", "/show_frame", "/reset_edits", "/save_edits", "/load_edits", "/facemap",
                 "/preview_frame", "/render_range", "/render", "/cancel", "/landmarks_csv", "/build_subject",
                 "/ablation_results", "/run_ablation", "/compare", "/subject_info", "/dub_video", "/cancel_dub_video"):
        assert name in names, name


def test_predict_edit_render(served):
    from gradio_client import handle_file

    demo, subject, speech = served
    client = _client(demo)
    subject_path = str(subject.resolve())
    clip = json.loads((subject / "subject.json").read_text())["clips"][0]
    frame_update, image, _, summary = client.predict(subject_path, handle_file(str(speech)), clip, None, "ours",
                                                     api_name="/predict")
    assert "frames" in summary
    before = np.asarray(_read_image(image))

    values = _edit_values(pca_offsets=(3.0,) + (0.0,) * 12)
    values[13] = 2.0  # mouth opening gain
    image2 = client.predict(5, *values, api_name="/edit")
    after = np.asarray(_read_image(image2))
    assert before.shape == after.shape
    assert np.abs(before.astype(int) - after.astype(int)).sum() > 0

    saved = client.predict(api_name="/save_edits")
    edits = json.loads(Path(_path(saved)).read_text())
    assert edits["pca_offsets"][0] == 3.0 and edits["mouth_open_gain"] == 2.0

    video, video_file, csv = client.predict("retrieval", 50, 150, "standard", api_name="/render")
    stats = video_stats(Path(_path(video)))
    fps = stats["fps"]
    expected = int(round(3.0 * fps))
    assert abs(stats["frames"] - expected) <= 1
    assert stats["has_audio"] and abs(stats["audio_seconds"] - 3.0) < 0.15
    assert abs(stats["duration"] - 3.0) < 0.15
    rows = Path(_path(csv)).read_text().strip().splitlines()
    assert len(rows) == stats["frames"] + 1 and rows[0].startswith("frame,time,template_frame,x0,y0")


def test_sessions_do_not_share_state(served):
    from gradio_client import handle_file

    demo, subject, speech = served
    a, b = _client(demo), _client(demo)
    subject_path = str(subject.resolve())
    clip = json.loads((subject / "subject.json").read_text())["clips"][0]
    a.predict(subject_path, handle_file(str(speech)), clip, None, "ours", api_name="/predict")
    values = _edit_values(mouth_open_gain=1.5)
    a.predict(0, *values, api_name="/edit")
    # b never predicted and has its own edits; a's are untouched by b's
    with pytest.raises(Exception, match="Nothing predicted yet"):
        b.predict(0, api_name="/show_frame")
    values[13] = 1.2
    b.predict(0, *values, api_name="/edit")
    saved_a = json.loads(Path(_path(a.predict(api_name="/save_edits"))).read_text())
    saved_b = json.loads(Path(_path(b.predict(api_name="/save_edits"))).read_text())
    assert saved_a["mouth_open_gain"] == 1.5 and saved_b["mouth_open_gain"] == 1.2
    folder_a = Path(_path(a.predict(api_name="/save_edits"))).parent
    assert folder_a != Path(_path(b.predict(api_name="/save_edits"))).parent


def test_user_mistakes_are_messages_and_server_keeps_serving(served, tmp_path):
    from gradio_client import handle_file

    demo, subject, speech = served
    client = _client(demo)
    subject_path = str(subject.resolve())
    clip = json.loads((subject / "subject.json").read_text())["clips"][0]
    silent = tmp_path / "silent.wav"
    import soundfile as sf

    sf.write(str(silent), np.zeros(16000 * 2, np.float32), 16000)
    with pytest.raises(Exception, match="silent"):
        client.predict(subject_path, handle_file(str(silent)), clip, None, "ours", api_name="/predict")
    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(Exception) as info:
        client.predict(subject_path, handle_file(str(bad)), clip, None, "ours", api_name="/predict")
    assert "Traceback" not in str(info.value)
    from studio.subject import ALL_VARIANTS

    trained = json.loads((subject / "subject.json").read_text())["variants"]
    untrained = [v for v in ALL_VARIANTS if v not in trained]
    variant, message = (untrained[0], "no trained") if untrained else ("nope", "Unknown variant")
    with pytest.raises(Exception, match=message):
        client.predict(subject_path, handle_file(str(speech)), clip, None, variant, api_name="/predict")
    with pytest.raises(Exception, match="not one of the studio's subjects"):
        client.predict(str(tmp_path), handle_file(str(speech)), clip, None, "ours", api_name="/predict")
    # still serving
    out = client.predict(subject_path, handle_file(str(speech)), clip, None, "ours", api_name="/predict")
    assert "frames" in out[-1]


def test_one_step_dub_without_a_video_is_a_message(served):
    from gradio_client import handle_file

    demo, _, speech = served
    client = _client(demo)
    with pytest.raises(Exception, match="No video given"):
        client.predict(None, handle_file(str(speech)), api_name="/dub_video")
    with pytest.raises(Exception, match="No speech given"):
        client.predict(handle_file(str(speech)), None, api_name="/dub_video")


@pytest.mark.slow
def test_one_step_dub_over_the_api(served, shared, tmp_path, monkeypatch):
    import subprocess

    from gradio_client import handle_file

    from studio import media

    demo, _, speech = served
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(shared / "weights"))
    video = tmp_path / "young_man_3s.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(shared / "media" / "video" /
                    "young_man_outdoors.mp4"), "-t", "3", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt",
                    "yuv420p", "-c:a", "aac", str(video)], check=True, capture_output=True)
    client = _client(demo)
    dubbed, status, subject, _ = client.predict(handle_file(str(video)), handle_file(str(speech)),
                                                api_name="/dub_video")
    stats = video_stats(Path(_path(dubbed)))
    assert abs(stats["frames"] - round(3.0 * stats["fps"])) <= 1 and stats["has_audio"]
    assert "built the video's subject" in status
    # the new subject is picked in the Subject dropdown (an update: choices and value)
    assert ["young_man_3s (one step)", subject["value"]] in subject["choices"]
    assert Path(subject["value"]).is_dir()
    again = client.predict(handle_file(str(video)), handle_file(str(speech)), api_name="/dub_video")
    assert "reused the cached subject" in again[1]


def _read_image(value):
    import imageio.v3 as iio

    return iio.imread(_path(value))


def test_ablations_tab_shows_units_lstm_note_and_estimate(served):
    """The Ablations tab carries the table's legend (units, number format, the LSTM/BiLSTM note) on
    the page, and the run-time estimate is served for the settings before anything runs."""
    import httpx

    from studio.ui.ablations import LEGEND, LSTM_NOTE

    demo, subject, _ = served
    config = httpx.get(f"{demo.local_url}config", timeout=30).json()
    legend = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "ablation_legend"]
    assert legend and legend[0]["props"]["value"] == LEGEND and LSTM_NOTE in LEGEND and "×10⁻³" in LEGEND
    text = _client(demo).predict(str(subject.resolve()), ["ours", "lstm"], 2, 0, api_name="/ablation_estimate")
    assert "Estimate" in text and "4 models" in text


def test_subjects_built_after_start_appear_on_load(served, tmp_path):
    """A subject folder that appears after the server started (built by another session, or before
    a page reload) is offered by the page-load refresh of both subject lists."""
    import os
    import shutil

    demo, subject, _ = served
    target = Path(os.environ["STUDIO_SUBJECTS_DIR"]) / "late_subject"
    shutil.copytree(subject, target, symlinks=True)
    try:
        for api in ("/load_subjects", "/load_ablation_subjects"):
            text = json.dumps(_client(demo).predict(None, api_name=api))
            assert str(target.resolve()) in text, (api, text[:300])
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_waiting_requests_show_their_queue_position():
    """Renders, previews, builds and one-step dubs wait in the queue when another one runs; they
    keep Gradio's full status tracker, which shows the queue position ("queue: 2/3") while they
    wait and the progress bar after."""
    from studio.ui import app

    demo = app.build()
    deps = {d.get("api_name"): d for d in demo.config["dependencies"]}
    for name in ("render", "render_range", "preview_frame", "build_subject", "dub_video", "run_ablation",
                 "landmark_video"):
        assert deps[name]["queue"] is not False and deps[name]["show_progress"] == "full", name
