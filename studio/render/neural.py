"""Neural rendering with a trained per-subject generator (studio.models.renderer).

Checkpoint folder (written by ``python -m studio train-renderer``)::

    renderer.json          {"kind": "neural-renderer", "version", "config": RendererConfig,
                            "weights_sha256", "step", "facemap": FacemapConfig, "crop": CropConfig, ...}
    generator.safetensors  the generator's weights (no pickle anywhere)

The JSON is written after the weights and names their sha256, so a crash between the two writes,
a truncated file or weights from another run are all detected at load time (CheckpointError).
Inference uses bf16 autocast and channels_last on CUDA, plain fp32 on CPU.

Images cross this module's boundary as uint8 RGB arrays (N, S, S, 3); the network sees NCHW
float in [-1, 1] (:func:`to_tensor` / :func:`to_images`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from studio.config import from_dict, to_dict
from studio.errors import CheckpointError, InputError
from studio.fsutil import atomic_path, read_json, sha256_file, write_json_atomic
from studio.models.renderer import RendererConfig, build_generator

log = logging.getLogger(__name__)

KIND = "neural-renderer"
VERSION = 1
CONFIG_FILE = "renderer.json"
WEIGHTS_FILE = "generator.safetensors"
MASK_VALUE = 128  # the lower face of a template input is set to mid grey (0 in [-1, 1])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else as torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when enabled, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu", channels_last: bool = False) -> torch.Tensor:
    """(N, S, S, C) uint8 -> (N, C, S, S) float32 in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    x = x / 127.5 - 1.0
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) float in [-1, 1] -> (N, S, S, 3) uint8 (rounded, clipped)."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def masked_template(template_crops: np.ndarray, lower_face: np.ndarray) -> np.ndarray:
    """Template crops with the lower face blanked: (N, S, S, 3) uint8, (N, S, S) bool -> copy."""
    out = np.array(template_crops, dtype=np.uint8, copy=True)
    out[np.asarray(lower_face, bool)] = MASK_VALUE
    return out


def generator_input(cfg: RendererConfig, facemaps: np.ndarray, templates: np.ndarray | None = None) -> np.ndarray:
    """The generator's input as uint8 (N, S, S, cfg.in_channels): facial maps, plus the masked
    template crops (see :func:`masked_template`) when ``cfg.with_template``, plus the blanked
    region as a channel (255 inside) when ``cfg.composite``."""
    maps = np.asarray(facemaps)
    if maps.ndim == 3:
        maps = maps[None]
    if maps.shape[1:] != (cfg.size, cfg.size, 3) or maps.dtype != np.uint8:
        raise InputError(f"Facial maps must be uint8 (N, {cfg.size}, {cfg.size}, 3) for this renderer, "
                         f"got {maps.dtype} {maps.shape}.",
                         f"Draw the maps at the renderer's size ({cfg.size} px).")
    if not cfg.with_template:
        return maps
    if templates is None:
        raise InputError("This neural renderer also needs the template crops (it was trained with them).",
                         "Pass template_crops with their lower face masked (masked_template).")
    tmpl = np.asarray(templates)
    if tmpl.ndim == 3:
        tmpl = tmpl[None]
    if tmpl.shape != maps.shape or tmpl.dtype != np.uint8:
        raise InputError(f"Template crops must be uint8 {maps.shape}, got {tmpl.dtype} {tmpl.shape}.",
                         "Crop the template frames at the renderer's size.")
    if not cfg.composite:
        return np.concatenate([maps, tmpl], axis=-1)
    # the blanked region, recovered from the masked template (a real pixel is exactly mid grey in
    # all three channels only by chance; the generator then redraws that one pixel)
    blank = np.all(tmpl == MASK_VALUE, axis=-1, keepdims=True).astype(np.uint8) * 255
    return np.concatenate([maps, tmpl, blank], axis=-1)


