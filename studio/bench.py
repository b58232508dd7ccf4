"""``python -m studio bench --out REPORT.json``: speed and memory of every stage, one report.

Runs in one process (the end-to-end dub in a child process, so that its peak memory is its own):
feature extraction, media decode/encode, synthetic data generation, landmark preprocessing fps,
mapping inference (cascade vs LSTM vs BiLSTM on 5 minutes of audio), edits, renderer fps (retrieval;
neural at 256 and 720), end-to-end dub real-time factor and peak memory, and the studio's own timings
on the bundled sample (render click to video, slider to overlay, page load); with ``--sync-real``, the
sync check of a dub of that real video's speech against the video (``studio sync-check``); GPU
figures when CUDA is present. Writes REPORT.json and a
markdown table beside it (REPORT.md).

Benchmarks read real footage from the shared test material (``--shared``, default
``$STUDIO_SHARED`` or ``../shared`` beside the repository); stages whose inputs are missing are
reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from studio.config import REPO_ROOT
from studio.fsutil import write_json_atomic

log = logging.getLogger(__name__)


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: kilobytes


def _stage(name: str, fn: Callable[[], dict], report: dict[str, Any]) -> None:
    log.info("bench: %s ...", name)
    t0 = time.perf_counter()
    try:
        result = fn()
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        report["stages"][name] = result
    except Exception as exc:  # a benchmark reports a failing stage, it does not stop the others
        log.warning("bench: %s failed: %s", name, exc)
        report["stages"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                  "trace": traceback.format_exc(limit=3)}


def dub_child(subject: Path, speech: Path, template: Path | None, out: Path, renderer: str = "retrieval") -> dict:
    """Run ``studio dub`` in a child process: wall seconds and the child's peak memory (MB)."""
    peak_file = Path(tempfile.mkstemp(suffix=".peak")[1])
    # The child reports its own peak RSS (VmHWM of its own memory map): ru_maxrss from wait4 would
    # include this (large) benchmark process's memory at fork time.
    wrapper = ("import runpy, sys\nout = sys.argv.pop(1)\nsys.argv[0] = 'studio'\ntry:\n"
               "    runpy.run_module('studio', run_name='__main__')\nfinally:\n"
               "    open(out, 'w').write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
    cmd = [sys.executable, "-c", wrapper, str(peak_file), "dub", "--subject", str(subject), "--speech", str(speech),
           "--out", str(out), "--renderer", renderer]
    if template is not None:
        cmd += ["--template", str(template)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dub failed ({proc.returncode}): {proc.stderr[-800:]}")
    from studio import media

    info = media.probe_video(out)
    speech_s = len(media.read_audio(speech)) / 16_000
    peak = float(peak_file.read_text().split()[1]) / 1024.0  # "VmHWM:  123456 kB"
    peak_file.unlink()
    return {"speech_seconds": round(speech_s, 2), "wall_s": round(wall, 2), "realtime_factor": round(wall / speech_s, 3),
            "frames": info.frames, "fps": info.fps, "size": f"{info.width}x{info.height}",
            "peak_rss_mb": round(peak, 1)}


def sync_stage(subject: Path, template: Path | None, real: Path, real_audio: Path | None, seconds: float,
               tmp: Path) -> dict:
    """Dub the first ``seconds`` of a real video's speech onto the template and score the dub
    against that real video (``studio sync-check``): inner-lip r, best lag and amplitude of the dub,
    of the template without lip sync and of the speech-energy predictor."""
    from studio import media
    from studio.audio import SAMPLE_RATE
    from studio.sync import sync_check

    signal = media.read_audio(real_audio if real_audio is not None else real)
    speech = tmp / "sync_speech.wav"
    speech.write_bytes(media.wav_bytes(signal[: int(round(seconds * SAMPLE_RATE))]))
    dub = tmp / "sync_dub.mp4"
    made = dub_child(subject, speech, template, dub)
    t0 = time.perf_counter()
    res = sync_check(dub, real, real_audio=real_audio, template_video=template, work_dir=tmp / "sync")
    out: dict[str, Any] = {"real": str(real), "speech_seconds": made["speech_seconds"],
                           "dub_wall_s": made["wall_s"], "check_wall_s": round(time.perf_counter() - t0, 2),
                           "frames": res["frames"], "valid_frames": res["valid_frames"]}
    for row in ("dub", "template", "energy"):
        if res[row] is not None:
            for key in ("inner_r", "inner_lag", "inner_amplitude", "outer_r"):
                out[f"{row}_{key}"] = res[row][key]
    if res["audio_match"] is not None:
        out["audio_match_r"] = res["audio_match"]["r"]
    return out


def run(out: Path, shared: Path, subject: Path | None, quick: bool = False, sync_real: Path | None = None,
        sync_real_audio: Path | None = None, sync_seconds: float = 10.0) -> dict[str, Any]:
    import torch

    from studio import audio, media

    video = shared / "media" / "video" / "obama_weekly_address.mp4"
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {},
    }
    _stage("audio_features", lambda: audio.benchmark(300.0), report)
    _stage("media", lambda: media.benchmark(video if video.exists() else None), report)

    def synth_stage() -> dict:
        from studio.data.synth import benchmark

        return benchmark(60.0)

    _stage("synth_60s", synth_stage, report)

    def preprocess_stage() -> dict:
        from studio.data.preprocess import benchmark

        return benchmark(video, max_frames=300 if quick else None)

    _stage("preprocess", preprocess_stage, report)

    def mapping_stage() -> dict:
        from studio.train.evaluate import benchmark

        return benchmark()

    _stage("mapping_inference", mapping_stage, report)

    def training_stage() -> dict:
        from studio.train.evaluate import training_benchmark

        return training_benchmark(1.0 if quick else 10.0)

    _stage("mapping_training", training_stage, report)

    def edits_stage() -> dict:
        from studio.edits import benchmark

        return benchmark(5.0)

    _stage("edits_5min", edits_stage, report)

    def retrieval_stage() -> dict:
        from studio.render.retrieval import benchmark

        return benchmark(size=720)

    _stage("retrieval_renderer", retrieval_stage, report)

    def neural_stage() -> dict:
        from studio.render.neural import benchmark

        return benchmark(sizes=(256, 720))

    _stage("neural_renderer", neural_stage, report)

    if subject is not None:
        speech_dir = shared / "media" / "speech"
        with tempfile.TemporaryDirectory() as tmp:
            _stage("dub_12s_720p", lambda: dub_child(subject, speech_dir / "macron_48k_stereo.wav",
                                                      video if video.exists() else None, Path(tmp) / "a.mp4"),
                   report)
            if not quick:
                _stage("dub_60s_720p", lambda: dub_child(subject, speech_dir / "english_60s_16k.wav",
                                                          video if video.exists() else None, Path(tmp) / "b.mp4"),
                       report)
            if sync_real is not None:
                secs = min(sync_seconds, 5.0) if quick else sync_seconds
                _stage("sync_check", lambda: sync_stage(subject, video if video.exists() else None, sync_real,
                                                        sync_real_audio, secs, Path(tmp)), report)
    elif sync_real is not None:
        report["stages"]["sync_check"] = {"skipped": "needs --subject (the dub is made with it)"}

    def studio_stage() -> dict:
        from studio.ui.bench import benchmark

        return benchmark(browser=not quick)

    _stage("studio_ui_sample", studio_stage, report)

    report["peak_rss_mb_bench_process"] = round(_peak_rss_mb(), 1)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(out, report)
    out.with_suffix(".md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """A readable table of every number in the report."""
    lines = ["# Lip Sync Studio benchmark", "",
             f"Machine: {report['machine']['cpus']} CPUs, torch {report['machine']['torch']} "
             f"({report['machine']['torch_threads']} threads), CUDA: {report['machine']['cuda'] or 'none'}; "
             f"{report['started']}", "", "| stage | measure | value |", "|---|---|---|"]
    for stage, values in report["stages"].items():
        for key, value in values.items():
            if key == "trace":
                continue
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"| {stage} | {key} | {value} |")
    lines.append(f"| process | peak RSS (MB) | {report.get('peak_rss_mb_bench_process')} |")
    return "\n".join(lines) + "\n"


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench.json", help="report path (.json; a .md table is written beside it)")
    default_shared = os.environ.get("STUDIO_SHARED", str(REPO_ROOT.parent / "shared"))
    parser.add_argument("--shared", default=default_shared, help="shared test material (footage, speech)")
    parser.add_argument("--subject", default=None,
                        help="subject folder for the end-to-end dub (built from the Obama clips)")
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the benchmark)")
    parser.add_argument("--sync-real", default=None, metavar="REAL.mp4",
                        help="a real video of the subject speaking: its speech is dubbed onto the template "
                        "and `studio sync-check` scores the dub against it (needs --subject)")
    parser.add_argument("--sync-real-audio", default=None, metavar="WAV",
                        help="the real video's speech as a separate file (when the video has no sound)")
    parser.add_argument("--sync-seconds", type=float, default=10.0,
                        help="seconds of the real speech to dub for the sync check (default %(default)s; 5 with --quick)")


def cli(args: argparse.Namespace) -> int:
    report = run(Path(args.out), Path(args.shared), Path(args.subject) if args.subject else None, quick=args.quick,
                 sync_real=Path(args.sync_real) if args.sync_real else None,
                 sync_real_audio=Path(args.sync_real_audio) if args.sync_real_audio else None,
                 sync_seconds=args.sync_seconds)
    failed = [k for k, v in report["stages"].items() if "error" in v]
    sys.stdout.write(markdown(report))  # the report is this command's output
    return 1 if failed else 0
