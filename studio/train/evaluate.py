"""Evaluate a mapping checkpoint on clips: ``python -m studio evaluate CKPT_DIR CLIP_DIR...``.

The last line printed is one JSON object. Units:

- ``mouth_mse`` / ``jaw_mse``: mean over frames and over the x and y coordinates of the 20 mouth
  points (40 numbers) / the 9 jaw points (18 numbers) of the squared error, in NORMALIZED
  coordinates: points relative to the nose centre (mean of the 9 nose points) divided by the
  face scale (RMS distance of the 36 stable brow/eye/nose points from their mean; see
  ``studio.face.normalize``). Rotation is kept, as in the paper. The paper's own normalization
  is not stated precisely, so its 10^-6 / 10^-5 values are not directly comparable.
- ``*_rmse_px``: root mean squared point-to-point (Euclidean) distance, in pixels of a 720x720
  face crop in which the face scale is ``FACE_SCALE_PX`` = 100 px (so the jaw contour, about 3.8
  face scales wide, spans about half the crop). rmse_px = sqrt(2 * mse) * 100.
- ``velocity_rmse`` (jitter): RMS over frame pairs and coordinates of the difference between
  the predicted and the true frame-to-frame motion, normalized units; ``velocity_rmse_px`` is
  the same per point in crop pixels per frame.
- ``train_seconds`` (wall) and ``train_cpu_seconds`` (process CPU time, steadier on a shared
  machine) from the checkpoint; ``inference_seconds_5min``: median wall time of one ``predict``
  over 7,500 frames (5 minutes at 25 fps) on this machine, ``inference_cpu_seconds_5min`` the
  same pass in process CPU seconds (all threads; what the work costs, which other jobs on the
  machine barely change, unlike the wall time). ``load_1min`` / ``cores`` / ``timing_busy``: the
  1-minute load average and usable cores at the timing, and whether the load exceeded the cores
  (other processes competed for them: read the wall times with care).

Targets (``--target``): by default synthetic clips are compared with their noise-free
``gt_landmarks`` (normalized with the clip's own nose centre and face scale, as the inputs are),
real clips with their detected landmarks (frames without a valid face left out). For synthetic
clips ``visible`` compares with the noise-free points a detector aims at: identical to the ground
truth for the mouth, but far-side jaw points hidden by a turned head lie on the visible outline,
as in the detections the models are trained on (the true projections of hidden jaw points
cannot be learned from detections). Baselines predict no jaw: ``jaw_mse`` is null for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from studio.data.clip import Clip
from studio.errors import InputError
from studio.face import layout
from studio.models.checkpoint import MappingModel
from studio.train.windows import ClipArrays, clip_arrays, span_frames

log = logging.getLogger(__name__)

CROP_SIZE = 720
FACE_SCALE_PX = 100.0  # face scale in pixels of the 720x720 evaluation crop
FIVE_MINUTES_FRAMES = 7500  # 5 min at 25 fps


def error_sums(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Sums of squared errors of (T, 58) predictions for aggregation over clips.

    mask (T,) bool: frames to score. Velocity terms use pairs of consecutive scored frames.
    """
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    assert pred.shape == target.shape and pred.shape[-1] == layout.TALK_DIM, (pred.shape, target.shape)
    mask = np.ones(len(pred), bool) if mask is None else np.asarray(mask, bool)
    err = pred - target
    sq = err[mask] ** 2
    pair = mask[1:] & mask[:-1]
    dv = (err[1:] - err[:-1])[pair] ** 2
    return {
        "frames": float(mask.sum()), "pairs": float(pair.sum()),
        "mouth_se": float(sq[:, layout.TALK_MOUTH].sum()), "jaw_se": float(sq[:, layout.TALK_JAW].sum()),
        "vel_mouth_se": float(dv[:, layout.TALK_MOUTH].sum()), "vel_jaw_se": float(dv[:, layout.TALK_JAW].sum()),
    }


