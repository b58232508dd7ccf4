"""The dubbing pipeline: speech + template + subject + variant + edits -> landmarks -> frames -> mp4.

Stages are separately callable and cached, so that the studio can re-run only what changed:

    speech(path)                          -> Speech       (decoded once per file content)
    template(subject, which)              -> Clip         (a subject clip, or an uploaded video
                                                           preprocessed once per content)
    predict(subject, speech, template, v) -> Prediction   (the network runs once per combination)
    landmarks(prediction, template, subject, edits) -> Landmarks   (pure and fast: edit sliders)
    facemap(...), preview_frame(...), render(...)                  (frames are streamed)

Models and subjects are owned by the one :class:`studio.manager.ModelManager`; the small data caches
here are bounded and thread-safe. Per-request settings are arguments, never shared state.

Length rule: the output has one frame per template-rate frame of speech,
``T = round(speech_seconds * template_fps)``. When the speech is longer than the template, the
template is extended by ping-pong looping (:func:`studio.models.checkpoint.extend_template`);
``Prediction.frame_index`` maps each output frame to its template frame.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from studio import media
from studio.audio import SAMPLE_RATE, features_for_video, frame_energy
from studio.edits import Edits, apply_edits, closed_mouth_shape, limit_opening, limit_shape
from studio.errors import CancelledError, CheckpointError, InputError, StudioError
from studio.face import layout
from studio.fsutil import sha256_file
from studio.lru import LRU
from studio.manager import ModelManager, default_manager
from studio.subject import ALL_VARIANTS, Subject

log = logging.getLogger(__name__)

RENDERERS = ("retrieval", "neural")
Progress = Callable[[float, str], None]  # (fraction 0..1, description)


@dataclass(frozen=True)
class PipelineConfig:
    render_size: int = 256  # face crop side the renderers work at (256, 512 or 720)
    limits: media.MediaLimits = field(default_factory=media.MediaLimits)
    min_speech_rms: float = 1e-4  # below this the speech is treated as silent (digital silence)
    frame_chunk: int = 32  # template frames decoded at a time when the template plays backwards
    cache_items: int = 16  # entries kept in each data cache (speech, templates, predictions)
    quality: str = "standard"  # video encoding: "standard" (crf 18, speed preset by frame size) or
    # "high" (crf 16, x264 "medium": about 3x the encoding time, for delivery)
    check_identity: bool = True  # refuse an uploaded template that shows another person than the
    # subject's footage (studio.face.identity_check); False dubs it anyway (CLI --allow-other-person)
    opening_margin: float = 1.1  # mouth and jaw open at most this x the template footage's widest,
    # in a shape near the footage's own (studio.edits.limit_opening, limit_shape; 0: no limits)
    anchor_to_template: bool = True  # place the mouth where the template's sits and draw the jaw on
    # the template's own contour, moved by the predicted chin drop (studio.face.jaw): the
    # network's placement is unreliable on turned heads

    def __post_init__(self) -> None:
        if self.quality not in ENCODINGS:
            raise InputError(f"Unknown output quality {self.quality!r}.", f"Use one of {list(ENCODINGS)}.")


ENCODINGS = {"standard": {"crf": 18, "preset": "auto"}, "high": {"crf": 16, "preset": "medium"}}


@dataclass(frozen=True, eq=False)
class Speech:
    """Decoded speech. signal (S,) float32 mono at 16 kHz."""

    path: str
    sha256: str
    signal: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.signal) / SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class Prediction:
    """The mapping network's output for one speech on one template. T output frames.

    talk         (T, 58) normalized talking points (before edits)
    coefs        (T, 13) G1's PCA mouth coefficients
    frame_index  (T,)    template frame of each output frame (ping-pong extension)
    energy       (T,)    RMS speech energy per output frame (for silence closing and plots)
    """

    talk: np.ndarray
    coefs: np.ndarray
    frame_index: np.ndarray
    energy: np.ndarray
    fps: float
    variant: str
    key: tuple

    @property
    def frames(self) -> int:
        return int(self.talk.shape[0])


@dataclass(frozen=True, eq=False)
class Landmarks:
    """Edited landmarks of every output frame, ready to draw and render. T output frames.

    talk        (T, 58) normalized, edits applied
    points      (T, 68, 2) template pixels: the template's 68 points with the 29 talking points
                replaced by the edited prediction
    template    (T, 68, 2) the template's own points for the same frames (for overlays)
    """

    talk: np.ndarray
    points: np.ndarray
    template: np.ndarray
    frame_index: np.ndarray
    fps: float


class Pipeline:
    """Speech + template + subject + edits -> dubbed video. Safe to share between threads."""

    def __init__(self, manager: ModelManager | None = None, config: PipelineConfig = PipelineConfig(),
                 work_dir: str | os.PathLike[str] | None = None) -> None:
        self.manager = manager or default_manager()  # STUDIO_MODEL_MEMORY_MB, STUDIO_DEVICE
        self.config = config
        self.work_dir = Path(work_dir or Path(tempfile.gettempdir()) / "lip-sync-studio")
        self._speech = LRU(config.cache_items)
        self._templates = LRU(config.cache_items)
        self._predictions = LRU(config.cache_items)
        self._prepared = LRU(config.cache_items)  # (landmarks, renderer) -> crop track + renderer state
        self._building: dict[str, threading.Lock] = {}
        self._building_lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------------------
    def subject(self, directory: str | os.PathLike[str]) -> Subject:
        d = Path(directory).resolve()
        return self.manager.get(("subject", str(d)), lambda device: Subject.load(d))

    def mapping(self, subject: Subject, variant: str):
        from studio.models.checkpoint import MappingModel

        path = subject.mapping_dir(variant).resolve()
        model = self.manager.get(("mapping", str(path)), lambda device: MappingModel.load(path))
        if model.variant != variant:  # a checkpoint copied into the wrong folder
            raise CheckpointError(f"Subject {subject.name!r}: mapping/{variant} holds a {model.variant!r} "
                                  f"checkpoint, not {variant!r}.",
                                  f"Re-train it with `python -m studio make-subject ... --variants {variant}` "
                                  "or restore the folder.")
        return model

    def retrieval(self, subject: Subject):
        from studio.render.retrieval import RetrievalRenderer

        path = subject.retrieval_dir.resolve()
        return self.manager.get(("retrieval", str(path)), lambda device: RetrievalRenderer.load(path))

    def neural(self, subject: Subject):
        from studio.render.neural import NeuralRenderer

        path = subject.neural_dir.resolve()
        return self.manager.get(("neural", str(path)),
                                lambda device: NeuralRenderer.load(path, device=device))

    def closed_shape(self, subject: Subject) -> np.ndarray:
        """(58,) the subject's own closed mouth (normalized), from its footage."""
        key = ("closed", str(subject.directory.resolve()))
        return self.manager.get(key, lambda device: closed_mouth_shape(
            np.concatenate([c.talk[c.valid] for c in subject.clips()])))

    # -- stages ------------------------------------------------------------------------------------
    def speech(self, path: str | os.PathLike[str]) -> Speech:
        """Decode and check speech; cached by file content."""
        p = Path(path)
        media.check_file_size(p, self.config.limits)
        header_seconds = media.probe_audio_seconds(p)  # before decoding: a 2-hour file is refused at once
        if header_seconds is not None:
            media.check_audio_seconds(header_seconds, self.config.limits)
        sha = sha256_file(p)

        def make() -> Speech:
            signal = media.read_audio(p)
            seconds = len(signal) / SAMPLE_RATE
            media.check_audio_seconds(seconds, self.config.limits)
            if seconds < 0.1:
                raise InputError(f"The speech in {p.name} is only {seconds * 1000:.0f} ms long.",
                                 "Use at least a second of speech.")
            if float(np.sqrt(np.mean(signal.astype(np.float64) ** 2))) < self.config.min_speech_rms:
                raise InputError(f"The speech in {p.name} is silent.",
                                 "Check the recording (microphone muted?) and upload speech with audible voice.")
            return Speech(str(p), sha, signal)

        return self._speech.get_or(("speech", sha), make)

    def template(self, subject: Subject, which: str | os.PathLike[str] | None = None):
        """The template clip: ``None`` = the subject's first clip, a clip name, or a video file.

        A video file is preprocessed once (cached by content under the work folder) and, unless
        ``config.check_identity`` is off, must show the subject's person (:meth:`check_identity`).
        """
        from studio.data.clip import Clip
        from studio.data.preprocess import preprocess

        if which is None or (isinstance(which, str) and which in subject.manifest.clips):
            name = which or subject.manifest.clips[0]
            return subject.clip(name)
        p = Path(which)
        if not p.exists():
            raise InputError(f"Template {str(which)!r} is neither a clip of {subject.name!r} nor a file.",
                             f"Pick one of {list(subject.manifest.clips)} or upload a video.")
        media.check_file_size(p, self.config.limits)
        sha = sha256_file(p)
        own = subject.clip_for_video(sha)
        if own is not None:  # footage the subject was built from: already preprocessed
            return subject.clip(own)
        media.check_video(media.probe_video(p), self.config.limits)

        def make() -> Clip:
            return preprocess(p, self.work_dir / "templates" / sha[:16])

        clip = self._templates.get_or(("template", sha), make)
        if self.config.check_identity:
            self.check_identity(subject, clip, p.name)
        return clip

    def check_identity(self, subject: Subject, template, name: str = "") -> float | None:
        """OtherPersonError when ``template`` (an uploaded clip) shows another person than
        ``subject``'s footage; returns the match score, or None when the faces could not be
        compared (a synthetic subject, no frontal enough or large enough face: logged, not refused).
        The subject's descriptor is cached per folder and build, the score per subject and template."""
        from studio.face import identity_check as idc

        cfg = idc.IdentityConfig()
        clips = subject.clips()
        if all(c.meta.synthetic for c in clips):  # a drawn face is nobody: nothing to compare
            return None
        key = ("identity", str(subject.directory.resolve()), subject.manifest.created)
        name = name or Path(template.meta.source).name

        def compare() -> float | None:
            mine = self.manager.get(key, lambda device: idc.clips_descriptor(clips, cfg))
            theirs = idc.clip_descriptor(template, cfg)
            if mine is None or theirs is None:
                log.warning("could not check that %s shows %s (too few frames with a frontal face large enough "
                            "to compare); dubbing it anyway", name, subject.name)
                return None
            value = idc.score(theirs, mine)
            log.info("%s vs subject %s: face match %.3f (threshold %.2f)", name, subject.name, value, cfg.threshold)
            return value

        value = self._templates.get_or(key + (template.meta.source_sha256,), compare)
        if value is not None and value < cfg.threshold:
            raise idc.OtherPersonError(
                f"The template {name} shows a different person from the subject {subject.name!r} (face match "
                f"{value:.2f}; footage of the same person scores {cfg.threshold:.2f} or more). Dubbing it "
                "with this subject would paste the subject's face onto theirs.",
                "To dub this video, build a subject from this video in the Subject tab, or use 'One step' in "
                "the Dub tab, which dubs any video directly.")
        return value

    def predict(self, subject: Subject, speech: Speech, template, variant: str = "ours") -> Prediction:
        """Run the mapping network (cached per subject, speech, template and variant)."""
        from studio.models.checkpoint import extend_template

        if variant not in ALL_VARIANTS:
            raise InputError(f"Unknown variant {variant!r}.", f"Use one of {list(ALL_VARIANTS)}.")
        key = (str(subject.directory.resolve()), speech.sha256, template.meta.source_sha256, variant)

        def make() -> Prediction:
            from threadpoolctl import threadpool_limits

            model = self.mapping(subject, variant)
            fps = template.meta.fps
            n = max(1, int(round(speech.seconds * fps)))
            idx = extend_template(n, template.meta.frames)
            # one BLAS thread: the filterbank's matrix product rounds differently with each thread
            # count, so a dub would change with OMP_NUM_THREADS (Ray workers), taskset or the CPUs
            with threadpool_limits(1, user_api="blas"):
                audio = features_for_video(speech.signal, fps, n)
                talk, coefs = model.predict(audio, template.pose[idx], template.cheek[idx], fps=fps,
                                            return_coefs=True)
            energy = frame_energy(speech.signal, n, fps)
            return Prediction(talk, coefs, idx, energy, fps, variant, key)

        return self._predictions.get_or(("prediction",) + key, make)

    def landmarks(self, prediction: Prediction, template, subject: Subject,
                  edits: Edits = Edits()) -> Landmarks:
        """Apply edits and put the prediction into the template frames' pixels. Pure and fast."""
        from studio.face.normalize import denormalize_flat

        pca = self.mapping(subject, prediction.variant).pca
        closed = self.closed_shape(subject) if edits.close_on_silence else None
        idx = prediction.frame_index
        norm = template.norm_landmarks
        found = np.asarray(template.found, bool)
        own = norm[found] if found.sum() >= 10 else norm
        wanted = prediction.talk
        if self.config.opening_margin > 0:
            # a shape the person could make, no wider than they ever open in the footage; edits
            # still go past it on purpose
            ref = layout.talking_vector(own)
            wanted = limit_shape(wanted, ref, pca)
            wanted = limit_opening(wanted, ref, margin=self.config.opening_margin)
        talk = apply_edits(wanted, edits, pca, speech_energy=prediction.energy,
                           closed_shape=closed, fps=prediction.fps)
        if self.config.anchor_to_template:
            from studio.face.jaw import anchor_jaw, fit_jaw_motion, mouth_placement, place_mouth

            motion = fit_jaw_motion(own)
            # placement is measured on the unedited prediction, so that edits keep their effect
            placement = mouth_placement(wanted, norm[idx], prediction.fps)
            lips = place_mouth(wanted, norm[idx], placement)
            talk = anchor_jaw(place_mouth(talk, norm[idx], placement), norm[idx], motion, lips=lips)
        centre, scale = template.centre[idx], template.scale[idx]
        base = template.landmarks[idx]
        points = layout.with_talking(base, denormalize_flat(talk, centre, scale))
        return Landmarks(talk.astype(np.float32), points.astype(np.float32), base, idx, prediction.fps)

    # -- frames ------------------------------------------------------------------------------------
    def template_frames(self, template, frame_index: np.ndarray, start: int = 0,
                        stop: int | None = None) -> Iterator[np.ndarray]:
        """Stream the template frames ``frame_index[start:stop]`` in order, RGB uint8.

        Forward runs stream from the decoder; backward runs (ping-pong) decode chunks of
        ``frame_chunk`` frames and play them reversed, so memory stays bounded.
        """
        idx = np.asarray(frame_index[start:stop], dtype=np.int64)
        video = template.video_path
        k = 0
        while k < len(idx):
            step = 1 if k + 1 >= len(idx) or idx[k + 1] >= idx[k] else -1
            j = k + 1
            while j < len(idx) and idx[j] - idx[j - 1] == step:
                j += 1
            run = idx[k:j]
            if step == 1:
                yield from media.iter_frames(video, int(run[0]), int(run[-1]) + 1)
            else:
                chunk = self.config.frame_chunk
                for a in range(0, len(run), chunk):
                    part = run[a:a + chunk]  # descending indices
                    frames = list(media.iter_frames(video, int(part[-1]), int(part[0]) + 1))
                    yield from reversed(frames)
            k = j

    def renderer(self, subject: Subject, name: str):
        if name not in RENDERERS:
            raise InputError(f"Unknown renderer {name!r}.", f"Use one of {list(RENDERERS)}.")
        return self.retrieval(subject) if name == "retrieval" else self.neural(subject)

    def facemap(self, template, lms: Landmarks, i: int, facemap_cfg=None, *, subject: Subject | None = None,
                renderer: str = "retrieval") -> np.ndarray:
        """The synthetic facial map of output frame ``i``: (S, S, 3) uint8, built from the same
        frame inputs as rendering (``studio.render.base.frame_inputs``). For the neural renderer
        (``subject`` given) it is exactly that renderer's input: its crop, size and map settings
        (``facemap_cfg`` is then ignored); otherwise drawn with ``facemap_cfg`` at ``render_size``."""
        from studio.render.base import frame_inputs, sequence_track
        from studio.render.crop import CropConfig
        from studio.render.facemap import FacemapConfig, facial_map

        i = _check_frame(i, lms)
        if renderer == "neural" and subject is not None:
            engine = self.neural(subject)
            crop_config, size, cfg = engine.crop_config, engine.size, engine.facemap_config
        else:
            crop_config, size, cfg = CropConfig(), self.config.render_size, facemap_cfg or FacemapConfig()
        track = sequence_track(crop_config, lms, template)
        frame = next(self.template_frames(template, lms.frame_index, i, i + 1))
        inputs = frame_inputs(track, frame, lms, i, size)
        return facial_map(inputs.crop, inputs.template_points, inputs.talk, cfg)

    def render_frames(self, subject: Subject, template, lms: Landmarks, renderer: str = "retrieval",
                      start: int = 0, stop: int | None = None, *,
                      cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        """Full output frames ``start..stop`` (RGB uint8, template resolution), streamed.

        A failure names the output frame it happened at; a template video that ends early (changed
        or damaged since it was preprocessed) is an InputError, never a silently shorter video.
        """
        from studio.render.compose import prepare_sequence, render_sequence

        stop = lms.points.shape[0] if stop is None else min(stop, lms.points.shape[0])
        if not 0 <= start < stop:
            raise InputError(f"Frame range {start}..{stop} is empty.", f"Pick frames in 0..{lms.points.shape[0] - 1}.")
        engine = self.renderer(subject, renderer)
        # what the whole sequence shares (crop track, retrieval picks) is computed once per
        # landmarks and renderer: previews of other frames reuse it (the entry holds both objects,
        # so an id reused after garbage collection, or a reloaded renderer, cannot match)
        key = (id(lms), id(engine), template.meta.source_sha256)
        entry = self._prepared.get(key)
        if entry is None or entry[0] is not lms or entry[1] is not engine:
            entry = (lms, engine, prepare_sequence(engine, lms, template))
            self._prepared.put(key, entry)
        frames = self.template_frames(template, lms.frame_index, start, stop)
        if stop - start > 1:  # decode ahead while frames are rendered
            frames = media.prefetch(frames, 8)
        i = start
        try:
            for frame in render_sequence(engine, frames, lms, template, start=start, stop=stop,
                                         size=self.config.render_size, prepared=entry[2]):
                if cancel is not None and cancel.is_set():
                    raise CancelledError("Rendering was cancelled.", "Start it again when ready.")
                yield frame
                i += 1
        except CancelledError:
            raise
        except StudioError as exc:
            raise type(exc)(f"Rendering stopped at frame {i} of {stop}: {exc.message}", exc.hint) from exc
        except Exception as exc:
            log.exception("rendering failed at output frame %d of %d", i, stop)
            raise StudioError(f"Rendering failed at frame {i} of {stop} ({type(exc).__name__}: {str(exc)[:200]}).",
                              "No video was written. Try the other renderer or another template; if it "
                              "happens again, report it with the server log.") from exc
        if i < stop:
            raise InputError(f"The template video {Path(template.video_path).name} ended at frame "
                             f"{int(lms.frame_index[i])}, before output frame {i} of {stop}.",
                             "It changed or was damaged after it was prepared: upload it again, or "
                             "rebuild the subject.")

    def preview_frame(self, subject: Subject, template, lms: Landmarks, i: int,
                      renderer: str = "retrieval") -> np.ndarray:
        i = _check_frame(i, lms)
        return next(self.render_frames(subject, template, lms, renderer, i, i + 1))

    def render(self, subject: Subject, template, speech: Speech, lms: Landmarks, out_path: str | os.PathLike[str],
               renderer: str = "retrieval", *, progress: Progress | None = None,
               cancel: threading.Event | None = None, quality: str | None = None) -> Path:
        """Render every frame and write an H.264/AAC mp4 with the speech (atomic: temp + rename).
        ``quality``: a key of ENCODINGS ("standard", "high"); None: the pipeline's setting."""
        quality = quality or self.config.quality
        if quality not in ENCODINGS:
            raise InputError(f"Unknown output quality {quality!r}.", f"Use one of {list(ENCODINGS)}.")
        n = lms.points.shape[0]
        size = (template.meta.width, template.meta.height)
        report = progress or (lambda f, d: None)
        # the speech as the user gave it (its own sample rate and channels) when the file is still
        # the one that was decoded; the 16 kHz mono decode only feeds the network
        original = Path(speech.path)
        same = original.is_file() and sha256_file(original) == speech.sha256
        # the template's colour tags (e.g. BT.709 HD): the dub is shown with the template's colours
        colour = media.probe_video(template.video_path).colour
        with media.VideoWriter(out_path, lms.fps, size, audio=original if same else speech.signal,
                               colour=colour, **ENCODINGS[quality]) as writer:
            frames = self.render_frames(subject, template, lms, renderer, cancel=cancel)
            # frames are rendered in another thread while this one feeds the encoder
            for k, frame in enumerate(media.prefetch(frames, 4)):
                writer.write(frame)
                if k % 10 == 0 or k == n - 1:
                    report((k + 1) / n, f"frame {k + 1}/{n}")
        return Path(out_path)

    # -- one step: a video of a new person -------------------------------------------------------
    def subject_for_video(self, video: str | os.PathLike[str], *, progress: Progress | None = None) -> Subject:
        """The subject of a video of anyone, built on first use from the video and its own speech
        (``studio.subject.make_subject``: the multi-speaker prior, fine-tuned as far as the footage
        allows) and cached by the video's content and the prior's fingerprint, so that a second
        dub of the same video starts at once. Folder: ``studio.config.cache_dir()/subjects``."""
        from studio.config import cache_dir
        from studio.subject import MANIFEST, make_subject
        from studio.train.prior import prior_fingerprint

        p = Path(video)
        if not p.is_file():
            raise InputError(f"Video {str(video)!r} does not exist.", "Check the path or upload the video again.")
        media.check_file_size(p, self.config.limits)
        media.check_video(media.probe_video(p), self.config.limits)
        folder = cache_dir() / "subjects" / f"{sha256_file(p)[:16]}-{prior_fingerprint()[:8]}"
        with self._building_lock:
            lock = self._building.setdefault(str(folder), threading.Lock())
        with lock:  # two requests for one new video build it once
            if (folder / MANIFEST).exists():
                try:
                    return self.subject(folder)
                except CheckpointError:
                    log.warning("rebuilding the damaged cached subject %s", folder)
            report = progress or (lambda frac, desc: None)
            make_subject([p], folder, name=p.stem, progress=lambda stage, frac: report(frac, stage))
            self.manager.evict(("subject", str(folder.resolve())))
            return self.subject(folder)

    def dub_video(self, video: str | os.PathLike[str], speech_path: str | os.PathLike[str],
                  out_path: str | os.PathLike[str], *, renderer: str = "retrieval", edits: Edits = Edits(),
                  progress: Progress | None = None, cancel: threading.Event | None = None) -> Path:
        """One-step dub: ``video`` of anyone + new speech -> ``out_path``; no subject needed.

        Progress runs over the stages: building the subject (first time only; 0-60 %), predicting,
        rendering. Notices of the build (e.g. a video without usable speech of its own, dubbed
        with the prior alone) are logged and kept in ``subject.manifest.extras["notices"]``.
        """
        report = progress or (lambda frac, desc: None)
        speech = self.speech(speech_path)  # bad speech is refused before a long build
        subject = self.subject_for_video(video, progress=lambda f, d: report(0.6 * f, f"subject: {d}"))
        for notice in subject.manifest.extras.get("notices", []):
            log.warning("%s", notice)
        report(0.6, "predict landmarks")
        tpl = self.template(subject, None)
        pred = self.predict(subject, speech, tpl, "ours")
        lms = self.landmarks(pred, tpl, subject, edits)
        return self.render(subject, tpl, speech, lms, out_path, renderer,
                           progress=lambda f, d: report(0.62 + 0.38 * f, f"render: {d}"), cancel=cancel)

    # -- one call ------------------------------------------------------------------------------
    def dub(self, subject_dir: str | os.PathLike[str], speech_path: str | os.PathLike[str],
            out_path: str | os.PathLike[str], *, template: str | os.PathLike[str] | None = None,
            renderer: str = "retrieval", variant: str = "ours", edits: Edits = Edits(),
            progress: Progress | None = None, cancel: threading.Event | None = None) -> Path:
        subject = self.subject(subject_dir)
        speech = self.speech(speech_path)
        tpl = self.template(subject, template)
        pred = self.predict(subject, speech, tpl, variant)
        lms = self.landmarks(pred, tpl, subject, edits)
        return self.render(subject, tpl, speech, lms, out_path, renderer, progress=progress, cancel=cancel)


def _check_frame(i: int, lms: Landmarks) -> int:
    n = lms.points.shape[0]
    if not 0 <= int(i) < n:
        raise InputError(f"Frame {i} is outside the clip (0..{n - 1}).", "Pick a frame inside the clip.")
    return int(i)


def landmarks_table(lms: Landmarks):
    """The edited landmarks as a pandas DataFrame: one row per output frame, x0..y67 in pixels (what
    the renderer is asked to draw), then tx0..ty67 (the template frame's own points)."""
    import pandas as pd

    t = lms.points.shape[0]
    cols: dict[str, Any] = {"frame": np.arange(t), "time": np.arange(t) / lms.fps, "template_frame": lms.frame_index}
    for i in range(68):
        cols[f"x{i}"] = lms.points[:, i, 0]
        cols[f"y{i}"] = lms.points[:, i, 1]
    for i in range(68):  # the template's own points: what the dub started from (studio integrity)
        cols[f"tx{i}"] = lms.template[:, i, 0]
        cols[f"ty{i}"] = lms.template[:, i, 1]
    return pd.DataFrame(cols)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help="subject folder (make-subject)")
    who.add_argument("--video", help="one step: a video of anyone; its subject is built from it and cached")
    parser.add_argument("--speech", required=True, help="speech to dub (wav, mp3, m4a, ...)")
    parser.add_argument("--template", default=None, help="template video, or a clip name of the subject "
                        "(default: the subject's first clip)")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--renderer", default="retrieval", choices=RENDERERS)
    parser.add_argument("--edits", default=None, help="edits JSON file (studio.edits.Edits)")
    parser.add_argument("--variant", default="ours", choices=ALL_VARIANTS)
    parser.add_argument("--size", type=int, default=PipelineConfig.render_size, help="face crop size to render at")
    parser.add_argument("--quality", choices=tuple(ENCODINGS), default="standard",
                        help="video encoding: standard (crf 18, fast) or high (crf 16, slower; for delivery)")
    parser.add_argument("--landmarks-csv", default=None, help="also write the edited landmarks as CSV")
    parser.add_argument("--allow-other-person", action="store_true",
                        help="dub a --template video even when its face does not match the subject's footage "
                        "(by default such a template is refused)")


