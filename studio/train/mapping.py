"""Train an audio -> landmark mapping model (the cascade, a variant, or an RNN baseline).

``python -m studio train-mapping CLIP_DIR... --variant V --out CKPT_DIR [--preset P] [--seed S]``

Loss (the paper's Eq. 1-4), with ``lambda_pca`` = 0.05 and ``lambda_int`` = 0.6 by default::

    L_all = L_L2 + lambda_pca * L_pca + lambda_int * L_int
    L_L2  = |t - G2|^2        talking points (normalized coordinates)
    L_pca = |m - G1|^2        13 PCA mouth coefficients
    L_int = |(t_i - t_{i-1}) - (G2_i - G2_{i-1})|^2   consecutive-frame differences
    L_open = |o(t) - o(G2)|^2  ours (``lambda_open``): o = the four lip gaps and the chin's height,
                               the few coordinates that carry articulation; the paper's L2 spreads
                               its weight over 58 numbers most of which move with the head
    L_var  = sum_k (std_t o_k(G2) - std_t o_k(t))^2   ours (``lambda_var``): the same features' spread
                               over the window, against the regression to the mean that shrinks them

Each |.|^2 is the squared Frobenius norm of a window (frames x coordinates) divided by its number
of frames and averaged over the batch: the paper's sums, up to the constant 1/64, so the
lambdas weigh the terms exactly as in the paper. The baselines give no jaw, so for them the L2
and L_int terms use the 40 mouth coordinates only (their mouth is the PCA inverse of their
coefficients).

Training: windows of 64 frames (``studio.train.windows`` splits each clip's time into a training
block and a later validation block with a gap), per-subject standardization of inputs and
outputs (``NormStats``, fitted on the training frames), Adam, early stopping on the validation
L_all, gradient clipping. Seeded and deterministic on CPU: the model is initialized from
``seed``, each epoch's shuffle and dropout masks from (seed, epoch). After every epoch the full
training state is written atomically to CKPT_DIR/.train_state, so an interrupted run started
again with the same arguments resumes from its last finished epoch and ends with the same
weights as an uninterrupted one.

Data-parallel (``torchrun --nproc_per_node=N -m studio train-mapping ...``,
``studio.train.distributed``): every rank draws the epoch's shuffle, swaps and augmentation for
the whole global batch and trains on its block of each batch (DDP, gloo); validation is split
over the ranks and summed; rank 0 alone writes files. The loss curve is one process's up to the
order of float reductions (and dropout, whose masks are per rank). The training state does not
depend on N: a run resumes under any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from studio.audio import FEATURES_PER_VIDEO_FRAME as APF
from studio.config import from_dict, load_preset, to_dict
from studio.data.clip import Clip
from studio.errors import InputError
from studio.face import layout
from studio.face.frontal import move_talk, move_to_frontal
from studio.face.pca import MouthPCA
from studio.fsutil import atomic_path, write_json_atomic
from studio.models import VARIANTS, model_config
from studio.models import conditioning as cond
from studio.models.conditioning import RigidCheek
from studio.models import checkpoint as ck
from studio.train import distributed
from studio.train.windows import ClipArrays, clip_arrays, gather, split_train_val, window_starts

log = logging.getLogger(__name__)

STATE_DIR = ".train_state"
STATE_JSON = "state.json"  # in STATE_DIR: the epoch history so far
TRAIN_LOG_JSON = "train_log.json"  # the finished run's per-epoch history


@dataclass(frozen=True)
class LossConfig:
    lambda_pca: float = 0.05
    lambda_int: float = 0.6
    lambda_open: float = 0.0  # ours: weight of L_open (inner/outer lip gaps, chin drop); 0 = the paper's loss
    lambda_var: float = 0.0  # ours: weight of L_var (std over a window of each opening feature, pred vs target)


# Rows of a (.., 58) talking vector whose y differences measure opening: (upper, lower) talking
# point indices (iBUG 61-67, 62-66, 63-65 inner lip, 51-57 outer lip), and the chin (iBUG 8).
_OPEN_PAIRS = tuple((layout.TALKING.index(a), layout.TALKING.index(b))
                    for a, b in layout.INNER_LIP_PAIRS + ((51, 57),))
_CHIN = layout.TALKING.index(8)


def opening_features(talk):
    """(B, T, 58) talking vectors (torch or numpy) -> (B, T, 5): four lip gaps and the chin's y."""
    gaps = [talk[..., 2 * lo + 1] - talk[..., 2 * up + 1] for up, lo in _OPEN_PAIRS]
    return _stack(gaps + [talk[..., 2 * _CHIN + 1]])


def _stack(parts):
    import torch

    return torch.stack(parts, dim=-1) if isinstance(parts[0], torch.Tensor) else np.stack(parts, axis=-1)


