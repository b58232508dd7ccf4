"""Mapping training, checkpoints, inference helpers, evaluation and the ablation runner (tiny)."""

import json
import os

import numpy as np
import pytest
import torch

from studio.cli import main as studio_main
from studio.data.clip import Clip, ClipMeta
from studio.errors import CheckpointError, InputError
from studio.face import layout
from studio.face.normalize import normalize
from studio.models import checkpoint as ck
from studio.train.ablate import ablate
from studio.train.evaluate import FACE_SCALE_PX, error_sums, evaluate, evaluate_model, summarize
from studio.train.mapping import prepare, settings_for, train_mapping
from studio.train.windows import clip_arrays, split_train_val, window_starts

TINY_PRESET = {
    "mapping_model": {"channels": 12, "dilations": [1, 2], "dropout": 0.1},
    "mapping_lstm": {"hidden": 8, "delay": 2},
    "mapping_bilstm": {"hidden": 8, "layers": 1},
    "mapping_train": {"window": 16, "stride": 4, "batch_size": 8, "max_epochs": 4, "patience": 10,
                      "val_stride": 8, "lr": 0.003},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_clip(frames=240, seed=0, synthetic=False, face_seed=None):
    """A clip whose mouth opening follows audio band 0 and whose face turns (yaw) over time.

    ``face_seed``: the face shape's seed (default ``seed``); clips of one person share it.
    """
    rng = np.random.default_rng(seed)
    audio = rng.normal(size=(4 * frames, 26)).astype(np.float32)
    drive = np.convolve(audio[:, 0], np.ones(8) / 8, "same").reshape(frames, 4).mean(1)
    base = (rng.normal(size=(68, 2)) * 20 + 100).astype(np.float32)
    if face_seed is not None:
        base = (np.random.default_rng([face_seed, 68]).normal(size=(68, 2)) * 20 + 100).astype(np.float32)
    lm = np.repeat(base[None], frames, 0)
    lm[:, layout.INNER_LIP[4:], 1] += drive[:, None] * 8
    lm[:, 8, 1] += drive * 5
    pose = np.zeros((frames, 3), np.float32)
    pose[:, 0] = 20 * np.sin(np.arange(frames) / 15)
    lm[:, 48:68, 0] += pose[:, [0]] * 0.3
    gt = lm.copy() if synthetic else None
    if synthetic:
        lm = lm + rng.normal(scale=0.5, size=lm.shape).astype(np.float32)
    centre = lm[:, layout.NOSE].mean(1)
    scale = np.full(frames, 20.0, np.float32)
    meta = ClipMeta(source="tiny", source_sha256=f"tiny{seed}", fps=25.0, frames=frames, width=200, height=200,
                    faces_found=frames, backend="synthetic" if synthetic else "mediapipe",
                    audio_seconds=frames / 25, synthetic=synthetic)
    valid = np.ones(frames, bool)
    return Clip(meta=meta, landmarks=lm, found=valid, valid=valid, pose=pose, centre=centre, scale=scale,
                boxes=np.zeros((frames, 4), np.float32), audio=audio, gt_landmarks=gt)


@pytest.fixture(scope="module")
def clips():
    return [tiny_clip(240, 0), tiny_clip(240, 1)]


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    torch.set_num_threads(1)
    return train_mapping(clips, "ours", tmp_path_factory.mktemp("ck") / "ours", TINY_PRESET, seed=0)


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / ck.WEIGHTS_NAME))


# -- split and windows ---------------------------------------------------------------------------
def test_split_has_a_gap_and_windows_never_cross_it():
    (t0, t1), (v0, v1) = split_train_val(1000, 0.2, 64)
    assert (t0, v0, v1) == (0, 800, 1000) and t1 == 736
    valid = np.ones(1000, bool)
    tr = window_starts(valid, t0, t1, 64, 8)
    va = window_starts(valid, v0, v1, 64, 32)
    assert tr.max() + 64 <= 736 and va.min() >= 800
    assert va.min() - (tr.max() + 64) >= 64  # no frame and no 64-frame context shared
    valid[100] = False
    bad = window_starts(valid, t0, t1, 64, 1)
    assert not any(s <= 100 < s + 64 for s in bad)


def test_prepare_fits_statistics_on_training_frames_only(clips):
    tc = settings_for("ours", TINY_PRESET).train
    data = prepare([clip_arrays(c) for c in clips], tc)
    (_, t1), _ = split_train_val(240, tc.val_fraction, tc.gap_frames)
    train_pose = np.concatenate([c.pose[:t1] for c in clips])
    np.testing.assert_allclose(data.norm.pose_mean, train_pose.mean(0), atol=1e-4)
    assert data.train_frames == 2 * t1
    # standardized training inputs have zero mean
    z = np.concatenate([p[:t1] for p in data.pose])
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    # windows: audio is 4 frames per video frame
    from studio.train.mapping import make_batch

    b = make_batch(data, data.train_index[:3], tc.window)
    assert b["audio"].shape == (3, 4 * tc.window, 26) and b["talk"].shape == (3, tc.window, 58)
    assert b["coef"].shape == (3, tc.window, 13)


