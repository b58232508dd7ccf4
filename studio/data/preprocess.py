"""Preprocess a talking-head video into a clip cache (``studio.data.clip``).

video (+ optional separate speech) -> per frame: 68 landmarks (found / valid flags, short gaps
interpolated), head pose (yaw, pitch, roll), nose centre and face scale, face box; and the
speech's logfbank features aligned to the frames (4 per frame), written atomically with
``Clip.save`` (including audio.wav).

Cache: the key is the sha256 of the video's bytes, the audio file's bytes (if any), the backend,
the settings and PREPROCESS_VERSION. If ``out_dir/clip.json`` exists with the same key it is
loaded instead of recomputed. ``Clip.save`` renames a complete folder into place, so a crash
mid-write leaves no clip.json that could be trusted.

CLI: ``python -m studio preprocess VIDEO [--audio AUDIO] [--backend mediapipe|fan] --out DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from studio import media
from studio.audio import SAMPLE_RATE, FEATURES_PER_VIDEO_FRAME, N_FILTERS, features_for_video
from studio.config import from_dict, to_dict
from studio.data.clip import CACHE_VERSION, CLIP_JSON, Clip, ClipMeta
from studio.errors import CheckpointError, InputError
from studio.face.landmarks import BACKENDS, LandmarkConfig, make_backend
from studio.face.layout import CONTOURS
from studio.face.normalize import face_scale, nose_centre
from studio.face.pose import head_pose, smooth_pose
from studio.fsutil import sha256_file

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1  # bump when the computation changes, so old caches are recomputed
MIN_SCALE = 1e-3  # pixels; keeps the face scale positive for degenerate landmark sets

Progress = Callable[[int, int], None]  # (frames done, frames total)


@dataclass(frozen=True)
class PreprocessConfig:
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    pose_window: int = 5  # frames of the centred moving average applied to head pose (1 = raw)
    require_audio: bool = False  # no speech (no --audio and no audio track) -> InputError

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PreprocessConfig":
        """From a preset section; a nested ``landmarks`` table becomes a LandmarkConfig."""
        d = dict(data or {})
        lm = from_dict(LandmarkConfig, d.pop("landmarks", None), where="preprocess.landmarks")
        return dataclasses.replace(from_dict(cls, d, where="preprocess"), landmarks=lm)


def cache_key(video: Path, audio: Path | None, backend: str, config: PreprocessConfig,
              stop: int | None = None) -> str:
    """sha256 hex of everything the clip depends on."""
    h = hashlib.sha256()
    parts = {
        "preprocess_version": PREPROCESS_VERSION, "cache_version": CACHE_VERSION,
        "video": sha256_file(video), "audio": sha256_file(audio) if audio else "",
        "backend": backend, "config": to_dict(config), "stop": stop,
    }
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _cached(out_dir: Path, key: str, video: Path | None = None) -> Clip | None:
    if not (out_dir / CLIP_JSON).exists():
        return None
    try:
        clip = Clip.load(out_dir)
    except CheckpointError as exc:
        log.warning("ignoring the cache in %s: %s", out_dir, exc.message)
        return None
    if clip.meta.source_sha256 != key:
        return None
    here = str(video.resolve()) if video is not None else None
    if here is not None and not clip.meta.synthetic and clip.meta.video != here:
        # The key hashes the video's bytes: the same video now at another path (the first copy may
        # be gone). Read frames from the path asked for, not the one the cache was made from.
        old = clip.meta.video
        meta = dataclasses.replace(clip.meta, video=here, source=here,
                                   audio_source=here if clip.meta.audio_source == old else clip.meta.audio_source)
        clip = dataclasses.replace(clip, meta=meta)
    return clip


def _frames_with_progress(frames: Iterable[np.ndarray], total: int,
                          progress: bool | Progress) -> Iterator[np.ndarray]:
    if callable(progress):
        for i, f in enumerate(frames):
            yield f
            progress(i + 1, total)
        return
    from tqdm import tqdm

    yield from tqdm(frames, total=total, unit="frame", desc="landmarks", disable=None if progress else True)


def preprocess(video: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
               audio: str | os.PathLike[str] | None = None, backend: str = "mediapipe",
               config: PreprocessConfig = PreprocessConfig(), stop: int | None = None,
               force: bool = False, progress: bool | Progress = True,
               limits: media.MediaLimits = media.MediaLimits(), backend_kw: dict | None = None) -> Clip:
    """Preprocess ``video`` into ``out_dir`` and return the loaded Clip (cached by content).

    audio: a separate speech file; default the video's own audio track (none -> zero features
    and audio_seconds=0, or InputError when ``config.require_audio``). stop: process only the
    first ``stop`` frames. force: recompute even if the cache matches. progress: tqdm bar
    (True), nothing (False), or a callable(done, total). Raises InputError / LimitError for bad
    input, NoFaceError if no frame has a face, WeightsError if model files are unavailable.
    """
    if backend not in BACKENDS:
        raise InputError(f"Unknown landmark backend {backend!r}.", f"Use one of {list(BACKENDS)}.")
    video = Path(video)
    out_dir = Path(out_dir)
    audio_path = Path(audio) if audio is not None else None
    info = media.probe_video(video)
    media.check_video(info, limits)
    if audio_path is not None and not audio_path.is_file():
        raise InputError(f"Audio file {audio_path} does not exist.", "Check the path of the speech file.")
    key = cache_key(video, audio_path, backend, config, stop)
    if not force and (clip := _cached(out_dir, key, video)) is not None:
        log.info("%s: reusing the cached clip in %s", video.name, out_dir)
        return clip

    t0 = time.perf_counter()
    signal, audio_source = _read_speech(video, info, audio_path, config, limits)

    total = info.frames if stop is None else min(info.frames, int(stop))
    t_lm = time.perf_counter()
    with make_backend(backend, config.landmarks, **(backend_kw or {})) as be:
        frames = _frames_with_progress(media.iter_frames(video, 0, stop), total, progress)
        track = be.track(frames, fps=info.fps, source=str(video))
    t_landmarks = time.perf_counter() - t_lm

    n = track.frames
    pose = smooth_pose(head_pose(track.landmarks, info.width, info.height), config.pose_window)
    if signal is not None:
        signal = signal[: int(np.ceil(n / info.fps * SAMPLE_RATE))]
        feats = features_for_video(signal, info.fps, n)
    else:
        feats = np.zeros((FEATURES_PER_VIDEO_FRAME * n, N_FILTERS), np.float32)
    meta = ClipMeta(
        source=str(video.resolve()), source_sha256=key, fps=float(info.fps), frames=n,
        width=info.width, height=info.height, faces_found=int(track.found.sum()), backend=backend,
        audio_seconds=float(len(signal) / SAMPLE_RATE) if signal is not None else 0.0,
        video=str(video.resolve()), audio_source=audio_source,
        extras={"valid_frames": int(track.valid.sum()), "long_gaps": [list(g) for g in track.long_gaps],
                "config": to_dict(config), "stop": stop,
                "seconds": round(time.perf_counter() - t0, 3), "landmark_seconds": round(t_landmarks, 3)},
    )
    clip = Clip(
        meta=meta, landmarks=track.landmarks, found=track.found, valid=track.valid, pose=pose,
        centre=nose_centre(track.landmarks).astype(np.float32),
        scale=np.maximum(face_scale(track.landmarks), MIN_SCALE).astype(np.float32),
        boxes=track.boxes, audio=feats,
    )
    wav = media.wav_bytes(signal) if signal is not None and len(signal) else None
    clip = clip.save(out_dir, audio_wav=wav)
    log.info("%s: %d frames, face in %d, %.1f frames/s -> %s", video.name, n, meta.faces_found,
             n / max(t_landmarks, 1e-9), out_dir)
    return clip


def _read_speech(video: Path, info: media.VideoInfo, audio: Path | None, config: PreprocessConfig,
                 limits: media.MediaLimits) -> tuple[np.ndarray | None, str]:
    if audio is not None:
        signal = media.read_audio(audio)
        media.check_audio_seconds(len(signal) / SAMPLE_RATE, limits)
        return signal, str(audio.resolve())
    if info.has_audio:
        return media.read_audio(video), str(video.resolve())
    if config.require_audio:
        raise InputError(f"{video.name} has no audio track and no speech file was given.",
                         "Pass the speech with --audio, or use a video with sound.")
    log.info("%s has no audio: audio features are zeros", video.name)
    return None, ""


# -- checking by eye ----------------------------------------------------------------------------
def overlay_image(frame: np.ndarray, landmarks: np.ndarray, *, box: np.ndarray | None = None,
                  valid: bool = True, radius: int | None = None) -> np.ndarray:
    """Draw 68 landmarks (68, 2) (contours + points) and an optional box on a copy of an RGB
    uint8 (H, W, 3) frame. Invalid frames are drawn in red instead of green."""
    import cv2

    img = np.ascontiguousarray(np.asarray(frame, np.uint8).copy())
    pts = np.asarray(landmarks, np.float32)
    size = float(np.ptp(pts[:, 0]) + np.ptp(pts[:, 1])) / 2 if len(pts) else 100.0
    r = radius or max(1, int(round(size / 90)))
    line = (0, 220, 0) if valid else (230, 40, 40)
    dot = (255, 40, 40) if valid else (255, 255, 0)
    for _, idx, closed in CONTOURS:
        poly = np.round(pts[list(idx)]).astype(np.int32)
        cv2.polylines(img, [poly], closed, line, max(1, r // 2), cv2.LINE_AA)
    for x, y in pts:
        cv2.circle(img, (int(round(x)), int(round(y))), r, dot, -1, cv2.LINE_AA)
    if box is not None:
        x0, y0, x1, y1 = np.round(np.asarray(box)).astype(int)
        cv2.rectangle(img, (x0, y0), (x1, y1), (255, 200, 0), max(1, r // 2))
    return img


# -- benchmark ----------------------------------------------------------------------------------
def _fan_random_weights_dir(tmp: Path) -> Path:
    """A weights folder with a randomly initialised 2D-FAN (speed does not depend on values)
    and the BlazeFace files from the real weights folder."""
    import torch
    from face_alignment.models import FAN

    from studio.face import weights

    root = tmp / "weights"
    (root / "face_alignment").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), root / weights.REGISTRY["fan_2d"].file)
    for name in ("blazeface_back", "blazeface_back_anchors"):
        (root / weights.REGISTRY[name].file).symlink_to(weights.weights_path(name).resolve())
    return root


def benchmark(video: str | os.PathLike[str], *, max_frames: int | None = None, fan_frames: int = 20) -> dict:
    """Frames/s of preprocessing ``video``: decode alone, the mediapipe backend (decode +
    landmarks), the whole mediapipe preprocess (+ pose, audio, save), and the fan backend
    (2D-FAN with RANDOM weights + BlazeFace, on the first ``fan_frames`` frames)."""
    info = media.probe_video(video)
    n = info.frames if max_frames is None else min(info.frames, max_frames)
    out: dict[str, Any] = {"video": str(video), "width": info.width, "height": info.height,
                           "frames": n, "cpu_count": os.cpu_count()}
    t = time.perf_counter()
    count = sum(1 for _ in media.iter_frames(video, 0, n))
    out["decode_fps"] = count / (time.perf_counter() - t)
    with make_backend("mediapipe") as be:
        t = time.perf_counter()
        res = be.track(media.iter_frames(video, 0, n), fps=info.fps, source=str(video))
        out["mediapipe_fps"] = res.frames / (time.perf_counter() - t)
        out["mediapipe_found_fraction"] = float(res.found.mean())
    with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
        t = time.perf_counter()
        preprocess(video, Path(tmp) / "clip", stop=n, progress=False, force=True)
        out["preprocess_mediapipe_fps"] = n / (time.perf_counter() - t)
        fan_root = _fan_random_weights_dir(Path(tmp))
        old = os.environ.get("STUDIO_WEIGHTS_DIR")
        os.environ["STUDIO_WEIGHTS_DIR"] = str(fan_root)
        try:
            m = min(n, fan_frames)
            with make_backend("fan") as be:
                frames = list(media.iter_frames(video, 0, m))
                t = time.perf_counter()
                dets = list(be._track_raw(frames, info.fps))
                out["fan_random_weights_fps"] = m / (time.perf_counter() - t)
                out["fan_frames"] = m
                out["fan_found_fraction"] = float(np.mean([d is not None for d in dets]))
        finally:
            if old is None:
                os.environ.pop("STUDIO_WEIGHTS_DIR", None)
            else:
                os.environ["STUDIO_WEIGHTS_DIR"] = old
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}


# -- CLI ------------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="talking-head video file")
    parser.add_argument("--audio", help="separate speech file (default: the video's own audio track)")
    parser.add_argument("--backend", choices=BACKENDS, default="mediapipe", help="landmark backend")
    parser.add_argument("--out", required=True, help="clip folder to write")
    parser.add_argument("--max-gap", type=int, default=LandmarkConfig.max_gap,
                        help="longest run of frames without a face that is interpolated")
    parser.add_argument("--require-audio", action="store_true", help="fail if there is no speech")
    parser.add_argument("--force", action="store_true", help="recompute even if the cache matches")
    parser.add_argument("--overlay", metavar="PNG", help="also save frame 0 with its landmarks drawn")


def cli(args: argparse.Namespace) -> int:
    import cv2

    cfg = PreprocessConfig(landmarks=LandmarkConfig(max_gap=args.max_gap), require_audio=args.require_audio)
    clip = preprocess(args.video, args.out, audio=args.audio, backend=args.backend, config=cfg,
                      force=args.force)
    m = clip.meta
    log.info("clip %s: %d frames at %.3g fps, %dx%d, face found in %d (%d valid), audio %.2f s",
             args.out, m.frames, m.fps, m.width, m.height, m.faces_found, int(clip.valid.sum()),
             m.audio_seconds)
    if args.overlay:
        frame = media.read_frames(clip.video_path, [0])[0]
        img = overlay_image(frame, clip.landmarks[0], box=clip.boxes[0], valid=bool(clip.valid[0]))
        if not cv2.imwrite(str(args.overlay), img[..., ::-1]):
            raise InputError(f"Cannot write {args.overlay}.", "Use a .png or .jpg path in a writable folder.")
    return 0