@dataclass(frozen=True)
class TrainConfig:
    window: int = 64  # video frames per training window (256 audio frames)
    stride: int = 8  # frames between consecutive training window starts
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_epochs: int = 60
    patience: int = 8  # epochs without a validation improvement before stopping
    min_delta: float = 1e-3  # relative improvement that counts
    val_fraction: float = 0.2  # last part of each clip's (span of) time used for validation
    gap: int = -1  # frames between the training and validation blocks; -1 = one window
    val_stride: int = 32
    val_window: int = 0  # frames per validation window; 0 = ``window`` (shorter ones fit short clips)
    threads: int = 1  # torch CPU threads while training; 0 = leave torch's setting
    # Probability that a training window's pose and cheek come from another training window (of
    # another moment: no shared frame), its target re-drawn in that pose (studio.face.frontal);
    # rigid conditioning only. Partners are drawn among windows whose mean head pose is within
    # swap_max_degrees (Euclidean over yaw, pitch, roll): the re-drawing is a weak-perspective
    # approximation, good for small pose changes, while the partner's own pose fluctuations,
    # which move with ITS speech, are what the swap must decouple from the target's.
    swap_conditioning: float = 1.0
    swap_max_degrees: float = 30.0
    # Fit an articulation gain on the validation windows after training (rigid conditioning only;
    # studio.models.conditioning.ArticulationGain).
    calibrate: bool = True
    # Voice augmentation (multi-speaker training): each training window's 26 filterbank channels
    # are resampled along frequency by a factor drawn in [1 - audio_warp, 1 + audio_warp] (vocal
    # tract length perturbation: other voices' formants sit higher or lower), and
    # ``freq_masks`` bands of up to 3 channels are zeroed (SpecAugment). 0 = off.
    audio_warp: float = 0.0
    freq_masks: int = 0
    # The validation measure that early stopping (and fine-tuning's comparison with its base)
    # follows: "all" = L_all; "open" = L_open alone, the articulation (fine-tuning on a few
    # seconds can lower L_all by fitting the face's static shape while the articulation worsens).
    select_on: str = "all"

    def __post_init__(self) -> None:
        if self.window < 2 or self.stride < 1 or self.batch_size < 1 or self.max_epochs < 1:
            raise ValueError("window >= 2, stride >= 1, batch_size >= 1, max_epochs >= 1")
        if self.select_on not in ("all", "open"):
            raise ValueError(f"select_on must be 'all' or 'open', got {self.select_on!r}")

    @property
    def gap_frames(self) -> int:
        return self.window if self.gap < 0 else self.gap

    @property
    def val_window_frames(self) -> int:
        return self.val_window if self.val_window > 0 else self.window


@dataclass(frozen=True)
class MappingSettings:
    """Everything a preset decides for one variant."""

    model: Any
    loss: LossConfig
    train: TrainConfig


def settings_for(variant: str, preset: str | os.PathLike[str] | dict = "cpu",
                 **train_overrides: Any) -> MappingSettings:
    """Read a preset's [mapping_model] (cascade) or [mapping_lstm]/[mapping_bilstm] (baselines),
    [mapping_loss] and [mapping_train] sections; ``train_overrides`` replace TrainConfig fields."""
    if variant not in VARIANTS:
        raise InputError(f"Unknown variant {variant!r}.", f"Use one of: {', '.join(VARIANTS)}.")
    data = preset if isinstance(preset, dict) else load_preset(preset)
    section = {"lstm": "mapping_lstm", "bilstm": "mapping_bilstm"}.get(variant, "mapping_model")
    model = model_config(variant, data.get(section, {}))
    loss = from_dict(LossConfig, data.get("mapping_loss", {}), where="[mapping_loss]")
    train_data = {**data.get("mapping_train", {}), **{k: v for k, v in train_overrides.items() if v is not None}}
    train = from_dict(TrainConfig, train_data, where="[mapping_train]")
    return MappingSettings(model, loss, train)


# -- loss ------------------------------------------------------------------------------------
def mapping_loss(pred_coef, pred_talk, coef, talk, cfg: LossConfig, dims: slice = slice(None)) -> dict:
    """The paper's composite loss. All tensors (B, T, D) in physical units.

    pred_coef/coef (B, T, 13) PCA coefficients; pred_talk/talk (B, T, 58) normalized points;
    ``dims`` restricts L2 and L_int to some coordinates (the mouth, for the baselines).
    Returns {"all", "l2", "pca", "int"} scalar tensors.
    """
    frames = talk.shape[1]
    diff = pred_talk[..., dims] - talk[..., dims]
    l2 = diff.pow(2).sum(dim=(1, 2)).mean() / frames
    pca = (pred_coef - coef).pow(2).sum(dim=(1, 2)).mean() / frames
    dd = diff[:, 1:] - diff[:, :-1]  # (t_i - t_{i-1}) - (G2_i - G2_{i-1}), up to sign
    inter = dd.pow(2).sum(dim=(1, 2)).mean() / frames
    total = l2 + cfg.lambda_pca * pca + cfg.lambda_int * inter
    out = {"all": total, "l2": l2, "pca": pca, "int": inter}
    if cfg.lambda_open > 0:
        d_open = opening_features(pred_talk) - opening_features(talk)
        if dims != slice(None):  # mouth-only baselines: no chin
            d_open = d_open[..., :-1]
        out["open"] = d_open.pow(2).sum(dim=(1, 2)).mean() / frames
        out["all"] = out["all"] + cfg.lambda_open * out["open"]
    if cfg.lambda_var > 0:
        o_p, o_t = opening_features(pred_talk), opening_features(talk)
        if dims != slice(None):
            o_p, o_t = o_p[..., :-1], o_t[..., :-1]
        out["var"] = (o_p.std(dim=1) - o_t.std(dim=1)).pow(2).sum(dim=-1).mean()
        out["all"] = out["all"] + cfg.lambda_var * out["var"]
    return out


