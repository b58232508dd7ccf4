"""Batch dubbing (studio.batch, `studio dub-batch`): manifest checks, the local pool and Ray give
the same bytes as one-by-one dubs, a SIGKILLed batch resumes, ray stays optional."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from studio import batch
from studio.config import REPO_ROOT
from studio.edits import Edits
from studio.errors import InputError
from studio.pipeline import Pipeline, PipelineConfig

SAMPLE = REPO_ROOT / "presets" / "sample_subject"
SPEECH = REPO_ROOT / "sample_media" / "speech.wav"
TEMPLATE = REPO_ROOT / "sample_media" / "template.mp4"
HEADER = "subject,video,speech,output,template,variant,renderer,edits"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cut(src: Path, out: Path, start: float, seconds: float) -> Path:
    signal_, sr = sf.read(str(src), dtype="float32")
    sf.write(str(out), signal_[int(start * sr):int((start + seconds) * sr)], sr)
    return out


def _summary(out: Path) -> dict[int, dict[str, str]]:
    with open(out / batch.SUMMARY, newline="") as fh:
        return {int(r["row"]): r for r in csv.DictReader(fh)}


def _journal_done(out: Path) -> list[str]:
    records = batch.Journal(out / batch.STATE_DIR / batch.JOURNAL).records()
    return [r["output"] for r in records if r["status"] == "done"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Short speech, an edits file, and a one-step cache in which the sample template's subject is
    already built (the sample subject), so that a `video` row dubs without training anything."""
    from studio.fsutil import sha256_file
    from studio.train.prior import prior_fingerprint

    d = tmp_path_factory.mktemp("batch_inputs")
    _cut(SPEECH, d / "s1.wav", 0.0, 1.2)
    _cut(SPEECH, d / "s2.wav", 2.0, 1.2)
    (d / "wide.json").write_text(Edits(mouth_open_gain=1.6).to_json())
    cache = d / "cache"
    (cache / "subjects").mkdir(parents=True)
    (cache / "subjects" / f"{sha256_file(TEMPLATE)[:16]}-{prior_fingerprint()[:8]}").symlink_to(SAMPLE)
    with pytest.MonkeyPatch.context() as mp:  # read by the reference dubs and inherited by every worker
        mp.setenv("STUDIO_CACHE_DIR", str(cache))
        yield d


def _manifest(d: Path) -> Path:
    """Five good jobs (every kind of row) and one bad one; speech paths relative to the manifest."""
    rows = [
        f"{SAMPLE},,s1.wav,a.mp4,,,,",
        f"{SAMPLE},,s2.wav,b.mp4,,no-pose,,",
        f"{SAMPLE},,s1.wav,sub/c.mp4,,,retrieval,wide.json",
        f"{SAMPLE},,s2.wav,d.mp4,{TEMPLATE},ours,,",
        f",{TEMPLATE},s2.wav,e.mp4,,,,wide.json",
        f"{SAMPLE},,missing.wav,f.mp4,,,,",
    ]
    path = d / "manifest.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The five good jobs dubbed one by one with Pipeline.dub / dub_video: output -> sha256."""
    out = tmp_path_factory.mktemp("reference")
    pipe = Pipeline(work_dir=out / "work")
    wide = Edits.load(inputs / "wide.json")
    pipe.dub(SAMPLE, inputs / "s1.wav", out / "a.mp4")
    pipe.dub(SAMPLE, inputs / "s2.wav", out / "b.mp4", variant="no-pose")
    pipe.dub(SAMPLE, inputs / "s1.wav", out / "c.mp4", edits=wide)
    pipe.dub(SAMPLE, inputs / "s2.wav", out / "d.mp4", template=TEMPLATE)
    pipe.dub_video(TEMPLATE, inputs / "s2.wav", out / "e.mp4", edits=wide)
    return {"a.mp4": _sha(out / "a.mp4"), "b.mp4": _sha(out / "b.mp4"), "sub/c.mp4": _sha(out / "c.mp4"),
            "d.mp4": _sha(out / "d.mp4"), "e.mp4": _sha(out / "e.mp4")}


