"""The studio's event handlers: plain module-level functions, testable without a browser.

Each handler takes the session's :class:`~studio.ui.session.DubState` (or nothing) plus a few
component values and returns new values; none keeps anything in module globals. What sessions
share (the pipeline, the viewer's small caches keyed by file content, so sessions cannot see each
other's data through them) is the server's :class:`~studio.ui.session.ServerState`. Every
:class:`~studio.errors.StudioError` becomes a ``gr.Error`` with its message and hint
(:func:`user_errors`); anything unexpected is logged with its traceback on the server and shown as
a short message, so the page never shows a traceback and the server keeps serving.

Speed: an edit slider re-runs only :meth:`Pipeline.landmarks` on the cached prediction (no
network, no render) and redraws one overlay from a cached face crop.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
import numpy as np

from studio import media
from studio.edits import Edits, VadConfig, talk_chin_distance, talk_mouth_gap, voice_activity_from_energy
from studio.errors import CancelledError, CheckpointError, InputError, StudioError
from studio.face.layout import MOUTH_DIM, PCA_DIM
from studio.subject import ALL_VARIANTS, VARIANT_LABELS
from studio.ui import ablations, jobs, views
from studio.ui.session import (
    AUDIO_EXTENSIONS,
    DubState,
    cancel_token,
    discover_subjects,
    get_pipeline,
    safe_name,
    server,
    user_subjects_dir,
)

log = logging.getLogger(__name__)


def train_preset() -> str:
    """The training preset the studio's jobs use (STUDIO_TRAIN_PRESET: a name or a .toml path)."""
    return os.environ.get("STUDIO_TRAIN_PRESET", "cpu")


SHORT_RANGE_FRAMES = 50  # default length of "Render range"
PREFETCH_FRAMES = 25  # frames decoded ahead while playing
_TITLES = {"input": "Problem with an input", "no_face": "No face found", "limit": "Input too large",
           "weights": "Model weights missing", "checkpoint": "Not trained yet", "cancelled": "Cancelled"}


# -- errors -----------------------------------------------------------------------------------------

def _as_gr_error(exc: BaseException) -> gr.Error:
    if isinstance(exc, StudioError):
        text = f"{exc.message} {exc.hint}".strip()
        return gr.Error(text, title=_TITLES.get(exc.kind, "Error"), print_exception=False)
    log.exception("unexpected error in a studio handler")
    return gr.Error(f"Something went wrong ({type(exc).__name__}: {str(exc)[:200]}). The details are in the "
                    "server log; try again, or report it with the log.", title="Internal error",
                    print_exception=False)


def user_errors(fn: Callable) -> Callable:
    """Turn StudioError (and any unexpected exception) into a readable ``gr.Error``."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _as_gr_error(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise _as_gr_error(exc) from None
    return wrapper


def _need_prediction(state: DubState) -> None:
    if state is None or state.prediction is None or state.lms is None:
        raise InputError("Nothing predicted yet.", "Pick a subject and speech, then press Predict.")


# -- subjects ---------------------------------------------------------------------------------------

def subject_choices(state: DubState | None = None) -> list[tuple[str, str]]:
    """The subject dropdown's (label, folder) pairs: the bundled and the user's subjects, then the
    ones this session's one-step dubs built."""
    choices = [(e.label, e.path) for e in discover_subjects()]
    known = {p for _, p in choices}
    own = state.one_step_subjects if state is not None else ()
    return choices + [(label, path) for label, path in own if path not in known]


def check_subject(subject_dir: str | None, state: DubState | None = None) -> str:
    """A subject folder the studio knows (bundled, the user's, or one of this session's one-step
    subjects), else InputError: the API cannot be used to load arbitrary folders."""
    if not subject_dir:
        raise InputError("No subject selected.", "Pick a subject (or build one in the Subject tab).")
    known = {p for _, p in subject_choices(state)}
    resolved = str(Path(subject_dir).resolve())
    if resolved not in known:
        raise InputError(f"{subject_dir!r} is not one of the studio's subjects.",
                         "Pick one from the Subject dropdown (new ones are built in the Subject tab).")
    return resolved


def _variant_choices(variants: Sequence[str]) -> list[tuple[str, str]]:
    return [(VARIANT_LABELS[v], v) for v in ALL_VARIANTS if v in variants]


@user_errors
def subject_info(subject_dir: str | None, state: DubState | None = None):
    """Subject picked -> (template clip dropdown, variant dropdown, renderer radio, description)."""
    if not subject_dir:
        return (gr.update(choices=[], value=None), gr.update(choices=[], value=None),
                gr.update(value="retrieval"), "No subject yet: build one in the **Subject** tab.")
    subject = get_pipeline().subject(check_subject(subject_dir, state))
    m = subject.manifest
    variants = _variant_choices(m.variants)
    variant = "ours" if "ours" in m.variants else (variants[0][1] if variants else None)
    renderers = ["retrieval"] + (["neural"] if m.neural else [])
    text = (f"**{m.name}**: {len(m.clips)} clip(s), trained variants: "
            f"{', '.join(VARIANT_LABELS[v] for v in m.variants) or 'none'}; renderers: {', '.join(renderers)}.")
    return (gr.update(choices=list(m.clips), value=m.clips[0] if m.clips else None),
            gr.update(choices=variants, value=variant),
            gr.update(choices=renderers, value="retrieval"), text)


