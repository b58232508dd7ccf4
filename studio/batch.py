"""Batch dubbing: ``python -m studio dub-batch MANIFEST.csv --out DIR [--workers N] [--ray ADDRESS]``.

The manifest is a CSV file with a header and one row per job::

    subject,speech,output,template,variant,renderer,edits
    subjects/anna,lines/001.wav,anna_001.mp4,,,,
    subjects/anna,lines/002.wav,anna_002.mp4,anna_take2.mp4,ours,retrieval,edits/wide.json

    video,speech,output
    footage/ben.mp4,lines/001.wav,ben_001.mp4

Columns: ``subject`` (a subject folder) or ``video`` (a one-step dub of anyone's video, see
:meth:`studio.pipeline.Pipeline.dub_video`), exactly one per row; ``speech``; ``output`` (a
relative ``.mp4`` name under DIR, subfolders allowed, never outside DIR); optional ``template``
(a clip name of the subject or a video file), ``variant``, ``renderer`` and ``edits`` (an edits
JSON, :meth:`studio.edits.Edits.load`). Relative paths resolve against the manifest's folder.
Every row is checked before any work starts: an invalid row is a failed job with its reason, the
others still run. ``row`` numbers count data rows: row 1 is the first line after the header.

Each job runs :meth:`Pipeline.dub` (or ``dub_video``) in a worker: a local pool of processes
(``--workers``), each holding one :class:`Pipeline` so that models load once per worker, or one Ray
task per job (``--ray``; optional extra ``lip-sync-studio[cluster]``), where each Ray worker
process keeps its Pipeline between tasks.

Layout of DIR::

    <output>.mp4 ...          the dubs (each moved into place whole: a crash never leaves half a file)
    summary.csv               row, output, status (done / skipped / failed), seconds, error, ...
    .batch/journal.jsonl      one JSON line per finished job (flushed and fsync'd as it finishes)
    .batch/tmp/               renders in progress (emptied when a batch starts)
    .batch/lock               held while a batch runs: two batches never share DIR

Idempotent: a job's inputs hash covers the content of its speech, its video or its subject (the
manifest, the clips, the variant's checkpoint and the renderer's files), its template, variant,
renderer, edits and the render settings (``--size``, ``--quality``). A job whose output exists
with the bytes the journal recorded for the same inputs hash is skipped; anything changed runs
again. A killed batch (even SIGKILL) resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from studio import __version__
from studio.edits import Edits
from studio.errors import InputError, StudioError
from studio.fsutil import atomic_path, sha256_file
from studio.pipeline import ENCODINGS, RENDERERS, Pipeline, PipelineConfig
from studio.subject import ALL_VARIANTS

log = logging.getLogger(__name__)

COLUMNS = ("subject", "video", "speech", "output", "template", "variant", "renderer", "edits")
REQUIRED = ("speech", "output")
STATE_DIR = ".batch"
JOURNAL = "journal.jsonl"
SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ("row", "output", "status", "seconds", "cpu_seconds", "error", "inputs_sha256", "worker",
                   "peak_rss_mb")
STATUSES = ("done", "skipped", "failed")
HASH_VERSION = 1  # bump when the hash's meaning or what a dub renders changes: every job then runs again
MANIFEST_HINT = ("The first line names the columns, e.g. `subject,speech,output` (or `video,speech,output`); "
                 f"optional: template, variant, renderer, edits. Known columns: {', '.join(COLUMNS)}.")
CLUSTER_HINT = "pip install lip-sync-studio[cluster]  (or leave out --ray to use a local process pool)"


@dataclass(frozen=True)
class Job:
    """One manifest row, checked and resolved. Paths are absolute; "" means not given.

    template: a clip name of the subject, or an absolute video path ("" = the subject's first clip).
    inputs_sha256: content hash of everything that decides the output (see :func:`inputs_hash`).
    prep_key: jobs with the same key share a first-time preparation (building a one-step subject,
        preprocessing a template video); the first runs alone, the others after it.
    error: why the row is invalid ("" = valid); an invalid job fails without running.
    """

    row: int
    output: str  # POSIX path relative to DIR
    speech: str = ""
    subject: str = ""
    video: str = ""
    template: str = ""
    variant: str = "ours"
    renderer: str = "retrieval"
    edits: Edits = Edits()
    inputs_sha256: str = ""
    prep_key: str = ""
    error: str = ""


@dataclass(frozen=True)
class Result:
    """What became of one job. status: done, skipped or failed; seconds: the job's time in its worker
    (model loading included for a worker's first job); cpu_seconds: the CPU time it took (user + system,
    its encoder processes included: what the job costs on a busy machine); worker: "host:pid" that
    ran it; peak_rss_mb: that worker process's peak memory so far (what a Ray memory request must cover)."""

    row: int
    output: str
    status: str
    seconds: float = 0.0
    error: str = ""
    inputs_sha256: str = ""
    output_sha256: str = ""
    worker: str = ""
    peak_rss_mb: float = 0.0
    cpu_seconds: float = 0.0

    def __post_init__(self) -> None:
        assert self.status in STATUSES, f"status must be one of {STATUSES}, got {self.status!r}"


@dataclass(frozen=True)
class RayResources:
    """Resources requested per Ray task. Retrieval renders on one CPU; the neural renderer takes a
    GPU where the cluster has one, else one CPU and more memory."""

    num_cpus: float = 1.0
    retrieval_memory_mb: int = 1536  # a worker peaked at 0.35 GB on the 384x384 sample (docs/results/batch.md);
    # 720p templates, long speech and large retrieval pools take more
    neural_memory_mb: int = 4096


# -- the manifest ------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The manifest's rows as ``{column: stripped text}`` (every column of :data:`COLUMNS`, "" where
    empty). An unreadable file, a header without the needed columns, an unknown column or no rows
    at all is an InputError; a row's own problems are left to :func:`check_row`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"Manifest {p} does not exist.", "Check the path of the manifest CSV.") from None
    except UnicodeDecodeError:
        raise InputError(f"Manifest {p} is not UTF-8 text.", "Save it as CSV (UTF-8).") from None
    except OSError as exc:
        raise InputError(f"Cannot read manifest {p}: {exc.strerror or exc}.",
                         "Check the path of the manifest CSV.") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        lines = [line for line in reader if any(cell.strip() for cell in line)]
    except csv.Error as exc:
        raise InputError(f"Manifest {p.name} is not valid CSV: {exc}.", MANIFEST_HINT) from None
    if not header or not any(h.strip() for h in header):
        raise InputError(f"Manifest {p.name} is empty (no header line).", MANIFEST_HINT)
    names = [h.strip().lower() for h in header]
    unknown = [h for h in names if h not in COLUMNS]
    if unknown:
        raise InputError(f"Manifest {p.name} has unknown column(s) {unknown}.", MANIFEST_HINT)
    twice = sorted({h for h in names if names.count(h) > 1})
    if twice:
        raise InputError(f"Manifest {p.name} names column(s) {twice} more than once.", MANIFEST_HINT)
    missing = [c for c in REQUIRED if c not in names]
    if missing or not ({"subject", "video"} & set(names)):
        need = missing + ([] if {"subject", "video"} & set(names) else ["subject or video"])
        raise InputError(f"Manifest {p.name} lacks the column(s) {need}.", MANIFEST_HINT)
    if not lines:
        raise InputError(f"Manifest {p.name} has a header but no jobs.", "Add one line per dub below the header.")
    rows = []
    for line in lines:
        row = {c: "" for c in COLUMNS}
        row.update({n: v.strip() for n, v in zip(names, line)})
        if len(line) > len(names):
            row["_extra"] = f"{len(line) - len(names)} more field(s) than the header"
        rows.append(row)
    return rows


