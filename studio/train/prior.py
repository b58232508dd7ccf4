"""The multi-speaker prior and fine-tuning a new person from it.

``python -m studio train-prior --out presets/prior [--exclude obama] [--seed 0] [--synthetic N]``

The prior is the default cascade (``ours``: rigid conditioning, utterance audio normalization,
the cpu preset's loss) trained on every real speaker in ../shared whose audio is in sync with
their video (optionally plus synthetic heads with varied face shapes, ``--synthetic``; measured
to hurt, see ``SYNTHETIC_HEADS``), in canonical coordinates (``studio.models.identity``): each
person's face-shape offset is taken out of their targets, so the network learns articulation,
not faces; voices are augmented (``PRIOR_TRAIN``). It ships in ``presets/prior`` (~0.5 MB:
safetensors + JSON + small npz files) and works as-is for a person it never saw: their offset
is measured on the footage being dubbed.

Fine-tuning (:func:`fine_tune`, used by ``make-subject``): a subject's ``ours`` mapping starts
from the prior, keeps its statistics and PCA, and trains on the person's footage with early
stopping whose epoch 0 is the prior itself, so what it chooses is never worse than the prior on
the held-out end of the footage. With a minute or more of footage that run only chooses (the
epoch count and the articulation gain) and the model is then trained again on all of it
(``refit``). How much it trains depends on how much footage there is (:func:`finetune_plan`):
windows shrink to fit short clips, and below about 4 s there is no held-out part worth the
name, so the subject is the prior with the person's offset (:func:`adapt_prior`). Either way the
recording's timing is measured first on the footage's own speech (:func:`estimate_audio_shift`):
on Obama with the prior trained without him it moved the prior's inner-lip r from 0.38 to 0.47.

Speakers (``SPEAKERS``): Obama (4 clips, ~100 s), Katie Hill, Alexandria Ocasio-Cortez and a
young man outdoors (7-8 s each, their own audio tracks), and 29 clips of 29 more people from
media/speakers (lip-reading corpus samples, VoxCeleb2 crops, presenters: 1-60 s each; licences and
dataset terms in presets/prior/MODEL_CARD.md). Left out (``EXCLUDED``): andrew_clip_1/2 and
reagan_clip1, whose separate wav files are not the speech of their videos, theresa_may_5s, whose
mouth does not follow its audio at any small lag, and four media/speakers clips that fail the same
check. Measured by leave-group-out (``studio.train.loso_groups``, docs/results/prior_issue22.md).

``torchrun --standalone --nproc_per_node=N -m studio train-prior ...`` trains it data-parallel
(``studio.train.distributed``; rank 0 preprocesses the clips into the ``--work`` cache first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from studio.config import PRESETS_DIR
from studio.errors import InputError
from studio.fsutil import atomic_path, read_json, write_json_atomic
from studio.train import distributed

log = logging.getLogger(__name__)

PRIOR_DIR = PRESETS_DIR / "prior"
VARIANT = "ours"


@dataclass(frozen=True)
class Source:
    """One real clip of ../shared: the video and (when the video has none) its speech file."""

    speaker: str
    video: str  # relative to shared/media
    audio: str | None = None
    test: bool = False  # the project's held-out test speech: not in the shipped prior


SPEAKERS: tuple[Source, ...] = (
    Source("obama", "video/obama_clip1.mp4", "video/obama_clip1.wav"),
    Source("obama", "video/obama_clip2.mp4", "video/obama_clip2.wav"),
    Source("obama", "video/obama_clip3.mp4", "video/obama_clip3.wav", test=True),
    Source("obama", "video/obama_weekly_address.mp4"),
    Source("katie_hill", "video/katie_hill.mp4"),
    Source("aoc", "video/aoc.mp4"),
    Source("young_man", "video/young_man_outdoors.mp4"),
    # media/speakers (manifest.csv): one clip = one person (the manifest's "same person as" notes
    # name clips that are not in ../shared), each named after its file.
    Source("lp_d6", "speakers/lp_d6.mp4"),
    Source("pcavs_00086", "speakers/pcavs_00086.mp4"),
    Source("pcavs_00010", "speakers/pcavs_00010.mp4"),
    Source("pcavs_00098", "speakers/pcavs_00098.mp4"),
    Source("pcavs_517600055", "speakers/pcavs_517600055.mp4"),
    Source("pcavs_731200067", "speakers/pcavs_731200067.mp4"),
    Source("edt_pose_source2", "speakers/edt_pose_source2.mp4"),
    Source("grid_pwij3p", "speakers/grid_pwij3p.mpg"),
    Source("grid_lbax4n", "speakers/grid_lbax4n.mpg"),
    Source("grid_lbbc2a", "speakers/grid_lbbc2a.mpg"),
    Source("grid_lrwp9a", "speakers/grid_lrwp9a.mpg"),
    Source("grid_lwbsza", "speakers/grid_lwbsza.mpg"),
    Source("grid_sbia1a", "speakers/grid_sbia1a.mpg"),
    Source("grid_sbwe5n", "speakers/grid_sbwe5n.mpg"),
    Source("lrs3_00002", "speakers/lrs3_00002.mp4"),
    Source("lrs3_0Fi83BHQsMA_00002", "speakers/lrs3_0Fi83BHQsMA_00002.mp4"),
    Source("lrs3_OzA6jRYjVQs_00004", "speakers/lrs3_OzA6jRYjVQs_00004.mp4"),
    Source("lrs3_PbgB2TaYhio_00007", "speakers/lrs3_PbgB2TaYhio_00007.mp4"),
    Source("lrs3_QoT0S2vu9m4_00002", "speakers/lrs3_QoT0S2vu9m4_00002.mp4"),
    Source("spv_test_BImnT7lcLDE_00003_right", "speakers/spv_test_BImnT7lcLDE_00003_right.mp4"),
    Source("mead_W023_level_2_surprised_010", "speakers/mead_W023_level_2_surprised_010.mp4"),
    Source("spv_M003_level_1_angry_014_right", "speakers/spv_M003_level_1_angry_014_right.mp4"),
    Source("mimic_Trump_10s", "speakers/mimic_Trump_10s.mp4"),
    Source("lrs2_00001", "speakers/lrs2_00001.mp4"),
    Source("lrs2_00002", "speakers/lrs2_00002.mp4"),
    Source("lrs2_00009", "speakers/lrs2_00009.mp4"),
    Source("lrs2_00016", "speakers/lrs2_00016.mp4"),
    Source("vv_noisy_restaurant", "speakers/vv_noisy_restaurant.mp4"),
    Source("lrw_astorfi_sample2", "speakers/lrw_astorfi_sample2.mp4"),
)
# Measured with :func:`audio_sync` (docs/results/prior.md): the speech's log energy against the
# inner-lip opening, best r within +-0.3 s. In sync: Obama 0.33-0.47, Katie Hill 0.24, AOC 0.23,
# young man 0.53. Left out (best r within +-0.3 s, and within +-2 s):
EXCLUDED: dict[str, str] = {
    "andrew": "andrew_clip_1.wav -0.01 / 0.12, andrew_clip_2.wav 0.13 / 0.14: not the video's speech",
    "reagan": "reagan_clip1.wav 0.04 / 0.21 (at -1.0 s): not the video's speech",
    "theresa_may": "theresa_may_5s.mp4 0.08 / 0.41 at +1.4 s on a 5 s clip: no reliable sync",
    # media/speakers clips that fail the same check (best r within +-0.3 s below MIN_SPEECH_SYNC;
    # the manifest admitted them only after high-passing, or at lags beyond 0.3 s; figures in
    # docs/results/speakers_sync/sync.csv):
    "vx_RD_Radio10_0_clip_0": "r 0.07 within +-0.3 s on a 2 s clip (manifest: raw 0.29 at +10 frames, pass-hp)",
    "pcavs_796100172": "r 0.03 within +-0.3 s (manifest: raw 0.23 at -12 frames, pass-hp)",
    "pcavs_681600002": "r 0.01 within +-0.3 s (manifest: raw 0.05, pass-hp; assembled from frames + a separate audio file)",
    "lrs2_00019": "r 0.01 within +-0.3 s (manifest: 0.26 at 0 with its own detector)",
}
# Speech for the synthetic heads: none of it is a real speaker's own footage audio.
SYNTH_SPEECH = ("speech/english_60s_16k.wav", "speech/abstract_reading.mp3", "speech/macron_48k_stereo.wav",
                "speech/radio_address_16k_stereo.wav", "speech/mandarin_news_48k.wav",
                "speech/german_24bit_extensible.wav")
SYNTH_SECONDS = 30.0
# TrainConfig overrides: the real clips of most speakers are 7-8 s, so validation takes their last
# quarter in 32-frame windows, and training stops 16 frames before it (not a whole window).
# Voice augmentation (TrainConfig.audio_warp, freq_masks) for voices the prior never heard.
PRIOR_TRAIN = {"val_fraction": 0.25, "val_window": 32, "val_stride": 16, "gap": 16,
               "audio_warp": 0.1, "freq_masks": 2}
# Synthetic heads: measured on Obama left out (docs/results/prior.md), prior alone / fine-tuned
# inner r 0.376 / 0.422 with none, 0.343 / 0.416 with 2, 0.224 / 0.326 with 6: their rule-made
# articulation pulls the prior away from real mouths, and the face-shape variety they would add
# is what the identity offsets already remove. So the shipped prior uses none.
SYNTHETIC_HEADS = 0


AUDIO_NORM = "utterance"  # the prior's speech features (CascadeConfig.audio_norm), chosen by loso-groups


def prior_preset(audio_norm: str | None = None, preset: str = "cpu") -> dict:
    """The preset dict the prior trains with: ``preset`` with the prior's ``audio_norm``."""
    from studio.config import load_preset

    data = load_preset(preset)
    data["mapping_model"] = {**data.get("mapping_model", {}), "audio_norm": audio_norm or AUDIO_NORM}
    return data


