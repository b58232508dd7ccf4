"""Data-parallel training under torchrun (studio.train.distributed): one global batch split over the
processes, so N processes train the model one process would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.errors import InputError
from studio.models import checkpoint as ck
from studio.train import distributed
from studio.train.distributed import SINGLE, Dist, torchrun_env
from studio.train.mapping import TrainConfig, augment_audio, train_mapping
from test_training import tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parent.parent

# The tiny mapping run of tests/test_training.py, with an odd batch (shards of 4 and 3, and a last
# batch of 82 % 7 = 5 windows: 3 + 2), voice augmentation (random numbers per sample) and no
# dropout: dropout masks are drawn per rank (a whole tensor at a time), so with dropout the curves
# agree in distribution only.
DIST_TOML = """
[mapping_model]
channels = 12
dilations = [1, 2]
dropout = 0.0
[mapping_loss]
lambda_open = 30.0
[mapping_train]
window = 16
stride = 4
batch_size = 7
max_epochs = 4
patience = 10
val_stride = 8
lr = 0.003
audio_warp = 0.1
freq_masks = 2
"""
# Per-epoch agreement of the 2-process loss curve with one process. Not exact: DDP adds the two
# shards' gradients where one process sums one batch, and validation sums are added per rank, so
# float rounding differs (~1e-7 relative per step) and compounds through the optimizer; measured
# 1e-8 .. 1e-6 over these 4 epochs.
RTOL = 1e-4
PRED_ATOL = 1e-2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny clips saved as clip folders, the preset file, and the one-process reference run."""
    root = tmp_path_factory.mktemp("dist")
    preset = root / "dist.toml"
    preset.write_text(DIST_TOML)
    clips = [tiny_clip(240, 0), tiny_clip(240, 1)]
    dirs = [str(c.save(root / f"clip{i}").directory) for i, c in enumerate(clips)]
    torch.set_num_threads(1)
    reference = train_mapping(clips, "ours", root / "one", str(preset), seed=0)
    return {"root": root, "preset": str(preset), "clips": clips, "dirs": dirs, "reference": reference}


def history(ckpt: Path) -> list[dict]:
    return json.loads((ckpt / "train_log.json").read_text())


def weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / ck.WEIGHTS_NAME))


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc -m studio ARGS`` (gloo, one thread each)."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "studio", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# -- splitting a global batch -----------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_the_global_batch_in_order(world):
    for n in range(0, 20):
        groups = [Dist(r, world, r, backend="gloo") for r in range(world)]
        parts = [g.part(n) for g in groups]
        assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1
        shards = [g.shard(n) for g in groups]
        if n:
            assert sum(share for _, share in shards) == pytest.approx(1.0)
        for (rows, share), size in zip(shards, sizes):
            # a rank without a row still runs one, at share 0: it must join the gradient all-reduce
            assert (rows, share) == ((slice(0, 1), 0.0) if size == 0 else (rows, size / n))


def test_one_process_is_the_identity():
    assert not SINGLE.active and SINGLE.is_main
    assert SINGLE.shard(5) == (slice(0, 5), 1.0) and SINGLE.part(5) == slice(0, 5)
    assert SINGLE.sum_over_ranks([1.5, 2]) == [1.5, 2.0]
    assert SINGLE.mean_over_ranks({"a": 3.0}) == {"a": 3.0}
    assert SINGLE.agree(True) and not SINGLE.agree(False)
    assert SINGLE.rank_seed(123) == 123
    net = torch.nn.Linear(2, 2)
    assert SINGLE.wrap(net) is net
    with SINGLE.main_first():
        SINGLE.barrier()
    SINGLE.require_divisible(3, "--batch-size")
    assert distributed.current() == SINGLE


