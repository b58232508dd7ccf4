"""Audio -> landmark mapping networks: the cascaded TCN and its variants (tcn.py) and the RNN
baselines (baselines.py). ``build_model(model_config(variant, spec))`` makes any of them by name: the
cascade (``ours``), the paper's ablations of it, ``ours-paper`` (the paper-literal conditioning,
see ``conditioning.py``) and the two RNN baselines.

Importing this package imports nothing heavy; torch is loaded with the submodules.
"""

from __future__ import annotations

from typing import Any

CASCADE_VARIANTS = ("ours", "ours-paper", "no-pose", "g1-pose", "g2-pose", "no-cheek")
BASELINE_VARIANTS = ("lstm", "bilstm")
VARIANTS = CASCADE_VARIANTS + BASELINE_VARIANTS
VARIANT_LABELS = {
    "ours": "Ours", "ours-paper": "Ours (paper cond.)", "no-pose": "No pose", "g1-pose": "G1 pose",
    "g2-pose": "G2 pose", "no-cheek": "No cheek", "lstm": "LSTM", "bilstm": "BiLSTM",
}


def model_config(variant: str, settings: dict[str, Any] | None = None):
    """The frozen config of ``variant`` with ``settings`` (a preset section) applied.

    Cascade variants take CascadeConfig fields (channels, dilations, kernel_size, dropout);
    baselines take BaselineConfig fields (hidden, layers, delay, dropout).
    """
    from studio.config import from_dict

    settings = dict(settings or {})
    if variant in CASCADE_VARIANTS:
        from studio.models.tcn import VARIANT_FLAGS, CascadeConfig

        settings.update(VARIANT_FLAGS[variant])
        return from_dict(CascadeConfig, settings, where=f"model settings of {variant}")
    if variant in BASELINE_VARIANTS:
        from studio.models.baselines import BaselineConfig

        settings["kind"] = variant
        return from_dict(BaselineConfig, settings, where=f"model settings of {variant}")
    from studio.errors import InputError

    raise InputError(f"Unknown variant {variant!r}.", f"Use one of: {', '.join(VARIANTS)}.")


def build_model(cfg):
    """A fresh network for a CascadeConfig or BaselineConfig."""
    from studio.models.baselines import BaselineConfig, RNNBaseline
    from studio.models.tcn import CascadedTCN

    return RNNBaseline(cfg) if isinstance(cfg, BaselineConfig) else CascadedTCN(cfg)
