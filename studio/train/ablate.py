"""The paper's Table 1: ``python -m studio ablate CLIP_DIR... --seeds N --out DIR``.

Trains and evaluates all seven models (no-pose, g1-pose, g2-pose, ours, no-cheek, lstm,
bilstm) with N seeds each, all on the same split, and writes

    DIR/runs.csv      one row per (variant, seed): every metric of ``studio.train.evaluate``
    DIR/table.csv     one row per variant: mean and standard deviation over seeds
    DIR/table.md      the paper's Table 1 layout (mean ± std), plus pixel and jitter rows
    DIR/figure.html   plotly bar charts with error bars (std over seeds)
    DIR/models/V/seedS/  the checkpoints (a re-run skips the finished ones and resumes the rest;
                      --models-dir puts them elsewhere, e.g. to share them between targets)

Split: with ``--test CLIP_DIR...`` the models train on all of the CLIP_DIRs and are tested on the
held-out test clips; otherwise each clip's first (1 - test_fraction) of time trains (its last
20% of that is the early-stopping validation block) and the rest tests. Standard deviations are
sample standard deviations (ddof=1) over seeds.

Timing: training and the 5-minute inference in wall and in CPU seconds, with the machine's load at
the timing (``studio.train.evaluate``; ``--threads 1`` gives the steadiest numbers), and
``eval_seconds``, the wall time of each model's evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from studio.data.clip import Clip
from studio.errors import InputError
from studio.fsutil import atomic_path
from studio.models import VARIANT_LABELS, VARIANTS

log = logging.getLogger(__name__)

RUNS_CSV = "runs.csv"  # one row per trained model (variant, seed), appended as they finish
TABLE_CSV = "table.csv"

TABLE_ORDER = ("no-pose", "g1-pose", "g2-pose", "ours", "no-cheek", "ours-paper", "lstm", "bilstm")
LABELS = VARIANT_LABELS
METRICS = ("mouth_mse", "jaw_mse", "train_seconds", "train_cpu_seconds", "inference_seconds_5min",
           "inference_cpu_seconds_5min", "mouth_rmse_px", "jaw_rmse_px", "velocity_rmse_px", "epochs",
           # the machine at the inference timing (studio.train.evaluate.MachineLoad); timing_busy 0/1
           "load_1min", "cores", "timing_busy",
           "eval_seconds",  # wall seconds of one model's evaluation (the studio's run-time estimate uses it)
           # dubbing protocol (studio.train.evaluate.dubbing_pairs): the model's dub, and the paper protocol
           "dub_inner_r", "dub_inner_lag", "dub_inner_r_best", "dub_inner_amplitude", "dub_outer_r", "dub_chin_r",
           "dub_chin_amplitude", "dub_mouth_lmd", "template_inner_r", "energy_inner_r", "energy_inner_r_best",
           "paper_inner_r", "paper_chin_r", "paper_mouth_lmd")
# rows of table.md: (metric, label, scaled as an MSE)
ROWS = (("mouth_mse", "Mouth MSE", True), ("jaw_mse", "Jaw MSE", True),
        ("train_seconds", "Train (s)", False), ("train_cpu_seconds", "Train CPU (s)", False),
        ("inference_seconds_5min", "Infer 5 min (s)", False),
        ("inference_cpu_seconds_5min", "Infer 5 min CPU (s)", False),
        ("mouth_rmse_px", "Mouth RMSE (px @720)", False), ("jaw_rmse_px", "Jaw RMSE (px @720)", False),
        ("velocity_rmse_px", "Velocity error (px/frame @720)", False))
# rows of the dubbing-protocol table: (metric, label)
DUB_ROWS = (("dub_inner_r", "Dub: inner-lip opening r"), ("dub_inner_r_best", "Dub: r at best lag"),
            ("dub_inner_lag", "Dub: best lag (frames)"), ("dub_inner_amplitude", "Dub: amplitude (pred/real std)"),
            ("dub_outer_r", "Dub: outer-lip opening r"), ("dub_chin_r", "Dub: chin drop r"),
            ("dub_chin_amplitude", "Dub: chin amplitude"), ("dub_mouth_lmd", "Dub: mouth-shape LMD"),
            ("template_inner_r", "Reference: no lip sync (template mouth vs real) r"),
            ("paper_inner_r", "Paper protocol: inner-lip opening r"), ("paper_chin_r", "Paper protocol: chin r"),
            ("paper_mouth_lmd", "Paper protocol: mouth-shape LMD"))


def ablate(clips: Sequence[Clip], out_dir: str | os.PathLike[str], seeds: int = 3, preset: str = "cpu", *,
           test_clips: Sequence[Clip] | None = None, test_fraction: float = 0.2,
           variants: Sequence[str] = TABLE_ORDER, progress: bool = False, timing: bool = True,
           threads: int | None = None, target: str = "auto", models_dir: str | os.PathLike[str] | None = None,
           protocol: str = "dubbing", **train_overrides: Any):
    """Train + evaluate ``variants`` x ``seeds``; write the tables and figure; return table (DataFrame).

    ``protocol``: ``dubbing`` (default) also dubs each test clip's speech onto a template from
    another clip (:func:`dubbing_plan`) and adds the sync measures; ``paper`` only the MSEs.

    ``target``: what to compare with (see ``studio.train.evaluate.TARGETS``). ``models_dir``: where
    the checkpoints live (default out_dir/models); finished ones are reused, so a second table
    against another target costs only the evaluation.
    """
    import pandas as pd
    from tqdm import tqdm

    from studio.models.checkpoint import MappingModel
    from studio.train.evaluate import dubbing_pairs, evaluate
    from studio.train.mapping import train_mapping

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"Unknown variant(s) {unknown}.", f"Use some of: {', '.join(VARIANTS)}.")
    if seeds < 1:
        raise InputError("--seeds must be at least 1.", "Use e.g. --seeds 3.")
    if test_clips:
        train_span, test_span, tests = (0.0, 1.0), (0.0, 1.0), list(test_clips)
    else:
        if not 0.0 < test_fraction < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}.", "Use e.g. 0.2.")
        train_span, test_span, tests = (0.0, 1.0 - test_fraction), (1.0 - test_fraction, 1.0), list(clips)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = Path(models_dir) if models_dir is not None else out / "models"
    if protocol not in ("dubbing", "paper"):
        raise InputError(f"Unknown protocol {protocol!r}.", "Use dubbing or paper.")
    plan = dubbing_plan(clips, tests, train_span, test_span) if protocol == "dubbing" else []
    rows = []
    jobs = [(v, s) for s in range(seeds) for v in variants]  # a whole first seed comes first
    for variant, seed in tqdm(jobs, desc="ablation", unit="model", disable=not progress):
        ckpt = train_mapping(clips, variant, models / variant / f"seed{seed}", preset, seed,
                             span=train_span, progress=progress, **train_overrides)
        t0 = time.perf_counter()
        result = evaluate(ckpt, tests, test_span, timing=timing, threads=threads, target=target)
        if protocol == "dubbing":
            result.update(_dub_columns(dubbing_pairs(MappingModel.load(ckpt), plan)))
        result["eval_seconds"] = time.perf_counter() - t0
        log.info("%s seed %d: mouth %.4g jaw %s train %.0f s", variant, seed, result["mouth_mse"],
                 result["jaw_mse"], result["train_seconds"])
        rows.append({"variant": variant, **{k: result.get(k) for k in ("seed", *METRICS, "frames", "target")}})
        _write_csv(out / RUNS_CSV, pd.DataFrame(rows))
    runs = pd.DataFrame(rows)
    table = aggregate(runs)
    _write_csv(out / TABLE_CSV, table)
    with atomic_path(out / "table.md") as tmp:
        split = _split_text(test_clips, test_fraction) + f" Evaluation target: {'/'.join(sorted(set(runs['target'])))}."
        tmp.write_text(markdown_table(table, seeds=seeds, split=split))
    with atomic_path(out / "figure.html") as tmp:
        figure(table).write_html(str(tmp), include_plotlyjs="cdn", full_html=True)
    return table


def dubbing_plan(train_clips: Sequence[Clip], tests: Sequence[Clip], train_span: tuple[float, float],
                 test_span: tuple[float, float]) -> list[tuple]:
    """(speech clip, span, template clip, span) pairs for the dubbing protocol: each test clip's
    speech on the training part of ANOTHER clip (the next one in the list; a subject with one clip
    uses its own training part, other moments than the speech)."""
    pairs = []
    for i, clip in enumerate(tests):
        others = [c for c in train_clips if c is not clip and c.directory != clip.directory] or list(train_clips)
        pairs.append((clip, test_span, others[i % len(others)], train_span))
    return pairs


def _dub_columns(d: dict) -> dict:
    out = {}
    for row, prefix in (("dub", "dub"), ("template", "template"), ("energy", "energy"), ("paper", "paper")):
        for k, v in d.get(row, {}).items():
            out[f"{prefix}_{k}"] = v
    return out


def aggregate(runs) -> "Any":
    """runs (one row per variant x seed) -> one row per variant with <metric>_mean / _std."""
    import pandas as pd

    out = []
    for variant in [v for v in TABLE_ORDER if v in set(runs["variant"])]:
        sub = runs[runs["variant"] == variant]
        row: dict[str, Any] = {"variant": variant, "label": LABELS[variant], "seeds": len(sub)}
        for m in METRICS:
            vals = pd.to_numeric(sub[m], errors="coerce").dropna().to_numpy(float) if m in sub else np.zeros(0)
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else None
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else None)
        out.append(row)
    return pd.DataFrame(out)


def _num(v) -> str:
    """A table cell: 3 decimals, or n/a for a missing value."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _exponent(values: list[float]) -> int:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return int(math.floor(math.log10(min(vals)))) if vals else 0


