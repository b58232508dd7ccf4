"""Mapping networks: shapes of every variant, receptive fields, conv paths, loss values, learning."""

import numpy as np
import pytest
import torch

from studio.models import VARIANTS, build_model, model_config
from studio.models.baselines import BaselineConfig, RNNBaseline
from studio.models.tcn import CascadeConfig, CascadedTCN, SameConv1d, receptive_field
from studio.train.mapping import LossConfig, mapping_loss

TINY = {"channels": 16, "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY_RNN = {"hidden": 12}


def tiny(variant, **kw):
    cfg = model_config(variant, {**(TINY_RNN if variant in ("lstm", "bilstm") else TINY), **kw})
    torch.manual_seed(0)
    return build_model(cfg)


def inputs(b, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4 * t, 26, generator=g), torch.randn(b, t, 3, generator=g), torch.randn(b, t, 16, generator=g)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_one_step(variant):
    net = tiny(variant)
    audio, pose, cheek = inputs(2, 64)
    coef, talk = net(audio, pose, cheek)
    assert coef.shape == (2, 64, 13)
    if variant in ("lstm", "bilstm"):
        assert talk is None and net.mouth_only
        loss = coef.pow(2).mean()
    else:
        assert talk.shape == (2, 64, 58) and not net.mouth_only
        loss = talk.pow(2).mean() + coef.pow(2).mean()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    before = [p.detach().clone() for p in net.parameters()]
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    # any length, including one frame, batch size 1
    net.eval()
    with torch.inference_mode():
        for t in (1, 7, 100):
            c, _ = net(*inputs(1, t))
            assert c.shape == (1, t, 13)


def test_variant_flags_select_inputs():
    assert CascadeConfig.for_variant("ours") == CascadeConfig(True, True, True)
    flags = {v: (c.pose_in_g1, c.pose_in_g2, c.use_cheek, c.conditioning) for v in VARIANTS[:6]
             for c in [model_config(v)]}
    assert flags == {"ours": (True, True, True, "rigid"), "ours-paper": (True, True, True, "paper"),
                     "no-pose": (False, False, True, "rigid"), "g1-pose": (True, False, True, "rigid"),
                     "g2-pose": (False, True, True, "rigid"), "no-cheek": (True, True, False, "rigid")}
    # a preset cannot turn ours-paper into the leak-free model
    assert model_config("ours-paper", {"conditioning": "rigid"}).conditioning == "paper"
    # a variant without pose is blind to pose; no-cheek is blind to the cheek
    for variant, arg in (("no-pose", 1), ("no-cheek", 2)):
        net = tiny(variant).eval()
        x = list(inputs(1, 40))
        y0 = net(*x)[1]
        x[arg] = x[arg] + 3.0
        assert torch.equal(net(*x)[1], y0)


def _changed(net, x, arg, index, t):
    with torch.no_grad():
        y0 = net(*x)[1][0, t]
        x2 = [v.clone() for v in x]
        x2[arg][0, index] += 50.0
        return float((net(*x2)[1][0, t] - y0).abs().max())


@pytest.mark.parametrize("variant", ["ours", "g2-pose"])
def test_receptive_field_both_directions(variant):
    # float64: the influence of the farthest input passes ~18 layers and is small but exact;
    # an input outside the field leaves the output bit-for-bit unchanged
    net = tiny(variant).eval().double()
    cfg = net.cfg
    rf = receptive_field(cfg)
    assert rf["frames"] == 60 and rf["g2_inputs"] == 30 and rf["audio"] == 243
    T, t = 160, 80
    x = [v.double() for v in inputs(1, T)]
    pose_reach = rf["pose_g1"] if cfg.pose_in_g1 else rf["g2_inputs"]
    for arg, centre, reach in ((0, 4 * t, rf["audio"]), (1, t, pose_reach), (2, t, rf["g2_inputs"])):
        for sign in (-1, 1):
            inside = _changed(net, x, arg, centre + sign * reach, t)
            outside = _changed(net, x, arg, centre + sign * (reach + 1), t)
            assert inside > 1e-12, (arg, sign, inside)
            assert outside == 0.0, (arg, sign, outside)


def test_fast_inference_path_matches_training_path():
    torch.manual_seed(0)
    for kw in ({"kernel_size": 3, "dilation": 4}, {"kernel_size": 3, "stride": 2}, {"kernel_size": 1}):
        conv = SameConv1d(5, 7, **kw)
        x = torch.randn(1, 5, 33)
        with torch.no_grad():
            ref = conv(x)[0].t()
            fast = conv.infer(x[0].t().contiguous())
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for variant in ("ours", "no-pose", "no-cheek"):
        net = tiny(variant).eval()
        x = inputs(1, 300)
        with torch.inference_mode():
            fast = net(*x)  # batch of one, eval, no autograd: the time-major path
        ref = net(*x)  # autograd on: the F.conv1d path
        for f, r in zip(fast, ref):
            torch.testing.assert_close(f, r.detach(), atol=1e-4, rtol=1e-4)


def test_audio_front_end_gives_video_rate():
    net = tiny("ours")
    for t in (1, 2, 3, 64, 65):
        a = torch.randn(1, 26, 4 * t)
        assert net.front(a).shape == (1, 16, t)


def test_lstm_time_delay_and_bilstm_sees_the_future():
    torch.manual_seed(0)
    lstm = RNNBaseline(BaselineConfig(kind="lstm", hidden=12, delay=3)).eval()
    bi = RNNBaseline(BaselineConfig(kind="bilstm", hidden=12, layers=2)).eval()
    T, t = 30, 10
    x = list(inputs(1, T))

    def change(net, audio_index):
        with torch.no_grad():
            y0 = net(*x)[0][0, t]
            x2 = [v.clone() for v in x]
            x2[0][0, audio_index] += 5.0
            return float((net(*x2)[0][0, t] - y0).abs().max())

    assert change(lstm, 4 * (t + 3) + 3) > 1e-5  # audio of frame t + delay is heard
    assert change(lstm, 4 * (t + 4)) == 0.0  # but nothing later
    assert change(bi, 4 * (T - 1)) > 1e-6  # the BiLSTM hears the whole future
    assert change(lstm, 0) > 1e-6 and change(bi, 0) > 1e-6


def test_loss_hand_computed():
    talk = torch.zeros(1, 2, 58)
    coef = torch.zeros(1, 2, 13)
    pred_talk = talk.clone()
    pred_talk[0, 0, 0], pred_talk[0, 1, 0] = 1.0, 3.0
    pred_talk[0, 1, 50] = 10.0  # a jaw coordinate
    pred_coef = coef.clone()
    pred_coef[0, 0, 0] = 2.0
    terms = mapping_loss(pred_coef, pred_talk, coef, talk, LossConfig())
    # L2 = (1 + 9 + 100) / 2 frames; L_pca = 4 / 2; L_int = ((3 - 1)^2 + 10^2) / 2
    assert terms["l2"].item() == pytest.approx(55.0)
    assert terms["pca"].item() == pytest.approx(2.0)
    assert terms["int"].item() == pytest.approx(52.0)
    assert terms["all"].item() == pytest.approx(55.0 + 0.05 * 2.0 + 0.6 * 52.0)
    mouth = mapping_loss(pred_coef, pred_talk, coef, talk, LossConfig(0.5, 1.0), dims=slice(0, 40))
    assert mouth["l2"].item() == pytest.approx(5.0) and mouth["int"].item() == pytest.approx(2.0)
    assert mouth["all"].item() == pytest.approx(5.0 + 0.5 * 2.0 + 1.0 * 2.0)


@pytest.mark.parametrize("variant", ["ours", "bilstm"])
def test_overfits_one_batch(variant):
    net = tiny(variant)
    audio, pose, cheek = inputs(4, 32)
    amplitude = torch.randn(4, 1, 13, generator=torch.Generator().manual_seed(1))
    target = torch.sin(torch.linspace(0, 6, 32))[None, :, None] * amplitude
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(150):
        coef, _ = net(audio, pose, cheek)
        loss = (coef - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_seeded_determinism():
    def run(seed):
        torch.manual_seed(seed)
        net = CascadedTCN(CascadeConfig(channels=16, dropout=0.3))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        torch.manual_seed(seed + 1)
        for _ in range(3):
            _, talk = net(*inputs(2, 40))
            opt.zero_grad()
            talk.pow(2).mean().backward()
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_fits_paper_window_shapes():
    """The paper's training pair: audio 256 x 26, pose 64 x 3, cheek 64 x 16 -> 64 x 13, 64 x 58."""
    net = tiny("ours")
    coef, talk = net(torch.zeros(1, 256, 26), torch.zeros(1, 64, 3), torch.zeros(1, 64, 16))
    assert coef.shape == (1, 64, 13) and talk.shape == (1, 64, 58)
    assert np.isfinite(talk.detach().numpy()).all()
