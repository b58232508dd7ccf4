"""The Ablations tab without gradio: where runs live, the table as shown, a plain reading of it,
and how long a run will take.

Runs. Every ablation the studio starts writes its own folder and never another's::

    <ablations>/<subject>/runs/<YYYYmmdd-HHMMSS>-<session>/
        run.json             who started it, with which settings, the machine's load then
        runs.csv, table.*    what ``studio ablate`` writes (studio.train.ablate)

A session is shown its own newest finished run, else the table the subject ships in its
``ablation/`` folder (the reference: the studio never writes there). Pressing Run again with the
same settings after a cancel resumes the session's unfinished run (its finished models are kept).

Timing. The table's time columns are CPU seconds: training, the process's CPU time to early
stopping; inference, one pass over 5 minutes of speech on one thread. Other jobs on the machine
barely change CPU time, unlike wall time. Each model also records the 1-minute load average and
the cores at its timing (studio.train.evaluate.MachineLoad); a time taken while the load exceeded
the cores is marked ``*``. Tables written before CPU timing show wall seconds, and say so.

Estimate. seconds = STARTUP_SECONDS + seeds x sum over variants of (epochs x seconds per epoch
+ seconds of one model's evaluation). Measured on this subject's earlier trainings (its own models
and earlier ablation runs' checkpoints): the seconds per epoch (wall) and the epochs early stopping
took; a variant not measured yet takes the median of those measured, with nothing measured
DEFAULT_EPOCH_SECONDS; the epochs never exceed the run's maximum (the full maximum when no measured
training stopped early). The evaluation: the median ``eval_seconds`` of earlier runs' runs.csv,
else EVAL_SECONDS.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from studio.fsutil import write_json_atomic
from studio.models import VARIANT_LABELS
from studio.train.ablate import RUNS_CSV, TABLE_CSV
from studio.ui.session import safe_name

RUNS_DIR = "runs"
RUN_JSON = "run.json"
REFERENCE_DIR = "ablation"  # a subject's shipped Table 1, read only
MSE_SCALE = 1e3  # MSE cells are shown x 10^3 (the legend says so)
SIGNIFICANT = 3  # every cell: the mean to 3 significant digits, its std to the same decimals
MAX_DECIMALS = 4
EVAL_SECONDS = 5.0  # per model: the evaluation and the 5-minute inference timing, a rough constant
STARTUP_SECONDS = 10.0  # per run: the child process imports torch and loads the clips, a rough constant
DEFAULT_EPOCH_SECONDS = 3.0  # nothing measured on this subject yet (cpu preset, a minute of footage)

LSTM_NOTE = "LSTM/BiLSTM predict the mouth only (jaw n/a)."
LEGEND = (
    "**How to read the table.** Each cell: mean ± sample standard deviation over the seeds, 3 significant "
    "digits (the mean alone with one seed). **Mouth MSE / Jaw MSE**: mean squared error of the 20 mouth / 9 jaw "
    "points, ×10⁻³, in face units (points relative to the nose, divided by the face's size), the test clip's "
    "own head pose (the paper's Table 1); lower is better. **Dub lip r**: correlation between the predicted and "
    "the real inner-lip opening when the speech is dubbed onto another clip of the person (1 = in perfect "
    "sync); higher is better. **Train CPU s**: CPU seconds to train one model to early stopping. **Infer CPU "
    "s**: CPU seconds to predict 5 minutes of speech on one thread. CPU seconds stay about the same when other "
    "jobs share the machine; * marks a time taken while the machine was busy (load above its cores). "
    + LSTM_NOTE)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


# -- runs -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSettings:
    """What a run trains: variants, seeds per variant, the epoch cap (None: the preset's) and the preset."""

    variants: tuple[str, ...]
    seeds: int
    max_epochs: int | None
    preset: str

    @property
    def models(self) -> int:
        return len(self.variants) * self.seeds


@dataclass(frozen=True)
class RunInfo:
    """One run's run.json: the session that started it, when, its settings, and the machine then
    (1-minute load average, usable cores, other studio jobs running) and the estimate it was shown."""

    folder: Path
    session_id: str
    started: float
    settings: RunSettings
    load_1min: float | None = None
    cores: int = 0
    other_jobs: int = 0
    estimate_seconds: float | None = None

    @property
    def finished(self) -> bool:
        return (self.folder / TABLE_CSV).is_file()

    def describe(self) -> str:
        """'your run of 14:03:07 (2 variants × 3 seeds)'."""
        s = self.settings
        when = time.strftime("%H:%M:%S", time.localtime(self.started))
        return f"your run of {when} ({_count(len(s.variants), 'variant')} × {_count(s.seeds, 'seed')})"

    def machine_text(self) -> str:
        """When the run started: the load and the other studio jobs (a sentence), or ''."""
        if self.load_1min is None and not self.other_jobs:
            return ""
        parts = []
        if self.load_1min is not None and self.cores:
            parts.append(f"the load average was {self.load_1min:.1f} on {self.cores} cores")
        if self.other_jobs:
            parts.append(f"{self.other_jobs} other studio job{'s were' if self.other_jobs > 1 else ' was'} running")
        return "When this run started, " + " and ".join(parts) + "."


def read_run(folder: str | Path) -> RunInfo | None:
    """A run folder's :class:`RunInfo`, or None when it has no readable run.json."""
    folder = Path(folder)
    try:
        data = json.loads((folder / RUN_JSON).read_text())
        s = data["settings"]
        settings = RunSettings(tuple(s["variants"]), int(s["seeds"]), s.get("max_epochs"), str(s["preset"]))
        return RunInfo(folder, str(data["session_id"]), float(data["started"]), settings, data.get("load_1min"),
                       int(data.get("cores") or 0), int(data.get("other_jobs") or 0), data.get("estimate_seconds"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_run(info: RunInfo) -> None:
    """Write ``info`` as its folder's run.json (atomically; the folder is created)."""
    info.folder.mkdir(parents=True, exist_ok=True)
    data = asdict(info)
    data.pop("folder")
    data["settings"]["variants"] = list(info.settings.variants)
    write_json_atomic(info.folder / RUN_JSON, data)


def session_runs(root: str | Path, session_id: str) -> list[RunInfo]:
    """The runs under ``root`` that ``session_id`` started, newest first."""
    runs = [read_run(d) for d in sorted((Path(root) / RUNS_DIR).glob("*")) if d.is_dir()]
    own = [r for r in runs if r is not None and session_id and r.session_id == session_id]
    return sorted(own, key=lambda r: r.started, reverse=True)


def run_folder(root: str | Path, session_id: str, settings: RunSettings, now: float | None = None) -> tuple[Path, bool]:
    """(folder, resumed) for a new run of ``session_id``: its newest run when that one did not finish
    and had the same settings (it resumes), else a new folder named by the time and the session."""
    own = session_runs(root, session_id)
    if own and not own[0].finished and own[0].settings == settings:
        return own[0].folder, True
    now = time.time() if now is None else now
    base = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{safe_name(session_id)[:16] or 'anonymous'}"
    folder, k = Path(root) / RUNS_DIR / base, 1
    while folder.exists():
        k += 1
        folder = Path(root) / RUNS_DIR / f"{base}-{k}"
    return folder, False


def results_folder(root: str | Path, subject_dir: str | Path, session_id: str) -> tuple[Path, RunInfo | None]:
    """Where a session's table is read from: (its newest finished run, its RunInfo), else
    (the subject's reference folder, None)."""
    for run in session_runs(root, session_id):
        if run.finished:
            return run.folder, run
    return Path(subject_dir) / REFERENCE_DIR, None


# -- the table as shown -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """A column of the table on screen: ``metric`` of table.csv (its _mean / _std), times ``scale``.
    ``wall``: the wall-clock metric a table from before CPU timing has instead, shown as ``wall_header``."""

    metric: str
    header: str
    scale: float = 1.0
    wall: str | None = None
    wall_header: str = ""

    @property
    def timed(self) -> bool:
        return self.wall is not None


COLUMNS = (
    Column("mouth_mse", "Mouth MSE", MSE_SCALE),
    Column("jaw_mse", "Jaw MSE", MSE_SCALE),
    Column("dub_inner_r", "Dub lip r"),
    Column("train_cpu_seconds", "Train CPU s", wall="train_seconds", wall_header="Train wall s"),
    Column("inference_cpu_seconds_5min", "Infer CPU s", wall="inference_seconds_5min", wall_header="Infer wall s"),
)
HEADERS = ["model", *(c.header for c in COLUMNS), "seeds"]
# shares of the page's width, so the table fits without scrolling sideways (cells wrap instead)
COLUMN_WIDTHS = ["16%", *["15%"] * len(COLUMNS), "9%"]


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def decimals(value: float) -> int:
    """Decimals that show ``value`` to SIGNIFICANT digits (0 to MAX_DECIMALS)."""
    if value == 0:
        return SIGNIFICANT - 1
    return min(MAX_DECIMALS, max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))))


def format_cell(mean: Any, std: Any = None, seeds: int = 1) -> str:
    """'1.94 ± 0.17': the mean to 3 significant digits, the std to the same decimals; the mean alone
    with fewer than two seeds (a std of one seed means nothing); 'n/a' without a value."""
    m = _number(mean)
    if m is None:
        return "n/a"
    d = decimals(m)
    text = f"{m + 0.0:.{d}f}"
    s = _number(std)
    return f"{text} ± {abs(s):.{d}f}" if seeds >= 2 and s is not None else text


def _source(table, col: Column) -> tuple[str, str] | None:
    """(metric, header) a table has for ``col``: its own, else the wall-clock one, else None."""
    for metric, header in ((col.metric, col.header), (col.wall, col.wall_header)):
        if metric and f"{metric}_mean" in table and table[f"{metric}_mean"].notna().any():
            return metric, header
    return None


def _seeds(rec: Mapping) -> int:
    v = _number(rec.get("seeds"))
    return int(v) if v is not None else 1


def _busy(rec: Mapping) -> bool:
    return (_number(rec.get("timing_busy_mean")) or 0.0) > 0


def _label(rec: Mapping) -> str:
    label = rec.get("label")
    return label if isinstance(label, str) and label else VARIANT_LABELS.get(rec["variant"], rec["variant"])


def table_view(table):
    """table.csv (one row per variant, <metric>_mean / _std) -> the DataFrame on screen: model,
    up to five metric columns with short headers (units in :data:`LEGEND`), seeds; one number
    format (:func:`format_cell`); times taken on a busy machine marked ' *'."""
    import pandas as pd

    recs = table.to_dict("records")
    out: dict[str, list] = {"model": [_label(r) for r in recs]}
    for col in COLUMNS:
        source = _source(table, col)
        if source is None:
            continue
        metric, header = source
        cells = []
        for r in recs:
            mean, std = _number(r.get(f"{metric}_mean")), _number(r.get(f"{metric}_std"))
            cell = format_cell(None if mean is None else mean * col.scale, None if std is None else std * col.scale,
                               _seeds(r))
            cells.append(cell + " *" if col.timed and cell != "n/a" and _busy(r) else cell)
        out[header] = cells
    out["seeds"] = [_seeds(r) for r in recs]
    return pd.DataFrame(out)


# -- the reading --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """A metric the reading can judge: ``higher`` is better or lower is."""

    metric: str
    name: str
    higher: bool
    scale: float = 1.0


MAIN_METRICS = (Metric("dub_inner_r", "lip sync when dubbing (Dub lip r, higher is better)", True),
                Metric("mouth_mse", "mouth error (Mouth MSE ×10⁻³, lower is better)", False, MSE_SCALE))


@dataclass(frozen=True)
class Verdict:
    """The best variant on a metric against the runner-up: both means, the margin, and the seed
    spread it is judged against (the larger of the two sample stds; None with one seed)."""

    metric: Metric
    winner: str
    runner_up: str
    best: float
    second: float
    spread: float | None
    seeds: int

    @property
    def margin(self) -> float:
        return abs(self.best - self.second)

    @property
    def beyond_spread(self) -> bool | None:
        return None if self.spread is None else self.margin > self.spread


def verdict(table, metric: Metric) -> Verdict | None:
    """Who wins on ``metric`` and by how much (None with fewer than two variants measured on it)."""
    rows = []
    for r in table.to_dict("records"):
        mean = _number(r.get(f"{metric.metric}_mean"))
        if mean is not None:
            std = _number(r.get(f"{metric.metric}_std"))
            rows.append((mean * metric.scale, None if std is None else std * metric.scale, _seeds(r), _label(r)))
    if len(rows) < 2:
        return None
    rows.sort(key=lambda x: -x[0] if metric.higher else x[0])
    (best, s1, n1, winner), (second, s2, n2, runner) = rows[0], rows[1]
    seeds = min(n1, n2)
    spread = None if seeds < 2 or s1 is None or s2 is None else max(s1, s2)
    return Verdict(metric, winner, runner, best, second, spread, seeds)


def _fmt(value: float, like: float) -> str:
    return f"{value + 0.0:.{decimals(like)}f}"


def verdict_text(v: Verdict) -> str:
    """One plain sentence: winner, both values, the margin, and whether it is beyond the seed spread."""
    margin = _fmt(v.margin, v.best)
    rel = f" ({100 * v.margin / abs(v.second):.0f}% lower)" if v.second and not v.metric.higher else ""
    head = (f"On {v.metric.name}, **{v.winner}** wins with {_fmt(v.best, v.best)} against "
            f"{_fmt(v.second, v.best)} for {v.runner_up}, a margin of {margin}{rel}")
    if v.spread is None:
        return head + "; with one seed there is no seed spread to judge it by (run 2 or more seeds)."
    spread = _fmt(v.spread, v.best)
    if v.beyond_spread:
        return head + f", beyond the seed spread (std up to {spread} over {v.seeds} seeds): a real difference."
    return (head + f", within seed spread (std up to {spread} over {v.seeds} seeds): not a reliable difference; "
            "more seeds could tell.")


def reading(table) -> str:
    """A short reading of a results table: the main metric (lip sync when dubbed when the table has
    it, else mouth MSE) and, under it, mouth MSE (the paper's metric)."""
    lines = []
    for metric in MAIN_METRICS:
        v = verdict(table, metric)
        if v is not None:
            lines.append(verdict_text(v))
    if not lines:
        return "**Reading.** Only one variant has results: nothing to compare."
    lines[0] = "**Reading.** Main metric: " + lines[0][0].lower() + lines[0][1:]
    return " ".join(lines)


def timing_text(table, run: RunInfo | None = None) -> str:
    """What the time columns are, which models were timed on a busy machine, the machine at the
    run's start (a paragraph, possibly empty)."""
    parts = []
    walls = [c.wall_header for c in COLUMNS if c.timed and (_source(table, c) or ("", ""))[0] == c.wall]
    if walls:
        parts.append(f"{' and '.join(walls)}: wall-clock seconds (this table was made before CPU timing), which "
                     "include whatever else ran on the machine.")
    recs = [r for r in table.to_dict("records") if _busy(r)]
    if recs:
        loads = [x for x in (_number(r.get("load_1min_mean")) for r in recs) if x is not None]
        cores = [x for x in (_number(r.get("cores_mean")) for r in recs) if x is not None]
        where = f" (1-minute load average up to {max(loads):.1f} on {int(max(cores))} cores)" if loads and cores else ""
        parts.append(f"\\* {', '.join(_label(r) for r in recs)}: timed while the machine was busy{where}; the CPU "
                     "seconds shown change little with load, wall times would.")
    if run is not None and run.machine_text():
        parts.append(run.machine_text())
    return " ".join(parts)


# -- the estimate --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochCost:
    """A variant's measured training cost on a subject: median wall seconds per epoch over
    ``trainings`` trainings, and the median epochs of those that stopped early (None if none did)."""

    seconds_per_epoch: float
    epochs: float | None
    trainings: int


def epoch_costs(config_files: Iterable[str | Path]) -> dict[str, EpochCost]:
    """Per variant, the :class:`EpochCost` of mapping checkpoints (their config.json: variant and
    result.train_seconds / epochs / stopped); unreadable or empty ones are skipped."""
    per_epoch: dict[str, list[float]] = {}
    stopped: dict[str, list[float]] = {}
    for path in config_files:
        try:
            cfg = json.loads(Path(path).read_text())
            variant, res = cfg["variant"], cfg["result"]
            seconds, epochs = float(res["train_seconds"]), int(res["epochs"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if epochs < 1 or seconds <= 0:
            continue
        per_epoch.setdefault(variant, []).append(seconds / epochs)
        if res.get("stopped") == "early_stopping":
            stopped.setdefault(variant, []).append(float(epochs))
    return {v: EpochCost(statistics.median(xs), statistics.median(stopped[v]) if v in stopped else None, len(xs))
            for v, xs in per_epoch.items()}


def evaluation_seconds(runs_files: Iterable[str | Path]) -> float | None:
    """The median wall seconds of one model's evaluation (``eval_seconds``) in earlier runs'
    runs.csv files, or None when none recorded it."""
    import csv

    values = []
    for path in runs_files:
        try:
            with open(path, newline="") as fh:
                values += [v for v in (_number(row.get("eval_seconds")) for row in csv.DictReader(fh)) if v]
        except (OSError, csv.Error):
            continue
    return statistics.median(values) if values else None


def run_tables(subject_dir: str | Path, root: str | Path) -> list[Path]:
    """The runs.csv of the subject's reference table and of every earlier run (any session's)."""
    files = [Path(subject_dir) / REFERENCE_DIR / RUNS_CSV, *sorted(Path(root).glob(f"{RUNS_DIR}/*/{RUNS_CSV}"))]
    return [p for p in files if p.is_file()]


def training_configs(subject_dir: str | Path, root: str | Path) -> list[Path]:
    """The config.json of every mapping a subject's cost can be measured on: its own models and the
    checkpoints of earlier ablation runs (any session's: timings are not results)."""
    return (sorted(Path(subject_dir).glob("mapping/*/config.json"))
            + sorted(Path(subject_dir).glob(f"{REFERENCE_DIR}/models/*/seed*/config.json"))
            + sorted(Path(root).glob(f"{RUNS_DIR}/*/models/*/seed*/config.json")))


@dataclass(frozen=True)
class RunEstimate:
    """How long a run should take (wall seconds on an otherwise idle machine) and how that was worked out."""

    seconds: float
    text: str


def format_duration(seconds: float) -> str:
    """'about 40 s', 'about 6 min', 'about 1 h 20 min'."""
    if seconds < 60:
        return f"about {max(10, round(seconds / 10) * 10):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


def estimate_run(settings: RunSettings, preset_max_epochs: int, costs: Mapping[str, EpochCost],
                 evaluation: float | None = None) -> RunEstimate:
    """The run time of ``settings`` from measured per-epoch costs and the measured seconds of one
    model's evaluation (None: EVAL_SECONDS) (module docstring: Estimate)."""
    cap = int(settings.max_epochs or preset_max_epochs)
    per_eval = EVAL_SECONDS if evaluation is None else evaluation
    eval_how = "a rough constant" if evaluation is None else "measured in earlier runs"
    measured = [c.seconds_per_epoch for c in costs.values()]
    fallback = statistics.median(measured) if measured else DEFAULT_EPOCH_SECONDS
    unmeasured = " (not measured yet: " + ("the median of the measured variants)" if measured else "a rough constant)")
    per_seed, how = 0.0, []
    for v in settings.variants:
        cost = costs.get(v)
        seconds = cost.seconds_per_epoch if cost else fallback
        epochs = min(cap, cost.epochs) if cost and cost.epochs else cap
        per_seed += epochs * seconds + per_eval
        label = VARIANT_LABELS.get(v, v)
        how.append(f"{label} {format_cell(seconds)} s × {epochs:.0f}" + ("" if cost else unmeasured))
    total = STARTUP_SECONDS + per_seed * settings.seeds
    text = (f"**Estimate: {format_duration(total)}** for {_count(settings.models, 'model')} "
            f"({_count(len(settings.variants), 'variant')} × {_count(settings.seeds, 'seed')}), if the machine is "
            f"as free as when the costs were measured. How: about {STARTUP_SECONDS:.0f} s to start, then per "
            f"model seconds per epoch × epochs + {format_cell(per_eval)} s of evaluation ({eval_how}); seconds "
            f"per epoch and the epochs early stopping took are measured on this subject's earlier trainings, "
            f"epochs at most {cap}: {'; '.join(how)}.")
    return RunEstimate(total, text)


def remaining_text(estimate_seconds: float | None, started: float, fraction: float, now: float | None = None) -> str:
    """', about N min left' from the estimate and the share done (the larger of the two readings), or ''."""
    if not estimate_seconds:
        return ""
    now = time.time() if now is None else now
    left = max(estimate_seconds - (now - started), estimate_seconds * (1.0 - fraction), 0.0)
    return f", {format_duration(left)} left" if fraction < 1.0 else ""


def preset_max_epochs(preset: str, default: int = 60) -> int:
    """The preset's [mapping_train] max_epochs (``default`` when it cannot be read)."""
    from studio.config import load_preset
    from studio.errors import StudioError

    try:
        return int(load_preset(preset).get("mapping_train", {}).get("max_epochs", default))
    except (StudioError, OSError, ValueError, TypeError):
        return default


def settings_from(variants: Sequence[str], seeds: Any, max_epochs: Any, preset: str) -> RunSettings:
    """The run settings from the tab's inputs (seeds at least 1; max epochs 0 / empty: the preset's)."""
    n = max(1, int(seeds or 1))
    cap = int(max_epochs) if max_epochs else None
    return RunSettings(tuple(variants), n, cap if cap and cap > 0 else None, preset)