def forward_physical(net, batch: dict, pca_t: tuple) -> tuple:
    """Run the net on a standardized batch; return (coef, talk) in physical units (B, T, 13/58).

    pca_t = (coef_std, talk_mean, talk_std, pca_mean, pca_components) tensors. For mouth-only
    baselines the talk vector's mouth part is the PCA inverse of the coefficients and the jaw
    part the training mean.
    """
    import torch

    coef_std, talk_mean, talk_std, pca_mean, pca_comp = pca_t
    z_coef, z_talk = net(batch["audio"], batch["pose"], batch["cheek"])
    coef = z_coef * coef_std
    if z_talk is None:
        mouth = coef @ pca_comp + pca_mean
        jaw = talk_mean[layout.TALK_JAW].expand(*mouth.shape[:2], -1)
        talk = torch.cat([mouth, jaw], dim=-1)
    else:
        talk = z_talk * talk_std + talk_mean
    return coef, talk


# -- data preparation ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PreparedData:
    """Standardized per-clip arrays plus window indices (N, 2) of (clip, start)."""

    audio: list[np.ndarray]  # (4T, 26) standardized
    pose: list[np.ndarray]  # (T, 3) standardized
    cheek: list[np.ndarray]  # (T, 16) standardized
    talk: list[np.ndarray]  # (T, 58) physical (normalized coordinates)
    coef: list[np.ndarray]  # (T, 13) physical PCA coefficients
    train_index: np.ndarray
    val_index: np.ndarray
    pca: MouthPCA
    norm: ck.NormStats
    rigid: RigidCheek | None  # the fitted cheek-from-pose regression (rigid conditioning)
    geom_pose: list[np.ndarray] | None  # (T, 3) conditioned pose in degrees (rigid conditioning)
    swap_candidates: list[np.ndarray] | None  # per training window: rows of train_index it may swap with
    train_frames: int
    val_frames: int
    fps: float


def prepare(blocks: Sequence[ClipArrays], tc: TrainConfig, conditioning: str = "paper",
            audio_norm: str = "none", base: "ck.MappingModel | None" = None) -> PreparedData:
    """Split, condition (``studio.models.conditioning``), fit PCA + NormStats on the training
    frames, standardize, index windows. With ``base`` (fine-tuning) its PCA, NormStats and
    cheek regression are kept instead of fitted: the network's inputs and outputs must mean
    what they meant when it was trained."""
    train_idx, val_idx, tr_sel, n_val = [], [], [], 0
    for i, b in enumerate(blocks):
        (t0, t1), (v0, v1) = split_train_val(b.frames, tc.val_fraction, tc.gap_frames)
        s_tr = window_starts(b.valid, t0, t1, tc.window, tc.stride)
        s_va = window_starts(b.valid, v0, v1, tc.val_window_frames, tc.val_stride)
        train_idx.append(np.stack([np.full_like(s_tr, i), s_tr], 1))
        val_idx.append(np.stack([np.full_like(s_va, i), s_va], 1))
        sel = np.zeros(b.frames, bool)
        sel[t0:t1] = True
        tr_sel.append(sel & b.valid)
        n_val += int(b.valid[v0:v1].sum())
    train_index = np.concatenate(train_idx)
    val_index = np.concatenate(val_idx)
    if len(train_index) == 0:
        raise InputError(f"No {tc.window}-frame training window fits the clips "
                         f"({sum(b.frames for b in blocks)} frames in all).",
                         "Give longer clips (at least ~10 s each) or more of them.")
    if len(val_index) == 0 and tc.val_fraction > 0 and base is None:
        raise InputError(f"No {tc.val_window_frames}-frame validation window fits in the last {tc.val_fraction:.0%} "
                         "of the clips.", "Give longer clips, or lower mapping_train.val_fraction.")
    audio = [cond.normalize_audio(b.audio, audio_norm) for b in blocks]
    rigid = None
    if conditioning == "rigid":
        poses = [cond.smooth_pose(b.pose, b.fps) for b in blocks]
        rigid = base.rigid if base is not None else cond.RigidCheek.fit(
            np.concatenate([p[s] for p, s in zip(poses, tr_sel)]),
            np.concatenate([b.cheek[s] for b, s in zip(blocks, tr_sel)]))
        cheeks = [rigid(p) for p in poses]
    else:
        poses, cheeks = [b.pose for b in blocks], [b.cheek for b in blocks]
    if base is not None:
        pca, norm = base.pca, base.norm
    else:
        pca = MouthPCA.fit(np.concatenate([b.talk[s, layout.TALK_MOUTH] for b, s in zip(blocks, tr_sel)]))
        audio_sel = [np.repeat(s, APF) for s in tr_sel]
        norm = ck.NormStats.fit(
            np.concatenate([a[s] for a, s in zip(audio, audio_sel)]),
            np.concatenate([p[s] for p, s in zip(poses, tr_sel)]),
            np.concatenate([c[s] for c, s in zip(cheeks, tr_sel)]),
            np.concatenate([b.talk[s] for b, s in zip(blocks, tr_sel)]), pca.coef_std)
    f32 = np.float32
    return PreparedData(
        audio=[((a - norm.audio_mean) / norm.audio_std).astype(f32) for a in audio],
        pose=[((p - norm.pose_mean) / norm.pose_std).astype(f32) for p in poses],
        cheek=[((c - norm.cheek_mean) / norm.cheek_std).astype(f32) for c in cheeks],
        talk=[b.talk.astype(f32) for b in blocks],
        coef=[pca.transform(b.talk[:, layout.TALK_MOUTH]) for b in blocks],
        train_index=train_index, val_index=val_index, pca=pca, norm=norm, rigid=rigid,
        geom_pose=poses if rigid is not None else None,
        swap_candidates=(swap_candidates(train_index, poses, tc.window, tc.swap_max_degrees)
                         if rigid is not None and tc.swap_conditioning > 0 else None),
        train_frames=int(sum(s.sum() for s in tr_sel)),
        val_frames=n_val,
        fps=float(np.median([b.fps for b in blocks])),
    )