def summarize(sums: dict[str, float], predicts_jaw: bool = True) -> dict[str, Any]:
    """Turn accumulated :func:`error_sums` into the reported metrics (see module docstring)."""
    f, p = max(sums["frames"], 1.0), max(sums["pairs"], 1.0)
    nm, nj = layout.MOUTH_DIM, layout.TALK_DIM - layout.MOUTH_DIM
    mouth = sums["mouth_se"] / (f * nm)
    jaw = sums["jaw_se"] / (f * nj)
    if predicts_jaw:
        vel = (sums["vel_mouth_se"] + sums["vel_jaw_se"]) / (p * (nm + nj))
    else:
        vel = sums["vel_mouth_se"] / (p * nm)

    def px(mse: float) -> float:
        return float(np.sqrt(2.0 * mse) * FACE_SCALE_PX)

    return {
        "frames": int(sums["frames"]),
        "mouth_mse": mouth, "jaw_mse": jaw if predicts_jaw else None,
        "mouth_rmse_px": px(mouth), "jaw_rmse_px": px(jaw) if predicts_jaw else None,
        "velocity_rmse": float(np.sqrt(vel)), "velocity_rmse_px": px(vel),
    }


@dataclass(frozen=True)
class MachineLoad:
    """The machine's 1-minute load average (None where the OS has none) and the cores this
    process may use. ``busy``: more runnable work than cores, so timings were shared."""

    load_1min: float | None
    cores: int

    @property
    def busy(self) -> bool:
        return self.load_1min is not None and self.load_1min > self.cores


def machine_load() -> MachineLoad:
    """The load now (see :class:`MachineLoad`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load: float | None = float(os.getloadavg()[0])
    except (AttributeError, OSError):
        load = None
    return MachineLoad(load, max(1, cores))


@dataclass(frozen=True)
class InferenceTiming:
    """One ``MappingModel.predict`` pass, median over repeats: wall seconds, and process CPU
    seconds (all threads), which other processes on the machine barely change; the torch threads
    and the machine's load (the higher of before and after) it was measured with."""

    wall_seconds: float
    cpu_seconds: float
    threads: int
    load: MachineLoad


def inference_timing(model: MappingModel, n_frames: int = FIVE_MINUTES_FRAMES, repeats: int = 5) -> InferenceTiming:
    """Time ``model.predict`` over ``n_frames`` frames (after one warm-up), wall and CPU."""
    rng = np.random.default_rng(0)
    n = model.norm
    audio = (n.audio_mean + n.audio_std * rng.standard_normal((4 * n_frames, 26))).astype(np.float32)
    pose = (n.pose_mean + n.pose_std * rng.standard_normal((n_frames, 3))).astype(np.float32)
    cheek = (n.cheek_mean + n.cheek_std * rng.standard_normal((n_frames, 16))).astype(np.float32)
    before = machine_load()
    model.predict(audio, pose, cheek)
    # one torch thread computes in this thread: count only its CPU time (other threads of the
    # process, e.g. a server's, would otherwise be billed to the model); more threads: the process'
    cpu_clock = time.thread_time if _threads() == 1 else time.process_time
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), cpu_clock()
        model.predict(audio, pose, cheek)
        walls.append(time.perf_counter() - t)
        cpus.append(cpu_clock() - c)
    after = machine_load()
    loads = [x.load_1min for x in (before, after) if x.load_1min is not None]
    return InferenceTiming(float(np.median(walls)), float(np.median(cpus)), _threads(),
                           MachineLoad(max(loads) if loads else None, after.cores))


def inference_seconds(model: MappingModel, n_frames: int = FIVE_MINUTES_FRAMES, repeats: int = 5) -> float:
    """Median wall seconds of one ``model.predict`` over ``n_frames`` frames (after one warm-up)."""
    return inference_timing(model, n_frames, repeats).wall_seconds


TARGETS = ("auto", "gt", "visible", "detected")


def target_talk(clip: Clip | ClipArrays, span: tuple[float, float],
                target: str) -> tuple[ClipArrays, np.ndarray, np.ndarray, str]:
    """(block, target (T, 58), mask (T,), name) for one clip's ``span``; see :data:`TARGETS`.

    auto: the ground truth of a synthetic clip, else the detected points. gt: the noise-free true
    projections (occluded contour points included). visible: the noise-free points a detector
    aims at (hidden far-side contour points slid to the visible outline; synthetic clips only,
    from synth_truth.npz). detected: the clip's own landmarks (frames without a face masked).
    """
    b = clip if isinstance(clip, ClipArrays) else clip_arrays(clip, span)
    if target == "auto":
        target = "gt" if b.gt_talk is not None else "detected"
    if target == "detected":
        return b, b.talk, b.valid, target
    if target == "gt":
        if b.gt_talk is None:
            raise InputError(f"{b.name} has no ground truth (it is not a synthetic clip).",
                             "Use --target detected (or auto) for real footage.")
        return b, b.gt_talk, np.ones(b.frames, bool), target
    if target == "visible":
        if isinstance(clip, ClipArrays) or clip.directory is None:
            raise InputError("The 'visible' target needs a synthetic clip folder.", "Use --target gt.")
        from studio.data.synth import load_truth
        from studio.face.normalize import normalize

        vis = layout.talking_vector(normalize(load_truth(clip.directory)["visible"], clip.centre, clip.scale))
        a, _ = span_frames(clip.meta.frames, span)
        return b, vis[a:a + b.frames], np.ones(b.frames, bool), target
    raise InputError(f"Unknown evaluation target {target!r}.", f"Use one of {TARGETS}.")


