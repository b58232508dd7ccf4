"""Soak: the studio served on 127.0.0.1 (its own process, as ``python app.py`` runs it) and driven
by 8 concurrent gradio_client sessions with a mixed load on the sample subject: predict, edit
sliders, frame changes, facial-map and rendered previews, short range renders, saved edits and
landmark CSVs.

The work is fixed, not the time: a warm-up (each session predicts, then makes every kind of
request once), then ``STUDIO_SOAK_PHASES`` (default 2) phases of ``STUDIO_SOAK_OPS`` (default 8) random requests
per session.

Checked: every request completes (or is refused with a message -- none are expected), each
session gets its own results (its speech length, its own edit values; no cross-talk), the
server's memory levels off (its idle memory after the last phase is within 25 % of that after
the one before: judged at idle, the verdict does not depend on how many requests a loaded machine
happened to overlap), and the server still serves a new session at the end. Figures (requests,
p50/p95 latency per request kind, idle and peak memory (PSS) and its curve, errors) are written as
JSON to ``$STUDIO_SOAK_REPORT`` (or the test's temporary folder) and logged.

Sessions: ``STUDIO_SOAK_SESSIONS`` (default 8).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import robust_media as rm

SAMPLE_FPS = 30  # the sample template's frame rate (sample_media/README.md)

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

OPS_PER_PHASE = int(os.environ.get("STUDIO_SOAK_OPS", "8"))
SESSIONS = int(os.environ.get("STUDIO_SOAK_SESSIONS", "8"))
PHASES = max(2, int(os.environ.get("STUDIO_SOAK_PHASES", "2")))
OPS = ["edit", "frame", "save", "csv", "range", "preview", "facemap", "predict"]


def _memory_mb(pid: int) -> float:
    """Proportional set size (PSS) of ``pid`` and its children (ffmpeg encoders) in MB. PSS, not
    RSS: a child between fork and exec shares all the server's pages, and RSS would count them
    twice."""
    total = 0.0
    pids = [str(pid)]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += (task / "children").read_text().split()
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    from ui_support import free_port

    base = tmp_path_factory.mktemp("soak")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(rm.REPO), GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               STUDIO_WORK_DIR=str(base / "work"), STUDIO_SUBJECTS_DIR=str(base / "subjects"),
               GRADIO_ANALYTICS_ENABLED="False")
    log_file = open(base / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=rm.REPO, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the studio exited: {(base / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        pytest.fail("the studio did not start within 180 s")
    try:
        yield {"url": url, "pid": proc.pid, "base": base, "log": base / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


class Session:
    """One browser session's worth of work, with what it expects back."""

    def __init__(self, k: int, url: str, speech: Path, stats) -> None:
        self.k, self.url, self.speech, self.stats = k, url, speech, stats
        self.rng = random.Random(1000 + k)
        self.frames = 0
        self.gain = 1.0
        self.errors: list[str] = []
        self.crosstalk: list[str] = []

    def call(self, kind: str, client, *args, api_name: str):
        t0 = time.monotonic()
        try:
            out = client.predict(*args, api_name=api_name)
        except Exception as exc:  # a refused or failed request: counted, the session goes on
            self.errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
            self.stats[kind].append(float("nan"))
            return None
        self.stats[kind].append(time.monotonic() - t0)
        return out

    def open(self) -> bool:
        """Connect and predict the session's own speech; False when that failed."""
        from gradio_client import Client

        self.client = Client(self.url, verbose=False)
        self.sample = str(rm.SAMPLE_SUBJECT.resolve())
        out = self._predict()
        if out is None:
            return False
        expected = int(round(float(self.speech.stem.split("_")[-1]) * SAMPLE_FPS))
        self.frames = expected
        if f"{expected} frames" not in out[-1]:
            self.crosstalk.append(f"predict summary {out[-1]!r}, expected {expected} frames")
        return True

    def _predict(self):
        from gradio_client import handle_file

        return self.call("predict", self.client, self.sample, handle_file(str(self.speech)), "template", None,
                         "ours", api_name="/predict")

    def run(self, ops: list[str]) -> None:
        """Do ``ops`` in order (a phase of the soak); an empty session (predict failed) does nothing."""
        for op in ops:
            if self.frames:
                self.do(op)

    def random_ops(self, n: int) -> list[str]:
        return self.rng.choices(OPS, weights=[5, 4, 3, 1, 1, 1, 1, 1], k=n)

    def do(self, op: str) -> None:
        client = self.client
        if op == "edit":
            self.gain = round(1.0 + 0.05 * self.k + self.rng.choice([0.0, 0.5, 1.0]), 2)
            from studio.ui.handlers import EditControls

            values = EditControls(mouth_open_gain=self.gain, range_end=1).values()
            values[0] = self.rng.choice([-1.0, 0.0, 1.0])
            self.call("edit", client, self.rng.randrange(self.frames), *values, api_name="/edit")
        elif op == "frame":
            self.call("show_frame", client, self.rng.randrange(self.frames), api_name="/show_frame")
        elif op == "save":
            path = self.call("save_edits", client, api_name="/save_edits")
            if path is not None:
                saved = json.loads(Path(path).read_text())
                if saved["mouth_open_gain"] != self.gain:
                    self.crosstalk.append(f"saved gain {saved['mouth_open_gain']}, session set {self.gain}")
        elif op == "csv":
            path = self.call("landmarks_csv", client, api_name="/landmarks_csv")
            if path is not None:
                rows = len(Path(path).read_text().strip().splitlines()) - 1
                if rows != self.frames:
                    self.crosstalk.append(f"csv has {rows} rows, session has {self.frames} frames")
        elif op == "range":
            a = self.rng.randrange(self.frames - 3)
            video = self.call("render_range", client, a, a + 3, "retrieval", 50, 150, api_name="/render_range")
            if video is not None:
                path = video.get("video") if isinstance(video, dict) else video
                from studio import media

                info = media.probe_video(path)
                if info.frames != 3 or (info.width, info.height) != (384, 384):
                    self.crosstalk.append(f"range render {info}")
        elif op == "preview":
            self.call("preview_frame", client, self.rng.randrange(self.frames), "retrieval", 50, 150,
                      api_name="/preview_frame")
        elif op == "facemap":
            self.call("facemap", client, self.rng.randrange(self.frames), 50, 150, "retrieval",
                      api_name="/facemap")
        else:  # predict again (cached by the server) keeps the session's own length
            out = self._predict()
            if out is not None and f"{self.frames} frames" not in out[-1]:
                self.crosstalk.append(f"re-predict summary {out[-1]!r}, expected {self.frames} frames")
            self.gain = 1.0  # predict keeps the session's edits: the next save still checks them
            self.call("reset_edits", client, 0, api_name="/reset_edits")


