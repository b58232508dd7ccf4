"""Mapping checkpoints: one folder that carries everything inference needs, and never unpickles.

Layout of CKPT_DIR::

    config.json        format, version, variant, model config, loss/train settings, training
                       summary -- written LAST by the trainer: its presence means "complete"
    model.safetensors  the network's weights (best validation epoch)
    norm.npz           per-subject normalization statistics (NormStats), allow_pickle=False
    conditioning.npz   the cheek-from-pose regression (``rigid`` conditioning only; see
                       studio.models.conditioning)
    calibration.npz    the articulation gain fitted on the validation footage (``rigid`` only)
    identity.npz       the person's face-shape offset (``studio.models.identity``): present when
                       the network predicts in canonical coordinates (the multi-speaker prior
                       and the subjects fine-tuned from it)
    mouth_pca.npz/json the mouth PCA (studio.face.pca.MouthPCA)
    train_log.csv/json per-epoch losses (for people; not needed to load)

``MappingModel.load(dir)`` -> ``.predict(audio (4T, 26), pose (T, 3), cheek (T, 16))`` ->
(T, 58) normalized talking points (nose-centred, divided by the face scale, rotation kept),
for any T, in one pass over the whole sequence. ``to_pixels`` puts them back into a template
frame with its nose centre and scale; ``extend_template`` says which template frame to use for
each output frame when the speech is longer than the template.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from studio.audio import FEATURES_PER_VIDEO_FRAME as APF
from studio.errors import CheckpointError, InputError
from studio.face import layout
from studio.face.normalize import denormalize_flat
from studio.face.pca import MouthPCA
from studio.fsutil import atomic_path

log = logging.getLogger(__name__)

FORMAT = "lip-sync-studio/mapping"
VERSION = 2  # 2: conditioning + audio_norm in the model settings (1: the paper's raw inputs)
READABLE_VERSIONS = (1, 2)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
NORM_NAME = "norm.npz"
IDENTITY_NAME = "identity.npz"


@dataclass(frozen=True, eq=False)
class NormStats:
    """Per-subject statistics: inputs are standardized with them, outputs de-standardized.

    audio_mean/std (26,), pose_mean/std (3,), cheek_mean/std (16,), talk_mean/std (58,),
    coef_std (13,) (the PCA coefficients' mean is zero by construction).
    """

    audio_mean: np.ndarray
    audio_std: np.ndarray
    pose_mean: np.ndarray
    pose_std: np.ndarray
    cheek_mean: np.ndarray
    cheek_std: np.ndarray
    talk_mean: np.ndarray
    talk_std: np.ndarray
    coef_std: np.ndarray

    @classmethod
    def fit(cls, audio: np.ndarray, pose: np.ndarray, cheek: np.ndarray, talk: np.ndarray,
            coef_std: np.ndarray) -> "NormStats":
        """From training frames: audio (4N, 26), pose (N, 3), cheek (N, 16), talk (N, 58)."""
        def ms(x: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
            x = np.asarray(x, np.float64)
            return x.mean(0).astype(np.float32), np.maximum(x.std(0), floor).astype(np.float32)

        am, asd = ms(audio, 1e-3)
        pm, psd = ms(pose, 1e-2)  # degrees: a static pose must not blow up to huge z-scores
        cm, csd = ms(cheek, 1e-4)
        tm, tsd = ms(talk, 1e-4)
        return cls(am, asd, pm, psd, cm, csd, tm, tsd, np.asarray(coef_std, np.float32))

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "NormStats":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {f.name: np.asarray(z[f.name], np.float32) for f in fields(cls)}
        except FileNotFoundError:
            raise CheckpointError(f"Normalization statistics missing: {path}.", _HINT) from None
        except Exception as exc:
            raise CheckpointError(f"Normalization statistics {path} are unreadable: {exc}.", _HINT) from None
        dims = {"audio": 26, "pose": 3, "cheek": 16, "talk": 58}
        for key, d in dims.items():
            for part in ("mean", "std"):
                if arrays[f"{key}_{part}"].shape != (d,):
                    raise CheckpointError(f"{path}: {key}_{part} has the wrong shape.", _HINT)
        if not all(np.isfinite(a).all() for a in arrays.values()) or any(
                (arrays[k] <= 0).any() for k in arrays if k.endswith("std")):
            raise CheckpointError(f"{path} holds non-finite or non-positive statistics.", _HINT)
        return cls(**arrays)


_HINT = "Re-train the model with `python -m studio train-mapping` (the checkpoint folder is incomplete or damaged)."


def model_from_config(variant: str, model_cfg: dict[str, Any]):
    """Rebuild the (untrained) network of a checkpoint config."""
    from studio.models import BASELINE_VARIANTS, CASCADE_VARIANTS, build_model, model_config

    if variant not in CASCADE_VARIANTS + BASELINE_VARIANTS:
        raise CheckpointError(f"Checkpoint names an unknown variant {variant!r}.", _HINT)
    settings = {k: v for k, v in model_cfg.items()
                if k not in ("pose_in_g1", "pose_in_g2", "use_cheek", "kind")}
    try:
        cfg = model_config(variant, settings)
    except Exception as exc:
        raise CheckpointError(f"Checkpoint model settings are invalid: {exc}.", _HINT) from None
    return build_model(cfg)


def save_weights(net, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Write a module's state dict (tensors only) as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_weights(net, path: str | os.PathLike[str]) -> None:
    """Load safetensors weights into ``net`` strictly (every key, every shape)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"Weights file missing: {path}.", _HINT) from None
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"Weights file {path} is unreadable: {exc}.", _HINT) from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"Weights in {path} do not match the model in config.json: {exc}.", _HINT) from None


