"""Leave-speaker-out with enough held-out speech to tell methods apart (issue 22).

``python -m studio loso-groups --out docs/results/loso [--folds 3] [--seeds 0 1 2]``

Design (leave-GROUP-out, stated because it is not one prior per speaker): the real speakers of
``studio.train.prior.SPEAKERS`` are dealt into ``--folds`` folds (:func:`speaker_folds`); for each
fold and seed a prior is trained on the other folds only, and every speaker of the fold is scored
by that prior, which never saw them. Each clip: the FIRST 70 % is the person's footage (the
template, and what the fine-tune trains on), its LAST 30 % speech is dubbed onto it and scored
against the real mouth of that last 30 % (``studio.train.evaluate`` dubbing protocol).

Most speakers have one clip of 1-15 s, i.e. 0.3-4.5 s held out, where chance alone reaches |r|
0.2-0.3. Scores are therefore pooled into score groups of at least ``MIN_HELD_SECONDS`` of held
out speech (:func:`score_groups`): a speaker with that much on their own is their own group, the
others are pooled by corpus (their clips' z-scored series concatenated; each clip still scored
by a prior that never saw its speaker). Per group and method: r at lag 0, r at the best lag
within +-``SYNC_LAG`` frames and that lag, and a permutation null: the prediction against the
real mouth cut into ``NULL_SEGMENT_S`` segments (shorter in clips under ``MIN_SEGMENTS`` of
them) shuffled within each clip, best lag within
+-``SYNC_LAG`` likewise, ``NULL_PERMUTATIONS`` times; its 95th percentile is reported.

Methods: ``prior`` (the prior alone with the person's offset and the recording's timing measured
on the first 70 %), ``finetune`` (``studio.train.prior.fine_tune`` on the first 70 %: the prior
alone below ~5.5 s of clip, where there is nothing to hold out), and the floors ``template`` (no
lip sync: the template's own mouth) and ``energy`` (the speech's log RMS energy).
Also, in the fold that holds Obama (a prior without any Obama footage): the prior fine-tuned on
obama_clip1 + obama_clip2, obama_clip3's speech dubbed onto obama_clip1 (``obama_clip3`` rows).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

SPLIT = 0.7
SYNC_LAG = 3  # frames each way: the field's "best offset" search for sync
MIN_HELD_SECONDS = 8.0
NULL_PERMUTATIONS = 200
NULL_SEGMENT_S = 1.0
MIN_SEGMENTS = 4  # a short clip's real mouth is cut into at least this many segments for the null
METHODS = ("prior", "finetune", "template", "energy")
LABELS = {"prior": "prior alone (+ timing from the footage)", "finetune": "prior + fine-tune (first 70 %)",
          "template": "no lip sync (template)", "energy": "speech log energy"}
# Corpus of a speaker for pooling (by name prefix); speakers of media/video are "presenters".
CORPORA = {"grid": "GRID/LRS3/MEAD/LRW (short corpus clips)", "lrs3": "GRID/LRS3/MEAD/LRW (short corpus clips)",
           "spv": "GRID/LRS3/MEAD/LRW (short corpus clips)", "mead": "GRID/LRS3/MEAD/LRW (short corpus clips)",
           "lrw": "GRID/LRS3/MEAD/LRW (short corpus clips)", "pcavs": "VoxCeleb2 (PC-AVS)", "lrs2": "LRS2 (BBC)"}
OTHER_GROUP = "presenters and interviews"


@dataclass(frozen=True)
class Series:
    """One clip's held-out frames under one method: prediction and real inner-lip opening (T,)
    each, valid frames (T,) bool, the clip's fps."""

    clip: str
    speaker: str
    method: str
    pred: np.ndarray
    truth: np.ndarray
    valid: np.ndarray
    fps: float


def speaker_folds(seconds: dict[str, float], folds: int) -> dict[str, int]:
    """Speakers -> fold index: by total footage, longest first, dealt round-robin (each fold gets
    a share of long and short speakers)."""
    order = sorted(seconds, key=lambda s: (-seconds[s], s))
    return {s: i % folds for i, s in enumerate(order)}