def check_output_name(name: str, out_dir: Path) -> str:
    """``name`` as a normalized POSIX path relative to ``out_dir``; InputError when it is empty,
    absolute, climbs out (``..``), is hidden (``.x``), is not an ``.mp4`` or lands outside
    ``out_dir`` through a symbolic link."""
    hint = "Give a file name such as `anna_001.mp4` (subfolders allowed: `anna/001.mp4`), relative to --out."
    if not name:
        raise InputError("The row has no output name.", hint)
    if "\\" in name or "\0" in name:
        raise InputError(f"Output {name!r} contains a backslash or a NUL character.", hint)
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", ".") for part in name.split("/")):
        raise InputError(f"Output {name!r} is not a plain path under the output folder.", hint)
    if any(part.startswith(".") for part in p.parts):
        raise InputError(f"Output {name!r} names a hidden file or folder.", hint)
    if p.suffix.lower() != ".mp4":
        raise InputError(f"Output {name!r} is not an .mp4 file name.", hint)
    root = out_dir.resolve()
    if not (root / p).resolve().is_relative_to(root):
        raise InputError(f"Output {name!r} leads outside {out_dir} (a symbolic link).", hint)
    return str(p)


def _resolve(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _existing_file(value: str, base: Path, what: str) -> str:
    p = _resolve(value, base)
    if not p.is_file():
        raise InputError(f"The {what} {p} does not exist.",
                         f"Check the path (relative paths start at the manifest's folder, {base}).")
    return str(p)


def check_row(row: Mapping[str, str], number: int, base: Path, out_dir: Path) -> Job:
    """One manifest row -> a resolved :class:`Job` (not hashed). InputError / CheckpointError for
    a row that cannot run: both or neither of subject and video, missing files, an unknown or
    untrained variant or renderer, unreadable edits, a bad output name."""
    from studio.subject import Subject

    output = check_output_name(row.get("output", ""), out_dir)
    if row.get("_extra"):
        raise InputError(f"The row has {row['_extra']}.", "Quote fields that contain commas.")
    if bool(row.get("subject")) == bool(row.get("video")):
        raise InputError("The row gives " + ("both a subject and a video." if row.get("subject") else
                                             "neither a subject nor a video."),
                         "Fill exactly one: `subject` (a subject folder) or `video` (a one-step dub of that video).")
    if not row.get("speech"):
        raise InputError("The row has no speech file.", "Fill the `speech` column.")
    speech = _existing_file(row["speech"], base, "speech file")
    renderer = row.get("renderer") or "retrieval"
    if renderer not in RENDERERS:
        raise InputError(f"Unknown renderer {renderer!r}.", f"Use one of {list(RENDERERS)}.")
    variant = row.get("variant") or "ours"
    if variant not in ALL_VARIANTS:
        raise InputError(f"Unknown variant {variant!r}.", f"Use one of {list(ALL_VARIANTS)}.")
    edits = Edits.load(_existing_file(row["edits"], base, "edits file")) if row.get("edits") else Edits()
    if row.get("video"):
        video = _existing_file(row["video"], base, "video")
        if row.get("template") or variant != "ours" or renderer != "retrieval":
            raise InputError("A `video` row dubs that video itself with the 'ours' model and the retrieval renderer.",
                             "Leave template, variant and renderer empty, or build a subject with "
                             "`python -m studio make-subject` and use a `subject` row.")
        job = Job(number, output, speech=speech, video=video, edits=edits)
    else:
        folder = _resolve(row["subject"], base)
        subject = Subject.load(folder)  # CheckpointError: not a subject folder
        subject.mapping_dir(variant)  # CheckpointError: variant not trained
        _ = subject.neural_dir if renderer == "neural" else subject.retrieval_dir  # CheckpointError when absent
        template = row.get("template", "")
        if template and template not in subject.manifest.clips:
            template = _existing_file(template, base, "template video")
        job = Job(number, output, speech=speech, subject=str(folder), template=template, variant=variant,
                  renderer=renderer, edits=edits)
    target = str((out_dir / output).resolve())
    if target in (job.speech, job.video, job.template) or Path(target).is_relative_to(job.subject or "/nonexistent"):
        raise InputError(f"Output {output!r} would overwrite an input of the row ({target}).",
                         "Write the outputs to another --out folder or under another name.")
    return job


def error_text(exc: BaseException) -> str:
    """One line for summary.csv: a StudioError's message and hint; anything else with its type."""
    if isinstance(exc, StudioError):
        return f"{exc.message} Hint: {exc.hint}" if exc.hint else exc.message
    return f"{type(exc).__name__}: {exc}"


# -- inputs hash -----------------------------------------------------------------------------------
class FileHashes:
    """sha256 of files, remembered by (path, size, mtime) for one batch: a subject shared by a
    thousand jobs is read once."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def file(self, path: str | os.PathLike[str]) -> str:
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._known:
            self._known[key] = sha256_file(path)
        return self._known[key]

    def tree(self, root: Path, parts: Sequence[str]) -> str:
        """One hash over the relative names and contents of the files ``parts`` (files or folders,
        relative to ``root``; missing ones are left out)."""
        h = hashlib.sha256()
        for part in parts:
            top = root / part
            files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
            for f in files:
                h.update(f"{f.relative_to(root).as_posix()}\0{self.file(f)}\n".encode())
        return h.hexdigest()


def subject_parts(variant: str, renderer: str) -> tuple[str, ...]:
    """The files of a subject folder that a dub with ``variant`` and ``renderer`` reads."""
    return ("subject.json", "clips", f"mapping/{variant}", renderer)


def inputs_hash(job: Job, config: PipelineConfig, hashes: FileHashes) -> tuple[str, str]:
    """(inputs sha256, prep key) of a valid job. The hash covers the contents of speech, video or
    subject (:func:`subject_parts`), template, and the variant, renderer, edits and render
    settings; the prep key names a preparation that jobs share ("" when there is none)."""
    from studio.subject import Subject

    parts: dict[str, Any] = {
        "version": HASH_VERSION, "studio": __version__, "speech": hashes.file(job.speech), "variant": job.variant,
        "renderer": job.renderer, "edits": job.edits.to_dict(), "render_size": config.render_size,
        "quality": config.quality, "encoding": ENCODINGS[config.quality],
        "check_identity": config.check_identity,
    }
    prep = ""
    if job.video:
        from studio.train.prior import prior_fingerprint

        parts["video"] = hashes.file(job.video)
        parts["prior"] = prior_fingerprint()  # one-step subjects are rebuilt for another prior
        prep = f"video:{parts['video']}"
    else:
        parts["subject"] = hashes.tree(Path(job.subject), subject_parts(job.variant, job.renderer))
        if job.template and Path(job.template).is_absolute():
            sha = hashes.file(job.template)
            parts["template"] = {"file": sha}
            if Subject.load(job.subject).clip_for_video(sha) is None:
                prep = f"template:{sha}"  # preprocessed on first use
        else:
            parts["template"] = {"clip": job.template}
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest(), prep


def prepare_jobs(rows: Sequence[Mapping[str, str]], base: Path, out_dir: Path,
                 config: PipelineConfig = PipelineConfig()) -> list[Job]:
    """Check, resolve and hash every row. Invalid rows come back with ``error`` set; rows that write
    the same output are all invalid (which one was meant cannot be guessed)."""
    hashes = FileHashes()
    jobs: list[Job] = []
    for number, row in enumerate(rows, start=1):
        try:
            job = check_row(row, number, base, out_dir)
            sha, prep = inputs_hash(job, config, hashes)
            jobs.append(dataclasses.replace(job, inputs_sha256=sha, prep_key=prep))
        except (StudioError, OSError) as exc:
            jobs.append(Job(number, row.get("output", ""), error=error_text(exc)))
    by_output: dict[str, list[int]] = {}
    for job in jobs:
        with contextlib.suppress(InputError):
            by_output.setdefault(check_output_name(job.output, out_dir), []).append(job.row)
    for i, job in enumerate(jobs):
        rows_ = by_output.get(job.output, [])
        if len(rows_) > 1 and not job.error:
            others = ", ".join(str(r) for r in rows_)
            jobs[i] = dataclasses.replace(job, error=f"Output {job.output} is written by rows {others}. "
                                          "Hint: give every row its own output name.")
    return jobs


# -- the journal -------------------------------------------------------------------------------------
class Journal:
    """Append-only JSON lines, one per finished job, each flushed and fsync'd before the next job
    is reported. A line cut short by a crash is ignored when read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: io.TextIOWrapper | None = None

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for n, line in enumerate(lines, start=1):
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("%s line %d is damaged (a crash while writing?): ignored", self.path, n)
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def done(self) -> dict[str, dict[str, Any]]:
        """output -> its latest 'done' record."""
        return {r["output"]: r for r in self.records() if r.get("status") == "done" and "output" in r}

    def append(self, record: Mapping[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = False
            if self.path.exists() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    cut = fh.read(1) != b"\n"
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole batch)
            if cut:  # a line cut short by a crash: start on a fresh line
                self._fh.write("\n")
        self._fh.write(json.dumps(dict(record), sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def is_current(job: Job, record: Mapping[str, Any] | None, out_dir: Path) -> bool:
    """True when ``record`` (the journal's last 'done' of this output) was made from the same inputs
    and the output file still holds the bytes it wrote."""
    if not record or record.get("inputs_sha256") != job.inputs_sha256:
        return False
    out = out_dir / job.output
    return out.is_file() and sha256_file(out) == record.get("output_sha256")


# -- running one job (in a worker process) ---------------------------------------------------------------
_PIPELINES: dict[tuple, Pipeline] = {}  # per worker process: (config, visible GPUs) -> Pipeline


def worker_pipeline(config: PipelineConfig) -> Pipeline:
    """This process's Pipeline for ``config``: made once, so that models load once per worker."""
    key = (config, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline(config=config)
    return _PIPELINES[key]


def run_job(job: Job, config: PipelineConfig, out_dir: str) -> Result:
    """Dub one job into ``out_dir / job.output`` with this process's Pipeline. Never raises for the
    job's own problems: they come back as a failed Result. The render goes to ``.batch/tmp`` and is
    moved into place whole."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    final = Path(out_dir) / job.output
    tmp = Path(out_dir) / STATE_DIR / "tmp" / f"{job.row}-{uuid.uuid4().hex[:12]}.mp4"
    try:
        pipe = worker_pipeline(config)
        if job.video:
            pipe.dub_video(job.video, job.speech, tmp, renderer=job.renderer, edits=job.edits)
        else:
            pipe.dub(job.subject, job.speech, tmp, template=job.template or None, renderer=job.renderer,
                     variant=job.variant, edits=job.edits)
        sha = sha256_file(tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        status, error = "done", ""
    except Exception as exc:  # the job fails, the batch goes on
        if not isinstance(exc, StudioError):
            log.exception("row %d (%s) failed", job.row, job.output)
        status, error, sha = "failed", error_text(exc), ""
    finally:
        tmp.unlink(missing_ok=True)
    return Result(job.row, job.output, status, round(time.perf_counter() - t0, 3), error, job.inputs_sha256,
                  sha, worker, _peak_rss_mb(), round(_cpu_seconds() - cpu0, 3))


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: kilobytes


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the encoders)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _init_local_worker(config: PipelineConfig, torch_threads: int, log_level: int, parent: int) -> None:
    """Pool initializer: die with the batch process, share the CPUs, and make this worker's Pipeline."""
    if sys.platform.startswith("linux"):  # a SIGKILLed batch must not leave workers rendering on
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    import torch

    torch.set_num_threads(torch_threads)
    worker_pipeline(config)


# -- backends: where jobs run -------------------------------------------------------------------------
class Backend(Protocol):
    capacity: int  # jobs in flight at most

    def submit(self, job: Job) -> None: ...

    def wait(self) -> list[Result]: ...  # blocks until at least one submitted job has finished

    def close(self) -> None: ...


class LocalBackend:
    """A bounded pool of spawned processes, each with one Pipeline. At most ``workers`` jobs are
    in flight, so when a worker process dies (killed for memory) exactly the running jobs fail
    and the pool is started again for the rest."""

    def __init__(self, workers: int, config: PipelineConfig, out_dir: Path) -> None:
        self.capacity = workers
        self.config = config
        self.out_dir = out_dir
        self._futures: dict[Any, Job] = {}
        self._pool = self._start()

    def _start(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // self.capacity)
        level = logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.WARNING
        return ProcessPoolExecutor(self.capacity, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_local_worker,
                                   initargs=(self.config, threads, level, os.getpid()))

    def submit(self, job: Job) -> None:
        self._futures[self._pool.submit(run_job, job, self.config, str(self.out_dir))] = job

    def wait(self) -> list[Result]:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures
        from concurrent.futures.process import BrokenProcessPool

        done, _ = wait_futures(list(self._futures), return_when=FIRST_COMPLETED)
        results, broken = [], False
        for fut in done:
            job = self._futures.pop(fut)
            try:
                results.append(fut.result())
            except BrokenProcessPool:
                broken = True
                results.append(_failed(job, "A worker process died while this job was running (out of memory?). "
                                            "Hint: re-run the batch to retry it, with fewer --workers."))
            except Exception as exc:  # e.g. a job that cannot be sent to the worker
                results.append(_failed(job, error_text(exc)))
        if broken:
            for fut, job in list(self._futures.items()):  # the pool is gone: every running job with it
                results.append(_failed(job, "A worker process died while this job was running (out of memory?). "
                                            "Hint: re-run the batch to retry it, with fewer --workers."))
            self._futures.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            log.warning("a worker process died; starting the pool again for the remaining jobs")
            self._pool = self._start()
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def ray_task_options(renderer: str, cluster: Mapping[str, float], res: RayResources = RayResources()) -> dict[str, Any]:
    """Ray ``.options()`` of a job: retrieval -> one CPU and its memory; neural -> one GPU when
    ``cluster`` (``ray.cluster_resources()``) has any, else one CPU and its memory."""
    if renderer == "neural" and cluster.get("GPU", 0) > 0:
        return {"num_cpus": res.num_cpus, "num_gpus": 1}
    mb = res.neural_memory_mb if renderer == "neural" else res.retrieval_memory_mb
    return {"num_cpus": res.num_cpus, "memory": int(mb) * 2**20}


def import_ray():
    """``ray``, or a StudioError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise StudioError("Ray is not installed, so --ray cannot be used.", CLUSTER_HINT) from None
    return ray


class RayBackend:
    """One Ray task per job with resources from its renderer (:func:`ray_task_options`). Ray reuses
    worker processes, and each keeps its Pipeline (:func:`worker_pipeline`) between tasks.

    address: "local" starts a private cluster on this machine with ``workers`` CPUs; "auto",
    "HOST:PORT" or "ray://HOST:PORT" connect to a running one (its nodes need this package and the
    same paths: inputs and DIR on a shared file system). An already connected session is reused.
    """

    def __init__(self, address: str, workers: int, config: PipelineConfig, out_dir: Path,
                 resources: RayResources = RayResources()) -> None:
        self.ray = ray = import_ray()
        self.config, self.out_dir, self.resources = config, out_dir, resources
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            try:
                if address == "local":  # a new private cluster, even when RAY_ADDRESS is set
                    ray.init(address="local", num_cpus=workers, **kw)
                else:
                    ray.init(address=address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise StudioError(f"Cannot connect to the Ray cluster at {address!r}: {exc}",
                                  "Start one with `ray start --head` (then --ray auto), or use --ray local.") from None
            self._started = True
        self.cluster = ray.cluster_resources()
        self.capacity = 1 << 30  # Ray queues tasks by their resources
        self._task = ray.remote(run_job)
        self._refs: dict[Any, Job] = {}
        self._refused: list[Result] = []

    def submit(self, job: Job) -> None:
        opts = ray_task_options(job.renderer, self.cluster, self.resources)
        if opts.get("memory", 0) > self.cluster.get("memory", 0):  # Ray would wait for it forever
            mb = opts["memory"] / 2**20
            self._refused.append(_failed(job, f"The Ray cluster has less memory than one {job.renderer} job asks "
                                              f"for ({mb:.0f} MB). Hint: add nodes with more memory."))
            return
        ref = self._task.options(max_retries=1, **opts).remote(job, self.config, str(self.out_dir))
        self._refs[ref] = job

    def wait(self) -> list[Result]:
        if self._refused:
            refused, self._refused = self._refused, []
            return refused
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        results = []
        for ref in ready:
            job = self._refs.pop(ref)
            try:
                results.append(self.ray.get(ref))
            except Exception as exc:  # the task's process died, or Ray itself failed
                results.append(_failed(job, f"Ray task failed: {type(exc).__name__}: {str(exc)[:300]}"))
        return results

    def close(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref)
        if self._started:
            self.ray.shutdown()


def _failed(job: Job, error: str) -> Result:
    return Result(job.row, job.output, "failed", 0.0, error, job.inputs_sha256)


def schedule(jobs: Sequence[Job], backend: Backend, finished: Callable[[Result], None]) -> None:
    """Run ``jobs`` on ``backend`` in manifest order, calling ``finished`` as each one ends. Of the
    jobs that share a ``prep_key`` the first runs alone; the others start once it has finished
    (its preparation is then cached), so two workers never build the same thing at once."""
    pending = list(jobs)
    first_of: dict[str, int] = {}  # prep key -> row of the job preparing it
    ready_keys: set[str] = set()
    running: dict[int, Job] = {}
    while pending or running:
        keep = []
        for job in pending:
            key = job.prep_key
            may = len(running) < backend.capacity and (not key or key in ready_keys or key not in first_of)
            if may:
                if key and key not in ready_keys:
                    first_of[key] = job.row
                backend.submit(job)
                running[job.row] = job
            else:
                keep.append(job)
        pending = keep
        assert running, "scheduler stalled: jobs wait for a preparation that nothing runs"
        for res in backend.wait():
            job = running.pop(res.row)
            if job.prep_key and first_of.get(job.prep_key) == job.row:
                ready_keys.add(job.prep_key)  # done or failed: the others may go (and fail on their own)
            finished(res)


# -- a whole batch -----------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.batch/lock`` (released by the kernel if this process dies)."""
    import fcntl

    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"Another dub-batch is writing to {out_dir}.",
                             "Wait for it to finish, or give this one another --out folder.") from None
        yield


def write_summary(path: Path, results: Sequence[Result]) -> None:
    """``summary.csv`` (:data:`SUMMARY_COLUMNS`), one line per job in manifest order, written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for r in sorted(results, key=lambda r: r.row):
        w.writerow([r.row, r.output, r.status, f"{r.seconds:.3f}", f"{r.cpu_seconds:.3f}", r.error,
                    r.inputs_sha256, r.worker, f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else ""])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def run_batch(manifest: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, workers: int | None = None,
              ray: str | None = None, config: PipelineConfig = PipelineConfig(), progress: bool = True,
              resources: RayResources = RayResources()) -> list[Result]:
    """Run every job of ``manifest`` into ``out_dir`` (see the module docstring); one Result per row,
    in manifest order. ``workers``: local processes (default min(2, CPUs)), or with ``ray="local"``
    the CPUs of the private Ray cluster. InputError for an unreadable manifest, StudioError when
    Ray is asked for but not installed."""
    from tqdm import tqdm

    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.", "Use --workers 1 or more.")
    if ray is not None:
        import_ray()  # say so before any work
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    out = Path(out_dir).resolve()
    t0 = time.perf_counter()
    with locked(out):
        shutil.rmtree(out / STATE_DIR / "tmp", ignore_errors=True)  # renders of a killed batch
        (out / STATE_DIR / "tmp").mkdir(parents=True)
        jobs = prepare_jobs(rows, manifest.resolve().parent, out, config)
        journal = Journal(out / STATE_DIR / JOURNAL)
        done = journal.done()
        results: dict[int, Result] = {}
        todo: list[Job] = []
        for job in jobs:
            if job.error:
                log.warning("row %d (%s) is invalid: %s", job.row, job.output or "no output", job.error)
                results[job.row] = Result(job.row, job.output, "failed", 0.0, job.error)
            elif is_current(job, done.get(job.output), out):
                results[job.row] = Result(job.row, job.output, "skipped", 0.0, "", job.inputs_sha256,
                                          done[job.output].get("output_sha256", ""))
            else:
                todo.append(job)
        bar = tqdm(total=len(jobs), initial=len(results), desc="dub-batch", unit="job", disable=not progress)

        def finished(res: Result) -> None:
            journal.append({**dataclasses.asdict(res), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            results[res.row] = res
            if res.status == "failed":
                log.warning("row %d (%s) failed: %s", res.row, res.output, res.error)
            bar.update(1)

        try:
            if todo:
                backend: Backend = (RayBackend(ray, workers, config, out, resources) if ray is not None
                                    else LocalBackend(min(workers, len(todo)), config, out))
                try:
                    schedule(todo, backend, finished)
                finally:
                    backend.close()
        finally:
            bar.close()
            journal.close()
        ordered = [results[j.row] for j in jobs]
        write_summary(out / SUMMARY, ordered)
    counts = {s: sum(r.status == s for r in ordered) for s in STATUSES}
    wall = time.perf_counter() - t0
    log.info("dub-batch: %d done, %d skipped, %d failed of %d jobs in %.1f s -> %s", counts["done"],
             counts["skipped"], counts["failed"], len(ordered), wall, out / SUMMARY)
    return ordered


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


# -- benchmark ---------------------------------------------------------------------------------------
def benchmark(jobs: int = 6, seconds: float = 2.0, workers: Sequence[int] = (1, 2)) -> dict:
    """Throughput of a batch of ``jobs`` dubs of the bundled sample subject (``seconds`` of speech
    each, cut from sample_media/speech.wav) with 1 and 2 local workers: jobs/min, scaling efficiency,
    and the per-job costs (wall and CPU seconds): a worker's first job (model loading included) vs
    its later ones, and the rest of the wall time (process start, imports, scheduling)."""
    import tempfile

    from studio import media
    from studio.audio import SAMPLE_RATE
    from studio.config import REPO_ROOT

    signal = media.read_audio(REPO_ROOT / "sample_media" / "speech.wav")
    n = int(round(seconds * SAMPLE_RATE))
    out: dict[str, Any] = {"jobs": jobs, "speech_seconds": seconds, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="studio-batch-bench-") as tmp:
        root = Path(tmp)
        lines = ["subject,speech,output"]
        for k in range(jobs):
            start = (k * n // 2) % max(1, len(signal) - n)
            (root / f"s{k}.wav").write_bytes(media.wav_bytes(signal[start:start + n]))
            lines.append(f"{REPO_ROOT / 'presets' / 'sample_subject'},s{k}.wav,dub{k}.mp4")
        (root / "manifest.csv").write_text("\n".join(lines) + "\n")
        for w in workers:
            out[f"w{w}_load_average_1min"] = round(os.getloadavg()[0], 2)  # a shared machine: other work
            t0 = time.perf_counter()
            res = run_batch(root / "manifest.csv", root / f"out{w}", workers=w, progress=False)
            wall = time.perf_counter() - t0
            bad = [r.error for r in res if r.status != "done"]
            if bad:
                raise RuntimeError(f"batch benchmark job failed: {bad[0]}")
            out[f"w{w}_wall_s"] = round(wall, 2)
            out[f"w{w}_jobs_per_min"] = round(60.0 * jobs / wall, 2)
            out.update({f"w{w}_{k}": v for k, v in job_costs(res, wall).items()})
    if len(workers) >= 2:
        a, b = workers[0], workers[-1]
        speedup = out[f"w{b}_jobs_per_min"] / out[f"w{a}_jobs_per_min"]
        out["speedup"] = round(speedup, 3)
        out["scaling_efficiency"] = round(speedup * a / b, 3)
    return out


def job_costs(results: Sequence[Result], wall: float) -> dict[str, float | None]:
    """Per-job costs of a finished batch: mean wall and CPU seconds of each worker's first job
    (models loaded in it) and of its later ones, the wall time no job accounts for (``overhead_s``:
    process start, imports, hashing, scheduling) and the largest worker peak memory."""
    by_worker: dict[str, list[Result]] = {}
    for r in results:
        by_worker.setdefault(r.worker, []).append(r)
    first = [v[0] for v in by_worker.values()]
    later = [r for v in by_worker.values() for r in v[1:]]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    return {"first_job_s": mean([r.seconds for r in first]), "later_job_s": mean([r.seconds for r in later]),
            "first_job_cpu_s": mean([r.cpu_seconds for r in first]),
            "later_job_cpu_s": mean([r.cpu_seconds for r in later]),
            "overhead_s": round(wall - max(sum(r.seconds for r in v) for v in by_worker.values()), 2),
            "worker_peak_rss_mb": max(r.peak_rss_mb for r in results)}


# -- command line --------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="CSV: subject|video, speech, output[, template, variant, renderer, edits]; "
                        "relative paths start at its folder")
    parser.add_argument("--out", required=True, help="output folder (outputs, summary.csv, .batch/journal.jsonl)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"local worker processes (default min(2, CPUs) = {default_workers()}); "
                        "with --ray local: the private cluster's CPUs")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run one Ray task per job: local (a private cluster here), auto, HOST:PORT or "
                        "ray://HOST:PORT (needs lip-sync-studio[cluster])")
    parser.add_argument("--size", type=int, default=PipelineConfig.render_size, help="face crop size to render at")
    parser.add_argument("--quality", choices=tuple(ENCODINGS), default="standard",
                        help="video encoding: standard (crf 18, fast) or high (crf 16, slower; for delivery)")
    parser.add_argument("--allow-other-person", action="store_true",
                        help="dub templates that do not look like their subject's person (checked by default)")


def cli(args: argparse.Namespace) -> int:
    results = run_batch(args.manifest, args.out, workers=args.workers, ray=args.ray,
                        config=PipelineConfig(render_size=args.size, quality=args.quality,
                                              check_identity=not args.allow_other_person))
    return 1 if any(r.status == "failed" for r in results) else 0
