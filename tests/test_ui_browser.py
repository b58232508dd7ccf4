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
import time

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



def _options(driver, css: str) -> list[str]:
    """The choices a Gradio dropdown offers (opened by a click, closed again with Escape)."""
    driver.click(driver.wait_for(f"{css} input"))
    time.sleep(0.5)
    items = driver.execute(f"return [...document.querySelectorAll({json.dumps(css + ' [data-testid=dropdown-option]')})]"
                           ".map(li => li.getAttribute('aria-label'))")
    driver.execute("document.activeElement && document.activeElement.blur()")
    return items


def _wait_text(driver, css: str, text: str, timeout: float = 120.0) -> str:
    """Wait until the element ``css`` shows ``text``; returns its text."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        now = driver.execute(f"const e = document.querySelector({json.dumps(css)}); return e ? e.innerText : ''")
        if text in now:
            return now
        if now and (not seen or seen[-1] != now):
            seen.append(now)
        time.sleep(0.3)
    raise AssertionError(f"{css} never showed {text!r}; it showed: {[t[-300:] for t in seen]!r}")


def test_new_editor_scenario(browser, served, tmp_path, shared, weights_dir, monkeypatch):
    """Issue 14 items 4, 2 and 1 as a new editor meets them: a subject built after the server
    started is offered after a reload; new speech drops the old prediction and Render says so
    instead of rendering the old dub; another person's video as template is refused with the
    way to dub it."""
    import soundfile as sf

    from studio.ui.bench import _wait
    from studio.ui.session import user_subjects_dir

    demo, speech = served
    monkeypatch.setenv("STUDIO_WEIGHTS_DIR", str(weights_dir))  # the face model, for the uploaded template
    # 4. a subject that appears on disk after the page was served (built by another session)
    late = user_subjects_dir() / "late_subject"
    if not late.exists():
        shutil.copytree(sample_or_tiny(tmp_path.parent), late)
        manifest = json.loads((late / "subject.json").read_text())
        (late / "subject.json").write_text(json.dumps({**manifest, "name": "Late Subject"}))
    browser.get(demo.local_url)
    browser.wait_for("#predict", 120)
    _wait(browser, "return document.body.innerText.includes('clip(s)') || null", 120, "the page")
    offered = _options(browser, "#subject")
    assert any("Late Subject" in o for o in offered), f"a subject built later is not listed: {offered}"

    # 2. predict, then new speech: the prediction is dropped and Render refuses
    loaded = "return !!document.querySelector('#speech [data-testid=download-link]') || null"
    if not browser.execute(loaded):  # the studio preloads the sample speech when it has one
        browser.send_keys(browser.wait_for("#speech input[type=file]"), str(speech))
        _wait(browser, loaded, 120, "the upload")
    browser.click(browser.wait_for("#predict"))
    _wait_text(browser, "#summary", "frames")
    other = tmp_path / "other_speech.wav"
    signal, rate = sf.read(str(speech))
    sf.write(str(other), signal[: len(signal) // 2], rate)
    browser.click(browser.wait_for("#speech button[aria-label='Clear']"))  # back to the upload input
    browser.send_keys(browser.wait_for("#speech input[type=file]"), str(other))
    _wait_text(browser, "#summary", "Inputs changed")
    browser.click(browser.wait_for("#render"))
    _wait_text(browser, ".toast-wrap", "Nothing predicted yet")

    # 1. another person's video as the template of this subject
    video = shared / "media" / "video" / "katie_hill.mp4"
    if not video.exists():
        pytest.skip("../shared footage of another person is not available")
    browser.send_keys(browser.wait_for("#template_upload input[type=file]"), str(video))
    _wait(browser, "const v = document.querySelector('#template_upload video'); return (v && v.src) || null", 120,
          "the template upload")
    browser.click(browser.wait_for("#predict"))
    try:
        text = _wait_text(browser, ".toast-wrap", "different person", timeout=300)
    except AssertionError as exc:
        summary = browser.execute("return document.querySelector('#summary').innerText")
        raise AssertionError(f"{exc}; summary: {summary!r}") from None
    assert "One step" in text or "Subject tab" in text
