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
    blocks, shift = align_timing(blocks, [estimate_audio_shift(prior, [b]) for b in blocks])
    assert shift == 0, f"the person's timing is {shift}, the experiments assume 0"
    return blocks


def wide_preset(channels: int) -> dict:
    preset = load_preset("cpu")
    preset["mapping_model"]["channels"] = channels
    return preset


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
    model = run(clips, out, experiment, seed)
    scores = dubbing_scores(MappingModel.load(model), track(Clip.load(clips / "obama_clip3")),
                            track(Clip.load(clips / "obama_clip1")))["dub"]
    print(json.dumps({"experiment": experiment, "seed": seed, "model": str(model),
                      **{k: round(float(v), 4) for k, v in scores.items() if k.startswith(("inner", "outer", "mouth"))}}))