def test_other_ranks_get_their_own_dropout_stream():
    seeds = {Dist(r, 4, r, backend="gloo").rank_seed(7) for r in range(4)}
    assert len(seeds) == 4 and Dist(0, 4, 0, backend="gloo").rank_seed(7) == 7


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(InputError, match="multiple of 4"):
        Dist(1, 4, 1, backend="gloo").require_divisible(6, "--batch-size")
    Dist(1, 4, 1, backend="gloo").require_divisible(8, "--batch-size")


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    for bad in ({"RANK": "0"}, {"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
                {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}):
        with pytest.raises(InputError):
            torchrun_env(bad)
    # started by torchrun but no group open: the ranks would each train everything into one folder
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(InputError, match="no process group"):
        distributed.current()


def test_augmentation_does_not_depend_on_the_split():
    tc = TrainConfig(audio_warp=0.1, freq_masks=2)
    audio = np.random.default_rng(0).normal(size=(7, 32, 26)).astype(np.float32)
    whole = augment_audio(audio.copy(), tc, np.random.default_rng(5))
    blocks = [augment_audio(audio[rows].copy(), tc, np.random.default_rng(5), rows, len(audio))
              for rows in (Dist(r, 2, r, backend="gloo").part(7) for r in range(2))]
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


# -- training -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_group_of_one_trains_exactly_as_one_process(setup, tmp_path, monkeypatch):
    """torchrun --nproc_per_node=1: DDP, sharding and the all-gathers all run, and change nothing."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    with distributed.process_group() as group:
        assert group.active and group.backend == "gloo" and group.world_size == 1
        out = train_mapping(setup["clips"], "ours", tmp_path / "g1", setup["preset"], seed=0)
    assert not torch.distributed.is_initialized()
    a, b = weights(setup["reference"]), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in history(out)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in history(setup["reference"])]


def assert_same_curve(ours: list[dict], reference: list[dict]) -> None:
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in reference]
    for mine, ref in zip(ours, reference):
        for key in ("train_loss", "val_loss", "val_open"):
            assert mine[key] == pytest.approx(ref[key], rel=RTOL), (mine["epoch"], key)
        assert mine["best"] == ref["best"]


@pytest.mark.slow
def test_torchrun_two_processes_follow_the_one_process_loss_curve(setup):
    out = setup["root"] / "two"
    run = torchrun("train-mapping", *setup["dirs"], "--out", str(out), "--preset", setup["preset"], "--seed", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    # rank 0 alone prints the result and logs; the checkpoint is complete
    results = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and json.loads(results[0])["epochs"] == 4
    assert run.stderr.count("training ours on") == 1
    assert not (out / ".train_state").exists()
    assert_same_curve(history(out), history(setup["reference"]))
    # the studio's inference loader takes the checkpoint; it predicts what one process's does, to
    # PRED_ATOL: Adam divides each gradient by its running RMS, so the rounding differences reach
    # the weights as steps up to ~lr wherever the true gradient is ~0 (a convolution's bias
    # before a LayerNorm); measured: weights within 1.3e-3, predictions within 2.6e-3 (points in
    # face-scale units, spread ~1; the articulation gain of 3 included)
    model, ref = ck.MappingModel.load(out), ck.MappingModel.load(setup["reference"])
    c = setup["clips"][0]
    pred = model.predict(c.audio, c.pose, c.cheek)
    assert pred.shape == (240, 58) and np.isfinite(pred).all()
    np.testing.assert_allclose(pred, ref.predict(c.audio, c.pose, c.cheek), atol=PRED_ATOL)


@pytest.mark.slow
def test_torchrun_resumes_a_run_as_one_process_does(setup, tmp_path):
    """One process is interrupted after epoch 2; two processes resume it (the training state does
    not depend on the number of processes) and end where the uninterrupted run does."""
    class Stop(Exception):
        pass

    def interrupt(record):
        if record["epoch"] == 2:
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        train_mapping(setup["clips"], "ours", out, setup["preset"], seed=0, callback=interrupt)
    run = torchrun("train-mapping", *setup["dirs"], "--out", str(out), "--preset", setup["preset"], "--seed", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming" in run.stderr and "from epoch 2" in run.stderr
    log, reference = history(out), history(setup["reference"])
    assert log[:2] == [dict(r, seconds=m["seconds"]) for r, m in zip(reference[:2], log[:2])]  # one process's
    assert_same_curve(log, reference)


@pytest.fixture(scope="module")
def renderer_clip(tmp_path_factory) -> Path:
    """A 20-frame painted face clip with video (as in tests/test_renderer.py)."""
    from render_faces import painted_clip

    return painted_clip(tmp_path_factory.mktemp("rclip"), "synthetic-dist")


@pytest.mark.slow
def test_torchrun_trains_the_renderer_and_rank_0_writes_one_checkpoint(renderer_clip, tmp_path):
    from studio.render.neural import NeuralRenderer

    out = tmp_path / "renderer"
    run = torchrun("train-renderer", str(renderer_clip), "--out", str(out), "--size", "64", "--ngf", "4",
                   "--ndf", "4", "--n-blocks", "1", "--batch-size", "2", "--steps", "2", "--checkpoint-every", "1",
                   "--sample-every", "1", "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / ".train_state" / "state.json").read_text())["step"] == 2
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_0000001.jpg", "step_0000002.jpg"]
    assert len(list((out / "pairs").glob("*.npz"))) == 1  # built once, by rank 0
    assert json.loads((out / "metrics.json").read_text())["step"] == 2
    assert NeuralRenderer.load(out, device="cpu").info["step"] == 2