def refresh_subjects(current: str | None = None, state: DubState | None = None):
    """Re-scan the subject folders -> updated dropdown (keeps the current choice if it still exists)."""
    choices = subject_choices(state)
    paths = [p for _, p in choices]
    value = current if current in paths else (paths[0] if paths else None)
    return gr.update(choices=choices, value=value)


SUBJECT_POLL_SECONDS = 15  # how often an open page looks for subjects built elsewhere


def poll_subjects(shown: tuple | None, state: DubState | None = None):
    """Timer tick: the subject lists of an open page follow subjects built or removed elsewhere
    (another session's build, make-subject on the command line). -> (Dub dropdown, Ablations
    dropdown, what they now show). Unchanged lists send nothing; changed ones get new choices but
    keep their value, so the page's prediction is not touched."""
    dub = subject_choices(state)
    ablation = subject_choices(None)
    now = (tuple(p for _, p in dub), tuple(p for _, p in ablation))
    if shown is not None and tuple(map(tuple, shown)) == now:
        return gr.skip(), gr.skip(), gr.skip()
    if shown is None:  # the first tick after a page load: the lists were just read from disk
        return gr.skip(), gr.skip(), now
    return gr.update(choices=dub), gr.update(choices=ablation), now


# -- predict ----------------------------------------------------------------------------------------

def _template_key(subject, template_clip: str | None, template_upload: str | None) -> str | None:
    """What :meth:`Pipeline.template` gets: the upload (a file gradio received), else a clip name,
    which must be one of the subject's (never a server path typed into the API)."""
    if template_upload:
        return template_upload
    if template_clip and template_clip not in subject.manifest.clips:
        raise InputError(f"Subject {subject.name!r} has no clip {template_clip!r}.",
                         f"Pick one of {list(subject.manifest.clips)} or upload a template video.")
    return template_clip or None


def inputs_changed(state: DubState | None):
    """Subject, speech, template or model changed -> (state, summary): the prediction and all
    derived from it (landmarks, overlay, renders) belong to the old inputs, so they are dropped;
    Render then says that nothing is predicted instead of rendering the old dub."""
    if state is None or state.prediction is None:
        return state, gr.skip()
    return (state.replace(prediction=None, lms=None),
            "Inputs changed: press **Predict** to run the mapping on them (the previous prediction was dropped).")


def speech_changed(state: DubState | None, speech: str | None):
    """New speech -> (state, summary): the prediction is dropped (see :func:`inputs_changed`) and
    the file is checked at once (format, length, silence), so a bad recording is flagged when it
    arrives, not at Predict."""
    state, summary = inputs_changed(state)
    if not speech:
        return state, summary
    try:
        _check_audio_name(speech)
        sp = get_pipeline().speech(speech)  # decoded once; Predict reuses it
    except StudioError as exc:
        return state, f"**This speech cannot be used:** {exc.message} {exc.hint}".strip()
    except Exception as exc:  # an unexpected decoder failure: say so, Predict will report it again
        log.warning("checking the uploaded speech failed: %s", exc)
        return state, f"**This speech could not be read** ({type(exc).__name__}); try another file."
    return state, f"Speech ready: {sp.seconds:.1f} s. Press **Predict**."


@user_errors
def predict(state: DubState, subject_dir: str | None, speech: str | None, template_clip: str | None,
            template_upload: str | None, variant: str | None, progress=gr.Progress()):
    """Run the mapping network once -> (state, frame slider, overlay, timeline, summary)."""
    subject_dir = check_subject(subject_dir, state)
    if not speech:
        raise InputError("No speech given.", "Upload or record the speech to dub (wav, mp3 or m4a).")
    _check_audio_name(speech)
    pipe = get_pipeline()
    progress(0.05, desc="loading subject")
    subject = pipe.subject(subject_dir)
    progress(0.15, desc="reading speech")
    sp = pipe.speech(speech)
    which = _template_key(subject, template_clip, template_upload)
    progress(0.3, desc="preparing template" + (" (tracking the face in the upload)" if template_upload else ""))
    tpl = pipe.template(subject, which)
    variant = variant or "ours"
    progress(0.6, desc=f"predicting landmarks ({VARIANT_LABELS.get(variant, variant)})")
    pred = pipe.predict(subject, sp, tpl, variant)
    state = (state or DubState.new()).replace(subject_dir=subject_dir, speech_path=speech, template=which,
                                              variant=variant, prediction=pred)
    lms = pipe.landmarks(pred, tpl, subject, state.edits)
    state = state.replace(lms=lms)
    progress(0.9, desc="drawing")
    if pred.frames > tpl.meta.frames:
        gr.Warning(f"The speech ({sp.seconds:.1f} s) is longer than the template "
                   f"({tpl.meta.duration:.1f} s): the template plays forwards and backwards to cover it.")
    summary = (f"{pred.frames} frames at {pred.fps:g} fps ({sp.seconds:.1f} s of speech), template "
               f"{Path(str(which)).name if which else subject.manifest.clips[0]}, model "
               f"{VARIANT_LABELS.get(variant, variant)}.")
    return (state, gr.update(maximum=max(1, pred.frames - 1), value=0), frame_image(state, 0),
            timeline(state, 0), summary)


def _check_audio_name(path: str) -> None:
    suffix = Path(path).suffix.lower()
    if suffix and suffix not in AUDIO_EXTENSIONS + (".mp4", ".mov", ".webm", ".mkv"):
        raise InputError(f"{Path(path).name} is not an audio file the studio reads.",
                         "Use wav, mp3, m4a, flac or ogg (or a video with a sound track).")