def score_groups(held_seconds: dict[str, float], min_seconds: float = MIN_HELD_SECONDS) -> dict[str, str]:
    """Speaker -> score group: themselves with ``min_seconds`` of held-out speech, else their
    corpus (``CORPORA`` by name prefix) when the corpus pools that much, else ``OTHER_GROUP``
    (which may stay under ``min_seconds`` when there is not more speech)."""
    out = {}
    for s, sec in held_seconds.items():
        out[s] = s if sec >= min_seconds else CORPORA.get(s.split("_")[0], OTHER_GROUP)
    total: dict[str, float] = {}
    for s, g in out.items():
        total[g] = total.get(g, 0.0) + held_seconds[s]
    # a corpus with too little held-out speech of its own joins the pooled rest
    return {s: (OTHER_GROUP if g != s and total[g] < min_seconds else g) for s, g in out.items()}


def _filled(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    keep = np.flatnonzero(valid)
    if len(keep) == 0:
        return np.zeros(len(x))
    return np.interp(np.arange(len(x)), keep, np.asarray(x, np.float64)[keep])


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)


def pooled_r(pairs: Sequence[tuple[np.ndarray, np.ndarray]], lag: int = 0) -> float:
    """Pearson r over the concatenation of per-clip z-scored (x, ref) pairs, x shifted back by
    ``lag`` frames within each clip (x[t + lag] vs ref[t], as ``metrics.lagged_r``)."""
    from studio.metrics import pearson

    xs, ys = [], []
    for x, y in pairs:
        n = len(y)
        if n - abs(lag) < 2:
            continue
        a, b = (x[lag:n], y[:n - lag]) if lag >= 0 else (x[:n + lag], y[-lag:n])
        xs.append(_z(a))
        ys.append(_z(b))
    if not xs:
        return float("nan")
    return pearson(np.concatenate(xs), np.concatenate(ys))


def best_pooled(pairs, max_lag: int = SYNC_LAG) -> tuple[int, float]:
    """(lag, r) of :func:`pooled_r` maximised over |lag| <= max_lag (ties: smallest |lag|)."""
    lags = sorted(range(-max_lag, max_lag + 1), key=abs)
    rs = [pooled_r(pairs, k) for k in lags]
    i = int(np.nanargmax(rs))
    return lags[i], float(rs[i])