def markdown_table(table, seeds: int | None = None, split: str = "") -> str:
    """The paper's Table 1 layout: one column per model, mean ± std per row."""
    cols = list(table["variant"])
    lines = ["| | " + " | ".join(LABELS[c] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    recs = {r["variant"]: r for r in table.to_dict("records")}
    for metric, label, is_mse in ROWS:
        e = _exponent([recs[c][f"{metric}_mean"] for c in cols]) if is_mse else 0
        head = f"{label} (10^{e})" if is_mse else label
        cells = []
        for c in cols:
            mean, std = recs[c][f"{metric}_mean"], recs[c][f"{metric}_std"]
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                cells.append("n/a")
            else:
                f = 10.0 ** -e
                digits = 3 if is_mse else (3 if abs(mean) < 1 else 2)
                cells.append(f"{mean * f:.{digits}f} ± {std * f:.{digits}f}")
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    if "dub_inner_r_mean" in table and table["dub_inner_r_mean"].notna().any():
        lines.append("| **Dubbing protocol** |" + " |" * len(cols))
        for metric, label in DUB_ROWS:
            cells = []
            for c in cols:
                mean, std = recs[c].get(f"{metric}_mean"), recs[c].get(f"{metric}_std")
                cells.append(f"{_num(mean)} ± {_num(std)}" if _num(mean) != "n/a" else "n/a")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        ref = recs[cols[0]]
        lines.append("")
        lines.append(f"Reference rows (same pairs, no model): no lip sync (the template's own mouth) inner r = "
                     f"{_num(ref.get('template_inner_r_mean'))}; speech log-energy linear fit inner r = "
                     f"{_num(ref.get('energy_inner_r_mean'))} (at its best lag "
                     f"{_num(ref.get('energy_inner_r_best_mean'))}).")
    notes = [
        "",
        f"Mean ± sample std over {seeds if seeds is not None else 'the'} seeds. {split}".rstrip(),
        "MSE: normalized coordinates (nose-centred, divided by the face scale = RMS radius of the stable "
        "brow/eye/nose points), mean over frames and x/y coordinates; Mouth = 20 mouth points, Jaw = 9 jaw "
        "points. px @720: point RMSE in a 720x720 crop where the face scale is 100 px. Train: wall seconds "
        "to early stop on this (shared) CPU; Train CPU: process CPU seconds. Infer: one pass over 5 min "
        "(7,500 frames), wall seconds; Infer CPU: the same pass in process CPU seconds (steady under load). "
        "LSTM/BiLSTM predict the mouth only (jaw n/a)." + _load_note(table),
        "Dubbing protocol: each test clip's speech drives the model with the pose and cheek points of a template "
        "taken from ANOTHER clip (what a user's dub does), compared with the test clip's real mouth "
        "(studio.metrics: openings in each face's own frame; lag > 0 = late). Paper protocol: the test clip's own "
        "pose and cheek (the paper's Table 1 conditions).",
    ]
    return "\n".join(lines + notes) + "\n"


def figure(table):
    """Plotly figure: bars with error bars (std over seeds) for the four Table 1 rows."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    def has(metric: str) -> bool:
        return f"{metric}_mean" in table and table[f"{metric}_mean"].notna().any()

    # CPU seconds where the table has them (steady on a shared machine), else the wall seconds
    panels = [("mouth_mse", "Mouth MSE"), ("jaw_mse", "Jaw MSE"),
              ("train_cpu_seconds", "Training, CPU s") if has("train_cpu_seconds")
              else ("train_seconds", "Training time (s)"),
              ("inference_cpu_seconds_5min", "Inference, 5 min audio, CPU s") if has("inference_cpu_seconds_5min")
              else ("inference_seconds_5min", "Inference, 5 min audio (s)")]
    dubbing = has("dub_inner_r")
    if dubbing:
        panels += [("dub_inner_r", "Dub: inner-lip opening r (real mouth)"),
                   ("dub_inner_amplitude", "Dub: amplitude (pred/real std)")]
    cols = 3 if dubbing else 2
    fig = make_subplots(rows=2, cols=cols, subplot_titles=[p[1] for p in panels])
    for i, (metric, title) in enumerate(panels):
        if f"{metric}_mean" not in table:
            continue
        sub = table[table[f"{metric}_mean"].notna()]
        row, col = (i % 2 + 1, i // 2 + 1) if dubbing else (i // 2 + 1, i % 2 + 1)
        fig.add_trace(go.Bar(x=list(sub["label"]), y=list(sub[f"{metric}_mean"]), name=title,
                             error_y={"type": "data", "array": list(sub[f"{metric}_std"]), "visible": True},
                             showlegend=False), row=row, col=col)
        if metric in ("mouth_mse", "jaw_mse", "inference_seconds_5min", "inference_cpu_seconds_5min"):
            fig.update_yaxes(type="log", row=row, col=col)
    fig.update_layout(title="Ablation (paper's Table 1 + dubbing protocol): mean ± std over seeds", height=800,
                      width=1100 if cols == 2 else 1500)
    return fig


def _load_note(table) -> str:
    """' Timed while the machine was busy ...' naming the models whose inference timing ran while the
    1-minute load average exceeded the cores (studio.train.evaluate.MachineLoad), else ''."""
    if "timing_busy_mean" not in table:
        return ""
    busy = table[_numeric(table["timing_busy_mean"]) > 0]
    if busy.empty:
        return ""
    load, cores = _numeric(busy["load_1min_mean"]).max(), _numeric(busy["cores_mean"]).max()
    where = "" if math.isnan(load) or math.isnan(cores) else \
        f" (1-min load average up to {load:.1f} on {cores:.0f} cores)"
    return f" Timed while the machine was busy{where}: {', '.join(busy['label'])}; their wall times include other work."


def _numeric(column):
    """A table column as floats (NaN for missing)."""
    import pandas as pd

    return pd.to_numeric(column, errors="coerce").astype(float)


def _split_text(test_clips, test_fraction: float) -> str:
    if test_clips:
        return f"Trained on the training clips, tested on {len(test_clips)} held-out clip(s)."
    return (f"Trained on the first {1 - test_fraction:.0%} of each clip's time, "
            f"tested on the last {test_fraction:.0%}.")


def _write_csv(path: Path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def add_cli_arguments(parser) -> None:
    parser.add_argument("clips", nargs="+", help="training clip folders (one subject)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--test", nargs="+", default=None, metavar="CLIP_DIR",
                        help="held-out test clips (default: the last --test-fraction of each clip)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--variants", nargs="+", default=list(TABLE_ORDER), choices=VARIANTS)
    parser.add_argument("--max-epochs", type=int, default=None, help="override the preset's max_epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the inference timing")
    parser.add_argument("--target", default="auto", choices=("auto", "gt", "visible", "detected"),
                        help="evaluation target (see `studio evaluate --help`)")
    parser.add_argument("--models-dir", default=None, help="checkpoint folder (default OUT/models; reused)")
    parser.add_argument("--protocol", default="dubbing", choices=("dubbing", "paper"),
                        help="dubbing (default): add the sync measures of each test clip's speech dubbed onto another "
                             "clip; paper: the paper's MSEs only")


def cli(args) -> int:
    from studio.train.mapping import load_clips

    table = ablate(load_clips(args.clips), args.out, args.seeds, args.preset,
                   test_clips=load_clips(args.test) if args.test else None, test_fraction=args.test_fraction,
                   variants=args.variants, progress=True, threads=args.threads, target=args.target,
                   models_dir=args.models_dir, max_epochs=args.max_epochs, protocol=args.protocol)
    print(json.dumps({"out": args.out, "variants": list(table["variant"]),
                      "mouth_mse": dict(zip(table["variant"], table["mouth_mse_mean"]))}))
    return 0