def swap_candidates(index: np.ndarray, poses: Sequence[np.ndarray], window: int, max_degrees: float,
                    limit: int = 256) -> list[np.ndarray]:
    """For each window of ``index`` (N, 2) (clip, start): up to ``limit`` other windows that share no
    frame with it and whose mean pose (over the window, degrees) is within ``max_degrees``."""
    means = np.stack([poses[c][s:s + window].mean(axis=0) for c, s in index]) if len(index) else np.zeros((0, 3))
    rng = np.random.default_rng(0)
    out = []
    for i, (c, s) in enumerate(index):
        near = np.linalg.norm(means - means[i], axis=1) <= max_degrees
        near &= (index[:, 0] != c) | (np.abs(index[:, 1] - s) >= window)
        cand = np.flatnonzero(near)
        if len(cand) > limit:
            cand = np.sort(rng.choice(cand, limit, replace=False))
        out.append(cand)
    return out


def warp_channels(audio: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(N, F, C) features, (N,) warp factors -> the same with channel c read at c * factor
    (linear interpolation, ends held): a factor > 1 moves the spectrum down, < 1 up."""
    n, _, c = audio.shape
    out = np.empty_like(audio)
    grid = np.arange(c, dtype=np.float64)
    for i in range(n):
        src = np.clip(grid * factors[i], 0, c - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, c - 1)
        w = (src - lo).astype(audio.dtype)
        out[i] = audio[i][:, lo] * (1 - w) + audio[i][:, hi] * w
    return out


def augment_audio(audio: np.ndarray, tc: "TrainConfig", rng: np.random.Generator,
                  rows: slice = slice(None), total: int | None = None) -> np.ndarray:
    """Voice augmentation of a batch of standardized feature windows (N, F, 26); see TrainConfig.

    ``audio`` is the block ``rows`` of a global batch of ``total`` windows (default: all of it):
    the random numbers are drawn for the whole global batch, so a window is augmented alike
    however the batch is split over processes, and ``rng`` advances alike on every one.
    """
    total = len(audio) if total is None else total
    if tc.audio_warp > 0:
        audio = warp_channels(audio, rng.uniform(1 - tc.audio_warp, 1 + tc.audio_warp, total)[rows])
    for _ in range(tc.freq_masks):
        width = rng.integers(1, 4, total)[rows]
        start = rng.integers(0, audio.shape[-1] - 3, total)[rows]
        for i in range(len(audio)):
            audio[i, :, start[i]:start[i] + width[i]] = 0.0
    return audio


def make_batch(data: PreparedData, index: np.ndarray, window: int, cond_index: np.ndarray | None = None) -> dict:
    """Windows ``index`` (N, 2) as tensors; with ``cond_index`` (N, 2) the pose and cheek come from
    those windows instead and the targets are re-drawn in their head pose (``studio.face.frontal``)."""
    import torch

    talk, coef = gather(data.talk, index, window), gather(data.coef, index, window)
    if cond_index is None:
        cond_index = index
    else:
        moved = np.any(cond_index != index, axis=1)
        if moved.any():
            assert data.geom_pose is not None, "conditioning swaps need rigid conditioning"
            src = gather(data.geom_pose, index[moved], window).reshape(-1, 3)
            dst = gather(data.geom_pose, cond_index[moved], window).reshape(-1, 3)
            new = move_talk(talk[moved].reshape(-1, layout.TALK_DIM), src, dst)
            talk[moved] = new.reshape(-1, window, layout.TALK_DIM)
            coef[moved] = data.pca.transform(new[:, layout.TALK_MOUTH]).reshape(-1, window, layout.PCA_DIM)
    return {
        "audio": torch.from_numpy(gather(data.audio, index, window, APF)),
        "pose": torch.from_numpy(gather(data.pose, cond_index, window)),
        "cheek": torch.from_numpy(gather(data.cheek, cond_index, window)),
        "talk": torch.from_numpy(np.ascontiguousarray(talk, np.float32)),
        "coef": torch.from_numpy(np.ascontiguousarray(coef, np.float32)),
    }


# -- training --------------------------------------------------------------------------------
def _fingerprint(variant: str, st: MappingSettings, seed: int, blocks: Sequence[ClipArrays]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([variant, to_dict(st.model), to_dict(st.loss), to_dict(st.train), seed],
                        sort_keys=True).encode())
    for b in blocks:
        for arr in (b.audio, b.pose, b.cheek, b.talk, b.valid):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _deterministic(threads: int):
    """Deterministic algorithms and a fixed thread count, restored afterwards.

    One thread by default: the 64-frame windows are small, and on a shared 2-core machine two
    OpenMP threads spin against other processes and run many times slower than one.
    """
    import torch

    prev, prev_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)
        torch.set_num_threads(prev_threads)


def _save_state(state_dir: Path, net, opt, info: dict) -> None:
    """Model + optimizer tensors as safetensors, everything else as JSON; the folder atomically."""
    import torch

    tensors = {f"model/{k}": v for k, v in net.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for name, val in st.items():
            val = torch.as_tensor(val)
            tensors[f"opt/{idx}/{name}"] = val.reshape(1) if val.dim() == 0 else val
    from safetensors.torch import save_file

    # The folder is replaced as a whole: a crash between the two files must never pair epoch e's
    # tensors with epoch e-1's state.json (the resumed run would train epoch e twice).
    with atomic_path(state_dir) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        write_json_atomic(tmp / STATE_JSON, {**info, "param_groups": osd["param_groups"]})


def _load_state(state_dir: Path, net, opt) -> dict | None:
    """Restore model and optimizer from ``state_dir``; None if there is no usable state."""
    from safetensors.torch import load_file

    try:
        info = json.loads((state_dir / STATE_JSON).read_text())
        tensors = load_file(str(state_dir / "state.safetensors"))
    except Exception:
        return None
    if info.get("state_epoch") is None:
        return None
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict] = {}
    for key, val in tensors.items():
        if key.startswith("opt/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = val.reshape(()) if name == "step" else val
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info


def calibrate(out: Path, net, data: PreparedData, tc: TrainConfig, pca_t: tuple) -> cond.ArticulationGain:
    """The best epoch's articulation gain (``conditioning.ArticulationGain``) on the validation windows."""
    import torch

    ck.load_weights(net, out / ck.WEIGHTS_NAME)
    net.eval()
    preds, trues = [], []
    with torch.no_grad():
        for i in range(0, len(data.val_index), 64):
            batch = make_batch(data, data.val_index[i:i + 64], tc.val_window_frames)
            _, talk = forward_physical(net, batch, pca_t)
            preds.append(opening_features(talk.numpy()))
            trues.append(opening_features(batch["talk"].numpy()))
    train_talk, train_pose = [], []
    for (c, s) in data.train_index:
        train_talk.append(data.talk[c][s:s + tc.window])
        train_pose.append(data.geom_pose[c][s:s + tc.window])
    frontal = move_to_frontal(np.concatenate(train_talk), np.concatenate(train_pose))
    return cond.ArticulationGain.fit(np.concatenate(preds), np.concatenate(trues), frontal.mean(axis=0))


def loss_terms(lc: LossConfig) -> tuple[str, ...]:
    """The keys of :func:`mapping_loss`'s result, in its order."""
    return ("all", "l2", "pca", "int") + ("open",) * (lc.lambda_open > 0) + ("var",) * (lc.lambda_var > 0)


def evaluate_windows(net, data: PreparedData, index: np.ndarray, lc: LossConfig, tc: TrainConfig,
                     pca_t: tuple, dims: slice, group: distributed.Dist = distributed.SINGLE) -> dict:
    """Mean loss terms over windows (eval mode, no grad). In a process group each rank evaluates
    its block of ``index`` and every rank returns the same means over all of them."""
    import torch

    net.eval()
    sums = dict.fromkeys(loss_terms(lc), 0.0)
    mine = index[group.part(len(index))]
    with torch.no_grad():
        for i in range(0, len(mine), 64):
            sub = mine[i:i + 64]
            batch = make_batch(data, sub, tc.val_window_frames)
            coef, talk = forward_physical(net, batch, pca_t)
            terms = mapping_loss(coef, talk, batch["coef"], batch["talk"], lc, dims)
            for k, v in terms.items():
                sums[k] += float(v) * len(sub)
    totals = group.sum_over_ranks(list(sums.values()))
    return {k: v / max(1, len(index)) for k, v in zip(sums, totals)}


def train_mapping(clips: Sequence[Clip | ClipArrays], variant: str, out_dir: str | os.PathLike[str],
                  preset: str | os.PathLike[str] | dict = "cpu", seed: int = 0, *,
                  span: tuple[float, float] = (0.0, 1.0), resume: bool = True, progress: bool = False,
                  callback: Callable[[dict], None] | None = None, persons: Sequence[str] | None = None,
                  base: str | os.PathLike[str] | None = None, audio_shift: int = 0,
                  **train_overrides: Any) -> Path:
    """Train ``variant`` on ``clips`` (one subject) and write a checkpoint folder; returns it.

    clips: Clip objects (their ``span`` of time is used) or ready ClipArrays blocks.
    preset: a preset name/path or an already-loaded preset dict. ``train_overrides`` replace
    TrainConfig fields (e.g. max_epochs=3). ``callback(record)`` is called after every epoch
    (an exception raised there interrupts training; the state of finished epochs is kept).
    If ``out_dir`` already holds a complete checkpoint of the same data and settings, it is
    returned as is; an interrupted one is resumed (unless ``resume`` is False).

    Canonical coordinates (``studio.models.identity``): with ``persons`` (one label per clip) the
    model is trained on several people, each person's face-shape offset taken out of their
    targets (the multi-speaker prior); with ``base`` (a canonical checkpoint, e.g. the prior)
    training starts from its weights and keeps its PCA, statistics, cheek regression and
    articulation gain (fine-tuning), and the base itself is epoch 0 of early stopping: the result
    is never worse than the base on the validation windows. Both write ``identity.npz``;
    ``audio_shift`` (fine-tuning: the person's timing, ``studio.models.identity.shift_audio``) is
    applied to the clips' audio before training and stored there for inference.

    Under torchrun (inside ``distributed.process_group()``, as the CLI runs it) every rank calls
    this with the same arguments; ``callback`` runs on every rank; every rank returns once rank 0
    has written the checkpoint.
    """
    import torch

    group = distributed.current()
    out = Path(out_dir)
    st = settings_for(variant, preset, **train_overrides)
    prior = _load_base(base, variant) if base is not None else None
    if prior is not None:
        st = dataclasses.replace(st, model=prior.net.cfg)
    tc, lc = st.train, st.loss
    blocks = [c if isinstance(c, ClipArrays) else clip_arrays(c, span) for c in clips]
    if not blocks:
        raise InputError("No clips to train on.", "Pass at least one preprocessed clip folder.")
    canonical = persons is not None or prior is not None
    offsets: dict[str, np.ndarray] = {}
    if canonical:
        if getattr(st.model, "conditioning", "paper") != "rigid":
            raise InputError("Multi-person training needs the rigid conditioning.", "Train the 'ours' variant.")
        blocks, offsets = to_canonical(blocks, persons)
        if audio_shift:
            from studio.models.identity import shift_audio

            blocks = [dataclasses.replace(b, audio=shift_audio(b.audio, audio_shift)) for b in blocks]
    fp = _fingerprint(variant, st, seed, blocks)
    if prior is not None:
        fp = hashlib.sha256((fp + str(prior.config.get("fingerprint"))).encode()).hexdigest()[:16]
    state_dir = out / STATE_DIR
    done = _read_json(out / ck.CONFIG_NAME)
    if resume and done and done.get("fingerprint") == fp:
        log.info("%s already holds this trained model; nothing to do", out)
        return out
    data = prepare(blocks, tc, getattr(st.model, "conditioning", "paper"), st.model.audio_norm, base=prior)

    torch.manual_seed(seed)
    net = ck.model_from_config(variant, to_dict(st.model))
    if prior is not None:
        net.load_state_dict(prior.net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    info = _load_state(state_dir, net, opt) if resume else None
    if info is not None and info.get("fingerprint") != fp:
        log.warning("ignoring the training state in %s: it belongs to other data or settings", state_dir)
        torch.manual_seed(seed)
        net = ck.model_from_config(variant, to_dict(st.model))
        if prior is not None:
            net.load_state_dict(prior.net.state_dict())
        opt = torch.optim.Adam(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        info = None
    group.barrier()  # every rank has read the state before rank 0 replaces it
    if info is None:
        info = {"fingerprint": fp, "state_epoch": 0, "best_val": None, "best_epoch": 0, "bad_epochs": 0,
                "elapsed": 0.0, "history": [], "stopped": None}
        if group.is_main:
            shutil.rmtree(state_dir, ignore_errors=True)
            (out / ck.CONFIG_NAME).unlink(missing_ok=True)
            out.mkdir(parents=True, exist_ok=True)
            data.pca.save(out)
            data.norm.save(out / ck.NORM_NAME)
            if data.rigid is not None:
                data.rigid.save(out / cond.CONDITIONING_NAME)
            ck.save_weights(net, out / ck.WEIGHTS_NAME)
        if prior is not None and len(data.val_index):  # epoch 0: the base as it is
            mouth_only = bool(net.mouth_only)
            base_val = evaluate_windows(net, data, data.val_index, lc, tc, _pca_tensors(data),
                                        layout.TALK_MOUTH if mouth_only else slice(None), group)[_select_key(tc, lc)]
            info.update(best_val=base_val, base_val=base_val)
    else:
        log.info("resuming %s from epoch %d", out, info["state_epoch"])

    mouth_only = bool(net.mouth_only)
    dims = layout.TALK_MOUTH if mouth_only else slice(None)
    pca_t = _pca_tensors(data)
    model = group.wrap(net)  # DDP in a process group (gradients averaged over the ranks), else ``net``
    log.info("training %s on %d frames (%d windows), validating on %d frames", variant,
             data.train_frames, len(data.train_index), data.val_frames)

    from tqdm import tqdm

    bar = tqdm(total=tc.max_epochs, initial=info["state_epoch"], desc=f"train {variant}", unit="epoch",
               disable=not (progress and group.is_main), leave=False)
    with _deterministic(tc.threads):
        while info["stopped"] is None:
            epoch = info["state_epoch"] + 1
            t_start, c_start = time.perf_counter(), time.process_time()
            rng = np.random.default_rng([seed, epoch])  # the same draws on every rank
            torch.manual_seed(group.rank_seed(int(rng.integers(2**62))))  # dropout
            perm = rng.permutation(len(data.train_index))
            order = data.train_index[perm]
            cond_order = order
            if data.swap_candidates is not None:
                u, partner = rng.random(len(perm)), perm.copy()
                for k, r in enumerate(perm):
                    cands = data.swap_candidates[r]
                    if len(cands):
                        partner[k] = cands[int(u[k] * len(cands))]
                swap = (rng.random(len(perm)) < tc.swap_conditioning) & (partner != perm)
                cond_order = np.where(swap[:, None], data.train_index[partner], order)
            model.train()
            tr_sum, tr_n = 0.0, 0
            for i in range(0, len(order), tc.batch_size):
                sub = order[i:i + tc.batch_size]  # the global batch; this rank trains on its rows
                rows, share = group.shard(len(sub))
                batch = make_batch(data, sub[rows], tc.window, cond_order[i:i + tc.batch_size][rows])
                if tc.audio_warp > 0 or tc.freq_masks > 0:
                    batch["audio"] = torch.from_numpy(augment_audio(batch["audio"].numpy().copy(), tc, rng,
                                                                    rows, len(sub)))
                coef, talk = forward_physical(model, batch, pca_t)
                loss = mapping_loss(coef, talk, batch["coef"], batch["talk"], lc, dims)["all"]
                opt.zero_grad(set_to_none=True)
                # DDP averages over the ranks: weighted by its share, the gradient of the global mean
                (loss * (share * group.world_size)).backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
                opt.step()
                tr_sum += loss.item() * share * len(sub)
                tr_n += len(sub)
            (tr_sum,) = group.sum_over_ranks([tr_sum])
            val = evaluate_windows(net, data, data.val_index, lc, tc, pca_t, dims, group) if len(data.val_index) else {}
            val_loss = val.get(_select_key(tc, lc), tr_sum / tr_n)
            best = info["best_val"]
            improved = best is None or val_loss < best * (1.0 - tc.min_delta)
            if improved:  # the same decision on every rank: val_loss is the same everywhere
                info.update(best_val=val_loss, best_epoch=epoch, bad_epochs=0)
                if group.is_main:
                    ck.save_weights(net, out / ck.WEIGHTS_NAME)
            else:
                info["bad_epochs"] += 1
            info["elapsed"] += time.perf_counter() - t_start
            info["cpu"] = info.get("cpu", 0.0) + time.process_time() - c_start
            record = {"epoch": epoch, "train_loss": tr_sum / tr_n, "val_loss": val_loss,
                      **{f"val_{k}": v for k, v in val.items() if k != "all"},
                      "best": improved, "seconds": info["elapsed"]}
            info["history"].append(record)
            info["state_epoch"] = epoch
            if info["bad_epochs"] >= tc.patience:
                info["stopped"] = "early_stopping"
            elif epoch >= tc.max_epochs:
                info["stopped"] = "max_epochs"
            if group.is_main:
                _save_state(state_dir, net, opt, info)
            group.barrier()  # the state on disk is the epoch every rank has finished
            bar.update(1)
            bar.set_postfix(train=f"{record['train_loss']:.4g}", val=f"{val_loss:.4g}")
            if callback is not None:
                callback(record)
    bar.close()
    if not group.is_main:  # rank 0 calibrates and writes the checkpoint
        group.barrier()
        return out
    if prior is not None and (info["best_epoch"] == 0 or not len(data.val_index)):
        if prior.gain is not None:  # the prior itself won: its own calibration
            prior.gain.save(out / cond.CALIBRATION_NAME)
            info["gain"] = prior.gain.gain
    elif data.geom_pose is not None and (tc.calibrate or prior is not None) and len(data.val_index):
        # a fine-tuned network articulates differently from the prior: calibrate it on the
        # person's held-out footage
        gain = calibrate(out, net, data, tc, pca_t)
        gain.save(out / cond.CALIBRATION_NAME)
        info["gain"] = gain.gain
    if canonical:
        write_identity(out, blocks, offsets, data.pca, audio_shift)
    _write_log(out, info["history"])
    config = {
        "format": ck.FORMAT, "version": ck.VERSION, "variant": variant, "seed": seed,
        "fingerprint": fp, "preset": preset if not isinstance(preset, dict) else "custom",
        "model": to_dict(st.model), "loss": to_dict(lc), "train": to_dict(tc),
        "data": {"clips": [b.name for b in blocks], "span": list(span), "fps": data.fps,
                 "train_frames": data.train_frames, "val_frames": data.val_frames,
                 "train_windows": int(len(data.train_index))},
        "result": {"epochs": info["state_epoch"], "best_epoch": info["best_epoch"],
                   "best_val_loss": info["best_val"], "train_seconds": round(info["elapsed"], 3),
                   "train_cpu_seconds": round(info.get("cpu", 0.0), 3),
                   "stopped": info["stopped"], "articulation_gain": info.get("gain", 1.0),
                   **({"base_val_loss": info.get("base_val")} if prior is not None else {})},
    }
    if canonical:
        config["identity"] = {"persons": sorted(offsets), "base": None if base is None else str(base),
                              "base_fingerprint": None if prior is None else prior.config.get("fingerprint"),
                              "audio_shift": int(audio_shift)}
    write_json_atomic(out / ck.CONFIG_NAME, config)
    shutil.rmtree(state_dir, ignore_errors=True)
    group.barrier()
    log.info("%s: best epoch %d of %d, val loss %.4g, %.1f s", out, info["best_epoch"], info["state_epoch"],
             info["best_val"], info["elapsed"])
    return out


def _select_key(tc: TrainConfig, lc: LossConfig) -> str:
    if tc.select_on == "open" and lc.lambda_open <= 0:
        raise InputError("select_on = 'open' needs lambda_open > 0.", "Set mapping_loss.lambda_open or select on 'all'.")
    return tc.select_on


def _pca_tensors(data: PreparedData) -> tuple:
    import torch

    n = data.norm
    return tuple(torch.from_numpy(np.asarray(x, np.float32)) for x in
                 (n.coef_std, n.talk_mean, n.talk_std, data.pca.mean, data.pca.components))


def _load_base(base: str | os.PathLike[str], variant: str) -> "ck.MappingModel":
    prior = ck.MappingModel.load(base)
    if prior.identity is None or prior.rigid is None or np.any(prior.identity.delta != 0):
        raise InputError(f"{base} is not a multi-speaker prior; fine-tuning starts from one.",
                         "Use the prior shipped in presets/prior (or one trained with `studio train-prior`).")
    if prior.variant != variant:
        raise InputError(f"{base} is a {prior.variant!r} model, not {variant!r}.", "Fine-tune the prior's own variant.")
    return prior


# -- canonical (identity-free) coordinates ---------------------------------------------------------
def to_canonical(blocks: Sequence[ClipArrays], persons: Sequence[str] | None) -> tuple[list, dict]:
    """Take each person's face-shape offset (``studio.models.identity``) out of their clips' targets.

    persons: one label per block (None: all one person). Returns (blocks, {label: delta (58,)}).
    """
    from studio.models import identity

    labels = [""] * len(blocks) if persons is None else [str(p) for p in persons]
    if len(labels) != len(blocks):
        raise InputError(f"{len(labels)} person labels for {len(blocks)} clips.", "Give one label per clip.")
    poses = [cond.smooth_pose(b.pose, b.fps) for b in blocks]
    offsets = {}
    for lab in dict.fromkeys(labels):
        ks = [k for k, other in enumerate(labels) if other == lab]
        offsets[lab] = identity.measure([blocks[k].talk for k in ks], [poses[k] for k in ks],
                                        [blocks[k].valid for k in ks])
    out = []
    for b, lab, pose in zip(blocks, labels, poses):
        shift = identity.posed(offsets[lab], pose)
        out.append(dataclasses.replace(b, talk=(b.talk - shift).astype(np.float32),
                                       gt_talk=None if b.gt_talk is None else (b.gt_talk - shift).astype(np.float32)))
    return out, offsets


def write_identity(out: Path, blocks: Sequence[ClipArrays], offsets: dict[str, np.ndarray], pca: MouthPCA,
                   audio_shift: int = 0) -> None:
    """identity.npz (the one person's offset; zero for a multi-person model) and, for one person,
    the mouth PCA moved onto their mouth (same basis; its mean shifted by their average offset,
    as seen in their poses), so that coefficients and sliders work in the person's coordinates."""
    from studio.models.identity import IdentityOffset, posed

    if len(offsets) != 1:
        IdentityOffset.zero().save(out / ck.IDENTITY_NAME)
        return
    delta = next(iter(offsets.values()))
    IdentityOffset(delta, int(audio_shift)).save(out / ck.IDENTITY_NAME)
    shift = np.concatenate([posed(delta, cond.smooth_pose(b.pose, b.fps))[b.valid] for b in blocks])
    mean = (pca.mean + shift[:, layout.TALK_MOUTH].mean(axis=0)).astype(np.float32)
    dataclasses.replace(pca, mean=mean).save(out)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):  # ValueError: bad JSON, or not UTF-8 at all
        return None


def _write_log(out: Path, history: list[dict]) -> None:
    import pandas as pd

    write_json_atomic(out / TRAIN_LOG_JSON, history)
    with atomic_path(out / "train_log.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def load_clips(paths: Sequence[str | os.PathLike[str]]) -> list[Clip]:
    """Load clip folders (CheckpointError names the one that is missing or broken)."""
    if not paths:
        raise InputError("No clip folders given.", "Pass folders made by `studio preprocess` or `studio synth`.")
    return [Clip.load(p) for p in paths]


# -- CLI -------------------------------------------------------------------------------------
def add_cli_arguments(parser) -> None:
    parser.add_argument("clips", nargs="+", help="clip folders (preprocess / synth output) of one subject")
    parser.add_argument("--variant", default="ours", choices=VARIANTS)
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--preset", default="cpu", help="preset name (cpu, paper) or .toml path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--span", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                        help="train on this fraction of each clip's time, e.g. 0 0.8 (default: all)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the preset's max_epochs")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a training state exists")


def cli(args) -> int:
    clips = load_clips(args.clips)
    with distributed.process_group() as group:  # under torchrun: data-parallel over its processes
        out = train_mapping(clips, args.variant, args.out, args.preset, args.seed, span=tuple(args.span),
                            resume=not args.no_resume, progress=True, max_epochs=args.max_epochs)
    if group.is_main:
        print(json.dumps(json.loads((out / ck.CONFIG_NAME).read_text())["result"] | {"checkpoint": str(out)}))
    return 0
