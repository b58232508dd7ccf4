"""Experiments on the issue-10 set-up that did not make it into the defaults (figures in
dubbing_protocol.md, "Tried after the refit").

Set-up: footage obama_clip1 + obama_clip2 + obama_weekly_address (preprocessed clip folders in
CLIPS, e.g. by ``python -m studio preprocess``), speech obama_clip3 onto the template obama_clip1;
every model is scored with ``studio.train.evaluate.dubbing_scores`` (predicted landmarks vs clip
3's real ones). One JSON line per run on stdout.

    STUDIO_WEIGHTS_DIR=../shared/weights python docs/results/tried_issue10.py CLIPS OUT EXPERIMENT SEED

EXPERIMENT:
  default        the shipped path: prior + fine-tune with refit (studio.train.prior.fine_tune)
  tempo          the same with 0.9x and 1.1x tempo copies of the (timing-aligned) footage added
  smooth         the same with training targets smoothed over time (Gaussian, sigma 1 frame)
  scratch-C      from scratch (no prior), per-recording timing, C channels (64 = the preset)
  prior-C        a C-channel prior trained as ``train-prior`` does, then fine-tuned as default
  weekly-test    the other way round: a prior trained without the weekly address, footage clip1 +
                 clip2 + clip3, speech = the weekly address onto clip1 (is the +2 lag on clip 3 a
                 property of the model or of the test recording?)

Every run also reports the scores with the model's timing moved by -1..+2 frames
(``by_shift``: what a fixed timing correction would do on this test recording).
"""
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from studio.audio import FEATURES_PER_VIDEO_FRAME as APF  # noqa: E402
from studio.config import load_preset  # noqa: E402
from studio.data.clip import Clip  # noqa: E402
from studio.models.checkpoint import MappingModel  # noqa: E402
from studio.models.identity import shift_audio  # noqa: E402
from studio.train.evaluate import dubbing_scores, track  # noqa: E402
from studio.train.mapping import train_mapping  # noqa: E402
from studio.train.prior import PRIOR_DIR, align_timing, estimate_audio_shift, fine_tune, train_prior  # noqa: E402
from studio.train.windows import ClipArrays, clip_arrays  # noqa: E402

FOOTAGE = ("obama_clip1", "obama_clip2", "obama_weekly_address")
SHARED = REPO.parent / "shared"


def stretch(b: ClipArrays, speed: float) -> ClipArrays:
    """The block played ``speed`` x as fast: round(T / speed) frames, every array read at
    t x speed by linear interpolation (audio features at their own 4x rate); a frame is valid
    when both neighbours it is read between are."""
    n = int(round(b.frames / speed))

    def resample(a: np.ndarray, rate: int = 1) -> np.ndarray:
        src = np.arange(len(a)) / rate
        dst = np.minimum(np.arange(n * rate) / rate * speed, src[-1])
        flat = a.reshape(len(a), -1)
        return np.stack([np.interp(dst, src, col) for col in flat.T], 1).reshape((n * rate,) + a.shape[1:]).astype(a.dtype)

    lo = np.minimum(np.floor(np.arange(n) * speed).astype(int), b.frames - 1)
    valid = b.valid[lo] & b.valid[np.minimum(lo + 1, b.frames - 1)]
    return ClipArrays(f"{b.name}@{speed:g}", b.start, resample(b.audio, APF), resample(b.pose), resample(b.cheek),
                      resample(b.talk), valid, b.fps, None if b.gt_talk is None else resample(b.gt_talk))


def aligned_footage(clips: Path, prior: Path = PRIOR_DIR) -> list[ClipArrays]:
    """The footage's blocks with each recording's audio aligned to the person's timing, as
    fine_tune does (the person's median shift is 0 on these three)."""
    blocks = [clip_arrays(Clip.load(clips / c), (0.0, 1.0)) for c in FOOTAGE]
    loaded = MappingModel.load(prior)
    blocks, shift = align_timing(blocks, [estimate_audio_shift(loaded, [b]) for b in blocks])
    assert shift == 0, f"the person's timing is {shift}, the experiments assume 0"
    return blocks


def wide_preset(channels: int) -> dict:
    preset = load_preset("cpu")
    preset["mapping_model"]["channels"] = channels
    return preset


def prior_without_weekly(out: Path) -> Path:
    """The prior's recipe on every in-sync real clip except the weekly address (clip 3 included)."""
    from studio.train.prior import PRIOR_TRAIN, real_clips

    pairs = [(p, c) for p, c in real_clips(SHARED, out / "data", with_test=True)
             if Path(str(c.directory)).name != "obama_weekly_address"]
    return train_mapping([c for _, c in pairs], "ours", out / "prior", "cpu", 0, persons=[p for p, _ in pairs],
                         **PRIOR_TRAIN)


def run(clips: Path, out: Path, experiment: str, seed: int) -> Path:
    if experiment == "default":
        return fine_tune([Clip.load(clips / c) for c in FOOTAGE], out, seed=seed)
    if experiment == "tempo":
        blocks = aligned_footage(clips)
        return fine_tune(blocks + [stretch(b, s) for s in (0.9, 1.1) for b in blocks], out, seed=seed,
                         refit=True, timing=False)
    if experiment == "smooth":
        from scipy.ndimage import gaussian_filter1d

        blocks = [dataclasses.replace(b, talk=gaussian_filter1d(b.talk, 1.0, axis=0, mode="nearest"))
                  for b in aligned_footage(clips)]
        return fine_tune(blocks, out, seed=seed, refit=True, timing=False)
    if experiment == "weekly-test":
        footage = [Clip.load(clips / c) for c in ("obama_clip1", "obama_clip2", "obama_clip3")]
        return fine_tune(footage, out / "subject", prior=prior_without_weekly(out), seed=seed, refit=True)
    kind, _, channels = experiment.partition("-")
    if kind == "scratch":
        return train_mapping(aligned_footage(clips), "ours", out, wide_preset(int(channels)), seed)
    if kind == "prior":
        prior = train_prior(out / "prior", shared=SHARED, work=out / "data", preset=wide_preset(int(channels)))
        return fine_tune([Clip.load(clips / c) for c in FOOTAGE], out / "subject", prior=prior, seed=seed)
    raise SystemExit(f"unknown experiment {experiment!r}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    clips, out, experiment, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    model = MappingModel.load(run(clips, out, experiment, seed))
    speech = track(Clip.load(clips / ("obama_weekly_address" if experiment == "weekly-test" else "obama_clip3")))
    template = track(Clip.load(clips / "obama_clip1"))
    keys = ("inner_r", "inner_lag", "inner_r_best", "inner_amplitude", "outer_r", "mouth_lmd")
    result = {"experiment": experiment, "seed": seed, "model": str(model.directory), "by_shift": {}}
    for extra in (0, -1, 1, 2):  # the speech heard `extra` frames earlier (studio.models.identity.shift_audio)
        heard = dataclasses.replace(speech, audio=shift_audio(speech.audio, extra))
        scores = dubbing_scores(model, heard, template)["dub"]
        row = {k: round(float(scores[k]), 4) for k in keys}
        if extra == 0:
            result.update(row)
        else:
            result["by_shift"][f"{extra:+d}"] = {k: row[k] for k in ("inner_r", "inner_lag")}
    print(json.dumps(result))
