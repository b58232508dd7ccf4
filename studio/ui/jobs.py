"""Long training jobs (make-subject, ablate) run as child processes of the studio.

A child process can be cancelled for real (its process group is terminated; every stage writes
atomically and resumes, so running the same job again continues where it stopped), its memory
goes back to the system when it ends, and a crash in training cannot take the web server down.
Progress is read from the files the job writes (clip caches, training state, checkpoints,
renderer samples), not from its console output, so nothing depends on log formats.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from studio.ui.session import REPO, server

log = logging.getLogger(__name__)

TERMINATE_GRACE = 5.0  # seconds between SIGTERM and SIGKILL on cancel


class Job:
    """``python -m studio ARGS...`` in its own process group; output goes to ``log_path``."""

    def __init__(self, args: Sequence[str], log_path: str | os.PathLike[str]) -> None:
        self.args = [str(a) for a in args]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cancelled = False
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "studio", *self.args], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO),
                                         env=env, start_new_session=True)
        log.info("job %d started: studio %s", self.proc.pid, " ".join(self.args))

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def cancel(self) -> None:
        """Terminate the job's whole process group (SIGTERM, then SIGKILL after a grace period)."""
        self.cancelled = True
        if not self.running:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if self.wait(TERMINATE_GRACE) is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()

    def error_text(self, lines: int = 6) -> str:
        """The job's last output lines (its ``error:`` / ``hint:`` lines when it failed cleanly)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = [ln for ln in text.splitlines() if ln.strip()][-40:]
        flagged = [ln for ln in tail if ln.startswith(("error:", "hint:"))]
        return "\n".join(flagged or tail[-lines:])


def start(session_id: str, args: Sequence[str], log_path: str | os.PathLike[str]) -> Job:
    """Start a job for a session; a session runs one job at a time (RuntimeError otherwise)."""
    with server().lock:
        jobs = server().jobs
        old = jobs.get(session_id)
        if old is not None and old.running:
            raise RuntimeError("a job is already running in this session")
        job = Job(args, log_path)
        jobs[session_id] = job
        return job


def current(session_id: str) -> Job | None:
    with server().lock:
        return server().jobs.get(session_id)


def cancel(session_id: str) -> bool:
    """Cancel the session's running job; True if there was one."""
    job = current(session_id)
    if job is None or not job.running:
        return False
    job.cancel()
    return True


def running_count() -> int:
    """How many studio jobs (any session's) are running now."""
    with server().lock:
        return sum(1 for job in server().jobs.values() if job.running)


# -- progress read from disk ------------------------------------------------------------------------

@dataclass(frozen=True)
class SubjectProgress:
    fraction: float
    stage: str
    histories: dict  # variant -> [epoch records]
    sample: str | None  # newest neural renderer sample sheet


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_history(ckpt_dir: Path) -> list[dict]:
    """Per-epoch records of a mapping checkpoint folder, finished or in progress."""
    from studio.train.mapping import STATE_DIR, STATE_JSON, TRAIN_LOG_JSON

    done = _read_json(ckpt_dir / TRAIN_LOG_JSON)
    if isinstance(done, list):
        return done
    state = _read_json(ckpt_dir / STATE_DIR / STATE_JSON)
    return list(state.get("history", [])) if isinstance(state, dict) else []


def subject_progress(out_dir: str | os.PathLike[str], n_videos: int, variants: Sequence[str],
                     neural: bool, max_epochs: int = 60) -> SubjectProgress:
    """How far a make-subject job in ``out_dir`` has come, from the files it wrote."""
    from studio.data.clip import CLIP_JSON
    from studio.models.checkpoint import CONFIG_NAME
    from studio.render.neural import CONFIG_FILE as NEURAL_JSON
    from studio.render.retrieval import POOL_JSON
    from studio.subject import MANIFEST
    from studio.train.renderer import SAMPLES_DIR

    out = Path(out_dir)
    n_stages = n_videos + len(variants) + 1 + int(neural)
    clips = min(len(list(out.glob(f"clips/*/{CLIP_JSON}"))), n_videos)
    done: float = clips
    stage = f"preprocessing footage ({clips}/{n_videos})" if clips < n_videos else ""
    histories = {}
    for v in variants:
        hist = training_history(out / "mapping" / v)
        histories[v] = hist
        if (out / "mapping" / v / CONFIG_NAME).is_file():
            done += 1
            continue
        done += min(0.99, len(hist) / max_epochs)
        if not stage:
            stage = f"training mapping '{v}': epoch {len(hist)}" if hist else f"training mapping '{v}'"
    pool = (out / "retrieval" / POOL_JSON).is_file()
    done += int(pool)
    if not stage and not pool:
        stage = "building the retrieval pool"
    sample = None
    if neural:
        samples = sorted((out / "neural" / SAMPLES_DIR).glob("*.jpg"))
        sample = str(samples[-1]) if samples else None
        if (out / "neural" / NEURAL_JSON).is_file():
            done += 1
        elif not stage:
            stage = "training the neural renderer" + (f" ({samples[-1].stem})" if samples else "")
    if (out / MANIFEST).is_file() and done >= n_stages:
        return SubjectProgress(1.0, "done", histories, sample)
    return SubjectProgress(min(0.99, done / n_stages), stage or "finishing", histories, sample)


def ablation_progress(out_dir: str | os.PathLike[str], n_models: int) -> tuple[float, str]:
    """(fraction, text) of an ablate job from its runs.csv."""
    from studio.train.ablate import RUNS_CSV, TABLE_CSV

    runs = Path(out_dir) / RUNS_CSV
    try:
        finished = max(0, len(runs.read_text().strip().splitlines()) - 1)
    except OSError:
        finished = 0
    if (Path(out_dir) / TABLE_CSV).is_file() and finished >= n_models:
        return 1.0, "done"
    return min(0.99, finished / max(1, n_models)), f"trained and evaluated {finished} of {n_models} models"


def poll(job: Job, interval: float = 1.0):
    """Yield while the job runs, every ``interval`` seconds (then once more after it ended)."""
    while job.running:
        yield
        time.sleep(interval)
    yield