def _check_batch(out: Path, reference: dict[str, str]) -> dict[int, dict[str, str]]:
    summary = _summary(out)
    assert [summary[r]["status"] for r in range(1, 7)] == ["done"] * 5 + ["failed"]
    for name, sha in reference.items():
        assert _sha(out / name) == sha, f"{name} differs from the one-by-one dub"
    assert "missing.wav" in summary[6]["error"] and "does not exist" in summary[6]["error"]
    assert not (out / "f.mp4").exists()
    assert len({summary[r]["worker"] for r in range(1, 6)}) <= 2  # bounded: models load once per worker
    assert sorted(_journal_done(out)) == sorted(reference)
    assert list((out / batch.STATE_DIR / "tmp").iterdir()) == []
    return summary


# -- the whole batch -------------------------------------------------------------------------------
def test_local_pool_matches_one_by_one_dubs(inputs, reference, tmp_path):
    from studio.cli import main

    out = tmp_path / "out"
    assert main(["dub-batch", str(_manifest(inputs)), "--out", str(out), "--workers", "2"]) == 1  # a row failed
    _check_batch(out, reference)


def test_killed_batch_resumes_without_redoing_finished_jobs(inputs, tmp_path):
    """SIGKILL after the first journaled job; the re-run skips what was finished and does the rest.
    Both runs are in interpreters where `import ray` fails: the local pool needs no Ray."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("s1.wav", "s2.wav", "wide.json"):
        (d / name).symlink_to(inputs / name)
    (d / "edits.json").write_text(Edits(mouth_open_gain=1.3).to_json())
    rows = [f"{SAMPLE},s1.wav,a.mp4,", f"{SAMPLE},s2.wav,b.mp4,", f"{SAMPLE},s1.wav,c.mp4,edits.json",
            f"{SAMPLE},s2.wav,d.mp4,wide.json"]
    manifest = d / "manifest.csv"
    manifest.write_text("subject,speech,output,edits\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    cmd = _without_ray(["dub-batch", str(manifest), "--out", str(out), "--workers", "1"])
    finished, before = _kill_after_first_job(cmd, out)
    journal = out / batch.STATE_DIR / batch.JOURNAL
    worker = int(batch.Journal(journal).records()[0]["worker"].split(":")[1])
    deadline = time.monotonic() + 20
    while _alive(worker):  # the worker dies with the batch (no orphan left rendering)
        assert time.monotonic() < deadline, "a worker outlived the SIGKILLed batch"
        time.sleep(0.1)
    (out / batch.STATE_DIR / "tmp" / "9-stale.mp4").write_bytes(b"half a video")

    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = _summary(out)
    assert {summary[r]["output"]: summary[r]["status"] for r in summary} == {
        n: "skipped" if n in finished else "done" for n in ("a.mp4", "b.mp4", "c.mp4", "d.mp4")}
    assert {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in finished} == before
    assert sorted(_journal_done(out)) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]  # each done once
    assert list((out / batch.STATE_DIR / "tmp").iterdir()) == []

    # a changed input (the edits of c.mp4) runs that job again, and only it
    (d / "edits.json").write_text(Edits(mouth_open_gain=1.4).to_json())
    old = _sha(out / "c.mp4")
    results = batch.run_batch(manifest, out, workers=1, progress=False)
    assert [r.status for r in results] == ["skipped", "skipped", "done", "skipped"]
    assert _sha(out / "c.mp4") != old


@pytest.mark.slow
def test_killed_ray_batch_resumes_without_redoing_finished_jobs(inputs, tmp_path):
    """The same on a local Ray cluster: SIGKILL the driver after the first journaled job, run the
    command again: finished jobs are skipped untouched, the rest are done, each once."""
    pytest.importorskip("ray")
    d = tmp_path / "in"
    d.mkdir()
    for name in ("s1.wav", "s2.wav"):
        (d / name).symlink_to(inputs / name)
    rows = [f"{SAMPLE},s1.wav,a.mp4", f"{SAMPLE},s2.wav,b.mp4", f"{SAMPLE},s1.wav,c.mp4", f"{SAMPLE},s2.wav,d.mp4"]
    manifest = d / "manifest.csv"
    manifest.write_text("subject,speech,output\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "studio", "dub-batch", str(manifest), "--out", str(out), "--workers", "1",
           "--ray", "local"]
    ray_before = _ray_processes()
    finished, before = _kill_after_first_job(cmd, out)
    try:
        again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    finally:
        _reap_orphaned_ray_agents(ray_before)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = _summary(out)
    assert {summary[r]["output"]: summary[r]["status"] for r in summary} == {
        n: "skipped" if n in finished else "done" for n in ("a.mp4", "b.mp4", "c.mp4", "d.mp4")}
    assert {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in finished} == before
    assert sorted(_journal_done(out)) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]


def _kill_after_first_job(cmd: list[str], out: Path) -> tuple[set[str], dict[str, tuple[int, int]]]:
    """Start the batch ``cmd``, SIGKILL it once a job is journaled as done -> (the finished
    outputs, their (inode, mtime) to check that a re-run leaves them alone)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / batch.STATE_DIR / batch.JOURNAL
    deadline = time.monotonic() + 300
    while not (journal.exists() and _journal_done(out)):
        assert proc.poll() is None and time.monotonic() < deadline, "the batch ended before a job was journaled"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = set(_journal_done(out))
    assert 1 <= len(finished) < 4, finished
    return finished, {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in finished}


