"""The cascaded, pose-adaptive temporal convolutional network (the paper's Fig. 2).

Shapes: B = batch, T = video frames, A = 4T audio feature frames (4 per video frame, see
``studio.audio``), C = ``CascadeConfig.channels``. Tensors enter and leave time-major
(B, T, D); inside, the convolutions run channel-major (B, C, T).

Inputs are standardized per subject (zero mean, unit variance per dimension, the statistics live
in the checkpoint), and so are the outputs: G1 gives PCA mouth coefficients divided by their
training standard deviation, G2 gives the 58 talking coordinates minus their training mean,
divided by their standard deviation. ``studio.models.checkpoint.MappingModel`` undoes both.

Architecture
------------
- Audio front end: audio is brought to the video rate INSIDE the network by two stride-2
  convolutions (kernel 3, symmetric padding 1, ReLU): (B, 26, 4T) -> (B, C, 2T) -> (B, C, T).
  Output frame t sees audio frames 4t-3 .. 4t+3.
- G1: concat(audio features (C), pose (3) if ``pose_in_g1``) -> 1x1 conv -> TCN -> 1x1 conv -> 13.
- G2: concat(G1 output (13), pose (3) if ``pose_in_g2``, cheek (16) if ``use_cheek``) -> 1x1
  conv -> TCN -> 1x1 conv -> 58.
- TCN = one TemporalBlock per dilation in ``dilations`` ([1, 2, 4, 8] in the paper): two
  non-causal dilated convolutions (kernel 3, symmetric padding so the length is kept), each
  followed by a per-frame LayerNorm over channels, ReLU and dropout, plus a residual connection.
  The normalization uses no batch or time statistics, so it behaves the same at batch size 1,
  on a 64-frame window and on a whole 5-minute sequence, and an output frame depends only on
  inputs inside its receptive field.

Receptive field: each TCN reaches (kernel-1) * sum(dilations) = 30 frames to each side, so the
cascade's output frame t depends on frames t-60 .. t+60 of audio and of the pose given to G1,
and on frames t-30 .. t+30 of the cheek and the pose given to G2 (see :func:`receptive_field`).

Inference speed: for one sequence in eval mode without autograd, ``forward`` switches to a
time-major path (``infer`` methods): each convolution is k matrix products (one per tap) on row
slices of the padded (L, C) activations, each norm one fused ``layer_norm``, ReLU and residual
in place. On this 2-core CPU that is several times faster than ``F.conv1d``'s dilated kernels
for one long sequence. Training (autograd on, batches of short windows) uses ``F.conv1d``. Both
compute the same function (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from studio.audio import FEATURES_PER_VIDEO_FRAME, N_FILTERS
from studio.face.layout import CHEEK_DIM, PCA_DIM, TALK_DIM

POSE_DIM = 3

# variant name -> the CascadeConfig fields it fixes (the paper's ablations, plus the paper-literal
# conditioning of "ours"; see studio.models.conditioning)
VARIANT_FLAGS: dict[str, dict[str, object]] = {
    "ours": {"pose_in_g1": True, "pose_in_g2": True, "use_cheek": True},
    "ours-paper": {"pose_in_g1": True, "pose_in_g2": True, "use_cheek": True, "conditioning": "paper"},
    "no-pose": {"pose_in_g1": False, "pose_in_g2": False, "use_cheek": True},
    "g1-pose": {"pose_in_g1": True, "pose_in_g2": False, "use_cheek": True},
    "g2-pose": {"pose_in_g1": False, "pose_in_g2": True, "use_cheek": True},
    "no-cheek": {"pose_in_g1": True, "pose_in_g2": True, "use_cheek": False},
}


@dataclass(frozen=True)
class CascadeConfig:
    """Shape and switches of a CascadedTCN. The variant flags select the paper's ablations."""

    pose_in_g1: bool = True
    pose_in_g2: bool = True
    use_cheek: bool = True
    channels: int = 64
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    kernel_size: int = 3
    dropout: float = 0.1
    audio_dim: int = N_FILTERS
    pose_dim: int = POSE_DIM
    cheek_dim: int = CHEEK_DIM
    pca_dim: int = PCA_DIM
    talk_dim: int = TALK_DIM
    conditioning: str = "rigid"  # studio.models.conditioning: "rigid" (leak-free) or "paper"
    audio_norm: str = "utterance"  # per-sequence standardization of the audio features, or "none"

    def __post_init__(self) -> None:
        from studio.models.conditioning import AUDIO_NORMS, CONDITIONINGS

        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm must be one of {AUDIO_NORMS}, got {self.audio_norm!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for symmetric padding, got {self.kernel_size}")
        if self.channels < 1 or not self.dilations or min(self.dilations) < 1:
            raise ValueError("channels and dilations must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def for_variant(cls, variant: str, **kw) -> "CascadeConfig":
        """The config of a named variant (ours, ours-paper, no-pose, g1-pose, g2-pose, no-cheek)."""
        if variant not in VARIANT_FLAGS:
            raise ValueError(f"unknown cascade variant {variant!r}; known: {sorted(VARIANT_FLAGS)}")
        return cls(**{**kw, **VARIANT_FLAGS[variant]})


def receptive_field(cfg: CascadeConfig) -> dict[str, int]:
    """How many video frames each input reaches to EACH side of an output frame (symmetric).

    ``audio`` is in audio feature frames (4 per video frame); the rest in video frames.
    """
    tcn = (cfg.kernel_size - 1) * sum(cfg.dilations)
    return {"audio": FEATURES_PER_VIDEO_FRAME * 2 * tcn + 3, "pose_g1": 2 * tcn, "g2_inputs": tcn,
            "frames": 2 * tcn}


class SameConv1d(nn.Module):
    """Conv1d with symmetric zero padding: length L -> ceil(L / stride). Weight (Cout, Cin, k)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1, stride: int = 1) -> None:
        super().__init__()
        assert kernel_size % 2 == 1, f"kernel_size must be odd, got {kernel_size}"
        self.kernel_size, self.dilation, self.stride = kernel_size, dilation, stride
        self.padding = dilation * (kernel_size - 1) // 2
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel_size))
        self.bias = nn.Parameter(torch.empty(cout))
        # PyTorch's Conv1d initialization
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(cin * kernel_size)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Cin, L) -> (B, Cout, ceil(L / stride))."""
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major inference: x (L, Cin) -> (ceil(L / stride), Cout), the same function.

        One matrix product per kernel tap on row slices of the padded input (no im2col copy).
        """
        k, d, s, p = self.kernel_size, self.dilation, self.stride, self.padding
        if s == 1:  # no padded copy: the off-centre taps update the rows they reach
            n, c = x.shape[0], k // 2
            out = torch.addmm(self.bias, x, self.weight[:, :, c].t())
            for j in range(k):
                off = (j - c) * d  # output row t reads input row t + off
                if j == c or abs(off) >= n:
                    continue
                dst, src = (out[-off:], x[:n + off]) if off < 0 else (out[:n - off], x[off:])
                dst.addmm_(src, self.weight[:, :, j].t())
            return out
        n_out = (x.shape[0] + 2 * p - d * (k - 1) - 1) // s + 1
        xp = F.pad(x, (0, 0, p, p)) if p else x
        span = s * (n_out - 1) + 1
        out = torch.addmm(self.bias, xp[0:span:s], self.weight[:, :, 0].t())
        for j in range(1, k):
            out.addmm_(xp[j * d: j * d + span: s], self.weight[:, :, j].t())
        return out


class FrameNorm(nn.Module):
    """LayerNorm over the channels of each frame of a (B, C, L) tensor (no batch/time statistics)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + self.eps) * self.weight[:, None] + self.bias[:, None]

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major (L, C): one fused layer_norm."""
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class TemporalBlock(nn.Module):
    """Two non-causal dilated convolutions with norm, ReLU and dropout, plus a residual path."""

    def __init__(self, channels: int, dilation: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = SameConv1d(channels, channels, kernel_size, dilation)
        self.norm1 = FrameNorm(channels)
        self.conv2 = SameConv1d(channels, channels, kernel_size, dilation)
        self.norm2 = FrameNorm(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L)."""
        h = self.drop(F.relu(self.norm1(self.conv1(x))))
        h = self.drop(F.relu(self.norm2(self.conv2(h))))
        return F.relu(x + h)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major (L, C) -> (L, C), eval mode (dropout is the identity)."""
        h = self.norm1.infer(self.conv1.infer(x)).relu_()
        h = self.norm2.infer(self.conv2.infer(h)).relu_()
        return h.add_(x).relu_()


class TCN(nn.Module):
    """1x1 input projection -> TemporalBlocks (one per dilation) -> 1x1 output projection."""

    def __init__(self, cin: int, channels: int, cout: int, dilations: tuple[int, ...], kernel_size: int,
                 dropout: float) -> None:
        super().__init__()
        self.inp = SameConv1d(cin, channels)
        self.blocks = nn.Sequential(*[TemporalBlock(channels, d, kernel_size, dropout) for d in dilations])
        self.out = SameConv1d(channels, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, L) -> (B, Cout, L)."""
        return self.out(self.blocks(self.inp(x)))

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major (L, Cin) -> (L, Cout)."""
        h = self.inp.infer(x)
        for block in self.blocks:
            h = block.infer(h)
        return self.out.infer(h)


class AudioFrontEnd(nn.Module):
    """(B, 26, 4T) -> (B, C, T): two stride-2 convolutions (kernel 3, ReLU)."""

    def __init__(self, audio_dim: int, channels: int) -> None:
        super().__init__()
        self.conv1 = SameConv1d(audio_dim, channels, 3, stride=2)
        self.conv2 = SameConv1d(channels, channels, 3, stride=2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(audio))))

    def infer(self, audio: torch.Tensor) -> torch.Tensor:
        """Time-major (4T, 26) -> (T, C)."""
        return self.conv2.infer(self.conv1.infer(audio).relu_()).relu_()


def check_inputs(audio: torch.Tensor, pose: torch.Tensor, cheek: torch.Tensor | None) -> int:
    """Assert the (B, 4T, 26) / (B, T, 3) / (B, T, 16) contract; return T."""
    b, t = pose.shape[0], pose.shape[1]
    assert audio.shape[:2] == (b, FEATURES_PER_VIDEO_FRAME * t), (
        f"audio must be (B, 4T, D) for pose (B, T, 3): got audio {tuple(audio.shape)}, pose {tuple(pose.shape)}")
    assert cheek is None or cheek.shape[:2] == (b, t), (
        f"cheek must be (B, T, 16): got {tuple(cheek.shape)} for pose {tuple(pose.shape)}")
    return t


class CascadedTCN(nn.Module):
    """G1 (audio + pose -> PCA mouth) then G2 (G1 + pose + cheek -> 29 talking points)."""

    mouth_only = False

    def __init__(self, cfg: CascadeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.front = AudioFrontEnd(cfg.audio_dim, c)
        g1_in = c + (cfg.pose_dim if cfg.pose_in_g1 else 0)
        g2_in = cfg.pca_dim + (cfg.pose_dim if cfg.pose_in_g2 else 0) + (cfg.cheek_dim if cfg.use_cheek else 0)
        self.g1 = TCN(g1_in, c, cfg.pca_dim, cfg.dilations, cfg.kernel_size, cfg.dropout)
        self.g2 = TCN(g2_in, c, cfg.talk_dim, cfg.dilations, cfg.kernel_size, cfg.dropout)

    def forward(self, audio: torch.Tensor, pose: torch.Tensor,
                cheek: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, 4T, 26), pose (B, T, 3), cheek (B, T, 16), all standardized ->
        (coefs (B, T, 13), talk (B, T, 58)), both standardized."""
        t = check_inputs(audio, pose, cheek)
        if audio.shape[0] == 1 and not self.training and not torch.is_grad_enabled():
            return self._infer(audio[0], pose[0], cheek[0])
        a = self.front(audio.transpose(1, 2))
        assert a.shape[-1] == t, f"front end gave {a.shape[-1]} frames for T={t}"
        p = pose.transpose(1, 2)
        coefs = self.g1(torch.cat([a, p], dim=1) if self.cfg.pose_in_g1 else a)
        parts = [coefs]
        if self.cfg.pose_in_g2:
            parts.append(p)
        if self.cfg.use_cheek:
            parts.append(cheek.transpose(1, 2))
        talk = self.g2(torch.cat(parts, dim=1))
        return coefs.transpose(1, 2), talk.transpose(1, 2)

    def _infer(self, audio: torch.Tensor, pose: torch.Tensor,
               cheek: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same function for one sequence, time-major, without autograd (fast path)."""
        a = self.front.infer(audio)
        coefs = self.g1.infer(torch.cat([a, pose], dim=1) if self.cfg.pose_in_g1 else a)
        parts = [coefs]
        if self.cfg.pose_in_g2:
            parts.append(pose)
        if self.cfg.use_cheek:
            parts.append(cheek)
        talk = self.g2.infer(torch.cat(parts, dim=1) if len(parts) > 1 else coefs)
        return coefs[None], talk[None]