def test_too_short_clips_are_an_input_error():
    with pytest.raises(InputError):
        train_mapping([tiny_clip(40)], "ours", "/nonexistent/never", TINY_PRESET)


# -- training, checkpoint, inference ------------------------------------------------------------
def test_checkpoint_roundtrip(trained, clips):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "norm.npz", "mouth_pca.npz", "mouth_pca.json",
            "train_log.csv", "train_log.json"} <= names
    assert ".train_state" not in names
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["variant"] == "ours" and cfg["result"]["epochs"] == 4 and cfg["result"]["train_seconds"] > 0
    log = json.loads((trained / "train_log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    model = ck.MappingModel.load(trained)
    c = clips[0]
    pred = model.predict(c.audio, c.pose, c.cheek)
    assert pred.shape == (240, 58) and pred.dtype == np.float32
    # the loaded network equals the saved weights, and prediction is repeatable
    state = weights(trained)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, state[k])
    np.testing.assert_array_equal(model.predict(c.audio, c.pose, c.cheek), pred)
    talk, coefs = model.predict(c.audio, c.pose, c.cheek, return_coefs=True)
    assert coefs.shape == (240, 13)
    # any length in one pass, including shorter and longer than a training window
    for t in (1, 5, 500):
        idx = ck.extend_template(t, 240)
        assert model.predict(np.resize(c.audio, (4 * t, 26)), c.pose[idx], c.cheek[idx]).shape == (t, 58)


def test_training_beats_the_mean_on_its_data(tmp_path):
    # one person (the leak-free conditioning cannot tell two faces apart: it sees pose only); the
    # tiny clips shift the mouth with yaw by a 2D rule, not by head geometry, so no pose swaps and
    # no articulation gain (both re-draw points with the geometry of a real head)
    clips = [tiny_clip(240, 0, face_seed=0), tiny_clip(240, 1, face_seed=0)]
    out = train_mapping(clips, "ours", tmp_path / "m", TINY_PRESET, seed=0, max_epochs=15, swap_conditioning=0.0,
                        calibrate=False)
    model = ck.MappingModel.load(out)
    res = evaluate_model(model, clips)
    talk = np.concatenate([c.talk for c in clips])
    mean_mse = ((talk - talk.mean(0))[:, :40] ** 2).mean()
    assert res["mouth_mse"] < 0.5 * mean_mse


def test_load_errors(trained, tmp_path):
    with pytest.raises(CheckpointError):
        ck.MappingModel.load(tmp_path / "missing")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError):
        ck.MappingModel.load(broken)
    shutil.copy(trained / "model.safetensors", broken / "model.safetensors")
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model"]["channels"] = 20  # weights no longer fit
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        ck.MappingModel.load(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        ck.MappingModel.load(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete"):
        ck.MappingModel.load(broken)


def test_predict_rejects_bad_shapes(trained):
    model = ck.MappingModel.load(trained)
    with pytest.raises(InputError):
        model.predict(np.zeros((10, 26)), np.zeros((3, 3)), np.zeros((3, 16)))
    with pytest.raises(InputError):
        model.predict(np.zeros((12, 26)), np.zeros((3, 3)), np.zeros((3, 15)))
    with pytest.raises(InputError):
        model.predict(np.zeros((12, 26)), np.full((3, 3), np.nan), np.zeros((3, 16)))


def test_seeded_training_is_deterministic(tmp_path, clips, trained):
    again = train_mapping(clips, "ours", tmp_path / "again", TINY_PRESET, seed=0)
    other = train_mapping(clips, "ours", tmp_path / "other", TINY_PRESET, seed=1)
    a, b, c = weights(trained), weights(again), weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_interruption_gives_the_same_model(tmp_path, clips, trained):
    class Stop(Exception):
        pass

    def interrupt(record):
        if record["epoch"] == 2:
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        train_mapping(clips, "ours", out, TINY_PRESET, seed=0, callback=interrupt)
    assert (out / ".train_state" / "state.json").exists() and not (out / "config.json").exists()
    with pytest.raises(CheckpointError, match="resume"):
        ck.MappingModel.load(out)
    seen = []
    train_mapping(clips, "ours", out, TINY_PRESET, seed=0, callback=lambda r: seen.append(r["epoch"]))
    assert seen == [3, 4]  # only the unfinished epochs ran
    a, b = weights(trained), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished checkpoint of the same data and settings is not retrained
    seen.clear()
    train_mapping(clips, "ours", out, TINY_PRESET, seed=0, callback=lambda r: seen.append(r["epoch"]))
    assert seen == []


def test_baseline_checkpoint_predicts_mouth_only(tmp_path, clips):
    out = train_mapping(clips, "lstm", tmp_path / "lstm", TINY_PRESET, seed=0, max_epochs=2)
    model = ck.MappingModel.load(out)
    assert not model.predicts_jaw
    c = clips[0]
    talk, coefs = model.predict(c.audio, c.pose, c.cheek, return_coefs=True)
    np.testing.assert_allclose(talk[:, :40], model.pca.inverse(coefs), atol=1e-5)
    np.testing.assert_allclose(talk[:, 40:], np.repeat(model.norm.talk_mean[None, 40:], 240, 0), atol=1e-6)
    res = evaluate(model, clips, timing=False)
    assert res["jaw_mse"] is None and res["mouth_mse"] > 0


# -- helpers -------------------------------------------------------------------------------------
def test_extend_template_ping_pong():
    assert list(ck.extend_template(10, 4)) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert list(ck.extend_template(3, 5)) == [0, 1, 2]
    assert list(ck.extend_template(4, 1)) == [0, 0, 0, 0]
    idx = ck.extend_template(1000, 37)
    assert idx.min() == 0 and idx.max() == 36 and np.abs(np.diff(idx)).max() == 1
    with pytest.raises(InputError):
        ck.extend_template(5, 0)


def test_to_pixels_inverts_normalization():
    rng = np.random.default_rng(0)
    pts = rng.random((6, 68, 2)).astype(np.float32) * 300
    centre, scale = pts[:, layout.NOSE].mean(1), np.linspace(20, 40, 6).astype(np.float32)
    talk = layout.talking_vector(normalize(pts, centre, scale))
    back = ck.to_pixels(talk, centre, scale)
    np.testing.assert_allclose(back, pts[:, layout.TALKING], atol=1e-3)


# -- evaluation ----------------------------------------------------------------------------------
def test_perfect_prediction_scores_zero():
    class Oracle:
        """Predicts the ground truth talking points of the one clip it knows."""

        predicts_jaw = True

        def __init__(self, clip):
            self.gt = layout.talking_vector(normalize(clip.gt_landmarks, clip.centre, clip.scale))

        def predict(self, audio, pose, cheek, fps=None):
            return self.gt.copy()

    clip = tiny_clip(100, 3, synthetic=True)
    res = evaluate_model(Oracle(clip), [clip])
    assert res["target"] == "gt" and res["frames"] == 100
    for key in ("mouth_mse", "jaw_mse", "mouth_rmse_px", "jaw_rmse_px", "velocity_rmse", "velocity_rmse_px"):
        assert res[key] == 0.0, key
    # the detected (noisy) points are NOT the target of a synthetic clip
    noisy = Oracle(clip)
    noisy.gt = clip.talk
    assert evaluate_model(noisy, [clip])["mouth_mse"] > 0


def test_error_metrics_hand_computed():
    target = np.zeros((3, 58), np.float32)
    pred = target.copy()
    pred[:, 0] = 0.1  # mouth x of point 48 off by 0.1 in every frame: no velocity error
    pred[1, 40] = 0.3  # one jaw coordinate in frame 1
    res = summarize(error_sums(pred, target))
    assert res["mouth_mse"] == pytest.approx(0.01 / 40)
    assert res["jaw_mse"] == pytest.approx(0.09 / (3 * 18))
    assert res["mouth_rmse_px"] == pytest.approx(np.sqrt(2 * 0.01 / 40) * FACE_SCALE_PX)
    # velocity: the jaw coordinate moves +0.3 then -0.3 against a still target
    assert res["velocity_rmse"] == pytest.approx(np.sqrt(2 * 0.09 / (2 * 58)))
    masked = summarize(error_sums(pred, target, np.array([True, False, True])))
    assert masked["jaw_mse"] == 0.0 and masked["frames"] == 2 and masked["velocity_rmse"] == 0.0


# -- CLIs ----------------------------------------------------------------------------------------
TINY_TOML = """
[mapping_model]
channels = 12
dilations = [1, 2]
[mapping_lstm]
hidden = 8
delay = 2
[mapping_bilstm]
hidden = 8
layers = 1
[mapping_train]
window = 16
stride = 4
batch_size = 8
max_epochs = 2
val_stride = 8
"""


def test_cli_train_evaluate_and_ablate(tmp_path, clips, capsys):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_TOML)
    dirs = [str(c.save(tmp_path / f"clip{i}").directory) for i, c in enumerate(clips)]
    out = tmp_path / "ck"
    assert studio_main(["train-mapping", *dirs, "--variant", "g1-pose", "--out", str(out),
                        "--preset", str(preset), "--seed", "3"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    capsys.readouterr()
    assert studio_main(["evaluate", str(out), *dirs, "--span", "0.5", "1", "--no-timing"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["variant"] == "g1-pose" and res["frames"] == 2 * 120 and res["mouth_mse"] > 0
    assert res["jaw_mse"] > 0 and res["target"] == "detected"
    # a wrong folder is a message, not a traceback
    assert studio_main(["evaluate", str(tmp_path / "nope"), *dirs]) == 2

    table = ablate(clips, tmp_path / "abl", seeds=1, preset=str(preset), timing=False)
    assert list(table["variant"]) == ["no-pose", "g1-pose", "g2-pose", "ours", "no-cheek", "ours-paper", "lstm",
                                      "bilstm"]
    for name in ("runs.csv", "table.csv", "table.md", "figure.html"):
        assert (tmp_path / "abl" / name).stat().st_size > 0
    md = (tmp_path / "abl" / "table.md").read_text()
    assert "| | No pose | G1 pose | G2 pose | Ours | No cheek | Ours (paper cond.) | LSTM | BiLSTM |" in md
    assert "Dub: inner-lip opening r" in md and "Reference rows" in md
    jaw_row = next(line for line in md.splitlines() if line.startswith("| Jaw MSE"))
    assert jaw_row.count("n/a") == 2
    assert table.set_index("variant").loc["lstm", "jaw_mse_mean"] is None or np.isnan(
        table.set_index("variant").loc["lstm", "jaw_mse_mean"])


def test_ablation_timing_is_cpu_time_with_the_machine_load(trained, clips, monkeypatch):
    """Inference is timed in CPU seconds, which time spent waiting (here: sleeping, as when other jobs
    hold the cores) does not inflate, unlike the wall time; the load average and cores are recorded,
    and a load above the cores flags the timing as taken on a busy machine (in the tables too)."""
    import time

    import pandas as pd

    from studio.train.ablate import aggregate, markdown_table

    model = ck.MappingModel.load(trained)
    predict = model.predict

    def waiting_predict(*args, **kwargs):
        out = predict(*args, **kwargs)
        time.sleep(0.1)
        return out

    monkeypatch.setattr(model, "predict", waiting_predict)
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 2.5, 1.0, 1.0))
    res = evaluate(model, clips, (0.5, 1.0), timing=True, threads=1)
    assert res["inference_seconds_5min"] >= 0.1
    assert 0 < res["inference_cpu_seconds_5min"] < res["inference_seconds_5min"] - 0.05
    assert res["load_1min"] == cores + 2.5 and res["cores"] == cores and res["timing_busy"] == 1
    table = aggregate(pd.DataFrame([{"variant": "ours", **res}]))
    assert table.loc[0, "inference_cpu_seconds_5min_mean"] == res["inference_cpu_seconds_5min"]
    assert table.loc[0, "timing_busy_mean"] == 1
    md = markdown_table(table, seeds=1)
    assert "Infer 5 min CPU (s)" in md and f"busy (1-min load average up to {cores + 2.5:.1f} on {cores} cores)" in md
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.5, 1.0, 1.0))
    assert evaluate(model, clips, (0.5, 1.0), timing=True, threads=1)["timing_busy"] == 0


def test_evaluation_targets(tmp_path, trained):
    model = ck.MappingModel.load(trained)
    clip = tiny_clip(100, 4, synthetic=True)
    gt = evaluate_model(model, [clip], target="gt")
    det = evaluate_model(model, [clip], target="detected")
    assert gt["target"] == "gt"
    assert det["target"] == "detected" and det["mouth_mse"] != gt["mouth_mse"]
    assert evaluate_model(model, [clip])["mouth_mse"] == gt["mouth_mse"]  # auto = gt for synthetic
    with pytest.raises(InputError):
        evaluate_model(model, [tiny_clip(100, 4)], target="gt")
    with pytest.raises(InputError):
        evaluate_model(model, [clip], target="visible")  # no synth_truth.npz in memory


def test_visible_target_on_a_synthetic_clip(tmp_path, trained):
    from studio.data.synth import synthesize

    clip = synthesize(tmp_path / "syn", 4.0, 0, render=False)
    model = ck.MappingModel.load(trained)
    gt = evaluate_model(model, [clip], span=(0.5, 1.0), target="gt")
    vis = evaluate_model(model, [clip], span=(0.5, 1.0), target="visible")
    assert vis["frames"] == gt["frames"] == 50
    assert vis["mouth_mse"] == pytest.approx(gt["mouth_mse"], rel=1e-6)  # hidden points are jaw-contour only