def _loaded(state: DubState):
    """(pipeline, subject, template clip) of a predicted state, from the shared caches."""
    _need_prediction(state)
    pipe = get_pipeline()
    subject = pipe.subject(state.subject_dir)
    tpl = pipe.template(subject, state.template)
    return pipe, subject, tpl


def _track(tpl):
    from studio.render.crop import CropTrack

    key = tpl.meta.source_sha256
    track = server().tracks.get(key)
    if track is None:
        track = CropTrack.from_landmarks(tpl.landmarks, (tpl.meta.width, tpl.meta.height), valid=tpl.valid)
        server().tracks.put(key, track)
    return track


def _face(pipe, tpl, lms, i: int) -> np.ndarray:
    """The zoomed template face of output frame i, decoding ahead when it is not cached."""
    tf = int(lms.frame_index[i])
    key = (tpl.meta.source_sha256, tf)
    face = server().faces.get(key)
    if face is None:
        track = _track(tpl)
        stop = min(lms.frame_index.shape[0], i + PREFETCH_FRAMES)
        for k, frame in enumerate(pipe.template_frames(tpl, lms.frame_index, i, stop)):
            tk = int(lms.frame_index[i + k])
            img = track.crop(frame, tk, views.DISPLAY_SIZE)
            server().faces.put((tpl.meta.source_sha256, tk), img)
            if k == 0:
                face = img
    return face


def _clamp_frame(state: DubState, frame) -> int:
    return int(np.clip(int(frame or 0), 0, max(0, state.frames - 1)))


def frame_image(state: DubState, frame: int) -> np.ndarray:
    """Overlay of output frame ``frame``: (DISPLAY, DISPLAY, 3) uint8."""
    pipe, _, tpl = _loaded(state)
    lms = state.lms
    i = _clamp_frame(state, frame)
    tf = int(lms.frame_index[i])
    track = _track(tpl)
    s = views.DISPLAY_SIZE
    face = _face(pipe, tpl, lms, i)
    return views.overlay(face, track.to_crop(lms.template[i], tf, s), track.to_crop(lms.points[i], tf, s),
                         caption=f"frame {i}  {i / lms.fps:.2f} s")


def timeline(state: DubState, frame: int | None = None):
    """The timeline figure of a predicted state, with ``frame`` marked."""
    pipe, subject, tpl = _loaded(state)
    pred, lms = state.prediction, state.lms
    pca = pipe.mapping(subject, pred.variant).pca
    coefs = np.asarray(pca.transform(lms.talk[:, :MOUTH_DIM].astype(np.float32)))
    voiced = voice_activity_from_energy(pred.energy, pred.fps,
                                        VadConfig(threshold_db=state.edits.silence_threshold))
    return views.timeline_figure(pred.fps, talk_mouth_gap(lms.talk), talk_chin_distance(lms.talk), coefs,
                                 tpl.pose[lms.frame_index], voiced,
                                 None if frame is None else _clamp_frame(state, frame),
                                 mouth_net=talk_mouth_gap(pred.talk), jaw_net=talk_chin_distance(pred.talk))


@user_errors
def show_frame(state: DubState, frame: int) -> np.ndarray:
    """Frame slider released -> the frame's overlay (the timeline follows in its own event)."""
    _need_prediction(state)
    return frame_image(state, frame)


@user_errors
def timeline_view(state: DubState, frame: int):
    """The timeline of the session's prediction with ``frame`` marked (None before a prediction)."""
    if state is None or state.lms is None:
        return None
    return timeline(state, frame)


@user_errors
@user_errors
def landmark_video(state: DubState, progress=gr.Progress()) -> str:
    """Every frame's landmark overlay as an mp4 at the clip's frame rate, with the speech: the
    prediction played as it will be timed in the dub -> mp4 path (in the session's folder)."""
    pipe, _, tpl = _loaded(state)
    lms = state.lms
    n, s = state.frames, views.DISPLAY_SIZE
    track = _track(tpl)
    sp = pipe.speech(state.speech_path)
    out = _output_path(state, "landmarks", ".mp4")
    with media.VideoWriter(out, lms.fps, (s, s), audio=sp.signal, crf=23) as writer:
        for i, frame in enumerate(pipe.template_frames(tpl, lms.frame_index, 0, n)):
            tf = int(lms.frame_index[i])
            face = track.crop(frame, tf, s)
            writer.write(views.overlay(face, track.to_crop(lms.template[i], tf, s), track.to_crop(lms.points[i], tf, s),
                                       caption=f"frame {i}  {i / lms.fps:.2f} s"))
            if i % 25 == 0:
                progress((i + 1) / n, desc=f"frame {i + 1}/{n}")
    return str(out)


def play_tick(state: DubState, frame: int):
    """One step of playback -> (next frame number, its overlay); wraps at the end."""
    if state is None or state.lms is None:
        return gr.skip(), gr.skip()
    nxt = (int(frame or 0) + 1) % max(1, state.frames)
    return nxt, frame_image(state, nxt)


def frame_range_limits(state: DubState):
    """After a prediction: the frame-range sliders span the new clip."""
    n = max(1, state.frames if state is not None else 1)
    r = state.edits.frame_range if state is not None else None
    return (gr.update(maximum=n - 1, value=min(r[0], n - 1) if r else 0),
            gr.update(maximum=n, value=min(r[1], n) if r else n))


