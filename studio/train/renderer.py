"""Training the neural renderer on one subject's own footage.

Pairs: for every frame i where a face was found, the facial map drawn from frame i's OWN
landmarks (with the Canny edges of its own crop, lower face removed) -> the crop of frame i.
At dubbing time the same map is drawn with predicted mouth and jaw points instead, so the
generator learns "landmarks -> this person's face". Each clip is split by time: its first
``1 - val_fraction`` of frames train, the rest are held out for samples and metrics.

OUT_DIR layout::

    renderer.json, generator.safetensors   the inference checkpoint (studio.render.neural)
    train_state/                           resumable state, replaced atomically every
                                           ``checkpoint_every`` steps: generator, discriminator,
                                           optimizer tensors (.safetensors) + state.json
    pairs/<clip>-<size>-<key>.npz          cached pairs (uint8 maps and crops, crop-px landmarks)
    samples/step_0000500.jpg               rows of held-out frames: facial map | output | real
    metrics.json                           PSNR / SSIM (mouth region and whole crop) on held-out frames

Training follows pix2pixHD: Adam (2e-4, betas 0.5/0.999); each step updates the discriminators
(LSGAN or hinge, on [input, crop] pairs) then the generator (adversarial + feature matching +
L1, + VGG when ``vgg_weights`` names a local file). Batches are drawn from a generator seeded by
(seed, step), so a resumed run sees the same batches as an uninterrupted one. CUDA: bf16
autocast and channels_last (no loss scaling needed with bf16); CPU: plain fp32.

Data-parallel (``torchrun --nproc_per_node=N -m studio train-renderer ...``,
``studio.train.distributed``): one GPU per process (NCCL; gloo on the CPU), generator and
discriminators in DDP; every rank draws the step's global batch and trains on its
``batch_size / N`` pairs (``batch_size`` must divide by N); logged losses are the means over the
ranks; rank 0 alone writes samples, checkpoints and metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from studio.config import from_dict, to_dict
from studio.errors import CancelledError, CheckpointError, InputError
from studio.face import layout
from studio.fsutil import atomic_path, write_json_atomic
from studio.models.renderer import (GAN_MODES, RendererConfig, VGGPerceptualLoss, adversarial_loss,
                                    build_discriminator, build_generator, feature_matching_loss)
from studio.render.neural import (NeuralRenderer, autocast, config_differences, generator_input,
                                  masked_template, resolve_device, save_checkpoint, to_images, to_tensor)
from studio.train import distributed

log = logging.getLogger(__name__)

STATE_DIR = ".train_state"  # the same name as the mapping trainer's
SAMPLES_DIR = "samples"  # progress sheets, one per sample step
PAIRS_VERSION = 1
MOUTH_MARGIN = 0.25  # the mouth region: mouth-point box grown by this fraction of its size per side


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gan_mode: str = "lsgan"  # or "hinge"
    lambda_fm: float = 10.0  # feature matching
    lambda_l1: float = 10.0
    lambda_vgg: float = 10.0  # used only with vgg_weights
    vgg_weights: str = ""  # local VGG19 .safetensors; empty: no perceptual loss (never downloaded)
    val_fraction: float = 0.2  # the last part of every clip, held out
    checkpoint_every: int = 500
    sample_every: int = 250
    seed: int = 0
    amp: bool | None = None  # bf16 autocast; None: on CUDA only
    channels_last: bool | None = None  # None: on CUDA only

    def __post_init__(self) -> None:
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}")
        if self.batch_size < 1 or self.steps < 0:
            raise ValueError("batch_size must be >= 1 and steps >= 0")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.checkpoint_every < 1 or self.sample_every < 1:
            raise ValueError("checkpoint_every and sample_every must be >= 1")


# -- the GAN and one training step ---------------------------------------------------------

class RendererTrainer:
    """Generator, discriminators, their optimizers and the step counter.

    ``train_step(inputs, targets)``: inputs (N, in_channels, S, S) and targets (N, 3, S, S)
    float in [-1, 1] -> dict of float losses. ``save_state`` / ``load_state``: a folder of
    safetensors + JSON, no pickle. In a process group (``group``) the inputs are this rank's
    share of the step's batch and the losses returned are the means over the ranks.
    """

    def __init__(self, model: RendererConfig, train: TrainConfig = TrainConfig(),
                 device: str | torch.device = "auto", group: distributed.Dist = distributed.SINGLE) -> None:
        group.require_divisible(train.batch_size, "--batch-size")
        self.model_cfg, self.train_cfg, self.group = model, train, group
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if train.amp is None else train.amp
        self.channels_last = cuda if train.channels_last is None else train.channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        torch.manual_seed(train.seed)
        self.generator = build_generator(model).to(self.device, memory_format=self.memory_format)
        self.discriminator = build_discriminator(model).to(self.device, memory_format=self.memory_format)
        betas = (train.beta1, train.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=train.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=train.lr, betas=betas)
        self.vgg = VGGPerceptualLoss.from_file(train.vgg_weights).to(self.device) if train.vgg_weights else None
        self.step = 0
        # what the training step calls: DDP copies that average the gradients over the ranks (the
        # modules themselves without a group); states, samples and the G step's D use the modules
        self._generator = group.wrap(self.generator)
        self._discriminator = group.wrap(self.discriminator)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device).contiguous(memory_format=self.memory_format)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        cfg = self.train_cfg
        x, y = self._prepare(inputs), self._prepare(targets)
        self.generator.train()
        self.discriminator.train()
        with autocast(self.device, self.amp):
            fake = self._generator(x)
        # discriminators: real pairs up, generated pairs down
        self.discriminator.requires_grad_(True)
        with autocast(self.device, self.amp):
            pred_fake = self._discriminator(torch.cat([x, fake.detach()], 1))
            pred_real = self._discriminator(torch.cat([x, y], 1))
        loss_d = 0.5 * (adversarial_loss(pred_fake, False, cfg.gan_mode)
                        + adversarial_loss(pred_real, True, cfg.gan_mode))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # generator, against the updated discriminators (the module, not its DDP copy: its
        # parameters take no gradient here, so there is nothing of theirs to all-reduce)
        self.discriminator.requires_grad_(False)
        with autocast(self.device, self.amp):
            pred_fake = self.discriminator(torch.cat([x, fake], 1))
            with torch.no_grad():
                pred_real = self.discriminator(torch.cat([x, y], 1))
        losses = {
            "g_adv": adversarial_loss(pred_fake, True, cfg.gan_mode, for_discriminator=False),
            "g_fm": feature_matching_loss(pred_fake, pred_real),
            "g_l1": torch.nn.functional.l1_loss(fake.float(), y.float()),
        }
        loss_g = losses["g_adv"] + cfg.lambda_fm * losses["g_fm"] + cfg.lambda_l1 * losses["g_l1"]
        if self.vgg is not None:
            losses["g_vgg"] = self.vgg(fake, y)
            loss_g = loss_g + cfg.lambda_vgg * losses["g_vgg"]
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(d=float(loss_d.detach()), g=float(loss_g.detach()))
        return self.group.mean_over_ranks(out)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, in, S, S) -> (N, 3, S, S) in eval mode (float32 on the CPU)."""
        self.generator.eval()
        with autocast(self.device, self.amp):
            out = self.generator(self._prepare(inputs))
        return out.float().cpu()

    # -- resumable state ------------------------------------------------------------------
    def save_state(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
        """Write everything needed to resume into ``directory``, replacing it atomically."""
        from safetensors.torch import save_file

        opt_meta = {}
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            save_file(_cpu_state(self.generator.state_dict()), str(tmp / "generator.safetensors"))
            save_file(_cpu_state(self.discriminator.state_dict()), str(tmp / "discriminator.safetensors"))
            for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
                tensors, opt_meta[name] = optimizer_state_split(opt)
                save_file(tensors, str(tmp / f"{name}.safetensors"))
            state = {"step": self.step, "model": to_dict(self.model_cfg), "train": to_dict(self.train_cfg),
                     "optimizers": opt_meta, "extra": extra or {}}
            (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")

    def load_state(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore from :meth:`save_state`'s folder; returns its ``extra``. CheckpointError if
        the folder is corrupt or was written for another model config."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        hint = f"Delete {directory} to start training afresh, or use another --out folder."
        state = read_state(directory)
        saved = from_dict(RendererConfig, state["model"], where=str(directory / "state.json"))
        if saved != self.model_cfg:
            raise CheckpointError(f"The training state in {directory} is for another renderer config "
                                  f"({'; '.join(config_differences(saved, self.model_cfg))}).",
                                  "Resume with the same settings, or " + hint[0].lower() + hint[1:])
        try:
            self.generator.load_state_dict(load_file(str(directory / "generator.safetensors")))
            self.discriminator.load_state_dict(load_file(str(directory / "discriminator.safetensors")))
            for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
                tensors = load_file(str(directory / f"{name}.safetensors"))
                opt.load_state_dict(optimizer_state_join(tensors, state["optimizers"][name]))
        except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"The training state in {directory} is corrupt: {str(exc)[:300]}.", hint) from None
        self.step = int(state["step"])
        return state.get("extra", {})


def read_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """state.json of a training-state folder; CheckpointError if missing or unreadable."""
    directory = Path(directory)
    hint = f"Delete {directory} to start training afresh."
    try:
        state = json.loads((directory / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / 'state.json'} is missing or corrupt ({exc}).", hint) from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int)
            and isinstance(state.get("model"), dict) and isinstance(state.get("optimizers"), dict)):
        raise CheckpointError(f"{directory / 'state.json'} is corrupt (no step, model or optimizers).", hint)
    return state


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def optimizer_state_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as (tensors named "<param>.<key>", JSON-ready rest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_split`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- pairs ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Pairs:
    """Training pairs. maps, crops (N, S, S, 3) uint8 RGB; points (N, 68, 2) float32 crop px;
    frames (N,) int64 frame index within its clip; clip (N,) int64 index into ``names``."""

    maps: np.ndarray
    crops: np.ndarray
    points: np.ndarray
    frames: np.ndarray
    clip: np.ndarray
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.maps)
        s = self.maps.shape[1] if self.maps.ndim == 4 else 0
        assert self.maps.shape == (n, s, s, 3) and self.crops.shape == (n, s, s, 3), \
            f"maps {self.maps.shape} and crops {self.crops.shape} must both be (N, S, S, 3)"
        assert self.points.shape == (n, 68, 2), f"points {self.points.shape}, expected ({n}, 68, 2)"
        assert self.frames.shape == (n,) and self.clip.shape == (n,)

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def size(self) -> int:
        return self.maps.shape[1]

    def take(self, idx: np.ndarray) -> "Pairs":
        return Pairs(self.maps[idx], self.crops[idx], self.points[idx], self.frames[idx], self.clip[idx], self.names)

    @staticmethod
    def concat(parts: Sequence["Pairs"]) -> "Pairs":
        names = tuple(n for p in parts for n in p.names)
        offsets = np.cumsum([0] + [len(p.names) for p in parts])
        return Pairs(np.concatenate([p.maps for p in parts]), np.concatenate([p.crops for p in parts]),
                     np.concatenate([p.points for p in parts]), np.concatenate([p.frames for p in parts]),
                     np.concatenate([p.clip + o for p, o in zip(parts, offsets)]), names)


def split_by_time(pairs: Pairs, val_fraction: float) -> tuple[Pairs, Pairs]:
    """Per clip, frames before the (1 - val_fraction) point of the clip's frame range train,
    the rest validate. Returns (train, val)."""
    train = np.zeros(len(pairs), bool)
    for c in np.unique(pairs.clip):
        sel = pairs.clip == c
        f = pairs.frames[sel]
        cut = f.min() + (1 - val_fraction) * (f.max() + 1 - f.min())
        train[sel] = f < cut
    return pairs.take(np.flatnonzero(train)), pairs.take(np.flatnonzero(~train))


def _facemap_lib():
    from studio.render import facemap

    return facemap


def _dilation_px(facemap_cfg, size: int) -> float:
    return facemap_cfg.dilation * size / _facemap_lib().REFERENCE_SIZE


def lower_face_masks(points: np.ndarray, size: int, facemap_cfg) -> np.ndarray:
    """(N, 68, 2) crop px -> (N, S, S) bool: the facial map's lower-face region of each frame
    drawn from its own points (template = prediction)."""
    fm = _facemap_lib()
    r = _dilation_px(facemap_cfg, size)
    return np.stack([fm.lower_face_mask(p, layout.talking_vector(p), size, r) for p in points]) \
        if len(points) else np.zeros((0, size, size), bool)


def model_inputs(cfg: RendererConfig, pairs: Pairs, idx: np.ndarray, facemap_cfg) -> np.ndarray:
    """Generator inputs of pairs ``idx`` as uint8 (n, S, S, in_channels)."""
    templates = None
    if cfg.with_template:
        templates = masked_template(pairs.crops[idx], lower_face_masks(pairs.points[idx], pairs.size, facemap_cfg))
    return generator_input(cfg, pairs.maps[idx], templates)


def _pairs_key(clip, size: int, facemap_cfg, crop_cfg) -> str:
    blob = json.dumps({"clip": clip.meta.source_sha256, "frames": clip.meta.frames, "size": size,
                       "facemap": to_dict(facemap_cfg), "crop": to_dict(crop_cfg), "v": PAIRS_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_pairs(clip_dir: str | os.PathLike[str], size: int, cache_dir: str | os.PathLike[str],
                facemap_cfg=None, crop_cfg=None) -> Pairs:
    """Pairs of one preprocessed clip (frames where a face was found), streamed from its video and
    cached as ``cache_dir/<clip>-<size>-<key>.npz`` (key: clip hash + settings)."""
    from studio import media
    from studio.data.clip import Clip
    from studio.render.crop import CropConfig

    fm = _facemap_lib()
    facemap_cfg = facemap_cfg or fm.FacemapConfig()
    crop_cfg = crop_cfg or CropConfig()
    clip = Clip.load(clip_dir)
    name = Path(clip_dir).resolve().name
    path = Path(cache_dir) / f"{name}-{size}-{_pairs_key(clip, size, facemap_cfg, crop_cfg)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return Pairs(z["maps"], z["crops"], z["points"], z["frames"], np.zeros(len(z["frames"]), np.int64),
                             (name,))
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("pair cache %s is unreadable (%s); rebuilding it", path, exc)
    from types import SimpleNamespace

    from studio.render.base import frame_inputs, sequence_track

    # the clip's own frames as an output sequence that says what it shows: the renderer learns
    # from the very inputs it gets when dubbing (studio.render.base.frame_inputs)
    own = SimpleNamespace(template=clip.landmarks.astype(np.float32), points=clip.landmarks.astype(np.float32),
                          frame_index=np.arange(clip.meta.frames))
    track = sequence_track(crop_cfg, own, clip)
    wanted = clip.found & clip.valid
    n = int(wanted.sum())
    maps = np.zeros((n, size, size, 3), np.uint8)
    crops = np.zeros((n, size, size, 3), np.uint8)
    points = np.zeros((n, 68, 2), np.float32)
    frames = np.flatnonzero(wanted).astype(np.int64)
    k = 0
    from tqdm import tqdm

    for i, frame in enumerate(tqdm(media.iter_frames(clip.video_path), total=clip.meta.frames,
                                   desc=f"pairs {name}", unit="frame", disable=None, leave=False)):
        if i >= clip.meta.frames:
            break
        if not wanted[i]:
            continue
        inputs = frame_inputs(track, frame, own, i, size)
        crops[k], points[k] = inputs.crop, inputs.template_points
        maps[k] = fm.facial_map(inputs.crop, inputs.template_points, inputs.talk, facemap_cfg)
        k += 1
    if k < n:  # the video decoded fewer frames than the clip cache lists
        log.warning("%s: only %d of %d frames decoded", clip.video_path, k, n)
        maps, crops, points, frames = maps[:k], crops[:k], points[:k], frames[:k]
    if k == 0:
        raise InputError(f"No usable frame with a face in {clip_dir}.",
                         "Train the renderer on footage where the face is visible.")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, maps=maps, crops=crops, points=points, frames=frames)
    log.info("cached %d pairs of %s at %d px in %s", k, name, size, path)
    return Pairs(maps, crops, points, frames, np.zeros(k, np.int64), (name,))


# -- metrics and samples ---------------------------------------------------------------------

def mouth_box(points: np.ndarray, size: int, margin: float = MOUTH_MARGIN) -> tuple[int, int, int, int]:
    """(68, 2) crop px -> x0, y0, x1, y1 (exclusive) of the mouth points' box grown by
    ``margin`` x its size on each side, clipped to the crop."""
    m = np.asarray(points)[list(layout.MOUTH)]
    (x0, y0), (x1, y1) = m.min(0), m.max(0)
    gx, gy = margin * (x1 - x0), margin * (y1 - y0)
    box = (int(np.floor(x0 - gx)), int(np.floor(y0 - gy)), int(np.ceil(x1 + gx)) + 1, int(np.ceil(y1 + gy)) + 1)
    return max(box[0], 0), max(box[1], 0), min(box[2], size), min(box[3], size)


def image_metrics(output: np.ndarray, real: np.ndarray, points: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of one rendered crop vs the real one, whole and mouth region.
    output, real (S, S, 3) uint8; points (68, 2) crop px of the real frame."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def pair(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        win = min(7, min(a.shape[:2]) // 2 * 2 - 1)
        return (float(peak_signal_noise_ratio(b, a, data_range=255)),
                float(structural_similarity(b, a, channel_axis=2, data_range=255, win_size=max(win, 3))))

    x0, y0, x1, y1 = mouth_box(points, real.shape[0])
    psnr, ssim = pair(output, real)
    mpsnr, mssim = pair(output[y0:y1, x0:x1], real[y0:y1, x0:x1])
    return {"psnr": psnr, "ssim": ssim, "mouth_psnr": mpsnr, "mouth_ssim": mssim}


def evaluate(renderer: NeuralRenderer, pairs: Pairs, facemap_cfg=None, batch_size: int = 8) -> dict[str, Any]:
    """Render every pair from its facial map and compare with the real crop: mean metrics
    (:func:`image_metrics`) over the pairs, plus ``frames``."""
    facemap_cfg = facemap_cfg or _facemap_lib().FacemapConfig()
    rows = []
    for a in range(0, len(pairs), batch_size):
        idx = np.arange(a, min(a + batch_size, len(pairs)))
        x = model_inputs(renderer.cfg, pairs, idx, facemap_cfg)
        out = renderer.render(x[..., :3], x[..., 3:6] if renderer.cfg.with_template else None, batch_size)
        rows += [image_metrics(o, pairs.crops[i], pairs.points[i]) for o, i in zip(out, idx)]
    result: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    result["frames"] = len(rows)
    return result


def sample_sheet(maps: np.ndarray, outputs: np.ndarray, reals: np.ndarray) -> np.ndarray:
    """Rows of facial map | output | real: (n, S, S, 3) x 3 -> (n*S, 3*S, 3) uint8 RGB."""
    return np.concatenate([np.concatenate(row, axis=1) for row in zip(maps, outputs, reals)], axis=0)


def write_image(path: str | os.PathLike[str], image_rgb: np.ndarray, quality: int = 90) -> Path:
    """Write an RGB uint8 image (jpg/png) atomically."""
    import cv2

    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InputError(f"Could not encode {path}.", "Use a .jpg or .png file name.")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return path


# -- the training loop -----------------------------------------------------------------------

def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """The pairs of training step ``step``: a pure function of (seed, step), so resuming repeats
    exactly the batches an uninterrupted run would draw."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n, size=batch_size, replace=n < batch_size)


Progress = Callable[[int, int, dict[str, float]], None]


def fit(trainer: RendererTrainer, train: Pairs, val: Pairs, out_dir: str | os.PathLike[str], steps: int, *,
        facemap_cfg=None, meta: dict[str, Any] | None = None, max_seconds: float | None = None,
        progress: Progress | None = None, n_samples: int = 4) -> int:
    """Train until ``trainer.step == steps`` (or ``max_seconds`` pass), writing samples and
    checkpoints (training state + inference checkpoint) into ``out_dir``. Returns the step
    reached. Interrupted (KeyboardInterrupt, or CancelledError raised by ``progress``): the state
    is saved first, then the exception propagates."""
    from tqdm import tqdm

    if len(train) == 0:
        raise InputError("No training pairs.", "Give the renderer footage with a visible face.")
    out_dir = Path(out_dir)
    facemap_cfg = facemap_cfg or _facemap_lib().FacemapConfig()
    cfg, tcfg, group = trainer.model_cfg, trainer.train_cfg, trainer.group
    shown = val if len(val) else train
    sample_idx = np.unique(np.linspace(0, len(shown) - 1, min(n_samples, len(shown))).round().astype(int))
    sample_x = to_tensor(model_inputs(cfg, shown, sample_idx, facemap_cfg))
    meta = dict(meta or {})

    def checkpoint() -> None:
        if not group.is_main:
            return
        trainer.save_state(out_dir / STATE_DIR, extra=meta)
        save_checkpoint(out_dir, trainer.generator, cfg, step=trainer.step, **meta)

    def sample() -> None:
        if not group.is_main:
            return
        out = to_images(trainer.generate(sample_x))
        sheet = sample_sheet(shown.maps[sample_idx], out, shown.crops[sample_idx])
        write_image(out_dir / SAMPLES_DIR / f"step_{trainer.step:07d}.jpg", sheet)

    start = time.monotonic()
    saved_at = trainer.step
    bar = tqdm(total=steps, initial=trainer.step, desc="train renderer", unit="step",
               disable=None if group.is_main else True)
    try:
        while trainer.step < steps:
            # the step's global batch, and this rank's block of it
            idx = batch_indices(tcfg.seed, trainer.step, len(train), tcfg.batch_size)[group.part(tcfg.batch_size)]
            x = to_tensor(model_inputs(cfg, train, idx, facemap_cfg))
            y = to_tensor(train.crops[idx])
            losses = trainer.train_step(x, y)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("d", "g", "g_l1")})
            if trainer.step % tcfg.sample_every == 0:
                sample()
            if trainer.step % tcfg.checkpoint_every == 0:
                checkpoint()
                saved_at = trainer.step
            if progress is not None:
                progress(trainer.step, steps, losses)
            if max_seconds is not None and group.agree(time.monotonic() - start > max_seconds):
                log.info("time budget of %.0f s reached at step %d", max_seconds, trainer.step)
                break
    except (KeyboardInterrupt, CancelledError):
        log.info("interrupted at step %d; saving the training state", trainer.step)
        checkpoint()
        raise
    finally:
        bar.close()
    if saved_at != trainer.step or not (out_dir / STATE_DIR).is_dir():
        sample()
        checkpoint()
    return trainer.step


def train_renderer(clip_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], size: int = 256,
                   steps: int | None = None, *, model: RendererConfig | None = None,
                   train: TrainConfig | None = None, facemap_cfg=None, crop_cfg=None, resume: bool = False,
                   device: str = "auto", max_minutes: float | None = None,
                   progress: Progress | None = None) -> Path:
    """Train (or resume training) a neural renderer on one subject's preprocessed clips.

    ``model`` None: ``RendererConfig.for_size(size)``, or the stored config when resuming.
    ``steps`` overrides ``train.steps``. Ends with held-out metrics in ``out_dir/metrics.json``.
    Returns ``out_dir`` (a checkpoint folder for ``NeuralRenderer.load``). Under torchrun (inside
    ``distributed.process_group()``, as the CLI runs it) rank 0 builds the pair caches first and
    alone measures the held-out frames; the other ranks return when the checkpoint is written.
    """
    from studio.render.crop import CropConfig

    if not clip_dirs:
        raise InputError("No clips given.", "Pass one or more preprocessed clip folders.")
    out_dir = Path(out_dir)
    state_dir = out_dir / STATE_DIR
    stored: dict[str, Any] | None = None
    if state_dir.exists():
        if not resume:
            raise CheckpointError(f"{out_dir} already holds a renderer training run.",
                                  "Pass --resume to continue it, or choose another --out folder.")
        stored = read_state(state_dir)
    elif resume:
        log.info("nothing to resume in %s; starting a new run", out_dir)
    fm = _facemap_lib()
    if stored is not None:
        extra = stored.get("extra", {})
        model = model or from_dict(RendererConfig, stored["model"], where=str(state_dir))
        train = train or from_dict(TrainConfig, stored["train"], where=str(state_dir))
        facemap_cfg = facemap_cfg or from_dict(fm.FacemapConfig, extra.get("facemap"), where=str(state_dir))
        crop_cfg = crop_cfg or from_dict(CropConfig, extra.get("crop"), where=str(state_dir))
    model = model or RendererConfig.for_size(size)
    if model.size != size:
        raise CheckpointError(f"The renderer config is for {model.size} px, not {size} px.",
                              f"Pass --size {model.size}, or train into another --out folder.")
    train = train or TrainConfig()
    if steps is not None:
        train = dataclasses.replace(train, steps=steps)
    facemap_cfg = facemap_cfg or fm.FacemapConfig()
    crop_cfg = crop_cfg or CropConfig()

    group = distributed.current(str(resolve_device(device)))
    with group.main_first():  # rank 0 builds the caches, the others read them
        parts = [build_pairs(d, size, out_dir / "pairs", facemap_cfg, crop_cfg) for d in clip_dirs]
    train_pairs, val_pairs = split_by_time(Pairs.concat(parts), train.val_fraction)
    log.info("renderer pairs: %d train, %d held out (%s)", len(train_pairs), len(val_pairs),
             ", ".join(train_pairs.names))
    trainer = RendererTrainer(model, train, group.device if group.active else device, group)
    if stored is not None:
        trainer.load_state(state_dir)
        log.info("resuming at step %d of %d", trainer.step, train.steps)
    meta = {"facemap": to_dict(facemap_cfg), "crop": to_dict(crop_cfg), "clips": list(train_pairs.names),
            "train": to_dict(train)}
    started = time.monotonic()
    fit(trainer, train_pairs, val_pairs, out_dir, train.steps, facemap_cfg=facemap_cfg, meta=meta,
        max_seconds=None if max_minutes is None else 60 * max_minutes, progress=progress)
    seconds = time.monotonic() - started
    group.barrier()  # rank 0 has written the checkpoint
    if not group.is_main:
        return out_dir
    if len(val_pairs):
        renderer = NeuralRenderer.load(out_dir, device=trainer.device)
        metrics = evaluate(renderer, val_pairs, facemap_cfg)
        metrics.update(step=trainer.step, train_seconds=seconds, train_frames=len(train_pairs), size=size,
                       device=str(trainer.device))
        write_json_atomic(out_dir / "metrics.json", metrics)
        log.info("held-out: PSNR %.2f dB, SSIM %.3f; mouth PSNR %.2f dB, SSIM %.3f (%d frames)",
                 metrics["psnr"], metrics["ssim"], metrics["mouth_psnr"], metrics["mouth_ssim"], metrics["frames"])
    return out_dir


# -- CLI ---------------------------------------------------------------------------------------

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clip_dirs", nargs="+", metavar="CLIP_DIR", help="preprocessed clips of one person")
    parser.add_argument("--out", required=True, help="checkpoint folder")
    parser.add_argument("--size", type=int, default=256, help="crop size in px (256, 512, 720; paper 720)")
    parser.add_argument("--steps", type=int, default=None, help=f"total steps (default {TrainConfig.steps})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this long")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--gan-mode", choices=GAN_MODES, default=None)
    parser.add_argument("--vgg-weights", default=None, help="local VGG19 .safetensors for the perceptual loss")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--sample-every", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--ngf", type=int, default=None, help="generator width (paper 64; 16 for a CPU run)")
    parser.add_argument("--ndf", type=int, default=None, help="discriminator width (default 64)")
    parser.add_argument("--n-blocks", type=int, default=None, help="ResNet blocks in the bottleneck (9)")
    parser.add_argument("--n-attention", type=int, default=None, help="self-attention blocks (1)")
    parser.add_argument("--with-template", action="store_true", default=None,
                        help="also feed the template crop with the lower face masked")
    parser.add_argument("--composite", action="store_true", default=None,
                        help="generate only the masked lower face and copy the rest of the template "
                             "(implies --with-template)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def cli(args: argparse.Namespace) -> int:
    model_kw = {k: v for k, v in (("ngf", args.ngf), ("ndf", args.ndf), ("n_blocks", args.n_blocks),
                                   ("n_attention", args.n_attention), ("with_template", args.with_template),
                                   ("composite", args.composite))
                if v is not None}
    if model_kw.get("composite"):
        model_kw["with_template"] = True
    train_kw = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr), ("gan_mode", args.gan_mode),
                                   ("vgg_weights", args.vgg_weights), ("checkpoint_every", args.checkpoint_every),
                                   ("sample_every", args.sample_every), ("seed", args.seed)) if v is not None}
    try:
        model = RendererConfig.for_size(args.size, **model_kw) if model_kw else None
        train = TrainConfig(**train_kw) if train_kw else None
    except ValueError as exc:
        raise InputError(f"Invalid renderer settings: {exc}.", "Check --size and the model options.") from None
    with distributed.process_group(str(resolve_device(args.device))):  # under torchrun: data-parallel
        out = train_renderer(args.clip_dirs, args.out, args.size, args.steps, model=model, train=train,
                             resume=args.resume, device=args.device, max_minutes=args.max_minutes)
        log.info("renderer checkpoint: %s", out)
    return 0