def _phase(sessions: list[Session], work) -> None:
    """Run ``work(session)`` for every session at once; wait for all of them."""
    threads = [threading.Thread(target=work, args=(s,), name=f"soak-{s.k}", daemon=True) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a session hung"


def _idle_memory_mb(pid: int) -> float:
    """The server's memory once idle: the lowest of 6 samples over 1.5 s (encoders have exited,
    responses are sent)."""
    samples = []
    for _ in range(6):
        time.sleep(0.25)
        samples.append(_memory_mb(pid))
    return round(min(samples), 1)


def _percentile(xs, q):
    xs = [x for x in xs if not np.isnan(x)]
    return float(np.percentile(xs, q)) if xs else float("nan")


def test_soak(server, tmp_path):
    import soundfile as sf

    speeches = []
    for k in range(SESSIONS):
        seconds = 2.0 + 0.24 * k  # a different length per session: its frame count identifies it
        p = tmp_path / f"speech_{seconds:.2f}.wav"
        sf.write(str(p), rm.sample_signal()[int(16000 * 0.5 * k): int(16000 * (0.5 * k + seconds))], 16000)
        speeches.append(p)
    stats: dict[str, list[float]] = defaultdict(list)
    sessions = [Session(k, server["url"], speeches[k], stats) for k in range(SESSIONS)]
    memory: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample_memory() -> None:
        while not stop.is_set():
            memory.append((round(time.monotonic() - t0, 1), round(_memory_mb(server["pid"]), 1)))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    # The same work in every run, whatever the machine's load: a warm-up (predict, then every kind
    # of request once), then PHASES phases of OPS_PER_PHASE random requests per session. Memory is
    # judged at idle after each phase (no request in flight, no encoder running), so how many
    # requests happened to overlap on a busy machine does not move the verdict; a leak does.
    _phase(sessions, lambda s: s.open() and s.run(OPS))
    idle = [_idle_memory_mb(server["pid"])]  # after the warm-up, then after each phase
    for _ in range(PHASES):
        _phase(sessions, lambda s: s.run(s.random_ops(OPS_PER_PHASE)))
        idle.append(_idle_memory_mb(server["pid"]))
    stop.set()
    sampler.join(5)
    wall = time.monotonic() - t0

    # the server is still healthy: a new session predicts and renders
    from gradio_client import Client, handle_file

    fresh = Client(server["url"], verbose=False)
    out = fresh.predict(str(rm.SAMPLE_SUBJECT.resolve()), handle_file(str(speeches[0])), "template", None, "ours",
                        api_name="/predict")
    assert f"{2 * SAMPLE_FPS} frames" in out[-1]  # the 2 s speech

    errors = [e for s in sessions for e in s.errors]
    crosstalk = [f"session {s.k}: {c}" for s in sessions for c in s.crosstalk]
    all_lat = [x for xs in stats.values() for x in xs]
    mem = [m for _, m in memory]
    half = len(mem) // 2
    report = {
        "sessions": SESSIONS, "seconds": round(wall, 1), "requests": len(all_lat), "errors": len(errors),
        "error_samples": errors[:5], "crosstalk": crosstalk[:5],
        "latency_s": {k: {"n": len(v), "p50": round(_percentile(v, 50), 3), "p95": round(_percentile(v, 95), 3)}
                      for k, v in sorted(stats.items())},
        "latency_all_s": {"p50": round(_percentile(all_lat, 50), 3), "p95": round(_percentile(all_lat, 95), 3)},
        "pss_mb": {"start": mem[0] if mem else None, "peak": max(mem) if mem else None,
                   "peak_first_half": max(mem[:half]) if half else None,
                   "peak_second_half": max(mem[half:]) if half else None, "end": mem[-1] if mem else None},
        "pss_idle_mb": idle,
        "pss_curve": memory[:: max(1, len(memory) // 40)],
    }
    target = Path(os.environ.get("STUDIO_SOAK_REPORT", tmp_path / "soak.json"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=1) + "\n")
    log.info("soak report: %s", json.dumps({k: v for k, v in report.items() if k != "pss_curve"}))
    print(json.dumps({k: v for k, v in report.items() if k != "pss_curve"}, indent=1))

    assert errors == [], errors[:5]
    assert crosstalk == [], crosstalk[:5]
    assert report["requests"] >= 4 * SESSIONS
    for kind in ("predict", "edit", "show_frame", "save_edits"):
        assert stats[kind], f"no {kind} requests were made"
    # memory levels off: at idle after the last phase the server holds no more than 25 % above
    # what it held after the one before (the same work again may fill bounded caches, nothing more)
    assert idle[-1] <= idle[-2] * 1.25, f"memory kept growing at idle: {idle} MB"