def toggle_play(playing: bool):
    """Step through/Pause (the frame slider, one frame per tick) -> (playing, timer, button)."""
    playing = not playing
    return playing, gr.Timer(active=playing), gr.update(value="Pause" if playing else "Step through")


# -- edits ------------------------------------------------------------------------------------------

SCALAR_EDITS = ("mouth_open_gain", "jaw_open_gain", "jaw_open_offset", "jawline_smoothing", "temporal_smoothing",
                "lip_timing")


@dataclass(frozen=True)
class EditControls:
    """The Edits panel's values, in the order its components are wired."""

    pca_offsets: tuple[float, ...] = (0.0,) * PCA_DIM
    mouth_open_gain: float = 1.0
    jaw_open_gain: float = 1.0
    jaw_open_offset: float = 0.0
    jawline_smoothing: float = 0.0
    temporal_smoothing: float = 0.0
    lip_timing: float = 0.0
    close_on_silence: bool = False
    silence_threshold: float = 30.0
    range_on: bool = False
    range_start: int = 0
    range_end: int = 0

    COUNT = PCA_DIM + len(SCALAR_EDITS) + 5

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "EditControls":
        v = list(values)
        if len(v) != cls.COUNT:
            raise ValueError(f"expected {cls.COUNT} edit values, got {len(v)}")
        offsets = tuple(float(x or 0.0) for x in v[:PCA_DIM])
        rest = v[PCA_DIM:]
        k = len(SCALAR_EDITS)
        close, threshold, range_on, start, end = rest[k:]
        return cls(offsets, *[float(x) for x in rest[:k]], bool(close), float(threshold), bool(range_on),
                   int(start or 0), int(end or 0))

    @classmethod
    def from_edits(cls, edits: Edits, frames: int = 0) -> "EditControls":
        r = edits.frame_range
        return cls(tuple(edits.pca_offsets), *(getattr(edits, k) for k in SCALAR_EDITS), edits.close_on_silence,
                   edits.silence_threshold, r is not None, r[0] if r else 0, r[1] if r else frames)

    def values(self) -> list:
        return [*self.pca_offsets, *(getattr(self, k) for k in SCALAR_EDITS), self.close_on_silence,
                self.silence_threshold, self.range_on, self.range_start, self.range_end]

    def to_edits(self, base: Edits = Edits()) -> Edits:
        """The Edits these controls describe; fields without a control (PCA gains) come from ``base``."""
        frame_range = None
        if self.range_on:
            if self.range_end <= self.range_start:
                raise InputError(f"The frame range {self.range_start}..{self.range_end} is empty.",
                                 "Set 'to' after 'from', or untick 'Only frames'.")
            frame_range = (self.range_start, self.range_end)
        return dataclasses.replace(base, pca_offsets=self.pca_offsets,
                                   **{k: getattr(self, k) for k in SCALAR_EDITS},
                                   close_on_silence=self.close_on_silence,
                                   silence_threshold=self.silence_threshold, frame_range=frame_range)


def apply_controls(state: DubState, frame: int, controls: EditControls):
    """New edit values -> (state, overlay). Only the landmarks are recomputed (no network, no
    render); the timeline is redrawn by a following event so the overlay shows first. Before a
    prediction the edits are only kept (Predict applies them)."""
    state = state or DubState.new()
    edits = controls.to_edits(state.edits)
    if state.lms is None:
        return state.replace(edits=edits), gr.skip()
    pipe, subject, tpl = _loaded(state)
    lms = pipe.landmarks(state.prediction, tpl, subject, edits)
    state = state.replace(edits=edits, lms=lms)
    return state, frame_image(state, frame)


@user_errors
def edit(state: DubState, frame: int, *values):
    """Any edit control released (values in :class:`EditControls` order) -> (state, overlay)."""
    return apply_controls(state, frame, EditControls.from_values(values))


def _set_edits(state: DubState, frame: int, edits: Edits):
    """Replace the edits -> (state, *control values, overlay, timeline)."""
    values = EditControls.from_edits(edits, state.frames if state else 0).values()
    if state is None or state.lms is None:
        return ((state or DubState.new()).replace(edits=edits), *values, gr.skip(), gr.skip())
    pipe, subject, tpl = _loaded(state)
    state = state.replace(edits=edits, lms=pipe.landmarks(state.prediction, tpl, subject, edits))
    return (state, *values, frame_image(state, frame), timeline(state, frame))


@user_errors
def reset_edits(state: DubState, frame: int):
    """Reset -> (state, *control values, overlay, timeline) with the identity edits."""
    return _set_edits(state, frame, Edits())


@user_errors
def load_edits(state: DubState, frame: int, path: str | None):
    """An edits JSON uploaded -> (state, *control values, overlay, timeline)."""
    if not path:
        raise InputError("No edits file given.", "Upload a .json file saved with 'Save edits'.")
    return _set_edits(state, frame, Edits.load(path))


@user_errors
def save_edits(state: DubState) -> str:
    """Write the session's edits as JSON -> the file's path (for download)."""
    state = state or DubState.new()
    path = state.folder() / "edits.json"
    from studio.fsutil import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(state.edits.to_json() + "\n")
    return str(path)


# -- facial map, preview, render --------------------------------------------------------------------