def evaluate_model(model: MappingModel, clips: Sequence[Clip | ClipArrays],
                   span: tuple[float, float] = (0.0, 1.0), target: str = "auto") -> dict[str, Any]:
    """Errors of ``model`` on the ``span`` of each clip (one predict per clip), pooled over frames."""
    total: dict[str, float] = {}
    names = set()
    for c in clips:
        b, truth, mask, name = target_talk(c, span, target)
        if b.frames < 2:
            continue
        pred = model.predict(b.audio, b.pose, b.cheek, fps=b.fps)
        names.add(name)
        for k, v in error_sums(pred, truth, mask).items():
            total[k] = total.get(k, 0.0) + v
    if not total:
        raise InputError("No frames to evaluate on.", "Give clips with at least two frames in the span.")
    out = summarize(total, model.predicts_jaw)
    out["target"] = "+".join(sorted(names))
    return out


# -- the dubbing protocol ---------------------------------------------------------------------
PROTOCOLS = ("paper", "dubbing")


@dataclass(frozen=True, eq=False)
class Track:
    """One clip's frames in a time span, as the dubbing evaluation needs them.

    landmarks (T, 68, 2) pixels, centre (T, 2), scale (T,), valid (T,), pose (T, 3), cheek (T, 16),
    audio (4T, 26), energy (T,) RMS of the clip's speech per frame (zeros without audio), fps.
    ``truth`` (T, 68, 2): what the speech's face really did -- the noise-free ground truth of a
    synthetic clip, else the detected landmarks.
    """

    name: str
    landmarks: np.ndarray
    truth: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    valid: np.ndarray
    pose: np.ndarray
    cheek: np.ndarray
    audio: np.ndarray
    energy: np.ndarray
    fps: float

    @property
    def frames(self) -> int:
        return len(self.valid)


def track(clip: Clip, span: tuple[float, float] = (0.0, 1.0)) -> Track:
    """The frames of ``clip`` in the fractional time ``span`` as a :class:`Track`."""
    from studio.audio import frame_energy
    from studio.media import read_audio

    a, b = span_frames(clip.meta.frames, span)
    fps = float(clip.meta.fps)
    energy = np.zeros(clip.meta.frames, np.float32)
    if clip.audio_path is not None and clip.meta.audio_seconds > 0:
        energy = frame_energy(read_audio(clip.audio_path), clip.meta.frames, fps)
    truth = clip.gt_landmarks if clip.gt_landmarks is not None else clip.landmarks
    name = str(clip.directory) if clip.directory is not None else clip.meta.source
    return Track(name, clip.landmarks[a:b], truth[a:b], clip.centre[a:b], clip.scale[a:b], clip.valid[a:b],
                 clip.pose[a:b], clip.cheek[a:b], clip.audio[4 * a:4 * b], energy[a:b], fps)


def dub_landmarks(talk: np.ndarray, template: Track, index: np.ndarray) -> np.ndarray:
    """Predicted normalized talking points (N, 58) put into template frames ``index`` (N,):
    (N, 68, 2) pixels, the rest of each face from the template (what the renderer draws)."""
    from studio.models.checkpoint import to_pixels

    pts = to_pixels(talk, template.centre[index], template.scale[index])
    return layout.with_talking(template.landmarks[index], pts.reshape(len(index), layout.TALK_DIM))


