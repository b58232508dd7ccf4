"""What the studio keeps between events: the shared pipeline, subject discovery, per-session state.

Nothing here imports gradio, so it is cheap to test. One :class:`~studio.pipeline.Pipeline` (and
with it one :class:`~studio.manager.ModelManager`) serves every browser session of the process;
it is created on first use, never at import. Everything a user changes lives in that user's
:class:`DubState` (held in a ``gr.State``), so two sessions never see each other's files or edits.

Folders:
    presets/<name>/subject.json      bundled subjects (the sample is preselected)
    $STUDIO_SUBJECTS_DIR/<name>/     subjects made in the studio
                                     (default ~/.local/share/lip-sync-studio/subjects)
    $STUDIO_WORK_DIR/                scratch and outputs, the only folder the web server may serve
                                     (default <tmp>/lip-sync-studio); sessions/<id>/ per session
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.edits import Edits
from studio.lru import LRU
from studio.subject import MANIFEST, Subject

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
PRESETS_DIR = REPO / "presets"
SAMPLE_SUBJECT = "sample_subject"
SAMPLE_MEDIA_DIR = REPO / "sample_media"
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".aac")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


def user_subjects_dir() -> Path:
    env = os.environ.get("STUDIO_SUBJECTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "lip-sync-studio" / "subjects"


def work_dir() -> Path:
    env = os.environ.get("STUDIO_WORK_DIR")
    return (Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "lip-sync-studio").resolve()


@dataclass(frozen=True)
class SubjectEntry:
    """A subject folder found on disk: ``label`` for the dropdowns, ``path`` as the value."""

    label: str
    path: str
    bundled: bool


def discover_subjects(extra_dirs: tuple[Path, ...] = ()) -> list[SubjectEntry]:
    """Complete subject folders (those with a readable manifest): bundled ones first, the sample
    first of all, then the user's, each group sorted by name."""
    found: list[SubjectEntry] = []
    seen: set[str] = set()
    for root, bundled in [(PRESETS_DIR, True), (user_subjects_dir(), False)] + [(d, False) for d in extra_dirs]:
        if not root.is_dir():
            continue
        group = []
        for d in sorted(root.iterdir()):
            if not (d / MANIFEST).is_file() or str(d.resolve()) in seen:
                continue
            try:
                subject = Subject.load(d)
            except Exception as exc:  # a broken folder must not hide the others
                log.warning("skipping subject folder %s: %s", d, exc)
                continue
            seen.add(str(d.resolve()))
            tag = " (sample)" if bundled and d.name == SAMPLE_SUBJECT else (" (bundled)" if bundled else "")
            group.append((d.name != SAMPLE_SUBJECT, SubjectEntry(subject.name + tag, str(d.resolve()), bundled)))
        found += [e for _, e in sorted(group, key=lambda x: (x[0], x[1].label))]
    return found


def default_subject(entries: list[SubjectEntry]) -> str | None:
    return entries[0].path if entries else None


def sample_speeches(subject_dir: str | None = None) -> list[str]:
    """Audio files offered as ready-made speech: sample_media/ and a subject's speech/ folder."""
    out: list[str] = []
    dirs = [SAMPLE_MEDIA_DIR] + ([Path(subject_dir) / "speech"] if subject_dir else [])
    for d in dirs:
        if d.is_dir():
            out += [str(p) for p in sorted(d.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS]
    return out


def safe_name(text: str) -> str:
    """A folder name from a user's text: letters, digits, '-', '_' and '.' only."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("._")
    return name[:64]


# -- what the server holds for all sessions ----------------------------------------------------------

def _track_cache() -> LRU:
    return LRU(8)  # template sha -> CropTrack over the template's own frames


def _face_cache() -> LRU:
    return LRU(256, max_bytes=32 << 20)  # (template sha, frame) -> zoomed face for the viewer


@dataclass(eq=False)
class ServerState:
    """Everything the studio's server keeps across sessions, in one place (what belongs to one
    session is in its :class:`DubState`): the pipeline (models and data caches, created on first
    use), the viewer's derived images (bounded, keyed by content), each session's cancel flag and
    each session's training job (:mod:`studio.ui.jobs`). One per process: :func:`server`."""

    pipeline: Any = None
    tracks: LRU = field(default_factory=_track_cache)
    faces: LRU = field(default_factory=_face_cache)
    cancel_tokens: dict[str, threading.Event] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)  # session id -> studio.ui.jobs.Job
    lock: threading.RLock = field(default_factory=threading.RLock)


_server = ServerState()


def server() -> ServerState:
    """The process's :class:`ServerState`."""
    return _server


def get_pipeline():
    """The server's :class:`studio.pipeline.Pipeline` (created on first use)."""
    state = server()
    with state.lock:
        if state.pipeline is None:
            from studio.manager import default_manager
            from studio.media import MediaLimits
            from studio.pipeline import Pipeline, PipelineConfig

            config = PipelineConfig(limits=MediaLimits.from_env())  # STUDIO_MAX_* (see MediaLimits)
            state.pipeline = Pipeline(default_manager(), config, work_dir=work_dir())
        return state.pipeline


def set_pipeline(pipeline) -> None:
    """Replace the server's pipeline (tests use a small one; None: a new one on next use). The
    viewer's images derived with the old one are dropped with it."""
    state = server()
    with state.lock:
        state.pipeline = pipeline
        state.tracks, state.faces = _track_cache(), _face_cache()


# -- per-session state ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DubState:
    """One browser session's Dub tab. Handlers return a new value; nothing is shared.

    prediction: the mapping network's output for (subject, speech, template, variant), kept so
        that edits re-run only :meth:`Pipeline.landmarks` (no network, no render).
    lms: the landmarks with ``edits`` applied (what the overlay and the render use).
    one_step_subjects: (label, folder) of the subjects this session's one-step dubs built; they
        live in the cache, not in the subject folders, so only this session's dropdown offers them.
    """

    session_id: str = ""
    subject_dir: str | None = None
    speech_path: str | None = None
    template: str | None = None  # a clip name of the subject, or an uploaded video's path
    variant: str = "ours"
    prediction: object | None = None
    edits: Edits = field(default_factory=Edits)
    lms: object | None = None
    outputs: tuple[str, ...] = ()
    one_step_subjects: tuple[tuple[str, str], ...] = ()

    @classmethod
    def new(cls) -> "DubState":
        return cls(session_id=uuid.uuid4().hex[:16])

    def replace(self, **changes) -> "DubState":
        return dataclasses.replace(self, **changes)

    @property
    def frames(self) -> int:
        return 0 if self.lms is None else int(self.lms.points.shape[0])

    def folder(self) -> Path:
        """This session's output folder (created on demand, inside the work folder)."""
        sid = safe_name(self.session_id) or "anonymous"
        d = work_dir() / "sessions" / sid
        d.mkdir(parents=True, exist_ok=True)
        return d


def drop_session(state) -> None:
    """Delete a closed session's output folder and its cancel token (gr.State delete callback)."""
    sid = getattr(state, "session_id", "")
    if not sid:
        return
    with server().lock:
        server().cancel_tokens.pop(sid, None)
    d = work_dir() / "sessions" / safe_name(sid)
    if d.is_dir():
        shutil.rmtree(d, ignore_errors=True)


# -- cancellation of long jobs, per session ---------------------------------------------------------

def cancel_token(session_id: str) -> threading.Event:
    """The session's cancel flag (one per session; a new job clears it when it starts)."""
    with server().lock:
        return server().cancel_tokens.setdefault(session_id or "anonymous", threading.Event())