def _facemap_cfg(low: float, high: float):
    from studio.render.facemap import FacemapConfig

    low, high = int(low), int(high)
    if low > high:
        raise InputError(f"Canny low threshold ({low}) is above the high one ({high}).",
                         "Move the low threshold below the high one.")
    return FacemapConfig(canny_low=low, canny_high=high)


@user_errors
def facemap(state: DubState, frame: int, canny_low: float, canny_high: float,
            renderer: str = "retrieval") -> np.ndarray:
    """The synthetic facial map of output frame ``frame``, exactly as ``renderer`` gets it: the
    Canny thresholds shape the retrieval view; a trained neural renderer always draws its maps
    with its own crop, size and settings (the ones it was trained with)."""
    pipe, subject, tpl = _loaded(state)
    cfg = _facemap_cfg(canny_low, canny_high)
    return pipe.facemap(tpl, state.lms, _clamp_frame(state, frame), cfg, subject=subject,
                        renderer=renderer or "retrieval")


@user_errors
def preview_frame(state: DubState, frame: int, renderer: str, canny_low: float, canny_high: float) -> np.ndarray:
    """Render one output frame (full template resolution) -> image."""
    pipe, subject, tpl = _loaded(state)
    return pipe.preview_frame(subject, tpl, state.lms, _clamp_frame(state, frame), renderer or "retrieval")


def _output_path(state: DubState, stem: str, suffix: str) -> Path:
    return state.folder() / f"{stem}-{time.strftime('%H%M%S')}-{int(time.time() * 1000) % 1000:03d}{suffix}"


def _reporter(progress, offset: float = 0.0, span: float = 1.0):
    def report(frac: float, desc: str) -> None:
        progress(offset + span * float(frac), desc=desc)
    return report


@user_errors
def render_range(state: DubState, start: int, stop: int, renderer: str, canny_low: float, canny_high: float,
                 progress=gr.Progress()) -> str:
    """Render output frames ``start..stop`` with their part of the speech -> mp4 path."""
    pipe, subject, tpl = _loaded(state)
    n = state.frames
    start = int(np.clip(int(start or 0), 0, n - 1))
    stop = int(np.clip(int(stop or 0), start + 1, n))
    sp = pipe.speech(state.speech_path)
    cancel = cancel_token(state.session_id)
    cancel.clear()
    fps = state.lms.fps
    from studio.audio import SAMPLE_RATE

    audio = sp.signal[int(round(start / fps * SAMPLE_RATE)):int(round(stop / fps * SAMPLE_RATE))]
    out = _output_path(state, f"range-{start}-{stop}", ".mp4")
    size = (tpl.meta.width, tpl.meta.height)
    with media.VideoWriter(out, fps, size, audio=audio if len(audio) else None) as writer:
        for k, img in enumerate(pipe.render_frames(subject, tpl, state.lms, renderer or "retrieval", start, stop,
                                                   cancel=cancel)):
            writer.write(img)
            progress((k + 1) / (stop - start), desc=f"frame {start + k + 1}/{stop}")
    return str(out)


@user_errors
def render_full(state: DubState, renderer: str, canny_low: float, canny_high: float, quality: str = "standard",
                progress=gr.Progress()):
    """Render the whole dub -> (state, video path, mp4 download, landmarks CSV download).
    ``quality``: "standard" (fast) or "high" (for delivery; slower, larger file)."""
    pipe, subject, tpl = _loaded(state)
    sp = pipe.speech(state.speech_path)
    cancel = cancel_token(state.session_id)
    cancel.clear()
    out = _output_path(state, "dub", ".mp4")
    progress(0.0, desc="rendering")
    pipe.render(subject, tpl, sp, state.lms, out, renderer or "retrieval",
                progress=_reporter(progress), cancel=cancel, quality=quality or "standard")
    csv = landmarks_csv(state)
    state = state.replace(outputs=state.outputs + (str(out),))
    return state, str(out), str(out), csv


@user_errors
def dub_video(state: DubState, video: str | None, speech: str | None, progress=gr.Progress()):
    """One step: a video of anyone + speech -> (state, dubbed mp4, status markdown, Subject
    dropdown, Speech). The video's subject is built the first time (the multi-speaker prior,
    fine-tuned on the video's own speech) and cached by the video's content; it is then offered
    in this session's Subject dropdown, with the speech, so that the dub can be edited there."""
    if not video:
        raise InputError("No video given.", "Upload a video of one person talking towards the camera.")
    if not speech:
        raise InputError("No speech given.", "Upload or record the speech to dub the video with (wav, mp3 or m4a).")
    _check_audio_name(speech)
    state = state or DubState.new()
    pipe = get_pipeline()
    cancel = cancel_token(state.session_id)
    cancel.clear()
    out = _output_path(state, "one-step", ".mp4")
    stages: list[tuple[float, str]] = []  # (seconds since the start, the pipeline's stage description)
    t0 = time.perf_counter()

    def report(frac: float, desc: str) -> None:
        stages.append((time.perf_counter() - t0, desc))
        progress(frac, desc=desc)

    pipe.dub_video(video, speech, out, progress=report, cancel=cancel)
    seconds = time.perf_counter() - t0
    # cached by now: only looked up, for its notices and the dropdown
    subject = pipe.subject_for_video(video)
    built = any(d.startswith("subject: ") for _, d in stages)
    build_seconds = next((t for t, d in stages if not d.startswith("subject: ")), seconds)
    folder = str(subject.directory.resolve())
    own = tuple(e for e in state.one_step_subjects if e[1] != folder) + ((f"{subject.name} (one step)", folder),)
    state = state.replace(outputs=state.outputs + (str(out),), one_step_subjects=own)
    how = (f"built the video's subject in {build_seconds:.1f} s (first dub of this video; it is cached, so the "
           "next dub of this video starts at once)" if built else
           "reused the cached subject (second dub of the same video): nothing was built or trained")
    lines = [f"Dubbed **{Path(str(video)).name}** in {seconds:.1f} s: {how}."]
    lines += [f"> **Note:** {n}" for n in subject.manifest.extras.get("notices", [])]
    lines.append(f"To edit this dub, press **Predict** below: **{subject.name} (one step)** is now the subject.")
    return (state, str(out), "\n\n".join(lines), gr.update(choices=subject_choices(state), value=folder), speech)