def dub_predict(model: MappingModel, speech: Track, template: Track) -> tuple[np.ndarray, np.ndarray]:
    """Dub ``speech``'s audio onto ``template`` as the studio does; returns (landmarks (N, 68, 2)
    in template pixels at the template's fps, template frame index (N,))."""
    from studio.metrics import resample
    from studio.models.checkpoint import extend_template

    n = max(1, int(round(speech.frames / speech.fps * template.fps)))
    audio = resample(speech.audio, 4 * speech.fps, 4 * n, 4 * template.fps).astype(np.float32)
    idx = extend_template(n, template.frames)
    talk = model.predict(audio, template.pose[idx], template.cheek[idx], fps=template.fps)
    return dub_landmarks(talk, template, idx), idx


def on_speech_frames(points: np.ndarray, fps: float, speech: Track) -> np.ndarray:
    """A (N, 68, 2) track at ``fps`` resampled to the speech clip's frames (T, 68, 2)."""
    from studio.metrics import resample

    return resample(points, fps, speech.frames, speech.fps)


def dubbing_scores(model: MappingModel, speech: Track, template: Track) -> dict[str, dict[str, float]]:
    """The dubbing protocol for one (speech clip, template clip) pair; rows of
    ``studio.metrics.compare_tracks`` against the speech clip's real landmarks (``truth``):

    - ``dub``: the model driven by the speech's audio with the TEMPLATE's pose and cheek points;
    - ``template``: no lip sync at all (the template's own mouth over the same frames);
    - ``energy``: a linear fit of the speech's per-frame log RMS energy (openings only);
    - ``paper``: the paper's protocol, the model given the speech clip's OWN pose and cheek.
    """
    from studio.metrics import compare_tracks, score_energy

    mask = speech.valid
    dub, idx = dub_predict(model, speech, template)
    rows = {"dub": compare_tracks(on_speech_frames(dub, template.fps, speech), speech.truth, mask),
            "template": compare_tracks(on_speech_frames(template.landmarks[idx], template.fps, speech),
                                       speech.truth, mask)}
    if float(np.max(speech.energy)) > 0:
        rows["energy"] = score_energy(speech.energy, speech.truth, mask)
    own = np.arange(speech.frames)
    talk = model.predict(speech.audio, speech.pose, speech.cheek, fps=speech.fps)
    paper = dub_landmarks(talk, speech, own)
    rows["paper"] = compare_tracks(paper, speech.truth, mask)
    for row, points in (("dub", on_speech_frames(dub, template.fps, speech)), ("paper", paper),
                        ("template", on_speech_frames(template.landmarks[idx], template.fps, speech))):
        rows[row].update(sync_scores(points, speech.truth, mask))
    return rows


SYNC_LAG = 3  # frames: the field's sync search (SyncNet's LSE read at the best offset within a few frames)


