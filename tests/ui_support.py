"""Test material for the studio UI tests: a tiny trained subject and speech files.

``tiny_subject(base)`` builds (once per pytest run: pass ``tmp_path_factory.getbasetemp()``) a
complete subject folder from a short synthetic clip: preprocessed clip, 'ours' and 'no-pose'
mappings trained for two epochs, a retrieval pool and the manifest. Small enough to build in seconds; good enough
to exercise every handler (its predictions are not meant to be good).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

SAMPLE = REPO / "presets" / "sample_subject"
VARIANTS = ("ours", "no-pose")  # what the tiny subject has trained
_lock = threading.Lock()


def tiny_subject(base: Path, seconds: float = 16.0, seed: int = 1) -> Path:
    from studio.data.clip import Clip
    from studio.data.synth import synthesize
    from studio.fsutil import write_json_atomic
    from studio.render.retrieval import RetrievalPool
    from studio.subject import MANIFEST, SubjectManifest
    from studio.models.checkpoint import MappingModel
    from studio.train.mapping import train_mapping

    out = Path(base) / "ui_tiny_subject"
    with _lock:
        if (out / MANIFEST).is_file():
            return out
        clip_dir = out / "clips" / "synth"
        clip_dir.parent.mkdir(parents=True, exist_ok=True)
        if not (clip_dir / "clip.json").is_file():
            synthesize(clip_dir, seconds, seed, size=192)
        clip = Clip.load(clip_dir)
        for variant in VARIANTS:
            ckpt = train_mapping([clip], variant, out / "mapping" / variant, "cpu", 0, max_epochs=2)
            if variant == "ours":
                RetrievalPool.build([clip], pca=MappingModel.load(ckpt).pca).save(out / "retrieval")
        manifest = SubjectManifest(name="tiny", clips=("synth",), variants=VARIANTS, retrieval=True,
                                   neural=False, created=time.time())
        write_json_atomic(out / MANIFEST, dataclasses.asdict(manifest))
    return out


def speech_wav(path: Path, seconds: float = 3.0, seed: int = 3) -> Path:
    """Procedural speech-like audio (16 kHz mono wav)."""
    import soundfile as sf

    from studio.data.synth import procedural_speech

    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), procedural_speech(seconds, seed), 16000)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_or_tiny(base: Path) -> Path:
    """The bundled sample subject when it exists, else the tiny synthetic one."""
    if (SAMPLE / "subject.json").is_file():
        return SAMPLE
    return tiny_subject(base)


def studio_env(base: Path, subject: Path) -> dict[str, str]:
    """Environment for a studio under test: its own work and subjects folders, the subject linked in."""
    subjects = Path(base) / "ui_subjects"
    subjects.mkdir(parents=True, exist_ok=True)
    link = subjects / subject.name
    if subject.resolve() != SAMPLE.resolve() and not link.exists():
        os.symlink(subject, link)
    return {"STUDIO_SUBJECTS_DIR": str(subjects), "STUDIO_WORK_DIR": str(Path(base) / "ui_work"),
            "GRADIO_ANALYTICS_ENABLED": "False"}


def video_stats(path: Path) -> dict:
    """Frames, fps, duration and audio presence of an mp4 (via studio.media)."""
    from studio import media

    info = media.probe_video(path)
    audio = media.read_audio(path) if info.has_audio else np.zeros(0, np.float32)
    return {"frames": info.frames, "fps": info.fps, "duration": info.duration, "has_audio": info.has_audio,
            "audio_seconds": len(audio) / 16000, "width": info.width, "height": info.height}