# -- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(directory: str | os.PathLike[str], generator: nn.Module, cfg: RendererConfig,
                    **meta: Any) -> Path:
    """Write ``generator`` + ``cfg`` (+ JSON-ready ``meta``: step, facemap, crop, ...) to
    ``directory`` atomically (weights first, then the JSON naming their hash)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    info = {"kind": KIND, "version": VERSION, "config": to_dict(cfg),
            "weights_sha256": sha256_file(directory / WEIGHTS_FILE), **meta}
    write_json_atomic(directory / CONFIG_FILE, info)
    return directory


def read_checkpoint_info(directory: str | os.PathLike[str]) -> tuple[RendererConfig, dict[str, Any]]:
    """(config, the whole JSON) of a checkpoint folder; CheckpointError if it is not one."""
    directory = Path(directory)
    hint = f"Train a renderer into {directory} with `python -m studio train-renderer`, or fix the path."
    info = read_json(directory / CONFIG_FILE, f"{directory} is not a neural renderer checkpoint (no {CONFIG_FILE}).",
                     hint)
    if not isinstance(info, dict) or info.get("kind") != KIND:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not a neural renderer config.", hint)
    if info.get("version") != VERSION:
        raise CheckpointError(f"{directory} has checkpoint version {info.get('version')}, "
                              f"this studio reads version {VERSION}.", "Retrain the renderer.")
    try:
        cfg = from_dict(RendererConfig, info.get("config"), where=str(directory / CONFIG_FILE))
    except Exception as exc:  # InputError from unknown keys, ValueError from bad values
        raise CheckpointError(f"{directory / CONFIG_FILE} holds an invalid renderer config: {exc}.", hint) from None
    return cfg, info


def config_differences(a: RendererConfig, b: RendererConfig) -> list[str]:
    """'field: a != b' for every field that differs."""
    return [f"{f.name}: {getattr(a, f.name)!r} != {getattr(b, f.name)!r}"
            for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


def load_generator(directory: str | os.PathLike[str], expect: RendererConfig | None = None
                   ) -> tuple[nn.Module, RendererConfig, dict[str, Any]]:
    """Build the generator of a checkpoint and load its weights (CPU, eval mode).

    ``expect``: the config the caller needs; any difference raises CheckpointError, as do a
    missing, corrupt or mismatching weights file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg, info = read_checkpoint_info(directory)
    if expect is not None and cfg != expect:
        raise CheckpointError(f"The renderer in {directory} does not match the requested settings "
                              f"({'; '.join(config_differences(cfg, expect))}).",
                              "Use a checkpoint trained with these settings, or retrain the renderer.")
    path = directory / WEIGHTS_FILE
    hint = "The checkpoint is damaged or incomplete: retrain, or resume training into this folder."
    if not path.is_file():
        raise CheckpointError(f"{path} is missing.", hint)
    if info.get("weights_sha256") != sha256_file(path):
        raise CheckpointError(f"{path} does not match the hash recorded in {CONFIG_FILE}.", hint)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}.", hint) from None
    generator = build_generator(cfg)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the config in {CONFIG_FILE}: {str(exc)[:300]}.", hint) from None
    return generator.eval(), cfg, info