def landmarks_csv(state: DubState) -> str:
    """Write the edited landmarks as CSV (one row per output frame) -> path."""
    from studio.pipeline import landmarks_table

    _need_prediction(state)
    path = _output_path(state, "landmarks", ".csv")
    landmarks_table(state.lms).to_csv(path, index=False, float_format="%.2f")
    return str(path)


@user_errors
def download_landmarks(state: DubState) -> str:
    return landmarks_csv(state)


def cancel(state: DubState) -> None:
    """Cancel the session's render or training job (it stops at the next frame / is terminated)."""
    sid = state.session_id if state is not None else ""
    cancel_token(sid).set()
    if jobs.cancel(sid):
        gr.Info("Training job cancelled; run it again to resume where it stopped.")


# -- Subject tab ------------------------------------------------------------------------------------

def _upload_paths(files) -> list[str]:
    if not files:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [str(getattr(f, "name", f)) for f in items]


@user_errors
def build_subject(state: DubState, files, name: str, variants: Sequence[str], neural: bool, neural_steps: float,
                  speech_files=None, progress=gr.Progress()):
    """Footage (+ optional separate speech files, paired by name or order) -> a new subject
    folder, as a cancellable child process. Streams (status markdown, loss plot, sample image,
    subject dropdown update)."""
    from studio.subject import command_line, pair_speech

    videos = _upload_paths(files)
    if not videos:
        raise InputError("No footage uploaded.", "Upload one or more videos of one person speaking.")
    audios = pair_speech(videos, _upload_paths(speech_files))
    for a in audios:
        if a is not None:
            get_pipeline().speech(a)  # unreadable, silent or too long speech is refused before the build
    folder = safe_name(name or Path(videos[0]).stem)
    if not folder:
        raise InputError(f"{name!r} cannot be used as a subject name.", "Use letters, digits, '-' or '_'.")
    variants = [v for v in (variants or ["ours"]) if v in ALL_VARIANTS] or ["ours"]
    limits = get_pipeline().config.limits
    for v in videos:
        media.check_video(media.probe_video(v), limits)
    out = user_subjects_dir() / folder
    state = state or DubState.new()
    command = command_line(videos, out, audios=audios, variants=variants, name=name or folder, preset=train_preset(),
                           neural=bool(neural), neural_steps=int(neural_steps) if neural_steps else None)
    try:
        job = jobs.start(state.session_id, command, state.folder() / "make-subject.log")
    except RuntimeError:
        raise InputError("A training job is already running in this session.",
                         "Wait for it to finish or press Cancel.") from None
    from studio.train.mapping import settings_for

    max_epochs = settings_for("ours", train_preset()).train.max_epochs
    try:
        for _ in jobs.poll(job):
            p = jobs.subject_progress(out, len(videos), variants, bool(neural), max_epochs)
            progress(p.fraction, desc=p.stage)
            yield (f"Building **{folder}** in `{out}`: {p.stage}", views.loss_figure(p.histories),
                   _sample_image(p.sample), gr.skip())
    finally:  # the page went away (the generator was closed): do not leave the job running
        if job.running:
            job.cancel()
    if job.cancelled:
        raise CancelledError("Building the subject was cancelled.",
                             "Press Build again with the same name to resume where it stopped.")
    if job.returncode != 0:
        raise InputError(f"Building the subject failed:\n{job.error_text()}",
                         "Fix the problem above and press Build again (finished stages are kept).")
    p = jobs.subject_progress(out, len(videos), variants, bool(neural), max_epochs)
    notices = get_pipeline().subject(out).manifest.extras.get("notices", [])
    text = f"Subject **{name or folder}** is ready in `{out}`; pick it in the Dub tab."
    if notices:  # e.g. footage without usable speech: that part uses the multi-speaker prior alone
        text += "\n\n" + "\n".join(f"- {n}" for n in notices)
    yield text, views.loss_figure(p.histories), _sample_image(p.sample), refresh_subjects(str(out.resolve()), state)


def _sample_image(path: str | None) -> np.ndarray | None:
    """A renderer sample sheet as RGB pixels: the subjects folder is not served (gradio refuses
    to return files from outside its allowed paths, cwd and temp folder), its pixels are."""
    if not path:
        return None
    import cv2

    img = cv2.imread(path)
    return None if img is None else np.ascontiguousarray(img[..., ::-1])


# -- Ablations tab ----------------------------------------------------------------------------------

def ablation_root(subject_dir: str) -> Path:
    """Where the studio's ablation runs of a subject live (beside the user's subjects), one folder
    per run (:mod:`studio.ui.ablations`)."""
    return user_subjects_dir().parent / "ablations" / safe_name(Path(subject_dir).name)


