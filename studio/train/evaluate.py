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
  over 7,500 frames (5 minutes at 25 fps) on this machine.

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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from studio.data.clip import Clip
from studio.errors import InputError
from studio.face import layout
from studio.train.checkpoint import MappingModel
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


def inference_seconds(model: MappingModel, n_frames: int = FIVE_MINUTES_FRAMES, repeats: int = 5) -> float:
    """Median seconds of one ``model.predict`` over ``n_frames`` frames (after one warm-up)."""
    rng = np.random.default_rng(0)
    n = model.norm
    audio = (n.audio_mean + n.audio_std * rng.standard_normal((4 * n_frames, 26))).astype(np.float32)
    pose = (n.pose_mean + n.pose_std * rng.standard_normal((n_frames, 3))).astype(np.float32)
    cheek = (n.cheek_mean + n.cheek_std * rng.standard_normal((n_frames, 16))).astype(np.float32)
    model.predict(audio, pose, cheek)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(audio, pose, cheek)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


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
        pred = model.predict(b.audio, b.pose, b.cheek)
        names.add(name)
        for k, v in error_sums(pred, truth, mask).items():
            total[k] = total.get(k, 0.0) + v
    if not total:
        raise InputError("No frames to evaluate on.", "Give clips with at least two frames in the span.")
    out = summarize(total, model.predicts_jaw)
    out["target"] = "+".join(sorted(names))
    return out


def evaluate(ckpt_dir: str | os.PathLike[str] | MappingModel, clips: Sequence[Clip | ClipArrays],
             span: tuple[float, float] = (0.0, 1.0), timing: bool = True,
             threads: int | None = None, target: str = "auto") -> dict[str, Any]:
    """Load (if needed) and evaluate a checkpoint; adds variant, seed, training and inference time.

    ``threads``: torch CPU threads for the timing (None = the current setting).
    """
    model = ckpt_dir if isinstance(ckpt_dir, MappingModel) else MappingModel.load(ckpt_dir)
    result = evaluate_model(model, clips, span, target)
    cfg = model.config
    res = cfg.get("result", {})
    result.update(variant=model.variant, seed=cfg.get("seed"), checkpoint=str(model.directory),
                  train_seconds=res.get("train_seconds"), train_cpu_seconds=res.get("train_cpu_seconds"),
                  epochs=res.get("epochs"), inference_seconds_5min=None)
    if timing:
        with torch_threads(threads):
            result["inference_seconds_5min"] = inference_seconds(model)
            result["inference_threads"] = _threads()
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


def add_cli_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="mapping checkpoint folder (train-mapping --out)")
    parser.add_argument("clips", nargs="+", help="clip folders to evaluate on")
    parser.add_argument("--span", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                        help="evaluate on this fraction of each clip's time, e.g. 0.8 1 (default: all)")
    parser.add_argument("--no-timing", action="store_true", help="skip the 5-minute inference timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the timing")
    parser.add_argument("--target", choices=TARGETS, default="auto",
                        help="what to compare with (auto: ground truth of synthetic clips, else detected points)")


def cli(args) -> int:
    from studio.train.mapping import load_clips

    result = evaluate(Path(args.checkpoint), load_clips(args.clips), tuple(args.span), timing=not args.no_timing,
                      threads=args.threads, target=args.target)
    print(json.dumps(result))
    return 0