def sync_scores(points: np.ndarray, ref_points: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Inner-lip opening of (T, 68, 2) landmarks against reference landmarks, reported the way the
    field does: ``inner_r0`` (r at lag 0), ``inner_r_sync`` (r at the best lag within
    +-``SYNC_LAG`` frames) and ``inner_lag_sync`` (that lag, reported apart)."""
    from studio.metrics import openings, score_series

    sc = score_series(openings(points)["inner"], openings(ref_points)["inner"], mask, SYNC_LAG)
    return {"inner_r0": sc.r, "inner_r_sync": sc.r_best, "inner_lag_sync": sc.lag}


def evaluate_dubbing(model: MappingModel, speech_clips: Sequence[Clip], template: Clip,
                     span: tuple[float, float] = (0.0, 1.0),
                     template_span: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Dub each speech clip's ``span`` onto ``template``'s ``template_span``; see :func:`dubbing_pairs`."""
    return dubbing_pairs(model, [(c, span, template, template_span) for c in speech_clips])


def dubbing_pairs(model: MappingModel, pairs: Sequence[tuple[Clip, tuple[float, float], Clip, tuple[float, float]]]
                  ) -> dict[str, Any]:
    """The dubbing protocol over (speech clip, span, template clip, span) pairs: frame-weighted means
    of every score of :func:`dubbing_scores`, per row, plus the per-pair inner-opening r."""
    sums: dict[str, dict[str, float]] = {}
    weights: dict[str, float] = {}
    per_pair = []
    tracks: dict[tuple[int, tuple[float, float]], Track] = {}
    for clip, span, template, template_span in pairs:
        key = (id(template), tuple(template_span))
        if key not in tracks:
            tracks[key] = track(template, template_span)
        tpl = tracks[key]
        sp = track(clip, span)
        if sp.frames < 2 or tpl.frames < 2:
            continue
        rows = dubbing_scores(model, sp, tpl)
        per_pair.append({"speech": sp.name, "template": tpl.name, "frames": sp.frames,
                         **{f"{r}_inner_r": v["inner_r"] for r, v in rows.items()}})
        for row, vals in rows.items():
            acc = sums.setdefault(row, {})
            for k, v in vals.items():
                acc[k] = acc.get(k, 0.0) + float(v) * sp.frames
            weights[row] = weights.get(row, 0.0) + sp.frames
    if not sums:
        raise InputError("No speech frames to evaluate on.", "Give clips with at least two frames in the span.")
    out: dict[str, Any] = {row: {k: v / weights[row] for k, v in acc.items()} for row, acc in sums.items()}
    out["pairs"] = per_pair
    return out


def evaluate(ckpt_dir: str | os.PathLike[str] | MappingModel, clips: Sequence[Clip | ClipArrays],
             span: tuple[float, float] = (0.0, 1.0), timing: bool = True,
             threads: int | None = None, target: str = "auto", protocol: str = "paper",
             template: Clip | None = None, template_span: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Load (if needed) and evaluate a checkpoint; adds variant, seed, training and inference time.

    ``protocol``: ``paper`` (MSE with each clip's own pose and cheek) or ``dubbing`` (the
    clips' speech dubbed onto ``template``; the sync measures of :func:`evaluate_dubbing` are
    added under ``dubbing``, with the MSEs of the paper protocol kept beside them).
    ``threads``: torch CPU threads for the timing (None = the current setting).
    """
    model = ckpt_dir if isinstance(ckpt_dir, MappingModel) else MappingModel.load(ckpt_dir)
    if protocol not in PROTOCOLS:
        raise InputError(f"Unknown protocol {protocol!r}.", f"Use one of {PROTOCOLS}.")
    result = evaluate_model(model, clips, span, target)
    result["protocol"] = protocol
    if protocol == "dubbing":
        if template is None:
            raise InputError("The dubbing protocol needs a template clip.",
                             "Pass --template CLIP_DIR: another clip of the same person than the speech clips.")
        result["dubbing"] = evaluate_dubbing(model, [c for c in clips if isinstance(c, Clip)], template, span,
                                             template_span)
    cfg = model.config
    res = cfg.get("result", {})
    result.update(variant=model.variant, seed=cfg.get("seed"), checkpoint=str(model.directory),
                  train_seconds=res.get("train_seconds"), train_cpu_seconds=res.get("train_cpu_seconds"),
                  epochs=res.get("epochs"), inference_seconds_5min=None, inference_cpu_seconds_5min=None)
    if timing:
        with torch_threads(threads):
            t = inference_timing(model)
        result.update(inference_seconds_5min=t.wall_seconds, inference_cpu_seconds_5min=t.cpu_seconds,
                      inference_threads=t.threads, load_1min=t.load.load_1min, cores=t.load.cores,
                      timing_busy=int(t.load.busy))
    return result


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily use ``n`` torch CPU threads (None or 0: leave the setting alone)."""
    import torch

    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def benchmark(frames: int = FIVE_MINUTES_FRAMES, repeats: int = 5, preset: str = "cpu",
              threads: int | None = None, **_: Any) -> dict[str, float]:
    """Inference time of the cascade (ours), LSTM and BiLSTM on ``frames`` frames, median ms.

    Untrained networks of the preset's sizes (speed does not depend on the weights), one pass
    over the whole sequence under ``torch.inference_mode``, with ``threads`` torch threads
    (None: the current setting; on a machine shared with other busy processes 1 thread is much
    steadier than 2, whose OpenMP workers then wait on each other).
    """
    with torch_threads(threads):
        return _benchmark(frames, repeats, preset)


def _benchmark(frames: int, repeats: int, preset: str) -> dict[str, float]:
    import torch

    from studio.models import build_model
    from studio.train.mapping import settings_for

    out: dict[str, float] = {"frames": float(frames), "threads": float(torch.get_num_threads())}
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(1, 4 * frames, 26, generator=g)
    pose = torch.randn(1, frames, 3, generator=g)
    cheek = torch.randn(1, frames, 16, generator=g)
    for variant in ("ours", "lstm", "bilstm"):
        torch.manual_seed(0)
        net = build_model(settings_for(variant, preset).model).eval()
        with torch.inference_mode():
            net(audio, pose, cheek)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                net(audio, pose, cheek)
                times.append(time.perf_counter() - t)
        out[f"{variant}_ms"] = float(np.median(times) * 1000)
    out["lstm_over_ours"] = out["lstm_ms"] / out["ours_ms"]
    out["bilstm_over_ours"] = out["bilstm_ms"] / out["ours_ms"]
    return out


def training_benchmark(minutes: float = 10.0, preset: str = "cpu", variant: str = "ours",
                       work_dir: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Train ``variant`` to early stopping on ``minutes`` of synthetic footage (two clips, default
    speech) and time it; then time ``MappingModel.predict`` (conditioning included) on 5 minutes;
    then time what ``make-subject`` does for ``ours`` on the same footage: the fine-tune from the
    shipped prior (held-out choice + refit on all of it, ``studio.train.prior.fine_tune``)."""
    import tempfile

    from studio.data.synth import synthesize
    from studio.train.mapping import train_mapping
    from studio.train.prior import PRIOR_DIR, fine_tune

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        half = minutes * 30.0
        clips = [synthesize(Path(tmp) / f"c{s}", half, s, render=False) for s in (0, 1)]
        t0, c0 = time.perf_counter(), time.process_time()
        ckpt = train_mapping(clips, variant, Path(tmp) / "m", preset, seed=0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        model = MappingModel.load(ckpt)
        res = model.config["result"]
        out = {"footage_minutes": minutes, "train_wall_s": round(wall, 2), "train_cpu_s": round(cpu, 2),
               "epochs": res["epochs"], "best_epoch": res["best_epoch"],
               "predict_5min_ms": round(1000 * inference_seconds(model), 2)}
        if variant == "ours" and (PRIOR_DIR / "config.json").exists():
            t0, c0 = time.perf_counter(), time.process_time()
            ft = fine_tune(clips, Path(tmp) / "ft", seed=0)
            res = MappingModel.load(ft).config["result"]
            out.update(finetune_wall_s=round(time.perf_counter() - t0, 2),
                       finetune_cpu_s=round(time.process_time() - c0, 2),
                       finetune_refit_epochs=int(res.get("refit", {}).get("epochs", 0)))
        return out


def add_cli_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="mapping checkpoint folder (train-mapping --out)")
    parser.add_argument("clips", nargs="+", help="clip folders to evaluate on")
    parser.add_argument("--span", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                        help="evaluate on this fraction of each clip's time, e.g. 0.8 1 (default: all)")
    parser.add_argument("--no-timing", action="store_true", help="skip the 5-minute inference timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the timing")
    parser.add_argument("--target", choices=TARGETS, default="auto",
                        help="what to compare with (auto: ground truth of synthetic clips, else detected points)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                        help="paper: each clip's own pose and cheek (the paper's Table 1); dubbing: the clips' "
                             "speech dubbed onto --template, compared with the clips' real mouth (what users do)")
    parser.add_argument("--template", default=None, metavar="CLIP_DIR",
                        help="template clip for --protocol dubbing: another clip of the same person")
    parser.add_argument("--template-span", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                        help="fraction of the template's time to use (default: all)")


def cli(args) -> int:
    from studio.train.mapping import load_clips

    template = Clip.load(args.template) if args.template else None
    result = evaluate(Path(args.checkpoint), load_clips(args.clips), tuple(args.span), timing=not args.no_timing,
                      threads=args.threads, target=args.target, protocol=args.protocol, template=template,
                      template_span=tuple(args.template_span))
    if "dubbing" in result:
        log.info("%s", dubbing_text(result["dubbing"]))
    print(json.dumps(result))
    return 0


def dubbing_text(d: dict[str, Any]) -> str:
    """A short human-readable table of :func:`evaluate_dubbing`'s rows."""
    lines = ["row        inner r  lag  r@lag  ampl   outer r  chin r  chin ampl  mouth LMD"]
    for row in ("dub", "template", "energy", "paper"):
        if row not in d:
            continue
        v = d[row]
        lmd = f"{v['mouth_lmd']:.3f}" if "mouth_lmd" in v else "  n/a"
        lines.append(f"{row:<10} {v['inner_r']:7.3f} {v['inner_lag']:4.1f} {v['inner_r_best']:6.3f} "
                     f"{v['inner_amplitude']:5.2f}  {v['outer_r']:7.3f} {v['chin_r']:7.3f} "
                     f"{v['chin_amplitude']:9.2f}  {lmd}")
    return "\n".join(lines)
