"""Leave-one-speaker-out evaluation of the prior under the dubbing protocol.

``python -m studio loso --out docs/results/loso [--seeds 0 1 2] [--speakers obama,aoc]``

For each seed and each real speaker H of ``studio.train.prior.SPEAKERS``: train the prior without
H (every other speaker plus the synthetic heads), then for each clip of H build a subject from the
FIRST 70 % of the clip and dub the LAST 30 % of its own speech back onto that first part (the
template), scored against the real landmarks of the last 30 % (``studio.train.evaluate.
dubbing_pairs``: inner-lip opening r, best lag, amplitude). Methods:

- ``prior_raw``: the prior alone, with H's face-shape offset measured on the first 70 %;
- ``prior``: the same plus the recording's timing (``estimate_audio_shift``) on the first 70 %;
- ``scratch``: the default cascade trained on the first 70 % only (windows shrunk to fit, as for
  fine-tuning; "n/a" when the footage is too short to hold out a validation part);
- ``finetune``: the prior fine-tuned on the first 70 % (``studio.train.prior.fine_tune``);
- ``finetune10``: the prior fine-tuned on the first 10 s only (clips whose first 70 % is longer);
- ``template`` / ``energy``: the references (no lip sync; a linear fit of the speech's log energy).

Writes ``runs.csv`` (one row per seed, speaker, clip, method) and ``table.md`` (per speaker: mean
over seeds of the frame-weighted r over the speaker's clips, with the seeds' range).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("prior_raw", "prior", "scratch", "finetune", "finetune10", "template", "energy")
LABELS = {"prior_raw": "prior alone, no timing", "prior": "prior alone (+ timing from the footage)", "scratch": "from scratch (first 70 %)", "finetune": "prior + fine-tune (first 70 %)",
          "finetune10": "prior + fine-tune (first 10 s)", "template": "no lip sync (template)",
          "energy": "speech energy (linear fit)"}
SPLIT = 0.7


def results_dir():
    """Where the project's own LOSO results live (docs/results/loso): the studio shows them."""
    from studio.config import REPO_ROOT

    return REPO_ROOT / "docs" / "results" / "loso"


def evaluate_speaker(prior_dir: Path, clips, seed: int, work: Path) -> list[dict]:
    """All methods on each clip of one held-out speaker -> rows."""
    from studio.models import checkpoint as ck
    from studio.train.evaluate import dubbing_pairs
    from studio.train.mapping import train_mapping
    from studio.train.prior import adapt_prior, fine_tune, finetune_plan
    from studio.train.windows import clip_arrays

    rows = []
    for clip in clips:
        name = Path(str(clip.directory)).name
        seconds = clip.meta.frames / clip.meta.fps
        pair = [(clip, (SPLIT, 1.0), clip, (0.0, SPLIT))]
        first = [clip_arrays(clip, (0.0, SPLIT))]
        models: dict[str, Path | None] = {
            "prior_raw": adapt_prior(prior_dir, first, work / name / "prior_raw"),
            "prior": fine_tune(first, work / name / "prior", prior=prior_dir, plan=None)}
        plan = finetune_plan([first[0].frames])
        plan = None if plan is None else {**plan, "lr": 1e-3, "max_epochs": 60, "patience": 6, "calibrate": True}
        models["scratch"] = None if plan is None else train_mapping(
            first, "ours", work / name / "scratch", "cpu", seed, **plan)
        models["finetune"] = fine_tune(first, work / name / "finetune", prior=prior_dir, seed=seed)
        models["finetune10"] = None
        if seconds * SPLIT > 10.0 + 1e-6:
            ten = [clip_arrays(clip, (0.0, 10.0 / seconds))]
            models["finetune10"] = fine_tune(ten, work / name / "finetune10", prior=prior_dir, seed=seed)
        test_frames = clip.meta.frames - int(round(SPLIT * clip.meta.frames))
        refs = None
        for method, path in models.items():
            row = {"seed": seed, "clip": name, "method": method, "test_frames": test_frames,
                   "train_seconds": round(seconds * SPLIT, 2)}
            if path is None:
                rows.append({**row, "inner_r": np.nan, "inner_lag": np.nan, "inner_amplitude": np.nan})
                continue
            res = dubbing_pairs(ck.MappingModel.load(path), pair)
            refs = res
            d = res["dub"]
            cfg = ck.MappingModel.load(path).config.get("result", {})
            rows.append({**row, "inner_r": d["inner_r"], "inner_lag": d["inner_lag"],
                         "inner_amplitude": d["inner_amplitude"], "epochs": cfg.get("best_epoch")})
        for method in ("template", "energy"):
            d = refs.get(method, {}) if refs else {}
            rows.append({"seed": seed, "clip": name, "method": method, "test_frames": test_frames,
                         "train_seconds": round(seconds * SPLIT, 2), "inner_r": d.get("inner_r", np.nan),
                         "inner_lag": d.get("inner_lag", np.nan), "inner_amplitude": d.get("inner_amplitude", np.nan)})
    return rows