class NeuralRenderer:
    """A trained generator ready to render facial maps into face crops.

    ``NeuralRenderer.load(dir)`` then ``render(facemaps)`` (N, S, S, 3) uint8 -> (N, S, S, 3) uint8.
    Facial maps must be drawn with ``facemap_config`` on crops made with ``crop_config`` (the
    settings the renderer was trained with).
    """

    def __init__(self, generator: nn.Module, cfg: RendererConfig, device: str | torch.device = "auto",
                 info: dict[str, Any] | None = None, amp: bool | None = None,
                 channels_last: bool | None = None) -> None:
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if amp is None else amp
        self.channels_last = cuda if channels_last is None else channels_last
        self.cfg = cfg
        self.info = dict(info or {})
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.generator = generator.eval().to(self.device, memory_format=fmt)
        self.generator.requires_grad_(False)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device = "auto",
             expect: RendererConfig | None = None, size: int | None = None) -> "NeuralRenderer":
        """Load a checkpoint folder. ``expect`` / ``size``: CheckpointError unless they match."""
        generator, cfg, info = load_generator(directory, expect)
        if size is not None and cfg.size != size:
            raise CheckpointError(f"The renderer in {directory} renders {cfg.size} px crops, not {size} px.",
                                  f"Use render size {cfg.size}, or train a renderer with --size {size}.")
        log.info("loaded neural renderer %s (%d px, step %s)", directory, cfg.size, info.get("step"))
        return cls(generator, cfg, device, info)

    @property
    def size(self) -> int:
        return self.cfg.size

    @property
    def facemap_config(self):
        """The FacemapConfig the renderer was trained with (defaults when not recorded)."""
        from studio.render.facemap import FacemapConfig

        return from_dict(FacemapConfig, self.info.get("facemap"), where="renderer facemap settings")

    @property
    def crop_config(self):
        """The CropConfig the renderer was trained with (defaults when not recorded)."""
        from studio.render.crop import CropConfig

        return from_dict(CropConfig, self.info.get("crop"), where="renderer crop settings")

    @torch.inference_mode()
    def render(self, facemaps: np.ndarray, template_crops: np.ndarray | None = None,
               batch_size: int = 8) -> np.ndarray:
        """Facial maps (N, S, S, 3) uint8 [+ masked template crops, same shape, when the renderer
        was trained with them] -> rendered crops (N, S, S, 3) uint8 RGB."""
        x = generator_input(self.cfg, facemaps, template_crops)
        out = []
        for a in range(0, len(x), batch_size):
            t = to_tensor(x[a:a + batch_size], self.device, self.channels_last)
            with autocast(self.device, self.amp):
                out.append(to_images(self.generator(t)))
        return np.concatenate(out) if out else np.zeros((0, self.size, self.size, 3), np.uint8)

    # -- the renderer interface (studio.render.base) ----------------------------------------------
    def render_size(self, requested: int) -> int:
        if requested != self.size:
            log.info("the neural renderer works at %d px; rendering at %d instead of %d", self.size, self.size,
                     requested)
        return self.size

    def prepare(self, lms, track) -> None:
        return None  # frame by frame: nothing over the sequence

    def draw(self, inputs, i: int, state: None = None):
        """A facial map drawn with the renderer's own settings (those it was trained with) ->
        the rendered crop and where it changed the template (both faces' hulls, feathered)."""
        import cv2

        from studio.render import REFERENCE_SIZE
        from studio.render.base import Rendered
        from studio.render.compose import ComposeConfig, feathered_mask
        from studio.render.facemap import facial_map, lower_face_mask

        fcfg = self.facemap_config
        size = inputs.crop.shape[0]
        px = size / REFERENCE_SIZE
        fmap = facial_map(inputs.crop, inputs.template_points, inputs.talk, fcfg)
        lower = (lower_face_mask(inputs.template_points, inputs.talk, size, fcfg.dilation * px)
                 if self.cfg.with_template else None)
        image = self.render_frame(inputs.crop, fmap, lower)
        hulls = [cv2.convexHull(p.astype(np.float32)).reshape(-1, 2) for p in (inputs.template_points, inputs.points)]
        cc = ComposeConfig()
        mask = feathered_mask(hulls, (0, 0, size, size), cc.face_dilation * px, cc.face_feather * px)
        return Rendered(image, mask)

    def render_frame(self, template_crop: np.ndarray, facemap: np.ndarray,
                     lower_face: np.ndarray | None = None) -> np.ndarray:
        """One frame, in the renderers' common argument order: template crop (S, S, 3) uint8,
        facial map (S, S, 3) uint8, lower-face mask (S, S) bool (needed only with_template)."""
        template = None
        if self.cfg.with_template:
            if lower_face is None:
                raise InputError("This renderer needs the lower-face mask of the template.",
                                 "Pass studio.render.facemap.lower_face_mask(...) as lower_face.")
            template = masked_template(template_crop[None], lower_face[None])
        return self.render(facemap[None], template)[0]


def benchmark(sizes: tuple[int, ...] = (256, 720), ngf: int | None = 16, batch: int = 1,
              repeats: int = 3, device: str = "cpu", **overrides: Any) -> dict:
    """Frames per second of the generator with random weights at each size (the facial-map ->
    crop step only). ``ngf`` None uses RendererConfig's default width (64, the paper's)."""
    dev = resolve_device(device)
    result: dict[str, Any] = {"cuda": int(dev.type == "cuda"), "batch": batch, "threads": torch.get_num_threads()}
    for size in sizes:
        kw = dict(overrides)
        if ngf is not None:
            kw["ngf"] = ngf
        cfg = RendererConfig.for_size(size, **kw)
        renderer = NeuralRenderer(build_generator(cfg), cfg, dev)
        maps = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        tmpl = maps if cfg.with_template else None
        renderer.render(maps, tmpl, batch)  # warm-up (allocations, cuDNN autotune)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            renderer.render(maps, tmpl, batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        result[f"neural_fps_{size}"] = repeats * batch / seconds
        result[f"neural_params_{size}"] = sum(p.numel() for p in renderer.generator.parameters())
        result[f"neural_local_enhancer_{size}"] = int(cfg.local_enhancer)
        result["ngf"] = cfg.ngf
        result["bf16"] = int(renderer.amp)
    return result
