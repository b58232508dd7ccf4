"""The studio's speed, measured the way a user meets it.

:func:`drive` runs the browser scenario on a served studio (headless Chromium through
:mod:`studio.ui.webdriver`): load the page, predict, move a PCA slider, render, visit every tab,
and reports timings and what it saw (the browser tests assert on it). :func:`benchmark` serves
the studio in-process and measures over the API (gradio_client) and, where Chromium is
installed, in the browser:

    page_interactive_s        navigation start -> the page is usable (subject info loaded)
    slider_to_overlay_s       PCA slider released -> the new overlay image is displayed
    render_click_to_video_s   "Render full clip" clicked -> the video element can play
    api_edit_s / api_render_s the same two steps over the API (no browser)
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_WATCH_OVERLAY = """
window.__t_release = null; window.__t_overlay = null;
const slider = document.querySelector(arguments[0]);
const box = document.querySelector('#overlay');
const before = (box.querySelector('img') || {}).src || '';
slider.addEventListener('pointerup', () => { window.__t_release = performance.now(); }, {capture: true, once: true});
const seen = () => {
  const img = box.querySelector('img');
  if (!img || !img.src || img.src === before || window.__t_overlay !== null) return;
  const done = () => { if (window.__t_overlay === null) window.__t_overlay = performance.now(); };
  if (img.complete && img.naturalWidth > 0) done(); else img.addEventListener('load', done, {once: true});
};
new MutationObserver(seen).observe(box, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
return before;
"""


def _wait(driver, script: str, timeout: float, what: str, *args) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute(script, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.03)


def _click_tab(driver, label: str) -> None:
    driver.execute("for (const b of document.querySelectorAll('button[role=tab]'))"
                   " if (b.textContent.trim() === arguments[0]) { b.click(); return true; } return false;", label)


def _image_bytes(url: str) -> bytes:
    import httpx

    return httpx.get(url, timeout=60).content


def drive(driver, url: str, speech: str | None = None, screenshots: str | os.PathLike[str] | None = None,
          timeout: float = 300.0) -> dict[str, Any]:
    """The browser scenario on the studio at ``url``; returns timings and observations."""
    import numpy as np

    out: dict[str, Any] = {}
    shots = Path(screenshots) if screenshots else None
    driver.requested_urls()  # drop anything logged before this page
    driver.get(url)
    driver.wait_for("#predict", timeout)
    out["page_interactive_s"] = _wait(
        driver, "const m = document.querySelector('#subject') && document.body.innerText.includes('clip(s)');"
                " return m ? performance.now() / 1000 : null;", timeout, "the page to load")
    has_speech = "return !!document.querySelector('#speech audio, #speech [data-testid=download-link]')"
    if speech and not driver.execute(has_speech):
        driver.send_keys(driver.wait_for("#speech input[type=file]"), str(speech))
        _wait(driver, "return !!document.querySelector('#speech [data-testid=download-link]')", timeout, "the upload")

    t = time.perf_counter()
    driver.click(driver.wait_for("#predict"))
    _wait(driver, "const i = document.querySelector('#overlay img'); return i && i.complete && i.naturalWidth > 0;",
          timeout, "the prediction")
    out["predict_s"] = time.perf_counter() - t
    _wait(driver, "return !!document.querySelector('#timeline .js-plotly-plot')", timeout, "the timeline")
    out["summary"] = driver.execute("return document.querySelector('#summary').innerText")

    slider = "#pc1 input[type=range]"
    before = driver.execute(_WATCH_OVERLAY, slider)
    driver.pointer_click(driver.wait_for(slider), dx=35)
    _wait(driver, "return window.__t_overlay !== null", 60, "the overlay to change")
    t_release, t_overlay = driver.execute("return [window.__t_release, window.__t_overlay]")
    out["slider_value"] = float(driver.execute(f"return document.querySelector('{slider}').value"))
    out["slider_to_overlay_s"] = (t_overlay - t_release) / 1000 if t_release is not None else None
    after = driver.execute("return document.querySelector('#overlay img').src")
    a = _decode(_image_bytes(before)) if before else None
    b = _decode(_image_bytes(after))
    out["overlay_changed_pixels"] = int(np.count_nonzero(np.any(a != b, axis=-1))) if a is not None and \
        a.shape == b.shape else -1
    if shots:
        driver.execute("window.scrollTo(0, 0)")
        driver.screenshot(shots / "dub.png")

    play = driver.wait_for("#play")
    driver.click(play)
    _wait(driver, "return Number(document.querySelector('#frame input[type=number]').value) >= 3", 60, "playback")
    driver.click(play)
    out["played_to_frame"] = int(driver.execute(
        "return Number(document.querySelector('#frame input[type=number]').value)"))

    driver.click(driver.wait_for("#preview"))
    _wait(driver, "const i = document.querySelector('#preview_img img'); return i && i.complete && i.naturalWidth > 0;",
          timeout, "the preview frame")

    t = time.perf_counter()
    driver.click(driver.wait_for("#render"))
    _wait(driver, "const v = document.querySelector('#video video');"
                  " return v && v.src && v.readyState >= 1;", timeout, "the rendered video")
    out["render_click_to_video_s"] = time.perf_counter() - t
    out["video_duration_s"] = driver.execute("return document.querySelector('#video video').duration")
    if shots:
        driver.execute("document.querySelector('#render').scrollIntoView({block: 'start'})")
        time.sleep(0.3)
        driver.screenshot(shots / "dub_render.png")

    _click_tab(driver, "Subject")
    time.sleep(0.5)
    if shots:
        driver.execute("window.scrollTo(0, 0)")
        driver.screenshot(shots / "subject.png")
    _click_tab(driver, "Ablations")
    t = time.perf_counter()
    driver.click(driver.wait_for("#compare"))
    _wait(driver, "const v = document.querySelector('#compare_overlay video'); return v && v.src && v.readyState >= 1;",
          timeout, "the side-by-side comparison")
    out["compare_s"] = time.perf_counter() - t
    if shots:
        driver.execute("document.querySelector('#compare').scrollIntoView({block: 'center'})")
        time.sleep(0.5)
        driver.screenshot(shots / "ablations.png")
    _click_tab(driver, "Dub")
    out["requested_urls"] = driver.requested_urls()
    return out


def _decode(data: bytes):
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not an image")
    return img


def benchmark(subject: str | None = None, speech: str | None = None, edits: int = 5, browser: bool = True,
              **_: Any) -> dict[str, Any]:
    """Serve the studio and time it over the API and (if Chromium is installed) in a browser.

    subject: a subject folder (default: the studio's preselected one); speech: an audio file
    (default: the first sample speech). Returns plain numbers (seconds).
    """
    from gradio_client import Client, handle_file

    from studio.ui import app
    from studio.ui.handlers import EditControls
    from studio.ui.session import discover_subjects, sample_speeches
    from studio.ui.webdriver import WebDriver, find_browser

    entries = discover_subjects()
    subject = str(Path(subject).resolve()) if subject else (entries[0].path if entries else None)
    if subject is None:
        raise RuntimeError("no subject to benchmark on (build one, or pass subject=)")
    speech = speech or (sample_speeches(subject) or [None])[0]
    if speech is None:
        raise RuntimeError("no speech to benchmark with (pass speech=)")
    extra = os.environ.get("STUDIO_SUBJECTS_DIR")
    if all(e.path != subject for e in entries):  # make the subject known to the studio
        link_dir = Path(tempfile.mkdtemp(prefix="studio-bench-subjects-"))
        (link_dir / Path(subject).name).symlink_to(subject)
        os.environ["STUDIO_SUBJECTS_DIR"] = str(link_dir)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1")
    result: dict[str, Any] = {"subject": subject, "speech": str(speech)}
    try:
        from studio.subject import Subject

        clip = Subject.load(subject).manifest.clips[0]
        client = Client(demo.local_url, verbose=False)
        t = time.perf_counter()
        summary = client.predict(subject, handle_file(str(speech)), clip, None, "ours", api_name="/predict")[-1]
        result["api_predict_s"] = round(time.perf_counter() - t, 3)
        result["summary"] = summary
        times = []
        for k in range(edits):
            values = EditControls(mouth_open_gain=1.0 + 0.1 * (k + 1), range_end=1).values()
            t = time.perf_counter()
            client.predict(0, *values, api_name="/edit")
            times.append(time.perf_counter() - t)
        result["api_edit_s"] = round(statistics.median(times), 3)
        t = time.perf_counter()
        client.predict("retrieval", 50, 150, api_name="/render")
        result["api_render_s"] = round(time.perf_counter() - t, 3)
        if browser and find_browser():
            with WebDriver.start() as driver:
                seen = drive(driver, demo.local_url)
            for k in ("page_interactive_s", "predict_s", "slider_to_overlay_s", "render_click_to_video_s",
                      "video_duration_s"):
                result[k] = None if seen.get(k) is None else round(float(seen[k]), 3)
            from studio.ui.webdriver import external

            result["external_requests"] = len(external(seen["requested_urls"]))
        else:
            result["browser"] = "skipped: chromium/chromedriver not found"
    finally:
        demo.close()
        if extra is None:
            os.environ.pop("STUDIO_SUBJECTS_DIR", None)
        else:
            os.environ["STUDIO_SUBJECTS_DIR"] = extra
    return result