def prior_fingerprint(prior: str | os.PathLike[str] = PRIOR_DIR) -> str:
    """The prior's training fingerprint ("none" when there is no prior): one-step subjects built
    from another prior are rebuilt."""
    try:
        return str(json.loads((Path(prior) / "config.json").read_text()).get("fingerprint", "none"))
    except (OSError, ValueError):
        return "none"


def speakers() -> list[str]:
    return list(dict.fromkeys(s.speaker for s in SPEAKERS))


# -- data ------------------------------------------------------------------------------------------
def real_clips(shared: Path, work: Path, only: Sequence[str] | None = None, exclude: Sequence[str] = (),
               with_test: bool = True):
    """Preprocess (cached in ``work``) the real speakers' clips -> [(speaker, Clip)]."""
    from studio.data.preprocess import preprocess

    out = []
    for src in SPEAKERS:
        if src.speaker in exclude or (only is not None and src.speaker not in only) or (src.test and not with_test):
            continue
        video = shared / "media" / src.video
        audio = shared / "media" / src.audio if src.audio else None
        clip = preprocess(video, work / "real" / Path(src.video).stem, audio=audio, progress=False)
        out.append((src.speaker, clip))
    return out


def synthetic_clips(shared: Path, work: Path, n: int, seconds: float = SYNTH_SECONDS):
    """``n`` synthetic heads, each its own face shape (seed) and speech -> [(label, Clip)]."""
    from studio.data.clip import Clip
    from studio.data.synth import SynthConfig, synthesize

    out = []
    for k in range(n):
        folder = work / "synth" / f"head{k}"
        try:
            clip = Clip.load(folder)
        except Exception:
            speech = shared / "media" / SYNTH_SPEECH[k % len(SYNTH_SPEECH)]
            clip = synthesize(folder, seconds, 7000 + k, speech=speech, render=False,
                              config=SynthConfig(shape_variation=1.5))
        out.append((f"synth{k}", clip))
    return out