def ablation_dir(subject_dir: str, state: DubState | None = None) -> Path:
    """Where a session's Table 1 is read from: its own newest finished run, else the subject's
    ablation/ folder (a bundled subject may ship its results; the studio never writes there)."""
    sid = state.session_id if state is not None else ""
    return ablations.results_folder(ablation_root(subject_dir), subject_dir, sid)[0]


@user_errors
def ablation_subject(subject_dir: str | None, state: DubState | None = None):
    """Ablations tab subject picked -> (table, figure, note, template clip dropdown, variant checkboxes)."""
    table, fig, note = ablation_results(subject_dir, None, state)
    if not subject_dir:
        return table, fig, note, gr.update(choices=[], value=None), gr.update(choices=[], value=[])
    m = get_pipeline().subject(check_subject(subject_dir, state)).manifest
    variants = _variant_choices(m.variants)
    return (table, fig, note, gr.update(choices=list(m.clips), value=m.clips[0] if m.clips else None),
            gr.update(choices=variants, value=[v for _, v in variants][:2]))


def loso_results() -> str:
    """The multi-speaker prior's leave-speaker-out table (markdown): the leave-group-out table with
    pooled score groups and the permutation null (``groups_table.md``, ``python -m studio
    loso-groups``) when there is one, else the older per-speaker table, or why there is none."""
    from studio.train.loso import results_dir

    folder = results_dir()
    for name, command in (("groups_table.md", "loso-groups"), ("table.md", "loso")):
        try:
            text = (folder / name).read_text()
        except OSError:
            continue
        runs = "groups_runs.csv" if name == "groups_table.md" else "runs.csv"
        return text + f"\n\nFrom `docs/results/loso/{name}` (`python -m studio {command}`); rows in `{runs}`."
    return ("No leave-speaker-out results yet: run `python -m studio loso-groups --out docs/results/loso` "
            "(trains one prior per fold of speakers and seed).")


@user_errors
def ablation_results(subject_dir: str | None, variants: Sequence[str] | None = None, state: DubState | None = None):
    """This session's Table 1 of a subject (its newest run, else the subject's reference table)
    -> (dataframe, plotly figure, note: a plain reading, the timing conditions, where it is from)."""
    import pandas as pd

    from studio.train.ablate import figure

    if not subject_dir:
        return None, None, "Pick a subject."
    subject_dir = check_subject(subject_dir, state)
    sid = state.session_id if state is not None else ""
    d, run = ablations.results_folder(ablation_root(subject_dir), subject_dir, sid)
    try:
        table = pd.read_csv(d / ablations.TABLE_CSV)
    except (OSError, ValueError):
        return None, None, "No ablation results for this subject yet; press **Run ablation**."
    if variants:
        table = table[table["variant"].isin(list(variants))]
    if table.empty:
        return None, None, "None of the picked variants is in the results."
    table = table.assign(label=[VARIANT_LABELS.get(v, v) for v in table["variant"]])
    source = run.describe() if run is not None else "the subject's reference table (runs never change it)"
    parts = [ablations.reading(table), ablations.timing_text(table, run), f"Results from {source}: `{d}`."]
    return ablations.table_view(table), figure(table), "\n\n".join(p for p in parts if p)


def _run_estimate(subject_dir: str, settings: "ablations.RunSettings") -> "ablations.RunEstimate":
    """The run time of ``settings`` from this subject's earlier trainings and ablation runs."""
    root = ablation_root(subject_dir)
    costs = ablations.epoch_costs(ablations.training_configs(subject_dir, root))
    evaluation = ablations.evaluation_seconds(ablations.run_tables(subject_dir, root))
    return ablations.estimate_run(settings, ablations.preset_max_epochs(settings.preset), costs, evaluation)


@user_errors
def ablation_estimate(subject_dir: str | None, variants: Sequence[str] | None, seeds: float | None,
                      max_epochs: float | None) -> str:
    """How long **Run ablation** would take with these settings (markdown), shown before it is
    pressed; empty without a known subject or a variant (the other handlers say what is wrong)."""
    variants = [v for v in (variants or []) if v in ALL_VARIANTS]
    try:
        subject_dir = check_subject(subject_dir)
    except InputError:
        return ""
    if not variants:
        return ""
    return _run_estimate(subject_dir, ablations.settings_from(variants, seeds, max_epochs, train_preset())).text


