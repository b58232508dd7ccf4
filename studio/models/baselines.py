"""RNN baselines of the paper's Table 1: they predict the mouth only, from audio only.

- ``lstm``: ObamaNet style (Kumar et al. 2017, after Suwajanakorn et al. 2017): a
  unidirectional LSTM with a time delay of ``delay`` video frames -- the output for frame t is
  read ``delay`` steps later, after the network has heard audio up to frame t + delay (the input
  is padded with ``delay`` zero frames at the end).
- ``bilstm``: Audio2Face style (Tian et al. 2019): a stacked bidirectional LSTM over the whole
  sequence. (Audio2Face adds an attention layer on top; we keep the plain BiLSTM that the paper
  names as its baseline.)

Both read the audio at the video rate by stacking each video frame's 4 audio feature frames
into one 104-D vector, and output the 13 PCA mouth coefficients (standardized, like G1 of the
cascade). The mouth points are the PCA inverse of those coefficients; these models do not see
head pose or cheek points and give no jaw. ``forward`` takes the same arguments as
``CascadedTCN.forward`` so the trainer treats all seven models alike; pose and cheek are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from studio.audio import FEATURES_PER_VIDEO_FRAME, N_FILTERS
from studio.face.layout import PCA_DIM
from studio.models.tcn import check_inputs

BASELINES = ("lstm", "bilstm")


@dataclass(frozen=True)
class BaselineConfig:
    """An RNN baseline. ``delay`` (video frames) applies to the unidirectional LSTM only."""

    kind: str = "lstm"
    hidden: int = 128
    layers: int = 1
    delay: int = 5
    dropout: float = 0.0
    audio_dim: int = N_FILTERS
    pca_dim: int = PCA_DIM
    audio_norm: str = "utterance"  # as CascadeConfig.audio_norm

    def __post_init__(self) -> None:
        if self.audio_norm not in ("utterance", "heq", "none"):
            raise ValueError(f"audio_norm must be 'utterance' or 'none', got {self.audio_norm!r}")
        if self.kind not in BASELINES:
            raise ValueError(f"unknown baseline {self.kind!r}; known: {BASELINES}")
        if self.hidden < 1 or self.layers < 1 or self.delay < 0:
            raise ValueError("hidden and layers must be positive, delay non-negative")

    @property
    def bidirectional(self) -> bool:
        return self.kind == "bilstm"


class RNNBaseline(nn.Module):
    """Audio (B, 4T, 26) -> standardized PCA mouth coefficients (B, T, 13)."""

    mouth_only = True

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rnn = nn.LSTM(cfg.audio_dim * FEATURES_PER_VIDEO_FRAME, cfg.hidden, num_layers=cfg.layers,
                           batch_first=True, bidirectional=cfg.bidirectional,
                           dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), cfg.pca_dim)

    def forward(self, audio: torch.Tensor, pose: torch.Tensor,
                cheek: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """audio (B, 4T, 26) standardized; pose (B, T, 3) only gives T -> (coefs (B, T, 13), None)."""
        t = check_inputs(audio, pose, None)
        x = audio.reshape(audio.shape[0], t, -1)  # the 4 feature frames of each video frame, stacked
        delay = 0 if self.cfg.bidirectional else self.cfg.delay
        if delay:
            x = F.pad(x, (0, 0, 0, delay))
        h, _ = self.rnn(x)
        return self.head(h[:, delay:delay + t]), None