def train_prior(out: str | os.PathLike[str], *, shared: str | os.PathLike[str], work: str | os.PathLike[str],
                exclude: Sequence[str] = (), synthetic: int = SYNTHETIC_HEADS, seed: int = 0, preset: str | dict | None = None,
                with_test: bool = False, **train_overrides) -> Path:
    """Train the prior on the real speakers (minus ``exclude``; the test clip obama_clip3 only
    ``with_test``) and ``synthetic`` heads. ``preset``: default :func:`prior_preset`."""
    if preset is None:
        preset = prior_preset()
    from studio.train.mapping import train_mapping

    shared, work = Path(shared), Path(work)
    unknown = set(exclude) - set(speakers())
    if unknown:
        raise InputError(f"Unknown speaker(s) {sorted(unknown)}.", f"Known: {', '.join(speakers())}.")
    with distributed.current().main_first():  # under torchrun: rank 0 fills the cache, the others read it
        pairs = (real_clips(shared, work, exclude=exclude, with_test=with_test)
                 + synthetic_clips(shared, work, synthetic))
    persons = [p for p, _ in pairs]
    log.info("training the prior on %d clips of %d people (%s)", len(pairs), len(set(persons)),
             ", ".join(dict.fromkeys(persons)))
    settings = {**PRIOR_TRAIN, **train_overrides}
    return train_mapping([c for _, c in pairs], VARIANT, out, preset, seed, persons=persons, **settings)


