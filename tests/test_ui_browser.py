"""The studio in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed
by .ci/run) loads the page, predicts on the sample, moves a PCA slider and sees the overlay image
change, renders and gets a playable video, visits every tab and takes screenshots; no request
leaves the machine.

Screenshots go to the test's temporary folder; with STUDIO_UPDATE_SCREENSHOTS=1 the Dub and
Ablations ones are also copied to docs/screenshots/ (committed). docs/screenshots/subject.png shows
a finished subject build (the sample template rebuilt with a 6-epoch preset), taken the same way by
hand because a real build takes too long for a test.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from ui_support import REPO, free_port, sample_or_tiny, speech_wav, studio_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    from studio.ui.webdriver import WebDriver, find_browser

    if find_browser() is None:
        pytest.skip("chromium and chromedriver not installed (apt-get install -y chromium chromium-driver)")
    with WebDriver.start() as driver:
        yield driver


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    subject = sample_or_tiny(base)
    mp = pytest.MonkeyPatch()
    for k, v in studio_env(base / "browser", subject).items():
        mp.setenv(k, v)
    from studio.ui import app

    demo = app.launch(prevent_thread_lock=True, server_port=free_port())
    try:
        yield demo, speech_wav(base / "browser" / "speech.wav", 4.0)
    finally:
        demo.close()
        mp.undo()


def test_studio_in_a_browser(browser, served, tmp_path):
    from studio.ui.bench import drive
    from studio.ui.webdriver import external

    demo, speech = served
    seen = drive(browser, demo.local_url, speech=str(speech), screenshots=tmp_path)
    urls = seen.pop("requested_urls")
    print("browser timings:", json.dumps({k: v for k, v in seen.items() if k.endswith("_s")}))

    assert re.search(r"\d+ frames", seen["summary"])
    assert seen["slider_value"] > 0  # the click moved PC1 off zero ...
    assert seen["overlay_changed_pixels"] > 0  # ... and the overlay image changed
    assert seen["played_to_frame"] >= 3  # Play advanced the frame slider
    speech_seconds = float(re.search(r"\(([\d.]+) s of speech\)", seen["summary"]).group(1))
    assert abs(seen["video_duration_s"] - speech_seconds) < 0.2
    assert any("/gradio_api/" in u for u in urls)
    assert external(urls) == []
    for name in ("dub", "dub_render", "subject", "ablations"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    if os.environ.get("STUDIO_UPDATE_SCREENSHOTS") == "1":
        dest = REPO / "docs" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("dub", "dub_render", "ablations"):
            shutil.copy(tmp_path / f"{name}.png", dest / f"{name}.png")

