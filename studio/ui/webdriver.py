"""A minimal W3C WebDriver client for the system's headless Chromium (browser tests, benchmarks).

WebDriver is a small JSON-over-HTTP protocol; the few commands the studio's browser checks need
(open a page, find, click, type a file path, run a script, pointer actions, screenshot, the
browser's network log) fit in this module, so no extra Python package is needed. The browser and
driver come from the system (Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
BROWSERS = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) found on this system, or None."""
    driver = os.environ.get("STUDIO_CHROMEDRIVER") or shutil.which("chromedriver")
    browser = os.environ.get("STUDIO_CHROMIUM")
    if not browser:
        for name in BROWSERS:
            path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
            if path:
                browser = path
                break
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(RuntimeError):
    pass


class WebDriver:
    """One headless Chromium session driven through chromedriver."""

    def __init__(self, driver_proc: subprocess.Popen, base: str, session: str, profile: str) -> None:
        import httpx

        self._proc = driver_proc
        self._base = base
        self.session = session
        self._profile = profile
        self._http = httpx.Client(timeout=300)

    @classmethod
    def start(cls, size: tuple[int, int] = (1400, 1800), browser: str | None = None,
              driver: str | None = None) -> "WebDriver":
        import httpx

        found = find_browser()
        browser = browser or (found[0] if found else None)
        driver = driver or (found[1] if found else None)
        if not browser or not driver:
            raise WebDriverError("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        port = _free_port()
        proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/status", timeout=2).json()["value"]["ready"]:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise WebDriverError("chromedriver did not start")
            time.sleep(0.1)
        profile = tempfile.mkdtemp(prefix="studio-chromium-")
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser, "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--autoplay-policy=no-user-gesture-required"]},
            "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
        }}}
        r = httpx.post(base + "/session", json=caps, timeout=120).json()
        if "sessionId" not in r.get("value", {}):
            proc.kill()
            raise WebDriverError(f"could not start a browser session: {r.get('value')}")
        return cls(proc, base, r["value"]["sessionId"], profile)

    # -- protocol ---------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        url = f"{self._base}/session/{self.session}{path}"
        r = self._http.request(method, url, json=body if body is not None else ({} if method == "POST" else None))
        value = r.json().get("value")
        if r.status_code >= 400:
            raise WebDriverError(f"{method} {path}: {value.get('error') if isinstance(value, dict) else value}: "
                                 f"{value.get('message', '')[:300] if isinstance(value, dict) else ''}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def find(self, css: str) -> str | None:
        found = self._call("POST", "/elements", {"using": "css selector", "value": css})
        return found[0][ELEMENT] if found else None

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self._call("POST", "/elements", {"using": "css selector", "value": css})]

    def wait_for(self, css: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            el = self.find(css)
            if el is not None:
                return el
            if time.monotonic() > deadline:
                raise WebDriverError(f"timed out waiting for {css!r}")
            time.sleep(0.05)

    def click(self, element: str) -> None:
        self._call("POST", f"/element/{element}/click")

    def send_keys(self, element: str, text: str) -> None:
        self._call("POST", f"/element/{element}/value", {"text": text})

    def execute(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments[i]`` are the args) and return its value.
        Element ids passed as ``{"element": id}`` arrive as DOM elements."""
        wrapped = [{ELEMENT: a["element"]} if isinstance(a, dict) and "element" in a else a for a in args]
        return self._call("POST", "/execute/sync", {"script": script, "args": wrapped})

    def pointer_click(self, element: str, dx: int = 0, dy: int = 0) -> None:
        """Mouse press and release at (dx, dy) px from the element's centre (a real user's click)."""
        self._call("POST", "/actions", {"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "duration": 0, "origin": {ELEMENT: element},
                         "x": int(dx), "y": int(dy)},
                        {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})
        self._call("DELETE", "/actions")

    def screenshot(self, path: str | os.PathLike[str]) -> Path:
        png = base64.b64decode(self._call("GET", "/screenshot"))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(png)
        return Path(path)

    def requested_urls(self) -> list[str]:
        """Every URL the page asked the network for since the last call (Chrome's performance log)."""
        entries = self._call("POST", "/se/log", {"type": "performance"}) or []
        urls = []
        for e in entries:
            try:
                msg = json.loads(e["message"])["message"]
            except (KeyError, ValueError):
                continue
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        return urls

    def quit(self) -> None:
        try:
            self._http.delete(f"{self._base}/session/{self.session}", timeout=30)
        except Exception:
            pass
        self._http.close()
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "WebDriver":
        return self

    def __exit__(self, *exc) -> None:
        self.quit()


def external(urls: list[str], allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> list[str]:
    """The URLs that would leave this machine (data:, blob: and local hosts are fine)."""
    out = []
    for u in urls:
        p = urlparse(u)
        if p.scheme in ("data", "blob", "about", "chrome", "chrome-extension", "devtools"):
            continue
        if p.hostname not in allowed_hosts:
            out.append(u)
    return out
