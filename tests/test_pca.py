import json

import numpy as np
import pytest

from studio.errors import CheckpointError, InputError
from studio.face.pca import JSON_NAME, NPZ_NAME, MouthPCA


def low_rank_mouths(n=300, rank=5, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, 40))
    coefs = rng.normal(size=(n, rank)) * np.linspace(2, 0.5, rank)
    return (coefs @ basis + rng.normal(size=40)).astype(np.float32)


def test_fit_transform_inverse_and_statistics():
    x = low_rank_mouths()
    pca = MouthPCA.fit(x)
    assert pca.components.shape == (13, 40) and pca.mean.shape == (40,)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(13), atol=1e-5)
    c = pca.transform(x)
    assert c.shape == (300, 13)
    # data of rank 5: 13 components reconstruct it exactly and the tail carries no variance
    np.testing.assert_allclose(pca.inverse(c), x, atol=1e-3)
    assert pca.explained_variance_ratio[:5].sum() > 0.999
    assert np.all(np.diff(pca.explained_variance) <= 1e-6)
    np.testing.assert_allclose(pca.coef_std[:5], c[:, :5].std(0), rtol=1e-4)
    assert pca.percentiles.shape == (len(pca.percentile_levels), 13)
    mid = list(pca.percentile_levels).index(50.0)
    np.testing.assert_allclose(pca.percentiles[mid], np.median(c, 0), atol=1e-4)
    # leading batch dimensions pass through
    assert pca.transform(x.reshape(3, 100, 40)).shape == (3, 100, 13)


def test_save_load_roundtrip(tmp_path):
    pca = MouthPCA.fit(low_rank_mouths())
    pca.save(tmp_path)
    meta = json.loads((tmp_path / JSON_NAME).read_text())
    assert meta["n_components"] == 13 and len(meta["coef_std"]) == 13
    back = MouthPCA.load(tmp_path)
    for name in ("mean", "components", "explained_variance_ratio", "coef_std", "percentiles"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pca, name))
    assert back.n_samples == 300


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError):
        MouthPCA.load(tmp_path)
    MouthPCA.fit(low_rank_mouths()).save(tmp_path)
    (tmp_path / NPZ_NAME).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError):
        MouthPCA.load(tmp_path)
    # a pickled object array is refused, never unpickled
    np.savez(tmp_path / NPZ_NAME, mean=np.array([object()], dtype=object))
    with pytest.raises(CheckpointError):
        MouthPCA.load(tmp_path)


def test_fit_rejects_bad_input():
    with pytest.raises(InputError):
        MouthPCA.fit(np.zeros((100, 38)))
    with pytest.raises(InputError):
        MouthPCA.fit(np.zeros((10, 40)))
