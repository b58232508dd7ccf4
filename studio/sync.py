"""End-to-end sync check: does a rendered dub move its mouth like the REAL video of the same speech?

    python -m studio sync-check DUB.mp4 REAL.mp4 [--real-audio WAV] [--template VIDEO]

The dub was made from some speech; REAL.mp4 is a real video of that same speech (its own audio
track, or a separate wav given with ``--real-audio``). Landmarks are re-detected on both videos
(``studio.data.preprocess``, cached by content in a work folder), the dub's landmarks are put on the
real video's frame times (``metrics.resample``; the dub may have another frame rate or length: the
overlapping duration from t = 0 is compared) and scored with :func:`studio.metrics.compare_tracks`
on the frames where both have a valid face. Two reference rows are computed the same way:

- ``template`` (with ``--template``): the template video's own re-detected landmarks, i.e. the
  same face with NO lip sync. Its mouth moves too (blinks, its own speech), so it shows how much
  correlation the measure gives for free. A template shorter than the overlap is not looped: that
  row covers the common length only (its ``frames`` says how many; ``notes`` says so).
- ``energy``: the trivial predictor, the per-frame log RMS energy of the dub's audio track fitted
  linearly to the real openings (:func:`studio.metrics.score_energy`; fitted on the scored frames,
  so if anything optimistic).

A dub that is in sync has ``dub.inner_r`` well above ``template.inner_r`` and near or above
``energy.inner_r``, a best ``inner_lag`` near 0 (> 0: the dub's mouth is late) and an
``inner_amplitude`` near 1 (< 1: the dub's mouth moves less than the real one).

When both the dub's audio and the real speech are available, ``audio_match`` correlates their
per-frame log energies: a low value means the dub was not made from the real video's speech (or
is offset from it), and then no row means anything.

The command prints a short table on stderr and ONE JSON object (the :func:`sync_check` result) on
the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from studio import media, metrics
from studio.audio import frame_energy
from studio.errors import InputError, NoFaceError
from studio.face.landmarks import BACKENDS
from studio.fsutil import json_safe, sha256_file

log = logging.getLogger(__name__)

MIN_SECONDS = 2.0  # shortest overlap (and shortest run of valid frames) worth scoring
MIN_AUDIO_RMS = 1e-4  # below this the audio track is treated as silent
AUDIO_MATCH_MIN = 0.3  # log-energy r below this: the dub's speech is probably not the real video's


FIELD_LAG = 3  # frames: the best-lag window sync is usually read in


def default_work_dir() -> Path:
    """Where re-detected landmarks are cached between runs (next to the pipeline's own cache);
    the sync check and the quality check (``studio.render.quality``) share it."""
    return Path(tempfile.gettempdir()) / "lip-sync-studio" / "sync"


def check_video(path: str | os.PathLike[str], what: str) -> tuple[Path, media.VideoInfo]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"The {what} {p} does not exist.", f"Check the path of the {what}.")
    return p, media.probe_video(p)


def _frames_needed(info: media.VideoInfo, seconds: float) -> int:
    """Frames of ``info`` that cover the first ``seconds`` (one more for interpolation)."""
    return int(min(info.frames, math.ceil(seconds * info.fps) + 1))


def detect_landmarks(video: Path, info: media.VideoInfo, frames: int, work_dir: Path, backend: str,
                     progress: bool, check: str = "sync check"):
    """Preprocess the first ``frames`` frames of ``video`` into a clip folder cached in ``work_dir``
    (by content, backend and length). ``check`` names the caller in the no-face message."""
    from studio.data.preprocess import preprocess

    stop = None if frames >= info.frames else frames
    name = f"{sha256_file(video)[:16]}-{backend}-{stop or 'all'}"
    try:
        return preprocess(video, work_dir / name, backend=backend, stop=stop, progress=progress)
    except NoFaceError as exc:
        raise NoFaceError(exc.message, f"The {check} needs a visible face in every video it compares: check "
                          "that the file is the right one and shows a face.") from exc


def _on_times(clip, n: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """A clip's landmarks and valid flags resampled onto ``n`` frames at ``fps`` (frame k at k/fps).

    A resampled frame is valid only when both source frames it is interpolated from are valid.
    """
    src_fps = clip.meta.fps
    pts = metrics.resample(clip.landmarks, src_fps, n, fps)
    valid = metrics.resample(clip.valid.astype(np.float64), src_fps, n, fps) > 1.0 - 1e-6
    return pts, valid


def _audio_signal(path: Path) -> np.ndarray | None:
    """The file's sound (16 kHz mono), or None when it has no audio or only silence."""
    try:
        signal = media.read_audio(path)
    except InputError:
        return None
    if signal.size == 0 or float(np.sqrt(np.mean(signal.astype(np.float64) ** 2))) < MIN_AUDIO_RMS:
        return None
    return signal


def sync_check(dub_video: str | os.PathLike[str], real_video: str | os.PathLike[str], *,
               real_audio: str | os.PathLike[str] | None = None,
               template_video: str | os.PathLike[str] | None = None,
               work_dir: str | os.PathLike[str] | None = None, backend: str = "mediapipe",
               max_lag: int = metrics.MAX_LAG, progress: bool = False,
               tracks: bool = False) -> dict[str, Any]:
    """Score a rendered dub against the real video of its speech (see the module docstring).

    dub_video: the rendered dub (with the speech as its audio track). real_video: a real video of
    the same speech, aligned with it at t = 0. real_audio: the real video's speech when it is a
    separate file (used for ``audio_match``, and for the energy row when the dub has no sound).
    template_video: the dub's template, for the no-lip-sync reference row. work_dir: where the
    re-detected landmarks are cached (default :func:`default_work_dir`). max_lag: frames (of the
    real video's rate) searched each way for the best lag. tracks: also return the compared
    series under ``"tracks"`` (numpy arrays; not JSON).

    Returns ``{"dub": {...}, "template": {...} | None, "energy": {...}, "frames", "fps", ...}``
    where each row holds :func:`studio.metrics.compare_tracks`' keys (``inner_r``, ``inner_lag``,
    ``inner_r_best``, ``inner_amplitude``, the same for ``outer`` and ``chin``, and
    ``mouth_lmd`` except for the energy row) plus ``frames`` and ``valid_frames``.
    Raises InputError (missing file, no sound at all, overlap under 2 s), NoFaceError (no face,
    or under 2 s of frames with a face in both videos).
    """
    (dub_path, dub_info), (real_path, real_info), (tpl_path, tpl_info) = check_videos(
        dub_video, real_video, template_video, backend)
    real_audio_path = Path(real_audio) if real_audio is not None else None
    if real_audio_path is not None and not real_audio_path.is_file():
        raise InputError(f"The real audio {real_audio_path} does not exist.", "Check the path of the speech file.")

    fps = float(real_info.fps)
    seconds = min(dub_info.duration, real_info.duration)
    n = int(min(real_info.frames, math.floor(seconds * fps + 1e-6)))
    if n < MIN_SECONDS * fps:
        raise InputError(f"The dub ({dub_info.duration:.2f} s) and the real video ({real_info.duration:.2f} s) "
                         f"overlap for only {n / fps:.2f} s.",
                         f"The sync check needs at least {MIN_SECONDS:g} s of both: use longer videos "
                         "that start with the same speech.")
    notes: list[str] = []
    if abs(dub_info.duration - real_info.duration) > 0.5:
        notes.append(f"the dub lasts {dub_info.duration:.2f} s and the real video {real_info.duration:.2f} s: "
                     f"the first {n / fps:.2f} s are compared")

    m_tpl = 0
    if tpl_info is not None:
        m_tpl = int(min(n, math.floor(tpl_info.duration * fps + 1e-6)))
        if m_tpl < MIN_SECONDS * fps:
            raise InputError(f"The template {tpl_path.name} lasts only {tpl_info.duration:.2f} s.",
                             f"The template row needs at least {MIN_SECONDS:g} s: use a longer template "
                             "or leave --template out.")
        if m_tpl < n:
            notes.append(f"the template ({tpl_info.duration:.2f} s) is shorter than the compared "
                         f"{n / fps:.2f} s: its row covers the first {m_tpl / fps:.2f} s only (not looped)")

    # The speech that the dub was made from (for the energy row), checked before any heavy work.
    signal, energy_source = _audio_signal(dub_path), "dub"
    real_signal = _audio_signal(real_audio_path) if real_audio_path is not None else (
        _audio_signal(real_path) if real_info.has_audio else None)
    if signal is None:
        if real_signal is None:
            raise InputError(f"Neither the dub ({dub_path.name}) nor the real video has sound.",
                             "Use the dub with its speech track (as `studio dub` writes it), or pass the "
                             "real speech with --real-audio.")
        signal, energy_source = real_signal, "real"
        notes.append("the dub has no sound: the energy row uses the real video's speech")

    work = Path(work_dir) if work_dir is not None else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    seconds = n / fps
    real_clip = detect_landmarks(real_path, real_info, _frames_needed(real_info, seconds), work, backend, progress)
    dub_clip = detect_landmarks(dub_path, dub_info, _frames_needed(dub_info, seconds), work, backend, progress)
    n = min(n, real_clip.meta.frames)
    m_tpl = min(m_tpl, n)
    real_pts, real_valid = real_clip.landmarks[:n].astype(np.float64), real_clip.valid[:n].astype(bool)
    dub_pts, dub_valid = _on_times(dub_clip, n, fps)

    def row(points: np.ndarray, valid: np.ndarray, m: int, what: str) -> tuple[dict[str, Any], np.ndarray]:
        mask = valid[:m] & real_valid[:m]
        k = int(mask.sum())
        if k < MIN_SECONDS * fps:
            raise NoFaceError(f"Only {k} frames ({k / fps:.1f} s) have a face in both the {what} and the "
                              f"real video ({real_path.name}).",
                              f"The sync check needs at least {MIN_SECONDS:g} s where the face is visible "
                              "in both: check the videos, or try the other landmark backend.")
        scores = metrics.compare_tracks(points[:m], real_pts[:m], mask=mask, max_lag=max_lag)
        # the field's reading (SyncNet-style): r at the best lag within +-3 frames, the lag apart
        near = metrics.compare_tracks(points[:m], real_pts[:m], mask=mask, max_lag=FIELD_LAG, shape=False)
        scores |= {"inner_r_best3": near["inner_r_best"], "inner_lag3": near["inner_lag"]}
        return {**scores, "frames": m, "valid_frames": k}, mask

    dub_row, mask = row(dub_pts, dub_valid, n, f"dub ({dub_path.name})")

    tpl_row = None
    tpl_series = None
    if tpl_path is not None:
        tpl_clip = detect_landmarks(tpl_path, tpl_info, _frames_needed(tpl_info, seconds), work, backend, progress)
        tpl_pts, tpl_valid = _on_times(tpl_clip, m_tpl, fps)
        tpl_row, _ = row(tpl_pts, tpl_valid, m_tpl, f"template ({tpl_path.name})")
        tpl_series = tpl_pts

    energy = frame_energy(signal, n, fps)
    energy_row = {**metrics.score_energy(energy, real_pts, mask=mask, max_lag=max_lag),
                  "frames": n, "valid_frames": int(mask.sum()), "source": energy_source}

    audio_match = None
    if energy_source == "dub" and real_signal is not None:
        real_energy = frame_energy(real_signal, n, fps)
        lag, r_best = metrics.best_lag(metrics.log_energy(energy), metrics.log_energy(real_energy), max_lag)
        r0 = metrics.pearson(metrics.log_energy(energy), metrics.log_energy(real_energy))
        audio_match = {"r": r0, "lag": lag, "r_best": r_best}
        if r_best < AUDIO_MATCH_MIN:
            notes.append(f"the dub's audio does not match the real video's speech (log-energy r {r_best:.2f}): "
                         "the scores compare different speech")
            log.warning("sync-check: %s", notes[-1])

    result: dict[str, Any] = {
        "dub": dub_row, "template": tpl_row, "energy": energy_row,
        "frames": n, "fps": fps, "seconds": n / fps, "valid_frames": int(mask.sum()), "max_lag": max_lag,
        "dub_fps": float(dub_info.fps), "dub_frames": dub_info.frames, "real_frames": real_info.frames,
        "audio_match": audio_match, "backend": backend, "notes": notes,
        "dub_video": str(dub_path), "real_video": str(real_path),
        "real_audio": str(real_audio_path) if real_audio_path else None,
        "template_video": str(tpl_path) if tpl_path else None,
    }
    result = json_safe(result)
    if tracks:
        result["tracks"] = {"fps": fps, "real": real_pts, "real_valid": real_valid, "dub": dub_pts,
                            "dub_valid": dub_valid, "template": tpl_series, "energy": energy, "mask": mask}
    return result


# -- report ---------------------------------------------------------------------------------------
ROWS = ("dub", "template", "energy")


def table(result: dict[str, Any]) -> str:
    """The rows as a small fixed-width text table (for people; the JSON is for programs)."""
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [f"sync check: {result['frames']} frames at {result['fps']:.3g} fps ({result['seconds']:.1f} s), "
             f"{result['valid_frames']} with a face in both; lag > 0: late",
             f"{'row':<9}{'inner r':>8}{'lag':>5}{'r@lag':>7}{'r@+-3':>7}{'lag3':>5}{'ampl':>7}{'outer r':>9}"
             f"{'chin r':>8}{'mouth LMD':>11}"]
    for name in ROWS:
        r = result.get(name)
        if r is None:
            lines.append(f"{name:<9}{'(no template given)':>30}")
            continue
        lag3 = r.get("inner_lag3")
        lines.append(f"{name:<9}{f(r['inner_r'], '.3f'):>8}{r['inner_lag']:>5d}{f(r['inner_r_best'], '.3f'):>7}"
                     f"{f(r.get('inner_r_best3'), '.3f'):>7}{'-' if lag3 is None else lag3:>5}"
                     f"{f(r['inner_amplitude'], '.2f'):>7}{f(r['outer_r'], '.3f'):>9}{f(r['chin_r'], '.3f'):>8}"
                     f"{f(r.get('mouth_lmd'), '.4f'):>11}")
    if result.get("audio_match"):
        a = result["audio_match"]
        lines.append(f"audio match (dub vs real speech, log energy): r {f(a['r'], '.3f')}, "
                     f"best {f(a['r_best'], '.3f')} at lag {a['lag']}")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


# -- CLI ------------------------------------------------------------------------------------------
def check_videos(dub_video, real_video, template_video, backend: str) -> tuple[tuple, tuple, tuple]:
    """The inputs of a dub-against-a-real-video check, checked: ((path, VideoInfo) of the dub, of
    the real video, of the template or (None, None)). InputError for an unknown landmark backend
    or a video that cannot be used."""
    if backend not in BACKENDS:
        raise InputError(f"Unknown landmark backend {backend!r}.", f"Use one of {list(BACKENDS)}.")
    template = check_video(template_video, "template video") if template_video is not None else (None, None)
    return check_video(dub_video, "dub video"), check_video(real_video, "real video"), template


def add_video_pair_arguments(parser: argparse.ArgumentParser, dub_help: str, real_help: str,
                             template_help: str) -> None:
    """The arguments every dub-against-a-real-video check takes (``sync-check``, ``quality``):
    the two videos, the optional template, the landmark backend and the landmark cache."""
    parser.add_argument("dub", help=dub_help)
    parser.add_argument("real", help=real_help)
    parser.add_argument("--template", default=None, help=template_help)
    parser.add_argument("--backend", choices=BACKENDS, default="mediapipe", help="landmark backend")
    parser.add_argument("--work-dir", default=None,
                        help=f"cache of the re-detected landmarks (default {default_work_dir()})")


def print_report(result: dict[str, Any], text: str) -> int:
    """A check's result as the CLI prints it: ``text`` (a table) on stderr, the result as one JSON
    object on the last line of stdout. -> exit code 0."""
    print(text, file=sys.stderr)
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Re-detect landmarks on a rendered dub and on a real video of the same speech, and score how "
        "the dub's mouth follows the real one (Pearson r, best lag, amplitude of the inner / outer lip "
        "opening and the chin drop; mouth-shape LMD). Reference rows: the template with no lip sync "
        "(--template) and the speech-energy predictor. Prints a table on stderr and one JSON object "
        "on the last line of stdout.")
    add_video_pair_arguments(parser, "the rendered dub (mp4 with the speech as its audio)",
                             "a real video of the same speech, starting at the same moment",
                             "the dub's template video: adds the no-lip-sync reference row")
    parser.add_argument("--real-audio", default=None,
                        help="the real video's speech as a separate file (when the video has no sound)")
    parser.add_argument("--max-lag", type=int, default=metrics.MAX_LAG,
                        help="frames searched each way for the best lag (default %(default)s)")
    parser.add_argument("--asked", default=None, metavar="LANDMARKS.csv",
                        help="the dub's landmarks CSV (dub --landmarks-csv): adds the face-integrity check "
                        "(studio integrity) to the summary")


def cli(args: argparse.Namespace) -> int:
    result = sync_check(args.dub, args.real, real_audio=args.real_audio, template_video=args.template,
                        work_dir=args.work_dir, backend=args.backend, max_lag=args.max_lag, progress=True)
    text = table(result)
    if args.asked:
        from studio.render import integrity

        check = integrity.integrity_check(args.dub, args.asked, template_video=args.template)
        result["integrity"] = json_safe({k: check[k] for k in ("dub", "floor", "verdict")})
        text += "\n\nface integrity (studio integrity):\n" + integrity.table(check)
    return print_report(result, text)