class MappingModel:
    """A trained mapping network with its PCA and normalization statistics, ready to predict."""

    def __init__(self, net, variant: str, config: dict[str, Any], pca: MouthPCA, norm: NormStats,
                 directory: Path | None = None, rigid=None, gain=None, identity=None) -> None:
        self.net = net.eval()
        self.identity = identity  # studio.models.identity.IdentityOffset, or None (person-specific)
        self.rigid = rigid  # studio.models.conditioning.RigidCheek, for rigid conditioning
        self.gain = gain  # studio.models.conditioning.ArticulationGain, or None (no calibration)
        self.variant = variant
        self.config = config
        self.pca = pca
        self.norm = norm
        self.directory = directory

    @property
    def predicts_jaw(self) -> bool:
        """False for the LSTM/BiLSTM baselines: their jaw is the training mean (a constant)."""
        return not self.net.mouth_only

    @property
    def fps(self) -> float:
        return float(self.config.get("data", {}).get("fps", 25.0))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "MappingModel":
        """Load a complete checkpoint folder; CheckpointError if anything is missing or corrupt."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"Checkpoint folder {directory} does not exist.",
                                  "Train one with `python -m studio train-mapping` or check the path.")
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.exists():
            state = " (training was interrupted; run the same train-mapping command to resume)" \
                if (directory / ".train_state").exists() else ""
            raise CheckpointError(f"{directory} is not a complete mapping checkpoint (no {CONFIG_NAME}){state}.",
                                  _HINT)
        try:
            config = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:  # ValueError: bad JSON, or not UTF-8 at all
            raise CheckpointError(f"{cfg_path} is unreadable: {exc}.", _HINT) from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise CheckpointError(f"{cfg_path} is not a mapping checkpoint config.", _HINT)
        if config.get("version") not in READABLE_VERSIONS:
            raise CheckpointError(f"{cfg_path} has version {config.get('version')}, this studio reads "
                                  f"{', '.join(map(str, READABLE_VERSIONS))}.", _HINT)
        variant = config.get("variant")
        if not isinstance(config.get("model"), dict):
            raise CheckpointError(f"{cfg_path} lacks the model settings.", _HINT)
        if config["version"] == 1:  # trained before conditioning existed: the paper's raw inputs
            config["model"] = {**config["model"], "audio_norm": "none"}
            if "pose_in_g1" in config["model"]:
                config["model"]["conditioning"] = "paper"
        net = model_from_config(str(variant), config["model"])
        load_weights(net, directory / WEIGHTS_NAME)
        pca = MouthPCA.load(directory)
        norm = NormStats.load(directory / NORM_NAME)
        rigid = gain = None
        if getattr(net.cfg, "conditioning", "paper") == "rigid":
            from studio.models.conditioning import CALIBRATION_NAME, CONDITIONING_NAME, ArticulationGain, RigidCheek

            rigid = RigidCheek.load(directory / CONDITIONING_NAME)
            if (directory / CALIBRATION_NAME).exists():
                gain = ArticulationGain.load(directory / CALIBRATION_NAME)
        identity = None
        if (directory / IDENTITY_NAME).exists():
            from studio.models.identity import IdentityOffset

            identity = IdentityOffset.load(directory / IDENTITY_NAME)
        if pca.n_components != (net.cfg.pca_dim):
            raise CheckpointError(f"{directory}: the PCA has {pca.n_components} components, "
                                  f"the model {net.cfg.pca_dim}.", _HINT)
        return cls(net, str(variant), config, pca, norm, directory, rigid, gain, identity)

    def for_person(self, identity) -> "MappingModel":
        """The same canonical-coordinate model (the prior) predicting for another person, whose
        offset (``studio.models.identity.IdentityOffset``) was measured on their footage."""
        if self.identity is None:
            raise InputError("This mapping model is person-specific; it cannot be moved to another face.",
                             "Use the multi-speaker prior (presets/prior) or a subject fine-tuned from it.")
        return MappingModel(self.net, self.variant, self.config, self.pca, self.norm, self.directory,
                            self.rigid, self.gain, identity)

    def conditioning(self, audio: np.ndarray, pose: np.ndarray, cheek: np.ndarray,
                     fps: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The inputs the network sees for raw ones (studio.models.conditioning), not standardized."""
        from studio.models import conditioning as cond

        cfg = self.net.cfg
        audio = cond.normalize_audio(audio, getattr(cfg, "audio_norm", "none"))
        mode = getattr(cfg, "conditioning", "paper")
        pose, cheek = cond.condition(mode, pose, cheek, self.fps if fps is None else fps, self.rigid)
        return audio, pose, cheek

    def predict(self, audio: np.ndarray, pose: np.ndarray, cheek: np.ndarray, *, fps: float | None = None,
                return_coefs: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """audio (4T, 26) logfbank, pose (T, 3) degrees, cheek (T, 16) normalized -> (T, 58).

        The template's RAW pose and cheek points: the model's conditioning decides what of them
        the network sees (``fps``, default the training footage's, sets the rigid low-pass).
        One pass over the whole sequence. With ``return_coefs`` also the (T, 13) PCA mouth
        coefficients the network produced (G1's output; the baselines' only output).
        """
        import torch

        audio, pose, cheek = _check_predict_inputs(audio, pose, cheek)
        if self.identity is not None and self.identity.audio_shift:
            from studio.models.identity import shift_audio

            audio = shift_audio(audio, self.identity.audio_shift)
        audio, pose, cheek = self.conditioning(audio, pose, cheek, fps)
        n = self.norm
        a = (audio - n.audio_mean) / n.audio_std
        p = (pose - n.pose_mean) / n.pose_std
        c = (cheek - n.cheek_mean) / n.cheek_std
        with torch.inference_mode():
            z_coef, z_talk = self.net(torch.from_numpy(a[None]), torch.from_numpy(p[None]),
                                      torch.from_numpy(c[None]))
        coefs = z_coef[0].numpy() * n.coef_std
        if z_talk is None:  # mouth-only baseline: PCA mouth, mean jaw
            talk = np.repeat(n.talk_mean[None], len(pose), axis=0)
            talk[:, layout.TALK_MOUTH] = self.pca.inverse(coefs)
        else:
            talk = z_talk[0].numpy() * n.talk_std + n.talk_mean
            if self.gain is not None:  # articulation calibrated on the subject's validation footage
                talk = self.gain(talk, pose)
            if self.identity is not None:  # canonical coordinates -> this person's face
                talk = self.identity.add(talk, pose)
        talk = talk.astype(np.float32)
        return (talk, coefs.astype(np.float32)) if return_coefs else talk


def _check_predict_inputs(audio, pose, cheek) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    pose = np.ascontiguousarray(pose, dtype=np.float32)
    cheek = np.ascontiguousarray(cheek, dtype=np.float32)
    t = pose.shape[0] if pose.ndim == 2 else -1
    if pose.shape != (t, 3) or t < 1:
        raise InputError(f"Head pose must be (T, 3) with T >= 1, got {pose.shape}.", "Pass the template's pose track.")
    if audio.shape != (APF * t, 26):
        raise InputError(f"Audio features must be ({APF * t}, 26) for {t} frames, got {audio.shape}.",
                         "Compute them with studio.audio.features_for_video(signal, fps, T).")
    if cheek.shape != (t, layout.CHEEK_DIM):
        raise InputError(f"Cheek points must be ({t}, {layout.CHEEK_DIM}), got {cheek.shape}.",
                         "Pass the template clip's normalized cheek vectors (Clip.cheek).")
    for name, arr in (("audio", audio), ("pose", pose), ("cheek", cheek)):
        if not np.isfinite(arr).all():
            raise InputError(f"The {name} input contains NaN or infinite values.", "Re-run preprocessing.")
    return audio, pose, cheek


def to_pixels(talk: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Normalized talking points -> template pixels.

    talk (T, 58) normalized; centre (T, 2) the template frames' nose centres in pixels; scale (T,)
    their face scales in pixels. Returns (T, 29, 2) pixel points in TALKING order
    (``layout.with_talking(template_landmarks, out.reshape(T, 58))`` puts them into 68 points).
    """
    talk = np.asarray(talk, np.float32)
    return denormalize_flat(talk, centre, scale).reshape(talk.shape[0], layout.N_TALKING, 2)


def extend_template(n_frames: int, n_template: int) -> np.ndarray:
    """Template frame index for each of ``n_frames`` output frames: (n_frames,) int64.

    Rule (ping-pong looping): play the template forwards, then backwards, then forwards again,
    without repeating the turning frames: 0, 1, ..., N-1, N-2, ..., 1, 0, 1, ... (period 2N-2),
    so that head pose and cheek tracks stay continuous (no jump back to frame 0). A one-frame
    template repeats frame 0. When the speech is shorter, this is simply 0 .. n_frames-1.
    """
    if n_template < 1:
        raise InputError("The template has no frames.", "Choose a template clip with a detected face.")
    i = np.arange(max(0, int(n_frames)), dtype=np.int64)
    if n_template == 1:
        return np.zeros_like(i)
    period = 2 * n_template - 2
    k = i % period
    return np.where(k < n_template, k, period - k)
