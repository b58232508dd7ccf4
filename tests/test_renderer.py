"""Neural renderer: network shapes, self-attention, training, checkpoints, resume, pairs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from render_faces import face_image, face_points, painted_clip
from studio.errors import CheckpointError, InputError, WeightsError
from studio.models.renderer import (RendererConfig, SelfAttention2d, VGGPerceptualLoss, _vgg19_features,
                                    adversarial_loss, build_discriminator, build_generator,
                                    feature_matching_loss)
from studio.render.neural import (CONFIG_FILE, WEIGHTS_FILE, NeuralRenderer, benchmark, save_checkpoint,
                                  to_tensor)
from studio.train.renderer import (STATE_DIR, Pairs, RendererTrainer, TrainConfig, fit, image_metrics,
                                   optimizer_state_join, optimizer_state_split, split_by_time, train_renderer)

TINY = dict(ngf=4, ndf=4, n_blocks=2, n_attention=1, n_discriminators=2, n_layers_d=2)


def tiny(size: int = 64, **kw) -> RendererConfig:
    return RendererConfig.for_size(size, **{**TINY, **kw})


def random_pairs(n: int = 12, size: int = 64, seed: int = 0) -> Pairs:
    """Pairs of painted synthetic faces (mouth opening varies) with random 'facial maps'."""
    rng = np.random.default_rng(seed)
    s = size / 256
    points = np.stack([face_points(128 * s, 118 * s, 40 * s, opening=o) for o in rng.uniform(0, 1, n)])
    crops = np.stack([face_image(p, size, size, seed=1) for p in points])
    maps = (rng.random((n, size, size, 3)) < 0.1).astype(np.uint8) * 255
    return Pairs(maps, crops, points.astype(np.float32), np.arange(n), np.zeros(n, np.int64), ("synthetic",))


# -- shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size,local,n_down", [(64, False, 4), (256, False, 4), (720, True, 3)])
def test_generator_and_discriminator_shapes(size, local, n_down):
    cfg = tiny(size, n_blocks=1)
    assert (cfg.local_enhancer, cfg.n_downsample) == (local, n_down)
    g, d = build_generator(cfg), build_discriminator(cfg)
    x = torch.rand(1, cfg.in_channels, size, size) * 2 - 1
    with torch.no_grad():
        y = g(x)
        feats = d(torch.cat([x, y], 1))
    assert y.shape == (1, 3, size, size)
    assert float(y.abs().max()) <= 1.0
    assert len(feats) == cfg.n_discriminators
    for i, scale in enumerate(feats):
        assert len(scale) == cfg.n_layers_d + 2  # stride-2 blocks, one stride-1 block, the scores
        assert scale[-1].shape[:2] == (1, 1)
        assert scale[0].shape[-1] == (size >> i) // 2 + 1  # conv4 s2 p2 of the (1/2^i) input


def test_template_input_adds_three_channels():
    cfg = tiny(64, with_template=True)
    assert cfg.in_channels == 6
    y = build_generator(cfg)(torch.zeros(2, 6, 64, 64))
    assert y.shape == (2, 3, 64, 64)


def test_composite_generator_draws_only_the_blanked_lower_face(tmp_path):
    """``composite``: the output is the template outside the blanked region, bit for bit, from the
    first step; the loss there carries no gradient; the checkpoint keeps the setting."""
    from studio.render.neural import generator_input, masked_template

    with pytest.raises(ValueError, match="with_template"):
        tiny(64, composite=True)
    cfg = tiny(64, ngf=8, with_template=True, composite=True)
    assert cfg.in_channels == 7
    torch.manual_seed(0)
    renderer = NeuralRenderer(build_generator(cfg), cfg, "cpu")
    pairs = random_pairs(2)
    lower = np.zeros((2, 64, 64), bool)
    lower[:, 36:60, 16:48] = True
    out = renderer.render(pairs.maps, masked_template(pairs.crops, lower))
    assert np.array_equal(out[~lower], pairs.crops[~lower])
    assert (out[lower] != 128).mean() > 0.5  # the network drew there

    x = to_tensor(generator_input(cfg, pairs.maps, masked_template(pairs.crops, lower))).requires_grad_(True)
    y = renderer.generator(x)
    y[:, :, :8].sum().backward()  # top rows: template only
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in renderer.generator.parameters())
    save_checkpoint(tmp_path, renderer.generator, cfg, step=1)
    loaded = NeuralRenderer.load(tmp_path, device="cpu")
    assert loaded.cfg.composite and np.array_equal(loaded.render(pairs.maps, masked_template(pairs.crops, lower)), out)


def test_sizes_the_net_cannot_restore_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        RendererConfig(size=720, n_downsample=4, local_enhancer=True)  # 720 / 32 = 22.5
    with pytest.raises(ValueError, match="multiple of 32"):
        RendererConfig(size=720, n_downsample=5)
    assert RendererConfig(size=720, n_downsample=4).multiple == 16  # 720 = 45 * 16
    assert RendererConfig.for_size(720).n_downsample == 3
    assert RendererConfig.for_size(200).n_downsample == 3  # 200 = 25 * 8
    with pytest.raises(ValueError):
        RendererConfig.for_size(250)


# -- self-attention ----------------------------------------------------------------------------

def test_attention_starts_as_identity_and_then_mixes_all_positions():
    torch.manual_seed(0)
    block = SelfAttention2d(16)
    x = torch.randn(2, 16, 5, 7)
    assert float(block.gamma.detach()) == 0.0
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    y = block(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0  # change one corner: the opposite corner must move (non-local)
    y2 = block(x2)
    assert not torch.allclose(y[:, :, -1, -1], y2[:, :, -1, -1])
    assert torch.allclose(y[1], block(x[1:])[0], atol=1e-6)  # samples do not mix


@pytest.mark.parametrize("n_blocks,n_attention", [(9, 1), (4, 2), (0, 1), (3, 0)])
def test_bottleneck_holds_the_configured_attention_blocks(n_blocks, n_attention):
    g = build_generator(tiny(64, n_blocks=n_blocks, n_attention=n_attention))
    assert sum(isinstance(m, SelfAttention2d) for m in g.modules()) == n_attention


# -- losses ----------------------------------------------------------------------------------

def test_gan_losses():
    ones, zeros = [[torch.ones(1, 1, 4, 4)]], [[torch.zeros(1, 1, 4, 4)]]
    assert float(adversarial_loss(ones, True, "lsgan")) == 0.0
    assert float(adversarial_loss(zeros, True, "lsgan")) == 1.0
    assert float(adversarial_loss(zeros, False, "lsgan")) == 0.0
    assert float(adversarial_loss(ones, True, "hinge")) == 0.0
    assert float(adversarial_loss(ones, False, "hinge")) == 2.0
    assert float(adversarial_loss(ones, True, "hinge", for_discriminator=False)) == -1.0
    feats = [[torch.ones(1, 2, 3, 3), torch.zeros(1, 1, 2, 2)]]
    assert float(feature_matching_loss(feats, feats)) == 0.0
    other = [[torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 2, 2)]]
    assert float(feature_matching_loss(feats, other)) == pytest.approx(4.0)  # 4 / (n_layers + 1) * L1


def test_vgg_loss_loads_only_a_local_file(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(WeightsError, match="not found"):
        VGGPerceptualLoss.from_file(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    save_file({"features.0.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(WeightsError, match="not VGG19"):
        VGGPerceptualLoss.from_file(bad)
    torch.manual_seed(0)
    good = tmp_path / "vgg19.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in _vgg19_features().state_dict().items()}, str(good))
    vgg = VGGPerceptualLoss.from_file(good)
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(vgg(a, a)) == 0.0
    assert float(vgg(a, b)) > 0.0


# -- training --------------------------------------------------------------------------------

def test_training_steps_lower_the_reconstruction_loss_on_one_batch():
    pairs = random_pairs(2)
    trainer = RendererTrainer(tiny(64, ngf=8), TrainConfig(lr=2e-3, seed=0), device="cpu")
    x, y = to_tensor(pairs.maps), to_tensor(pairs.crops)
    losses = [trainer.train_step(x, y) for _ in range(12)]
    assert trainer.step == 12
    assert all(np.isfinite(v) for row in losses for v in row.values())
    assert np.mean([r["g_l1"] for r in losses[-3:]]) < 0.7 * losses[0]["g_l1"]


def test_cuda_code_path_bf16_channels_last_runs_on_cpu():
    trainer = RendererTrainer(tiny(64), TrainConfig(amp=True, channels_last=True), device="cpu")
    conv = next(m for m in trainer.generator.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (7, 7))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    pairs = random_pairs(2)
    losses = trainer.train_step(to_tensor(pairs.maps), to_tensor(pairs.crops))
    assert all(np.isfinite(v) for v in losses.values())
    renderer = NeuralRenderer(trainer.generator, trainer.model_cfg, "cpu", amp=True, channels_last=True)
    out = renderer.render(pairs.maps)
    assert out.shape == pairs.crops.shape and out.dtype == np.uint8


def test_optimizer_state_survives_safetensors_and_json():
    trainer = RendererTrainer(tiny(64), TrainConfig(), device="cpu")
    pairs = random_pairs(2)
    trainer.train_step(to_tensor(pairs.maps), to_tensor(pairs.crops))
    tensors, meta = optimizer_state_split(trainer.opt_g)
    restored = optimizer_state_join(tensors, json.loads(json.dumps(meta)))
    original = trainer.opt_g.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for pid, st in original["state"].items():
        for k, v in st.items():
            assert torch.equal(restored["state"][pid][k], v)


# -- checkpoints -------------------------------------------------------------------------------

def test_checkpoint_round_trip_renders_the_same(tmp_path):
    """Saved and loaded, a renderer renders what it rendered before saving.

    Before/after comparisons use the same batch size (and threads, machine): exact. Across batch
    sizes the arithmetic is grouped differently (oneDNN/MKL kernels differ by CPU and batch shape),
    so there only a tolerance holds: float outputs within atol 5e-5 (about 10x the ~5e-6 seen
    between a batch of 1 and of 3; one grey level is 2/255 ~ 7.8e-3), uint8 frames within 1 grey
    level (a float difference that small can flip the rounding of a pixel by one level, no more)."""
    torch.manual_seed(1)
    cfg = tiny(64)
    g = build_generator(cfg)
    maps = random_pairs(3).maps
    original = NeuralRenderer(g, cfg, "cpu")
    before = original.render(maps)  # one batch of 3
    before_one = original.render_frame(maps[1], maps[1])  # a batch of 1
    with torch.inference_mode():
        before_float = g(to_tensor(maps))
    save_checkpoint(tmp_path, g, cfg, step=7)
    loaded = NeuralRenderer.load(tmp_path, device="cpu")
    assert loaded.cfg == cfg and loaded.info["step"] == 7
    # the weights themselves come back bit for bit (no arithmetic involved)
    for k, v in g.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[k], v), k
    # same batch size before and after: the same frames
    assert np.array_equal(loaded.render(maps), before)
    assert np.array_equal(loaded.render_frame(maps[1], maps[1]), before_one)
    with torch.inference_mode():
        assert torch.equal(loaded.generator(to_tensor(maps)), before_float)
    # a batch of 1 against the batch of 3: equal within the tolerance above, never bit for bit
    with torch.inference_mode():
        one_by_one = torch.cat([loaded.generator(to_tensor(maps[i:i + 1])) for i in range(len(maps))])
    torch.testing.assert_close(one_by_one, before_float, rtol=0, atol=5e-5)
    assert np.abs(before_one.astype(int) - before[1]).max() <= 1
    NeuralRenderer.load(tmp_path, device="cpu", expect=cfg, size=64)


def test_corrupt_or_mismatched_checkpoints_raise(tmp_path):
    cfg = tiny(64)
    with pytest.raises(CheckpointError, match="not a neural renderer"):
        NeuralRenderer.load(tmp_path / "nothing")
    save_checkpoint(tmp_path, build_generator(cfg), cfg)
    with pytest.raises(CheckpointError, match="ngf"):
        NeuralRenderer.load(tmp_path, expect=dataclasses.replace(cfg, ngf=8))
    with pytest.raises(CheckpointError, match="64 px"):
        NeuralRenderer.load(tmp_path, size=256)
    # weights of another architecture under a config that names their hash
    info = json.loads((tmp_path / CONFIG_FILE).read_text())
    info["config"]["ngf"] = 8
    (tmp_path / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="does not fit"):
        NeuralRenderer.load(tmp_path)
    info["config"]["ngf"] = 4
    info["config"]["bogus"] = 1
    (tmp_path / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="invalid renderer config"):
        NeuralRenderer.load(tmp_path)
    save_checkpoint(tmp_path, build_generator(cfg), cfg)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="hash"):
        NeuralRenderer.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        NeuralRenderer.load(tmp_path)


def test_renderer_checks_its_inputs(tmp_path):
    cfg = tiny(64, with_template=True)
    r = NeuralRenderer(build_generator(cfg), cfg, "cpu")
    maps = random_pairs(1).maps
    with pytest.raises(InputError, match="template"):
        r.render(maps)
    with pytest.raises(InputError, match="64 px"):
        r.render(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8))
    assert r.render(maps, maps).shape == (1, 64, 64, 3)


# -- resume ------------------------------------------------------------------------------------

def _fit(out: Path, steps: int, resume_from: Path | None = None) -> RendererTrainer:
    pairs = random_pairs(8)
    train, val = split_by_time(pairs, 0.25)
    trainer = RendererTrainer(tiny(64, with_template=True), TrainConfig(batch_size=2, checkpoint_every=2,
                                                                         sample_every=2), device="cpu")
    if resume_from is not None:
        trainer.load_state(resume_from)
    fit(trainer, train, val, out, steps)
    return trainer


def test_resume_continues_the_step_counter_and_matches_an_uninterrupted_run(tmp_path):
    straight = _fit(tmp_path / "a", 4)
    _fit(tmp_path / "b", 3)
    assert json.loads((tmp_path / "b" / STATE_DIR / "state.json").read_text())["step"] == 3
    resumed = _fit(tmp_path / "b", 4, resume_from=tmp_path / "b" / STATE_DIR)
    assert resumed.step == 4
    for k, v in straight.generator.state_dict().items():
        assert torch.equal(v, resumed.generator.state_dict()[k]), k
    assert sorted(p.name for p in (tmp_path / "b" / "samples").iterdir()) == \
        ["step_0000002.jpg", "step_0000003.jpg", "step_0000004.jpg"]
    assert NeuralRenderer.load(tmp_path / "b").info["step"] == 4


def test_resume_refuses_another_config_or_a_corrupt_state(tmp_path):
    _fit(tmp_path, 2)
    other = RendererTrainer(tiny(64, ngf=8, with_template=True), TrainConfig(), device="cpu")
    with pytest.raises(CheckpointError, match="ngf"):
        other.load_state(tmp_path / STATE_DIR)
    (tmp_path / STATE_DIR / "opt_g.safetensors").write_bytes(b"garbage")
    same = RendererTrainer(tiny(64, with_template=True), TrainConfig(), device="cpu")
    with pytest.raises(CheckpointError, match="corrupt"):
        same.load_state(tmp_path / STATE_DIR)
    (tmp_path / STATE_DIR / "state.json").write_text("[]")
    with pytest.raises(CheckpointError, match="corrupt"):
        same.load_state(tmp_path / STATE_DIR)


def test_split_by_time_holds_out_the_end_of_each_clip():
    p = random_pairs(10)
    both = Pairs.concat([p, p.take(np.arange(5))])
    train, val = split_by_time(both, 0.2)
    assert list(train.frames[train.clip == 0]) == list(range(8))
    assert list(val.frames[val.clip == 0]) == [8, 9]
    assert list(train.frames[train.clip == 1]) == [0, 1, 2, 3] and list(val.frames[val.clip == 1]) == [4]


def test_image_metrics():
    p = random_pairs(1, size=64)
    real = p.crops[0]
    same = image_metrics(real, real, p.points[0])
    assert same["ssim"] == pytest.approx(1.0) and same["mouth_ssim"] == pytest.approx(1.0)
    noisy = np.clip(real.astype(int) + np.random.default_rng(0).integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    m = image_metrics(noisy, real, p.points[0])
    assert 15 < m["psnr"] < 40 and m["ssim"] < 0.95 and m["mouth_psnr"] < 40


def test_benchmark_reports_frames_per_second():
    out = benchmark(sizes=(64,), ngf=4, repeats=1, n_blocks=1)
    assert out["neural_fps_64"] > 0 and out["neural_params_64"] > 0


# -- end to end on a tiny synthetic clip ----------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory) -> Path:
    # frame 3 without a detection: it is left out of the pairs
    return painted_clip(tmp_path_factory.mktemp("clip"), "synthetic-test", missing=(3,))


def test_train_renderer_end_to_end_and_resume(synthetic_clip, tmp_path):
    model = tiny(64, with_template=True)
    train = TrainConfig(batch_size=2, checkpoint_every=2, sample_every=2)
    out = train_renderer([synthetic_clip], tmp_path, 64, 2, model=model, train=train, device="cpu")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 4 and metrics["step"] == 2  # last 20 % of 19 usable frames
    assert {"psnr", "ssim", "mouth_psnr", "mouth_ssim"} <= set(metrics)
    cache = list((out / "pairs").glob("*.npz"))
    assert len(cache) == 1
    with np.load(cache[0]) as z:
        assert z["maps"].shape == (19, 64, 64, 3) and 3 not in z["frames"]
    stamp = cache[0].stat().st_mtime_ns
    with pytest.raises(CheckpointError, match="--resume"):
        train_renderer([synthetic_clip], tmp_path, 64, 4, model=model, train=train, device="cpu")
    train_renderer([synthetic_clip], tmp_path, 64, 3, resume=True, device="cpu")  # stored settings
    assert json.loads((out / STATE_DIR / "state.json").read_text())["step"] == 3
    assert cache[0].stat().st_mtime_ns == stamp  # pairs came from the cache
    r = NeuralRenderer.load(out, device="cpu")
    assert r.info["step"] == 3 and r.cfg == model
    assert r.facemap_config.canny_low == 50
    with pytest.raises(CheckpointError):
        train_renderer([synthetic_clip], tmp_path, 64, 4, model=tiny(64), resume=True, device="cpu")


def test_cli_trains_and_resumes(synthetic_clip, tmp_path):
    from studio.cli import main

    base = ["train-renderer", str(synthetic_clip), "--out", str(tmp_path), "--size", "64", "--ngf", "4",
            "--ndf", "4", "--n-blocks", "1", "--batch-size", "1", "--device", "cpu"]
    assert main(base + ["--steps", "1"]) == 0
    assert main(base + ["--steps", "1"]) == 2  # exists: needs --resume
    assert main(base + ["--steps", "2", "--resume"]) == 0
    assert NeuralRenderer.load(tmp_path).info["step"] == 2
    assert main(base[:4] + ["--size", "50", "--steps", "1", "--resume"]) == 2