def _ray_processes() -> set[int]:
    """Pids of Ray's own processes (named ``ray::...``) on this machine."""
    pids = set()
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "cmdline").read_bytes().startswith(b"ray::"):
                pids.add(int(p.name))
        except OSError:
            continue
    return pids


def _reap_orphaned_ray_agents(before: set[int]) -> None:
    """A SIGKILLed driver cannot stop the local cluster it started; its raylet goes with it, but
    the dashboard and runtime-env agents are left to init. Stop those (only ones new since
    ``before`` whose parent is init)."""
    for pid in _ray_processes() - before:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == "1":
                os.kill(pid, signal.SIGKILL)  # they ignore SIGTERM once their raylet is gone
        except (OSError, IndexError):
            continue


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def test_ray_matches_one_by_one_dubs(inputs, reference, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "out"
    try:
        results = batch.run_batch(_manifest(inputs), out, ray="local", workers=2, progress=False)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert [r.status for r in results] == ["done"] * 5 + ["failed"]
    _check_batch(out, reference)
    assert not ray.is_initialized()  # the private cluster it started is shut down


def test_without_ray_the_ray_option_says_how_to_install(inputs, tmp_path):
    manifest = tmp_path / "one.csv"
    manifest.write_text(f"subject,speech,output\n{SAMPLE},{inputs / 's1.wav'},a.mp4\n")
    proc = subprocess.run(_without_ray(["dub-batch", str(manifest), "--out", str(tmp_path / "b"), "--ray", "auto"]),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "pip install lip-sync-studio[cluster]" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "b").exists()  # refused before any work


def _without_ray(args: list[str]) -> list[str]:
    """The studio command line in a fresh interpreter where `import ray` fails."""
    code = "import sys\nsys.modules['ray'] = None\nfrom studio.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, *args]


# -- the manifest, checked up front (fast) ------------------------------------------------------------
@pytest.mark.parametrize("text, match", [
    (None, "does not exist"),
    ("", "empty"),
    ("subject,speech\n", "lacks the column"),
    ("speech,output\n", "subject or video"),
    ("subject,speech,output,tempate\n", "unknown column"),
    ("subject,speech,output,speech\n", "more than once"),
    ("subject,speech,output\n", "no jobs"),
])
def test_manifest_that_cannot_be_read_is_an_input_error(tmp_path, text, match):
    path = tmp_path / "m.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        batch.read_manifest(path)
    assert err.value.hint


def test_manifest_not_utf8(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"subject,speech,output\n\xff\xfe\xfa,x,y\n")
    with pytest.raises(InputError, match="UTF-8"):
        batch.read_manifest(path)


@pytest.mark.parametrize("name", ["", "/tmp/a.mp4", "../a.mp4", "a/../../b.mp4", ".batch/a.mp4", ".a.mp4",
                                  "a.mov", "sub\\a.mp4", "./a.mp4"])
def test_bad_output_names(tmp_path, name):
    with pytest.raises(InputError):
        batch.check_output_name(name, tmp_path)


def test_output_through_a_symlink_out_of_dir(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside"):
        batch.check_output_name("link/a.mp4", tmp_path / "out")
    assert batch.check_output_name("en//a.MP4", tmp_path / "out") == "en/a.MP4"


def test_output_may_not_overwrite_an_input(tmp_path):
    (tmp_path / "s.wav").write_bytes(b"x")
    (tmp_path / "v.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match="overwrite an input"):
        batch.check_row({"video": "v.mp4", "speech": "s.wav", "output": "v.mp4"}, 1, tmp_path, tmp_path)
    with pytest.raises(InputError, match="overwrite an input"):
        batch.check_row({"subject": str(SAMPLE), "speech": "s.wav", "output": "clips/x.mp4"}, 1, tmp_path, SAMPLE)


def test_invalid_rows_fail_alone_with_their_reason(tmp_path):
    for name in ("s.wav", "v.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "bad.json").write_text('{"mouth_open_gain": 9}')
    rows = [
        f"{SAMPLE},,s.wav,ok.mp4,,,,",
        f"{SAMPLE},v.mp4,s.wav,both.mp4,,,,",
        ",,s.wav,neither.mp4,,,,",
        f"{SAMPLE},,nope.wav,nospeech.mp4,,,,",
        f"{SAMPLE},,s.wav,variant.mp4,,best,,",
        f"{SAMPLE},,s.wav,neural.mp4,,,neural,",
        f"{SAMPLE},,s.wav,clip.mp4,no_such_clip,,,",
        f"{SAMPLE},,s.wav,edits.mp4,,,,bad.json",
        ",v.mp4,s.wav,videotemplate.mp4,template,,,",
        f"{tmp_path},,s.wav,notsubject.mp4,,,,",
        f"{SAMPLE},,s.wav,twice.mp4,,,,",
        f"{SAMPLE},,s.wav,twice.mp4,,no-pose,,",
        f"{SAMPLE},,s.wav,../escape.mp4,,,,",
        f"{SAMPLE},,s.wav,extra.mp4,,,,,surplus",
        ",v.mp4,s.wav,video.mp4,,,,",
        f"{SAMPLE},,s.wav,clipname.mp4,template,g1-pose,,",
    ]
    (tmp_path / "m.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    jobs = batch.prepare_jobs(batch.read_manifest(tmp_path / "m.csv"), tmp_path, tmp_path / "out")
    errors = {j.row: j.error for j in jobs}
    assert errors[1] == "" and errors[15] == "" and errors[16] == ""
    expect = {2: "both a subject and a video", 3: "neither", 4: "nope.wav does not exist", 5: "Unknown variant",
              6: "no trained neural renderer", 7: "no_such_clip", 8: "mouth_open_gain", 9: "dubs that video itself",
              10: "not a subject folder", 11: "rows 11, 12", 12: "rows 11, 12", 13: "not a plain path",
              14: "more field"}
    for row, text in expect.items():
        assert text in errors[row], (row, errors[row])
    assert all("Hint:" in errors[r] for r in expect)
    # resolved: absolute paths, a clip name kept as a name, the subject's own footage needs no preparation
    assert jobs[0].speech == str(tmp_path / "s.wav") and jobs[15].template == "template"
    assert jobs[14].prep_key.startswith("video:") and jobs[0].prep_key == ""


def test_inputs_hash_follows_content_not_spelling(tmp_path):
    _cut(SPEECH, tmp_path / "s.wav", 0.0, 1.0)
    job = batch.check_row({"subject": str(SAMPLE), "speech": "s.wav", "output": "a.mp4"}, 1, tmp_path, tmp_path)
    cfg = PipelineConfig()

    def h(j=job, c=cfg):
        return batch.inputs_hash(j, c, batch.FileHashes())[0]

    base = h()
    assert h() == base
    # identity edits from a file with other whitespace: same job
    (tmp_path / "e.json").write_text('{ "mouth_open_gain" : 1.0 }')
    same = batch.check_row({"subject": str(SAMPLE), "speech": "s.wav", "output": "a.mp4", "edits": "e.json"},
                           1, tmp_path, tmp_path)
    assert h(same) == base
    changed = [dataclasses.replace(job, edits=Edits(jaw_open_gain=1.2)), dataclasses.replace(job, variant="no-pose")]
    assert len({base, *(h(j) for j in changed), h(job, PipelineConfig(render_size=512)),
                h(job, PipelineConfig(quality="high"))}) == 5
    _cut(SPEECH, tmp_path / "s.wav", 0.5, 1.0)  # same name, other content
    assert h() != base


def test_journal_survives_a_torn_line_and_skip_needs_the_same_bytes(tmp_path):
    journal = batch.Journal(tmp_path / "j.jsonl")
    (tmp_path / "a.mp4").write_bytes(b"video")
    journal.append({"output": "a.mp4", "status": "done", "inputs_sha256": "h1",
                    "output_sha256": hashlib.sha256(b"video").hexdigest()})
    journal.close()
    with open(tmp_path / "j.jsonl", "a") as fh:
        fh.write('{"output": "b.mp4", "sta')  # SIGKILL in the middle of a line
    journal = batch.Journal(tmp_path / "j.jsonl")
    journal.append({"output": "c.mp4", "status": "done", "inputs_sha256": "h3", "output_sha256": "x"})
    journal.close()
    done = journal.done()
    assert sorted(done) == ["a.mp4", "c.mp4"]
    job = batch.Job(1, "a.mp4", inputs_sha256="h1")
    assert batch.is_current(job, done["a.mp4"], tmp_path)
    assert not batch.is_current(batch.Job(1, "a.mp4", inputs_sha256="h2"), done["a.mp4"], tmp_path)
    (tmp_path / "a.mp4").write_bytes(b"other video")
    assert not batch.is_current(job, done["a.mp4"], tmp_path)


class _FakeBackend:
    """Runs nothing: records what is in flight when each job starts, finishes the oldest."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.flight: list[batch.Job] = []
        self.started: list[tuple[int, tuple[int, ...]]] = []

    def submit(self, job):
        self.flight.append(job)
        self.started.append((job.row, tuple(j.row for j in self.flight)))

    def wait(self):
        job = self.flight.pop(0)
        return [batch.Result(job.row, job.output, "done")]

    def close(self):
        pass


def test_scheduler_bounds_work_and_prepares_a_shared_input_once():
    jobs = [batch.Job(1, "1.mp4", prep_key="video:x"), batch.Job(2, "2.mp4", prep_key="video:x"),
            batch.Job(3, "3.mp4"), batch.Job(4, "4.mp4", prep_key="video:x"), batch.Job(5, "5.mp4")]
    backend, seen = _FakeBackend(2), []
    batch.schedule(jobs, backend, seen.append)
    assert sorted(r.row for r in seen) == [1, 2, 3, 4, 5]
    assert all(len(flight) <= 2 for _, flight in backend.started)
    start = {row: flight for row, flight in backend.started}
    assert 1 not in start[2] and 1 not in start[4]  # the others of video x wait for the first to finish
    assert start[3] == (1, 3)  # meanwhile an unrelated job runs


def test_ray_resources_per_renderer():
    cpu_only = {"CPU": 8.0, "memory": 32e9}
    assert batch.ray_task_options("retrieval", cpu_only) == {"num_cpus": 1.0, "memory": 1536 * 2**20}
    assert batch.ray_task_options("neural", cpu_only)["memory"] == 4096 * 2**20
    assert batch.ray_task_options("neural", {**cpu_only, "GPU": 2.0}) == {"num_cpus": 1.0, "num_gpus": 1}
    assert "num_gpus" not in batch.ray_task_options("retrieval", {**cpu_only, "GPU": 2.0})


def test_second_batch_on_the_same_folder_is_refused(tmp_path):
    with batch.locked(tmp_path), pytest.raises(InputError, match="Another dub-batch"), batch.locked(tmp_path):
        pass


def test_summary_is_written_whole(tmp_path):
    results = [batch.Result(2, "b.mp4", "failed", 0.0, 'bad, "quoted"\nerror'),
               batch.Result(1, "a.mp4", "done", 1.5, "", "h", "o", "host:1")]
    batch.write_summary(tmp_path / "summary.csv", results)
    rows = _summary(tmp_path)
    assert list(rows) == [1, 2] and rows[2]["error"] == 'bad, "quoted"\nerror' and rows[1]["seconds"] == "1.500"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_cli_is_registered():
    from studio.cli import COMMANDS

    assert COMMANDS["dub-batch"][0] == "studio.batch"
