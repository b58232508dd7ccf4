"""Mouth PCA: 13 coefficients of the normalized mouth points (the target of the cascade's G1).

Fitted with scikit-learn's PCA on ``(N, 40)`` normalized mouth vectors (20 mouth points, nose-
centred and divided by the face scale, rotation kept; see ``studio.face.layout.mouth_vector``).
Besides the basis it keeps statistics of the training coefficients that other parts use:
``coef_std`` (slider ranges, G1 output scale) and ``percentiles`` (robust slider limits and
retrieval distances).

Saved as two files in a folder: ``mouth_pca.npz`` (arrays, loaded with ``allow_pickle=False``)
and ``mouth_pca.json`` (dimensions and a readable copy of the small statistics).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.errors import CheckpointError, InputError
from studio.face.layout import MOUTH_DIM, PCA_DIM
from studio.fsutil import atomic_path, write_json_atomic

NPZ_NAME = "mouth_pca.npz"
JSON_NAME = "mouth_pca.json"
PERCENTILES = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
_FORMAT = "lip-sync-studio/mouth-pca"
_VERSION = 1


@dataclass(frozen=True, eq=False)
class MouthPCA:
    """A fitted mouth PCA. K = number of components (13 in the paper), D = 40.

    mean                 (D,)    mean normalized mouth vector
    components           (K, D)  orthonormal rows, ordered by explained variance
    explained_variance   (K,)    variance of each coefficient over the training vectors
    explained_variance_ratio (K,)
    coef_std             (K,)    standard deviation of each training coefficient
    percentiles          (P, K)  coefficient percentiles at ``percentile_levels`` (P,)
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    coef_std: np.ndarray
    percentiles: np.ndarray
    percentile_levels: np.ndarray
    n_samples: int

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, mouth: np.ndarray, n_components: int = PCA_DIM) -> "MouthPCA":
        """Fit on (N, 40) normalized mouth vectors; N must exceed ``n_components``."""
        from sklearn.decomposition import PCA

        x = np.asarray(mouth, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != MOUTH_DIM:
            raise InputError(f"Mouth PCA needs (N, {MOUTH_DIM}) vectors, got shape {x.shape}.",
                             "Pass layout.mouth_vector(normalized landmarks) flattened over frames.")
        if x.shape[0] <= n_components:
            raise InputError(f"Mouth PCA needs more than {n_components} frames, got {x.shape[0]}.",
                             "Use a longer clip (a few seconds at least).")
        if not np.isfinite(x).all():
            raise InputError("Mouth vectors contain NaN or infinite values.", "Re-run preprocessing.")
        pca = PCA(n_components=n_components, svd_solver="full").fit(x)
        coefs = (x - pca.mean_) @ pca.components_.T
        levels = np.asarray(PERCENTILES, np.float64)
        return cls(
            mean=pca.mean_.astype(np.float32),
            components=pca.components_.astype(np.float32),
            explained_variance=pca.explained_variance_.astype(np.float32),
            explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float32),
            coef_std=np.maximum(coefs.std(axis=0), 1e-8).astype(np.float32),
            percentiles=np.percentile(coefs, levels, axis=0).astype(np.float32),
            percentile_levels=levels.astype(np.float32),
            n_samples=int(x.shape[0]),
        )

    def transform(self, mouth: np.ndarray) -> np.ndarray:
        """(..., 40) normalized mouth vectors -> (..., K) coefficients (float32)."""
        m = np.asarray(mouth, dtype=np.float32)
        return ((m - self.mean) @ self.components.T).astype(np.float32)

    def inverse(self, coefs: np.ndarray) -> np.ndarray:
        """(..., K) coefficients -> (..., 40) normalized mouth vectors (float32)."""
        c = np.asarray(coefs, dtype=np.float32)
        return (c @ self.components + self.mean).astype(np.float32)

    def project(self, mouth: np.ndarray) -> np.ndarray:
        """(..., 40) -> (..., 40): the closest mouth in the PCA subspace."""
        return self.inverse(self.transform(mouth))

    # -- I/O -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write mouth_pca.npz and mouth_pca.json into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / NPZ_NAME) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mean=self.mean, components=self.components,
                         explained_variance=self.explained_variance,
                         explained_variance_ratio=self.explained_variance_ratio,
                         coef_std=self.coef_std, percentiles=self.percentiles,
                         percentile_levels=self.percentile_levels)
        write_json_atomic(directory / JSON_NAME, {
            "format": _FORMAT, "version": _VERSION, "n_components": self.n_components,
            "dim": int(self.components.shape[1]), "n_samples": self.n_samples,
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
            "coef_std": self.coef_std.tolist(),
            "percentile_levels": self.percentile_levels.tolist(),
        })
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "MouthPCA":
        """Read a folder written by :meth:`save`; CheckpointError if missing or inconsistent."""
        directory = Path(directory)
        hint = "Re-train the mapping model (or re-fit the subject's PCA)."
        try:
            meta = json.loads((directory / JSON_NAME).read_text())
            with np.load(directory / NPZ_NAME, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError as exc:
            raise CheckpointError(f"Mouth PCA file missing: {exc.filename}.", hint) from None
        except Exception as exc:  # json, zip and pickle errors all mean a corrupt file
            raise CheckpointError(f"Mouth PCA in {directory} is unreadable: {exc}.", hint) from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise CheckpointError(f"{directory / JSON_NAME} is not a mouth PCA of version {_VERSION}.", hint)
        need = ("mean", "components", "explained_variance", "explained_variance_ratio", "coef_std",
                "percentiles", "percentile_levels")
        if any(k not in arrays for k in need):
            raise CheckpointError(f"{directory / NPZ_NAME} lacks {[k for k in need if k not in arrays]}.", hint)
        k, d = int(meta.get("n_components", -1)), int(meta.get("dim", -1))
        comp = arrays["components"]
        shapes_ok = (comp.shape == (k, d) and arrays["mean"].shape == (d,)
                     and all(arrays[n].shape == (k,) for n in need[2:5])
                     and arrays["percentiles"].shape == (len(arrays["percentile_levels"]), k))
        if not shapes_ok or not all(np.isfinite(arrays[n]).all() for n in need):
            raise CheckpointError(f"Mouth PCA in {directory} has inconsistent or non-finite arrays.", hint)
        return cls(**{n: arrays[n].astype(np.float32) for n in need}, n_samples=int(meta.get("n_samples", 0)))