def run(out: Path, shared: Path, work: Path, seeds: Sequence[int], speakers: Sequence[str] | None = None,
        synthetic: int | None = None, keep: bool = False) -> "object":
    import pandas as pd

    from studio.train.prior import SYNTHETIC_HEADS, real_clips, speakers as all_speakers, train_prior

    synthetic = SYNTHETIC_HEADS if synthetic is None else synthetic

    out.mkdir(parents=True, exist_ok=True)
    speakers = list(speakers or all_speakers())
    runs_path = out / "runs.csv"
    done = pd.read_csv(runs_path) if runs_path.exists() else pd.DataFrame()
    for seed in seeds:
        for held in speakers:
            if len(done) and ((done["seed"] == seed) & (done["speaker"] == held)).any():
                continue
            log.info("seed %d: prior without %s", seed, held)
            run_dir = work / f"seed{seed}" / held
            prior_dir = train_prior(run_dir / "prior", shared=shared, work=work / "data", exclude=[held],
                                    synthetic=synthetic, seed=seed, with_test=True)
            clips = [c for _, c in real_clips(shared, work / "data", only=[held])]
            rows = evaluate_speaker(prior_dir, clips, seed, run_dir / "subjects")
            new = pd.DataFrame(rows).assign(speaker=held)
            done = pd.concat([done, new], ignore_index=True)
            done.to_csv(runs_path, index=False)
            if not keep:
                shutil.rmtree(run_dir / "subjects", ignore_errors=True)
    (out / "table.md").write_text(table(done))
    return done


def summary(runs) -> "object":
    """Per speaker and method: mean over seeds of the test-frame-weighted inner r over the clips."""
    import pandas as pd

    r = runs.dropna(subset=["inner_r"]).copy()
    r["w"] = r["inner_r"] * r["test_frames"]
    per_seed = r.groupby(["speaker", "method", "seed"]).agg(w=("w", "sum"), n=("test_frames", "sum"))
    per_seed["r"] = per_seed["w"] / per_seed["n"]
    g = per_seed.groupby(["speaker", "method"])["r"]
    return pd.DataFrame({"r": g.mean(), "lo": g.min(), "hi": g.max(), "seeds": g.count()}).reset_index()


def table(runs) -> str:
    s = summary(runs)
    speakers = list(dict.fromkeys(runs["speaker"]))
    secs = runs.groupby("speaker")["train_seconds"].agg(lambda x: f"{x.min():g}-{x.max():g}" if x.min() != x.max()
                                                        else f"{x.min():g}")
    head = "| method | " + " | ".join(f"{sp} ({secs[sp]} s)" for sp in speakers) + " | median of the others |"
    lines = ["Inner-lip opening r of the dub vs the real mouth (last 30 % of each clip, its own speech dubbed "
             "onto the first 70 %); mean over seeds [min-max]. Prior trained without the speaker.", "",
             head, "|" + "---|" * (len(speakers) + 2)]
    for m in METHODS:
        cells, others = [], []
        for sp in speakers:
            row = s[(s.speaker == sp) & (s.method == m)]
            if row.empty:
                cells.append("n/a")
                continue
            v = row.iloc[0]
            cells.append(f"{v.r:.3f} [{v.lo:.2f}-{v.hi:.2f}]" if v.seeds > 1 else f"{v.r:.3f}")
            if sp != "obama":
                others.append(v.r)
        med = f"{np.median(others):.3f}" if others else "n/a"
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {med} |")
    return "\n".join(lines) + "\n"


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from studio.config import REPO_ROOT

    parser.add_argument("--out", required=True, help="folder for runs.csv and table.md")
    parser.add_argument("--shared", default=os.environ.get("STUDIO_SHARED", str(REPO_ROOT.parent / "shared")))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speakers", default="", help="comma-separated speakers (default: all in sync)")
    parser.add_argument("--synthetic", type=int, default=None, help="synthetic heads (default: the shipped prior's)")


def cli(args: argparse.Namespace) -> int:
    speakers = [s.strip() for s in args.speakers.split(",") if s.strip()] or None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="loso-"))
    runs = run(Path(args.out), Path(args.shared), work, args.seeds, speakers, args.synthetic)
    log.info("\n%s", table(runs))
    return 0