@user_errors
def run_ablation(state: DubState, subject_dir: str | None, variants: Sequence[str], seeds: float,
                 max_epochs: float | None, progress=gr.Progress()):
    """Train + evaluate the picked variants (child process) in this session's own run folder
    -> streams (dataframe, figure, note): first the time estimate, then progress, then the table."""
    subject_dir = check_subject(subject_dir, state)
    variants = [v for v in (variants or []) if v in ALL_VARIANTS]
    if not variants:
        raise InputError("No variants picked.", "Tick at least one model to train.")
    state = state or DubState.new()
    subject = get_pipeline().subject(subject_dir)
    settings = ablations.settings_from(variants, seeds, max_epochs, train_preset())
    estimate = _run_estimate(subject_dir, settings)
    yield gr.skip(), gr.skip(), f"Starting. {estimate.text}"
    busy = jobs.current(state.session_id)
    if busy is not None and busy.running:
        raise InputError("A training job is already running in this session.", "Wait for it to finish or press Cancel.")
    out, resumed = ablations.run_folder(ablation_root(subject_dir), state.session_id, settings)
    info = ablations.read_run(out) if resumed else None
    if info is None:
        from studio.train.evaluate import machine_load

        load = machine_load()
        info = ablations.RunInfo(out, state.session_id, time.time(), settings, load.load_1min, load.cores,
                                 jobs.running_count(), estimate.seconds)
        ablations.write_run(info)
    clip_dirs = [str(subject.directory / "clips" / c) for c in subject.manifest.clips]
    # one torch thread for the inference timing: comparable between variants and machines
    args = ["ablate", *clip_dirs, "--seeds", str(settings.seeds), "--out", str(out), "--preset", settings.preset,
            "--variants", *variants, "--threads", "1"]
    if settings.max_epochs:
        args += ["--max-epochs", str(settings.max_epochs)]
    try:
        job = jobs.start(state.session_id, args, out / "ablate.log")
    except RuntimeError:
        raise InputError("A training job is already running in this session.",
                         "Wait for it to finish or press Cancel.") from None
    started = time.time()
    try:
        for _ in jobs.poll(job, interval=2.0):
            frac, text = jobs.ablation_progress(out, settings.models)
            text += ablations.remaining_text(estimate.seconds, started, frac)
            progress(frac, desc=text)
            yield gr.skip(), gr.skip(), f"Running: {text}."
    finally:
        if job.running:
            job.cancel()
    if job.cancelled:
        raise CancelledError("The ablation run was cancelled.",
                             "Run it again with the same settings to resume (finished models are kept).")
    if job.returncode != 0:
        raise InputError(f"The ablation run failed:\n{job.error_text()}", "Fix the problem above and run it again.")
    yield ablation_results(subject_dir, variants, state)


@user_errors
def compare_variants(state: DubState, subject_dir: str | None, speech: str | None, template_clip: str | None,
                     variants: Sequence[str], render: bool, renderer: str = "retrieval", progress=gr.Progress()):
    """The same speech driven by 2+ variants -> (side-by-side overlay mp4, side-by-side render mp4 or None)."""
    subject_dir = check_subject(subject_dir)
    if not speech:
        raise InputError("No speech to compare on.", "Upload the speech to drive the variants with.")
    variants = [v for v in ALL_VARIANTS if v in (variants or [])]
    if len(variants) < 2:
        raise InputError("Pick at least two variants to compare.", "Tick two or more models.")
    pipe = get_pipeline()
    subject = pipe.subject(subject_dir)
    missing = [v for v in variants if v not in subject.manifest.variants]
    if missing:
        names = ", ".join(VARIANT_LABELS[v] for v in missing)
        raise CheckpointError(f"Subject {subject.name!r} has no trained {names} model.",
                              "Train it in the Subject tab (pick the variant) or untick it.")
    sp = pipe.speech(speech)
    tpl = pipe.template(subject, _template_key(subject, template_clip, None))
    lms_all = []
    for k, v in enumerate(variants):
        progress(0.1 * k / len(variants), desc=f"predicting ({VARIANT_LABELS[v]})")
        lms_all.append(pipe.landmarks(pipe.predict(subject, sp, tpl, v), tpl, subject, Edits()))
    state = state or DubState.new()
    cancel = cancel_token(state.session_id)
    cancel.clear()
    track = _track(tpl)
    s = views.DISPLAY_SIZE // 4 * 3  # 288 px per panel
    s -= s % 2
    n = lms_all[0].points.shape[0]
    labels = [VARIANT_LABELS[v] for v in variants]
    overlay_out = _output_path(state, "compare-overlay", ".mp4")
    with media.VideoWriter(overlay_out, lms_all[0].fps, (s * len(variants) + (s * len(variants)) % 2, s),
                           audio=sp.signal) as writer:
        for i, frame in enumerate(pipe.template_frames(tpl, lms_all[0].frame_index)):
            if cancel.is_set():
                raise CancelledError("The comparison was cancelled.", "Press Compare again when ready.")
            tf = int(lms_all[0].frame_index[i])
            face = track.crop(frame, tf, s)
            panels = [views.overlay(face, track.to_crop(l.template[i], tf, s), track.to_crop(l.points[i], tf, s))
                      for l in lms_all]
            writer.write(views.tile(panels, labels))
            if i % 10 == 0:
                progress(0.1 + (0.4 if render else 0.9) * (i + 1) / n, desc=f"overlay frame {i + 1}/{n}")
    rendered = None
    if render:
        rendered = _output_path(state, "compare-render", ".mp4")
        streams = [pipe.render_frames(subject, tpl, l, renderer or "retrieval", cancel=cancel) for l in lms_all]
        w, h = tpl.meta.width, tpl.meta.height
        scale = min(1.0, 720 / max(1, h))
        pw, ph = int(w * scale) // 2 * 2, int(h * scale) // 2 * 2
        import cv2

        with media.VideoWriter(rendered, lms_all[0].fps, (pw * len(variants), ph), audio=sp.signal) as writer:
            for i, frames in enumerate(zip(*streams)):
                panels = [cv2.resize(f, (pw, ph), interpolation=cv2.INTER_AREA) for f in frames]
                writer.write(views.tile(panels, labels))
                if i % 5 == 0:
                    progress(0.5 + 0.5 * (i + 1) / n, desc=f"rendering frame {i + 1}/{n}")
        rendered = str(rendered)
    return str(overlay_out), rendered