# -- fine-tuning -----------------------------------------------------------------------------------
MIN_FINETUNE_WINDOW = 24  # frames; below this the held-out part cannot judge a fine-tune
FINETUNE_VAL_FRACTION = 0.25


def finetune_plan(block_frames: Sequence[int]) -> dict | None:
    """TrainConfig overrides for fine-tuning on blocks of these lengths, or None (prior only).

    The held-out part is the last quarter of each block; the window is the largest multiple of 8
    (at most 64) that fits into it; training windows stop 8 frames before it (the fine-tune is
    judged on frames it never saw; the receptive field's overlap is a small bias that the
    comparison with the prior shares).
    """
    longest = max(block_frames, default=0)
    window = min(64, int(FINETUNE_VAL_FRACTION * longest) // 8 * 8)
    if window < MIN_FINETUNE_WINDOW:
        return None
    return {"window": window, "stride": 4, "val_fraction": FINETUNE_VAL_FRACTION, "gap": 8,
            "val_stride": max(8, window // 2), "lr": 3e-4, "max_epochs": 20, "patience": 4,
            "batch_size": 16, "calibrate": False}


def scratch_plan(block_frames: Sequence[int]) -> dict | None:
    """TrainConfig overrides for training from scratch on footage of these lengths: {} when the
    preset's 64-frame windows fit (a clip of 320+ frames), the fine-tune's shrunk windows with the
    preset's optimizer for shorter footage, None when there is too little to train at all."""
    if max(block_frames, default=0) >= 320:
        return {}
    plan = finetune_plan(block_frames)
    if plan is None:
        return None
    return {**plan, "lr": 1e-3, "max_epochs": 60, "patience": 6, "calibrate": True}


def fine_tune(clips, out: str | os.PathLike[str], *, prior: str | os.PathLike[str] = PRIOR_DIR,
              seed: int = 0, span: tuple[float, float] = (0.0, 1.0), plan: dict | None | str = "auto",
              preset: str = "cpu", timing: bool = True, refit: bool | None = None) -> Path:
    """A subject's ``ours`` mapping from the prior: fine-tuned when the footage allows, else the
    prior with the person's offset. ``clips``: Clip objects or ClipArrays of one person (their
    own speech).

    ``timing``: every recording has its own audio/video offset (on Obama's four recordings the
    mouth leads the sound by 2 to 9 frames). Each clip's shift is estimated on its own
    (:func:`estimate_audio_shift`) and its audio aligned with it before fine-tuning, so the
    network learns one timing instead of a blur of several; the median shift is kept as the
    person's timing for new speech. Measured on the issue-10 protocol (subject from obama_clip1,
    clip2 and the weekly address; clip3's speech onto clip1): rendered inner r 0.469 -> 0.532,
    predicted 0.491 -> 0.530, amplitude 0.70 -> 0.78, against one shift for all clips.

    ``refit``: early stopping needs held-out footage, and with enough footage the held-out quarter
    is better used to choose than left out. A first run (kept in ``out/.select``) trains on the
    first three quarters and picks the epoch count and the articulation gain on the last; the
    model is then trained again from the prior on ALL the footage for that many epochs and keeps
    the first run's gain. If the prior itself wins the first run, the prior is the result. None
    (auto): refit when the footage is at least ``REFIT_MIN_SECONDS`` long (:func:`should_refit`).
    Measured (docs/results/dubbing_protocol.md, prior.md): 84 s of Obama (issue-10 protocol),
    4 seeds: inner r 0.542 -> 0.570, every seed gains; one 14-24 s clip of a person the prior
    never saw (leave-one-speaker-out, 4 clips x 3 seeds): 0.485 -> 0.464, where a quarter of a
    short clip chooses the epoch count too noisily. The threshold lies between the two measured
    regimes; it was not tuned further."""
    from studio.train.mapping import train_mapping
    from studio.train.windows import ClipArrays, clip_arrays

    blocks = [c if isinstance(c, ClipArrays) else clip_arrays(c, span) for c in clips]
    if not blocks:
        raise InputError("No footage to build the mapping from.", "Give at least one video of the person.")
    if plan == "auto":
        plan = finetune_plan([b.frames for b in blocks])
    shift = 0
    if timing:
        from studio.models.checkpoint import MappingModel

        loaded = MappingModel.load(prior)
        shifts = [estimate_audio_shift(loaded, [b]) for b in blocks]
        blocks, shift = align_timing(blocks, shifts)
        log.info("timing: per-clip audio shifts %s, the person's %+d", shifts, shift)
    if plan is None:
        log.info("no fine-tuning (%d frames of footage): the prior with this person's face shape and timing",
                 sum(b.frames for b in blocks))
        return adapt_prior(prior, blocks, out, audio_shift=shift)
    if refit is None:
        refit = should_refit(sum(b.frames / b.fps for b in blocks))
    if not refit:
        return train_mapping(blocks, VARIANT, out, preset, seed, base=prior, audio_shift=shift, **plan)
    out = Path(out)
    select = train_mapping(blocks, VARIANT, out / SELECT_DIR, preset, seed, base=prior, audio_shift=shift, **plan)
    chosen = read_json(select / "config.json", f"{select} has no config.json.",
                       "Run the fine-tune again.")["result"]
    epochs = int(chosen["best_epoch"])
    if epochs == 0:
        log.info("the prior beat every fine-tuned epoch on the held-out footage: keeping the prior")
        files = sorted((f for f in select.iterdir() if f.is_file()), key=lambda f: f.name == "config.json")
        for f in files:  # the first run's checkpoint (the prior) is the result; config.json last
            with atomic_path(out / f.name) as tmp:
                shutil.copyfile(f, tmp)
        return out
    log.info("refit: %d epochs (chosen on the held-out quarter) on all the footage", epochs)
    train_mapping(blocks, VARIANT, out, preset, seed, base=prior, audio_shift=shift,
                  **{**plan, "val_fraction": 0.0, "max_epochs": epochs, "patience": epochs + 1})
    _keep_selection(select, out, chosen)
    return out


SELECT_DIR = ".select"  # inside a refitted checkpoint: the held-out run that chose its epochs and gain
REFIT_MIN_SECONDS = 60.0  # footage from which the fine-tune refits on all of it (15 s held out to choose)


def should_refit(footage_seconds: float) -> bool:
    """Whether :func:`fine_tune` (auto) refits on all of this much footage after choosing."""
    return footage_seconds >= REFIT_MIN_SECONDS


def _keep_selection(select: Path, out: Path, chosen: dict) -> None:
    """The refitted checkpoint ``out`` takes the held-out run's articulation gain (its own run had
    nothing held out to calibrate on) and records what was chosen."""
    from studio.models.conditioning import CALIBRATION_NAME

    gain = select / CALIBRATION_NAME
    if gain.exists():
        with atomic_path(out / CALIBRATION_NAME) as tmp:
            shutil.copyfile(gain, tmp)
    else:
        (out / CALIBRATION_NAME).unlink(missing_ok=True)
    config = read_json(out / "config.json", f"{out} has no config.json.", "Run the fine-tune again.")
    config["result"].update(articulation_gain=chosen.get("articulation_gain", 1.0),
                            refit={"epochs": int(chosen["best_epoch"]), "select_val_loss": chosen.get("best_val_loss"),
                                   "base_val_loss": chosen.get("base_val_loss")})
    write_json_atomic(out / "config.json", config)


def align_timing(blocks: Sequence, shifts: Sequence[int]) -> tuple[list, int]:
    """Blocks of several recordings, each with its own audio shift (video frames, see
    :func:`estimate_audio_shift`) -> (the blocks with their audio moved so that all share the
    median shift, that median). Training on the result and storing the median as the
    checkpoint's ``audio_shift`` applies each block's own shift, and the person's typical one to
    new speech."""
    from studio.models.identity import shift_audio

    if len(shifts) != len(blocks):
        raise ValueError(f"{len(shifts)} shifts for {len(blocks)} blocks")
    shift = int(round(float(np.median(shifts)))) if len(shifts) else 0
    return [dataclasses.replace(b, audio=shift_audio(b.audio, s - shift)) if s != shift else b
            for b, s in zip(blocks, shifts)], shift


MAX_SHIFT = 8  # video frames searched each way by estimate_audio_shift
MIN_SHIFT_GAIN = 0.02  # r a shift must gain over none to be used (0.03 before issue 22: the many-speaker
# prior's r varies less with the shift; on its leave-group-out, seed 0, 0.02 and 0.03 give the same table)


def estimate_audio_shift(prior, blocks, max_shift: int = MAX_SHIFT) -> int:
    """The recording's timing for the prior: the shift (video frames, ``identity.shift_audio``)
    of the footage's own speech that best aligns the prior's predicted inner-lip opening with the
    footage's real one (frame-weighted r over the blocks; 0 unless it gains ``MIN_SHIFT_GAIN``).
    Uses the footage only -- never the speech being dubbed. ``prior``: a checkpoint folder or an
    already loaded MappingModel (one load for many recordings)."""
    from studio.models.identity import shift_audio
    from studio.models import checkpoint as ck
    from studio.train.mapping import opening_features
    from studio.metrics import pearson

    model = prior if isinstance(prior, ck.MappingModel) else ck.MappingModel.load(prior)
    usable = [b for b in blocks if int(b.valid.sum()) >= 25 and float(np.abs(b.audio).sum()) > 0]
    if not usable:
        return 0
    scores = {}
    for s in range(-max_shift, max_shift + 1):
        total, weight = 0.0, 0
        for b in usable:
            pred = model.predict(shift_audio(b.audio, s), b.pose, b.cheek, fps=b.fps)
            o_pred = opening_features(pred)[:, :3].mean(axis=1)[b.valid]
            o_true = opening_features(b.talk)[:, :3].mean(axis=1)[b.valid]
            n = int(b.valid.sum())
            total += pearson(o_pred, o_true) * n
            weight += n
        scores[s] = total / weight
    best = max(scores, key=lambda k: (scores[k], -abs(k)))
    log.info("timing: best audio shift %+d frames (r %.3f, unshifted %.3f)", best, scores[best], scores[0])
    return best if scores[best] - scores[0] >= MIN_SHIFT_GAIN else 0


def adapt_prior(prior: str | os.PathLike[str], blocks, out: str | os.PathLike[str], audio_shift: int = 0) -> Path:
    """A checkpoint folder that is the prior, predicting for the person of ``blocks`` (with the
    recording's ``audio_shift``, see :func:`estimate_audio_shift`)."""
    from studio.models import conditioning as cond
    from studio.models import checkpoint as ck
    from studio.train.mapping import _load_base, to_canonical, write_identity

    base = _load_base(prior, VARIANT)
    out = Path(out)
    canon, offsets = to_canonical(blocks, None)
    fingerprint = _adapt_fingerprint(base, offsets, audio_shift)
    try:
        done = json.loads((out / ck.CONFIG_NAME).read_text())
    except (OSError, ValueError):
        done = None
    if isinstance(done, dict) and done.get("fingerprint") == fingerprint:
        return out
    (out / ck.CONFIG_NAME).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(prior)
    for name in (ck.WEIGHTS_NAME, ck.NORM_NAME, cond.CONDITIONING_NAME, cond.CALIBRATION_NAME):
        if (src / name).exists():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src / name, tmp)
    write_identity(out, canon, offsets, base.pca, audio_shift)
    config = {**base.config, "fingerprint": fingerprint,
              "data": {"clips": [b.name for b in blocks], "fps": float(np.median([b.fps for b in blocks])),
                       "train_frames": 0, "val_frames": 0, "frames": int(sum(b.frames for b in blocks))},
              "result": {"epochs": 0, "best_epoch": 0, "stopped": "prior_only",
                         "articulation_gain": base.gain.gain if base.gain is not None else 1.0},
              "identity": {"persons": [""], "base": str(prior), "base_fingerprint": base.config.get("fingerprint"),
                           "audio_shift": int(audio_shift)}}
    write_json_atomic(out / ck.CONFIG_NAME, config)
    return out


def _adapt_fingerprint(base, offsets: dict, audio_shift: int) -> str:
    import hashlib

    h = hashlib.sha256(f"{base.config.get('fingerprint')}/{audio_shift}".encode())
    for delta in offsets.values():
        h.update(np.ascontiguousarray(delta, np.float32).tobytes())
    return "prior-" + h.hexdigest()[:16]


# -- CLI -------------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from studio.config import REPO_ROOT

    parser.add_argument("--out", default=str(PRIOR_DIR), help="checkpoint folder (default: presets/prior)")
    parser.add_argument("--shared", default=os.environ.get("STUDIO_SHARED", str(REPO_ROOT.parent / "shared")),
                        help="the shared media folder (default: ../shared)")
    parser.add_argument("--work", default=None, help="cache for preprocessed and synthetic clips (default: ~/.cache/lip-sync-studio/prior_data)")
    parser.add_argument("--exclude", default="", help="comma-separated speakers to leave out (e.g. obama)")
    parser.add_argument("--synthetic", type=int, default=SYNTHETIC_HEADS,
                        help="synthetic heads with varied face shapes to add (default %(default)s; see SYNTHETIC_HEADS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--audio-norm", default=None, help=f"speech feature normalisation (default {AUDIO_NORM}; utterance, heq, none)")


def cli(args: argparse.Namespace) -> int:
    out = Path(args.out)
    work = Path(args.work) if args.work else Path.home() / ".cache" / "lip-sync-studio" / "prior_data"
    exclude = tuple(s.strip() for s in args.exclude.split(",") if s.strip())
    with distributed.process_group():  # under torchrun: data-parallel over its processes
        train_prior(out, shared=args.shared, work=work, exclude=exclude, synthetic=args.synthetic, seed=args.seed,
                    max_epochs=args.max_epochs, preset=prior_preset(args.audio_norm))
        result = json.loads((out / "config.json").read_text())["result"]
        log.info("prior written to %s: %s", out, result)
    return 0


MIN_SPEECH_SYNC = 0.1  # audio_sync r within +-0.3 s below which the footage's sound is not its speech


def speech_problem(clips) -> str | None:
    """Why the footage's own sound cannot teach the mapping (None: it can): no audio track,
    silence, or sound the mouth does not follow (music, a voice-over, a dubbed track)."""
    from studio.audio import frame_energy
    from studio.media import read_audio

    voiced, synced = False, []
    for clip in clips:
        if clip.audio_path is None or clip.meta.audio_seconds <= 0:
            continue
        energy = frame_energy(read_audio(clip.audio_path), clip.meta.frames, float(clip.meta.fps))
        if float(np.max(energy, initial=0.0)) < 1e-4:
            continue
        voiced = True
        synced.append(audio_sync(clip, 0.3)[1])
    if not voiced:
        return "The footage has no audible sound of its own."
    if max(synced) < MIN_SPEECH_SYNC:
        return (f"The footage's sound does not follow its mouth (r = {max(synced):.2f} at best): "
                "it is probably music, a voice-over or another language track.")
    return None


def audio_sync(clip, max_lag_s: float = 2.0) -> tuple[float, float]:
    """Does a clip's audio go with its video? (best lag in seconds (> 0: the mouth moves after the
    sound), r there) of the speech's log energy against the inner-lip opening, lags within
    +-``max_lag_s``. Speech that belongs to the video peaks at 0.3-0.5 within a few frames."""
    from studio.audio import frame_energy
    from studio.media import read_audio
    from studio.metrics import best_lag, log_energy, openings

    fps = float(clip.meta.fps)
    energy = log_energy(frame_energy(read_audio(clip.audio_path), clip.meta.frames, fps))
    inner = openings(clip.landmarks)["inner"]
    keep = np.flatnonzero(clip.valid)
    inner = np.interp(np.arange(len(inner)), keep, inner[keep])
    lag, r = best_lag(inner, energy, int(round(max_lag_s * fps)))
    return lag / fps, r