def cli(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from studio.face.identity_check import OtherPersonError

    edits = Edits.load(args.edits) if args.edits else Edits()
    pipe = Pipeline(config=PipelineConfig(render_size=args.size, quality=args.quality,
                                          check_identity=not args.allow_other_person))
    if args.video is not None:
        if args.template is not None or args.variant != "ours":
            raise InputError("--video dubs the video itself with the 'ours' model.",
                             "Drop --template/--variant, or build a subject with make-subject and pass --subject.")
        speech = pipe.speech(args.speech)  # bad speech is refused before a long build
        stage = {"last": ""}

        def report(frac: float, desc: str) -> None:
            if desc != stage["last"]:
                log.info("%3.0f%% %s", 100 * frac, desc)
                stage["last"] = desc

        subject = pipe.subject_for_video(args.video, progress=report)
        for notice in subject.manifest.extras.get("notices", []):
            log.warning("%s", notice)
    else:
        subject = pipe.subject(args.subject)
        speech = pipe.speech(args.speech)
    try:
        tpl = pipe.template(subject, args.template)
    except OtherPersonError as exc:
        raise OtherPersonError(exc.message, "Build a subject from this video with `python -m studio make-subject`, "
                               "or dub it directly with `dub --video`; --allow-other-person dubs it with "
                               "this subject anyway.") from None
    pred = pipe.predict(subject, speech, tpl, args.variant)
    lms = pipe.landmarks(pred, tpl, subject, edits)
    if args.landmarks_csv:
        landmarks_table(lms).to_csv(args.landmarks_csv, index=False, float_format="%.2f")
    bar = tqdm(total=lms.points.shape[0], desc="render", unit="frame")

    def progress(frac: float, desc: str) -> None:
        bar.n = int(round(frac * bar.total))
        bar.refresh()

    try:
        out = pipe.render(subject, tpl, speech, lms, args.out, args.renderer, progress=progress)
    finally:
        bar.close()
    log.info("wrote %s (%d frames, %.1f s)", out, lms.points.shape[0], speech.seconds)
    return 0
