import json

import numpy as np
import pytest

from studio.data.clip import Clip, ClipMeta
from studio.errors import CheckpointError


def make_clip(t=10):
    rng = np.random.default_rng(0)
    lm = rng.random((t, 68, 2)).astype(np.float32) * 100
    meta = ClipMeta(source="x.mp4", source_sha256="0" * 64, fps=25.0, frames=t, width=128, height=128,
                    faces_found=t, backend="synthetic", audio_seconds=t / 25)
    return Clip(meta=meta, landmarks=lm, found=np.ones(t, bool), valid=np.ones(t, bool),
                pose=np.zeros((t, 3), np.float32), centre=lm[:, 30], scale=np.full(t, 20, np.float32),
                boxes=np.zeros((t, 4), np.float32), audio=np.zeros((4 * t, 26), np.float32))


def test_roundtrip(tmp_path):
    clip = make_clip()
    clip.save(tmp_path / "c")
    back = Clip.load(tmp_path / "c")
    np.testing.assert_array_equal(back.landmarks, clip.landmarks)
    assert back.meta == clip.meta
    assert back.talk.shape == (10, 58) and back.cheek.shape == (10, 16)
    import pandas as pd

    table = pd.read_csv(tmp_path / "c" / "frames.csv")
    assert len(table) == 10 and "x67" in table and "yaw" in table


def test_overwrite_keeps_old_on_failure(tmp_path):
    clip = make_clip()
    clip.save(tmp_path / "c")
    with pytest.raises(TypeError):
        clip.save(tmp_path / "c", extra_files={"boom": 123})  # not bytes/path: fails mid-write
    assert Clip.load(tmp_path / "c").meta.frames == 10
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_nan_cache_is_rejected(tmp_path):
    clip = make_clip()
    clip.save(tmp_path / "c")
    arrays = dict(np.load(tmp_path / "c" / "arrays.npz"))
    arrays["pose"][3, 1] = np.nan
    np.savez(tmp_path / "c" / "arrays.npz", **arrays)
    with pytest.raises(CheckpointError, match="NaN"):
        Clip.load(tmp_path / "c")


def test_missing_or_partial(tmp_path):
    with pytest.raises(CheckpointError, match="no clip.json"):
        Clip.load(tmp_path)
    make_clip().save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "clip.json").read_text())
    meta["frames"] = 11
    (tmp_path / "c" / "clip.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        Clip.load(tmp_path / "c")