def permutation_null(pairs, fps: Sequence[float], n: int = NULL_PERMUTATIONS, segment_s: float = NULL_SEGMENT_S,
                     max_lag: int = SYNC_LAG, seed: int = 0) -> np.ndarray:
    """Best-lag pooled r of each prediction against its real mouth cut into ``segment_s``
    segments shuffled within each clip: (n,) values of r under 'no sync, same signals'."""
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for k in range(n):
        shuffled = []
        for (x, y), f in zip(pairs, fps):
            seg = max(2, min(int(round(segment_s * f)), len(y) // MIN_SEGMENTS))
            parts = [y[i:i + seg] for i in range(0, len(y), seg)]
            order = rng.permutation(len(parts))
            shuffled.append((x, np.concatenate([parts[j] for j in order])))
        out[k] = best_pooled(shuffled, max_lag)[1]
    return out


def group_scores(series: Sequence[Series], seed: int = 0) -> dict[str, float]:
    """Pooled scores of one group's series (one method): frames, r at lag 0, best r and lag
    within +-SYNC_LAG, the permutation null's 95th percentile."""
    pairs = [(_filled(s.pred, s.valid), _filled(s.truth, s.valid)) for s in series]
    lag, r_best = best_pooled(pairs)
    null = permutation_null(pairs, [s.fps for s in series], seed=seed)
    return {"frames": int(sum(len(s.truth) for s in series)),
            "seconds": float(sum(len(s.truth) / s.fps for s in series)),
            "r0": pooled_r(pairs, 0), "r_best": r_best, "lag": lag, "null95": float(np.percentile(null, 95))}


# -- running the models ----------------------------------------------------------------------------
def clip_series(model, clip, speaker: str, method: str, template=None, speech_span=(SPLIT, 1.0),
                template_span=(0.0, SPLIT)) -> list[Series]:
    """The dubbing protocol's held-out series of one clip: ``model`` (a MappingModel; None for
    the floors only) dubs the speech span onto the template span -> [Series] for ``method`` (or
    for template and energy when model is None)."""
    from studio.metrics import log_energy, openings
    from studio.train.evaluate import dub_predict, on_speech_frames, track

    sp = track(clip, speech_span)
    tpl = track(template if template is not None else clip, template_span)
    truth = openings(sp.truth)["inner"]
    name = Path(str(clip.directory)).name
    if model is None:
        idx = np.minimum(np.arange(max(1, int(round(sp.frames / sp.fps * tpl.fps)))), tpl.frames - 1)
        from studio.models.checkpoint import extend_template

        idx = extend_template(len(idx), tpl.frames)
        templ = openings(on_speech_frames(tpl.landmarks[idx], tpl.fps, sp))["inner"]
        return [Series(name, speaker, "template", templ, truth, sp.valid, sp.fps),
                Series(name, speaker, "energy", log_energy(sp.energy), truth, sp.valid, sp.fps)]
    dub, _ = dub_predict(model, sp, tpl)
    pred = openings(on_speech_frames(dub, tpl.fps, sp))["inner"]
    return [Series(name, speaker, method, pred, truth, sp.valid, sp.fps)]


def run_fold(fold_speakers: Sequence[str], prior_dir: Path, shared: Path, data: Path, work: Path) -> list[Series]:
    """Every method on every clip of the fold's speakers (the prior never saw them)."""
    from studio.models import checkpoint as ck
    from studio.train.prior import fine_tune, real_clips
    from studio.train.windows import clip_arrays

    out: list[Series] = []
    for speaker, clip in real_clips(shared, data, only=list(fold_speakers)):
        name = Path(str(clip.directory)).name
        first = [clip_arrays(clip, (0.0, SPLIT))]
        models = {"prior": fine_tune(first, work / name / "prior", prior=prior_dir, plan=None),
                  "finetune": fine_tune(first, work / name / "finetune", prior=prior_dir)}
        for method, path in models.items():
            out += clip_series(ck.MappingModel.load(path), clip, speaker, method)
        out += clip_series(None, clip, speaker, "floors")
    return out


def obama_transfer(prior_dir: Path, shared: Path, data: Path, work: Path) -> list[Series]:
    """Prior without Obama, fine-tuned on obama_clip1 + obama_clip2; clip3's speech dubbed onto
    clip1 (the issue-10 set-up's template), scored against clip3's real mouth."""
    from studio.models import checkpoint as ck
    from studio.train.prior import fine_tune, real_clips

    clips = {Path(str(c.directory)).name: c for _, c in real_clips(shared, data, only=["obama"])}
    tune = fine_tune([clips["obama_clip1"], clips["obama_clip2"]], work / "obama12", prior=prior_dir)
    out = []
    for method, path in (("finetune", tune), ("prior", fine_tune([clips["obama_clip1"], clips["obama_clip2"]],
                                                                  work / "obama12_prior", prior=prior_dir, plan=None))):
        out += clip_series(ck.MappingModel.load(path), clips["obama_clip3"], "obama", method,
                           template=clips["obama_clip1"], speech_span=(0.0, 1.0), template_span=(0.0, 1.0))
    out += clip_series(None, clips["obama_clip3"], "obama", "floors", template=clips["obama_clip1"],
                       speech_span=(0.0, 1.0), template_span=(0.0, 1.0))
    return out


def save_series(path: Path, series: Sequence[Series]) -> None:
    meta = [{"clip": s.clip, "speaker": s.speaker, "method": s.method, "fps": s.fps} for s in series]
    arrays = {}
    for i, s in enumerate(series):
        arrays[f"p{i}"], arrays[f"t{i}"], arrays[f"v{i}"] = s.pred, s.truth, s.valid
    np.savez_compressed(path, meta=json.dumps(meta), **arrays)


def load_series(path: Path) -> list[Series]:
    z = np.load(path, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    return [Series(m["clip"], m["speaker"], m["method"], z[f"p{i}"], z[f"t{i}"], z[f"v{i}"].astype(bool), m["fps"])
            for i, m in enumerate(meta)]


def summarise(by_seed: dict[int, list[Series]]) -> list[dict]:
    """Rows per (seed, group, method) of :func:`group_scores`; floors once (they do not depend
    on the seed)."""
    rows = []
    for seed, series in sorted(by_seed.items()):
        held = {}
        for s in series:
            if s.method == "energy":
                held[s.speaker] = held.get(s.speaker, 0.0) + len(s.truth) / s.fps
        groups = score_groups(held)
        for group in dict.fromkeys(groups.values()):
            members = [sp for sp, g in groups.items() if g == group]
            for method in METHODS:
                if method in ("template", "energy") and seed != min(by_seed):
                    continue
                sel = [s for s in series if s.speaker in members and s.method == method]
                if sel:
                    rows.append({"seed": seed, "group": group, "speakers": len(members), "method": method,
                                 **group_scores(sel, seed)})
    return rows


def table(rows: Sequence[dict], obama: Sequence[dict] = (), note: str = "") -> str:
    """Markdown: per group, each method's best-lag r (lag) / lag-0 r, mean over seeds [min-max],
    and the null's 95th percentile; the median over groups."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    groups = list(dict.fromkeys(df["group"]))
    info = df.drop_duplicates("group").set_index("group")
    lines = [note, "", "| group (speakers, held-out s) | " + " | ".join(LABELS[m] for m in METHODS)
             + " | null 95th pct (prior / fine-tune) |", "|" + "---|" * (len(METHODS) + 2)]
    med = {m: [] for m in METHODS}
    for g in groups:
        cells = []
        for m in METHODS:
            d = df[(df.group == g) & (df.method == m)]
            if d.empty:
                cells.append("n/a")
                continue
            med[m].append(d.r_best.mean())
            rng = f" [{d.r_best.min():.2f}-{d.r_best.max():.2f}]" if len(d) > 1 else ""
            cells.append(f"{d.r_best.mean():.3f}{rng} (lag {int(round(d.lag.median())):+d}) / {d.r0.mean():.3f}")
        nulls = [df[(df.group == g) & (df.method == m)].null95.mean() for m in ("prior", "finetune")]
        lines.append(f"| {g} ({int(info.loc[g, 'speakers'])}, {info.loc[g, 'seconds']:.1f}) | " + " | ".join(cells)
                     + f" | {nulls[0]:.3f} / {nulls[1]:.3f} |")
    lines.append("| **median over groups** | " + " | ".join(f"{np.median(v):.3f}" if v else "n/a" for v in med.values())
                 + " | |")
    if len(obama):
        o = pd.DataFrame(list(obama))
        lines += ["", "Obama left out of the prior entirely; obama_clip3's speech dubbed onto obama_clip1 "
                  "(best-lag r (lag) / lag-0 r; null 95th pct):", "",
                  "| method | r |", "|---|---|"]
        for m in METHODS:
            d = o[o.method == m]
            if not d.empty:
                rng = f" [{d.r_best.min():.2f}-{d.r_best.max():.2f}]" if len(d) > 1 else ""
                lines.append(f"| {LABELS[m].replace('first 70 %', 'obama_clip1 + obama_clip2')} | "
                             f"{d.r_best.mean():.3f}{rng} (lag {int(round(d.lag.median())):+d}) / {d.r0.mean():.3f}; "
                             f"null {d.null95.mean():.3f} |")
    return "\n".join(lines) + "\n"


def run(out: Path, shared: Path, work: Path, seeds: Sequence[int], folds: int, only_folds: Sequence[int] | None = None,
        audio_norm: str | None = None):
    """Train the fold priors, score, write ``groups_runs.csv`` and ``groups_table.md``."""
    import pandas as pd

    from studio.train.prior import AUDIO_NORM, SPEAKERS, prior_preset, train_prior

    audio_norm = audio_norm or AUDIO_NORM

    data = work / "data"
    seconds: dict[str, float] = {}
    from studio.media import probe_video

    for src in SPEAKERS:
        info = probe_video(shared / "media" / src.video)
        seconds[src.speaker] = seconds.get(src.speaker, 0.0) + info.frames / info.fps
    fold_of = speaker_folds(seconds, folds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "folds.json").write_text(json.dumps(fold_of, indent=1, sort_keys=True))
    for seed in seeds:
        for k in range(folds):
            if only_folds is not None and k not in only_folds:
                continue
            path = work / f"series_seed{seed}_fold{k}.npz"
            if path.exists():
                continue
            held = [s for s, f in fold_of.items() if f == k]
            run_dir = work / f"seed{seed}" / f"fold{k}"
            log.info("seed %d fold %d: prior without %s", seed, k, ", ".join(held))
            prior_dir = train_prior(run_dir / "prior", shared=shared, work=data, exclude=held, seed=seed, with_test=True,
                                    preset=prior_preset(audio_norm))
            series = run_fold(held, prior_dir, shared, data, run_dir / "subjects")
            if "obama" in held:
                save_series(work / f"obama_seed{seed}.npz", obama_transfer(prior_dir, shared, data, run_dir / "subjects"))
            save_series(path, series)
    write_results(out, work, audio_norm)


def write_results(out: Path, work: Path, audio_norm: str = "utterance") -> str:
    import pandas as pd

    by_seed: dict[int, list[Series]] = {}
    for p in sorted(work.glob("series_seed*_fold*.npz")):
        seed = int(p.stem.split("_")[1][4:])
        by_seed.setdefault(seed, []).extend(load_series(p))
    rows = summarise(by_seed)
    obama = []
    for p in sorted(work.glob("obama_seed*.npz")):
        seed = int(p.stem[len("obama_seed"):])
        series = load_series(p)
        for m in METHODS:
            sel = [s for s in series if s.method == m]
            if sel:
                obama.append({"seed": seed, "method": m, **group_scores(sel, seed)})
    pd.DataFrame(rows).to_csv(out / "groups_runs.csv", index=False)
    if obama:
        pd.DataFrame(obama).to_csv(out / "groups_obama.csv", index=False)
    seeds = sorted(by_seed)
    note = (f"Speech features: logfbank, audio_norm={audio_norm}. Leave-group-out (folds of speakers, studio/train/loso_groups.py), seeds {seeds}: inner-lip opening "
            "of the dub vs the real mouth on the last 30 % of each clip (its own speech dubbed onto the first "
            f"70 %), pooled per score group (>= {MIN_HELD_SECONDS:g} s held out). Cells: best-lag r within "
            f"+-{SYNC_LAG} frames, mean over seeds [min-max] (the lag) / r at lag 0.")
    text = table(rows, obama, note)
    (out / "groups_table.md").write_text(text)
    return text


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from studio.config import REPO_ROOT

    parser.add_argument("--out", required=True, help="folder for groups_runs.csv and groups_table.md")
    parser.add_argument("--shared", default=os.environ.get("STUDIO_SHARED", str(REPO_ROOT.parent / "shared")))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one); reruns reuse its folds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--audio-norm", default=None, help="the priors' speech features (default: the shipped prior's)")
    parser.add_argument("--only-folds", type=int, nargs="*", default=None, help="run only these folds (parallel runs)")


def cli(args: argparse.Namespace) -> int:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="loso-groups-"))
    run(Path(args.out), Path(args.shared), work, args.seeds, args.folds, args.only_folds, args.audio_norm)
    log.info("\n%s", (Path(args.out) / "groups_table.md").read_text())
    return 0
