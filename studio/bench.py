"""``python -m studio bench --out REPORT.json``: speed and memory of every stage, one report.

Runs in one process (the end-to-end dub in a child process, so that its peak memory is its own):
feature extraction, media decode/encode, synthetic data generation, landmark preprocessing fps,
mapping inference (cascade vs LSTM vs BiLSTM on 5 minutes of audio), edits, renderer fps (retrieval;
neural at 256 and 720), end-to-end dub real-time factor and peak memory, and the studio's own timings
on the bundled sample (render click to video, slider to overlay, page load); with ``--sync-real``, the
sync check of a dub of that real video's speech against the video (``studio sync-check``) and its
visual quality (``studio quality``: mouth flicker, sharpness, seam vs the real video); batch
dubbing throughput with 1 and 2 worker processes (``studio dub-batch``, 6 short sample jobs); GPU
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
from typing import Any, Callable, Sequence

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


def dub_child(subject: Path | None, speech: Path, template: Path | None, out: Path, renderer: str = "retrieval", *,
              video: Path | None = None, env: dict[str, str] | None = None,
              landmarks_csv: Path | None = None) -> dict:
    """Run ``studio dub`` in a child process (``--subject``, or one step with ``video``): wall
    seconds and the child's peak memory (MB)."""
    peak_file = Path(tempfile.mkstemp(suffix=".peak")[1])
    # The child reports its own peak RSS (VmHWM of its own memory map): ru_maxrss from wait4 would
    # include this (large) benchmark process's memory at fork time.
    wrapper = ("import runpy, sys\nout = sys.argv.pop(1)\nsys.argv[0] = 'studio'\ntry:\n"
               "    runpy.run_module('studio', run_name='__main__')\nfinally:\n"
               "    open(out, 'w').write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
    who = ["--video", str(video)] if video is not None else ["--subject", str(subject)]
    cmd = [sys.executable, "-c", wrapper, str(peak_file), "dub", *who, "--speech", str(speech),
           "--out", str(out), "--renderer", renderer]
    if template is not None:
        cmd += ["--template", str(template)]
    if landmarks_csv is not None:
        cmd += ["--landmarks-csv", str(landmarks_csv)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=None if env is None else {**os.environ, **env})
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


def warm_dub_seconds(subject: Path, speech: Path, out: Path) -> float:
    """Seconds of a dub in a process that has the models loaded already (the studio's case: one
    model manager for every request): prediction, landmarks, rendering and encoding, after one
    warm-up dub."""
    from studio.pipeline import Pipeline

    pipe = Pipeline()
    pipe.dub(subject, speech, out)
    t0 = time.perf_counter()
    pipe.dub(subject, speech, out)
    return time.perf_counter() - t0


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


def quality_stage(subject: Path, template: Path | None, real: Path, real_audio: Path | None, seconds: float,
                  tmp: Path) -> dict:
    """Dub the first ``seconds`` of a real video's speech onto the template and measure the dub's
    visual quality against that real video (``studio quality``): mouth flicker, sharpness and
    paste-back seam as dub / real, and dub / template."""
    from studio import media
    from studio.audio import SAMPLE_RATE
    from studio.render.quality import quality_check

    signal = media.read_audio(real_audio if real_audio is not None else real)
    speech = tmp / "quality_speech.wav"
    speech.write_bytes(media.wav_bytes(signal[: int(round(seconds * SAMPLE_RATE))]))
    dub = tmp / "quality_dub.mp4"
    dub_child(subject, speech, template, dub)
    res = quality_check(dub, real, template_video=template, work_dir=tmp / "quality")
    out: dict[str, Any] = {"real": str(real), "seconds": round(float(res.get("seconds", seconds)), 2)}
    for measure in ("flicker", "sharpness", "seam"):
        out[f"{measure}_ratio"] = res["dub"][measure]["ratio"]
        if res.get("dub_vs_template"):
            out[f"{measure}_vs_template"] = res["dub_vs_template"][measure]
    return out


def portrait_video(source: Path, out: Path, seconds: float = 10.0, width: int = 1080, height: int = 1920) -> Path:
    """A phone-format test video: ``source`` (square, with sound) looped to ``seconds``, scaled to
    ``width`` and centred on a ``width`` x ``height`` canvas (H.264 + AAC)."""
    from studio.media import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(source), "-t", f"{seconds}",
           "-vf", f"scale={width}:-2,pad={width}:{height}:(ow-iw)/2:(oh-ih)/2", "-c:v", "libx264",
           "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def one_step_stage(shared: Path, tmp: Path, seconds: float = 10.0) -> dict:
    """One-step dub (``studio dub --video``) of a 1080x1920 video of ``seconds`` with as much new
    speech, from an empty cache (the subject is built: preprocess, fine-tune, retrieval pool),
    then again (the subject is cached). Targets: <= 60 s and <= 15 s on 2 CPU cores."""
    from studio import media
    from studio.audio import SAMPLE_RATE

    video = portrait_video(shared / "media" / "video" / "katie_hill.mp4", tmp / "portrait.mp4", seconds)
    signal = media.read_audio(shared / "media" / "speech" / "english_60s_16k.wav")
    speech = tmp / "one_step_speech.wav"
    speech.write_bytes(media.wav_bytes(signal[: int(round(seconds * SAMPLE_RATE))]))
    env = {"STUDIO_CACHE_DIR": str(tmp / "one_step_cache")}
    first = dub_child(None, speech, None, tmp / "one_step_1.mp4", video=video, env=env)
    second = dub_child(None, speech, None, tmp / "one_step_2.mp4", video=video, env=env)
    return {"video": f"{seconds:g} s 1080x1920 (katie_hill looped)", "speech_seconds": first["speech_seconds"],
            "cpus": os.cpu_count(), "first_wall_s": first["wall_s"], "first_target_s": 60.0,
            "second_wall_s": second["wall_s"], "second_target_s": 15.0, "output_size": first["size"],
            "frames": first["frames"], "peak_rss_mb": max(first["peak_rss_mb"], second["peak_rss_mb"])}


HEAD_MOTION_CLIPS = ("katie_hill", "theresa_may_5s", "young_man_outdoors", "aoc", "obama_weekly_address")


def integrity_stage(shared: Path, tmp: Path, clips: Sequence[str] = HEAD_MOTION_CLIPS, seconds: float = 5.0) -> dict:
    """One-step dubs of footage with head motion, each with ``seconds`` of another person's speech,
    re-detected by ``studio integrity``: broken frames and jaw p95 of the dub beside its floor
    (the same measure on the template). Targets (issue 21): broken <= floor + 1 point, jaw p95 <=
    1.15 x floor."""
    from studio import media
    from studio.audio import SAMPLE_RATE
    from studio.render.integrity import integrity_check

    signal = media.read_audio(shared / "media" / "speech" / "radio_address_16k_stereo.wav")
    speech = tmp / "integrity_speech.wav"
    speech.write_bytes(media.wav_bytes(signal[: int(round(seconds * SAMPLE_RATE))]))
    env = {"STUDIO_CACHE_DIR": str(tmp / "integrity_cache")}
    out: dict[str, Any] = {"speech": f"radio_address_16k_stereo.wav, first {seconds:g} s"}
    passed = 0
    for name in clips:
        video = shared / "media" / "video" / f"{name}.mp4"
        if not video.exists():
            out[f"{name}_skipped"] = "not in the shared folder"
            continue
        dub, csv = tmp / f"integrity_{name}.mp4", tmp / f"integrity_{name}.csv"
        dub_child(None, speech, None, dub, video=video, env=env, landmarks_csv=csv)
        res = integrity_check(dub, csv, template_video=video, work_dir=tmp / "integrity_work")
        d, f, v = res["dub"], res["floor"], res["verdict"]
        out |= {f"{name}_broken": round(d["broken"], 4), f"{name}_broken_floor": round(f["broken"], 4),
                f"{name}_jaw_p95": d["jaw"]["p95"], f"{name}_jaw_p95_floor": f["jaw"]["p95"],
                f"{name}_outside_mean": d["outside"]["mean"], f"{name}_passed": v["passed"]}
        passed += bool(v["passed"])
    out["clips_passed"] = passed
    return out


def prior_speech_benchmark(seconds: float = 300.0, fps: float = 25.0, repeats: int = 3) -> dict:
    """Speech to mouth with the shipped prior, features included: ``seconds`` of a waveform ->
    logfbank aligned to video frames -> each speech normalisation (``audio_norm``) -> the
    prior's prediction. Median wall seconds per normalisation (the prior's own is the one used)."""
    import numpy as np

    from studio import audio
    from studio.models import checkpoint as ck
    from studio.models import conditioning as cond
    from studio.train.prior import PRIOR_DIR

    model = ck.MappingModel.load(PRIOR_DIR)
    frames = int(round(seconds * fps))
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    wave = (0.2 * np.sin(2 * np.pi * 3 * t) * rng.standard_normal(len(t))).astype(np.float32)
    n = model.norm
    pose = np.repeat(n.pose_mean[None], frames, 0).astype(np.float32)
    cheek = np.repeat(n.cheek_mean[None], frames, 0).astype(np.float32)
    out: dict[str, Any] = {"audio_seconds": seconds, "prior_audio_norm": model.net.cfg.audio_norm}
    model.predict(audio.features_for_video(wave, fps, frames), pose, cheek, fps=fps)  # warm-up
    for mode in cond.AUDIO_NORMS:
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            feats = audio.features_for_video(wave, fps, frames)
            normed = cond.normalize_audio(feats, mode)
            t1 = time.perf_counter()
            model.predict(feats, pose, cheek, fps=fps)  # the model applies its own normalisation
            walls.append((t1 - t0, time.perf_counter() - t0))
        out[f"features_{mode}_s"] = float(np.median([w[0] for w in walls]))
        if mode == model.net.cfg.audio_norm:
            out["features_and_prior_s"] = float(np.median([w[1] for w in walls]))
        del normed
    return out


def run(out: Path, shared: Path, subject: Path | None, quick: bool = False, sync_real: Path | None = None,
        sync_real_audio: Path | None = None, sync_seconds: float = 10.0,
        stages: set[str] | None = None) -> dict[str, Any]:
    import torch

    from studio import audio, media

    video = shared / "media" / "video" / "obama_weekly_address.mp4"
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {},
    }
    if stages is not None:
        unknown = stages - set(STAGES)
        if unknown:
            from studio.errors import InputError

            raise InputError(f"Unknown bench stage(s) {sorted(unknown)}.", f"Known: {', '.join(STAGES)}.")

    def stage(name: str, fn: Callable[[], dict], report: dict[str, Any]) -> None:
        if stages is None or name in stages:
            _stage(name, fn, report)

    stage("audio_features", lambda: audio.benchmark(300.0), report)
    stage("media", lambda: media.benchmark(video if video.exists() else None), report)

    def synth_stage() -> dict:
        from studio.data.synth import benchmark

        return benchmark(60.0)

    stage("synth_60s", synth_stage, report)

    def preprocess_stage() -> dict:
        from studio.data.preprocess import benchmark

        return benchmark(video, max_frames=300 if quick else None)

    stage("preprocess", preprocess_stage, report)

    def mapping_stage() -> dict:
        from studio.train.evaluate import benchmark

        return benchmark()

    stage("mapping_inference", mapping_stage, report)
    stage("prior_speech_to_mouth", prior_speech_benchmark, report)

    def training_stage() -> dict:
        from studio.train.evaluate import training_benchmark

        return training_benchmark(1.0 if quick else 10.0)

    stage("mapping_training", training_stage, report)

    def edits_stage() -> dict:
        from studio.edits import benchmark

        return benchmark(5.0)

    stage("edits_5min", edits_stage, report)

    def retrieval_stage() -> dict:
        from studio.render.retrieval import benchmark

        return benchmark(size=720)

    stage("retrieval_renderer", retrieval_stage, report)

    def neural_stage() -> dict:
        from studio.render.neural import benchmark

        return benchmark(sizes=(256, 720))

    stage("neural_renderer", neural_stage, report)

    if subject is not None:
        speech_dir = shared / "media" / "speech"
        with tempfile.TemporaryDirectory() as tmp:
            stage("dub_12s_720p", lambda: dub_child(subject, speech_dir / "macron_48k_stereo.wav",
                                                      video if video.exists() else None, Path(tmp) / "a.mp4"),
                   report)
            if not quick:
                stage("dub_60s_720p", lambda: dub_child(subject, speech_dir / "english_60s_16k.wav",
                                                          video if video.exists() else None, Path(tmp) / "b.mp4"),
                       report)
            if sync_real is not None:
                secs = min(sync_seconds, 5.0) if quick else sync_seconds
                stage("sync_check", lambda: sync_stage(subject, video if video.exists() else None, sync_real,
                                                        sync_real_audio, secs, Path(tmp)), report)
                stage("visual_quality", lambda: quality_stage(subject, video if video.exists() else None,
                                                              sync_real, sync_real_audio, secs, Path(tmp)), report)
    elif sync_real is not None:
        report["stages"]["sync_check"] = {"skipped": "needs --subject (the dub is made with it)"}

    def batch_stage() -> dict:
        from studio.batch import benchmark

        return benchmark(jobs=6, seconds=1.0 if quick else 2.0)

    stage("batch", batch_stage, report)

    def one_step() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            return one_step_stage(shared, Path(tmp), 5.0 if quick else 10.0)

    stage("one_step_dub", one_step, report)

    def sample_dub() -> dict:
        """The bundled sample (384x384): its default speech on its subject; target >= 2x real time."""
        subject, speech = REPO_ROOT / "presets" / "sample_subject", REPO_ROOT / "sample_media" / "speech.wav"
        with tempfile.TemporaryDirectory() as tmp:
            made = dub_child(subject, speech, None, Path(tmp) / "sample.mp4")
            warm = warm_dub_seconds(subject, speech, Path(tmp) / "warm.mp4")
        return made | {"cold_wall_s": made["wall_s"], "realtime_target": 0.5, "warm_wall_s": round(warm, 3),
                       "warm_realtime_factor": round(warm / made["speech_seconds"], 3)}

    stage("dub_sample_384", sample_dub, report)

    def integrity() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            clips = HEAD_MOTION_CLIPS[:2] if quick else HEAD_MOTION_CLIPS
            return integrity_stage(shared, Path(tmp), clips, 3.0 if quick else 5.0)

    stage("integrity", integrity, report)

    def studio_stage() -> dict:
        from studio.ui.bench import benchmark

        return benchmark(browser=not quick)

    stage("studio_ui_sample", studio_stage, report)

    report["peak_rss_mb_bench_process"] = round(_peak_rss_mb(), 1)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(out, report)
    out.with_suffix(".md").write_text(markdown(report))
    return report


STAGES = ("audio_features", "media", "synth_60s", "preprocess", "mapping_inference", "prior_speech_to_mouth",
          "mapping_training",
          "edits_5min", "retrieval_renderer", "neural_renderer", "dub_12s_720p", "dub_60s_720p", "sync_check",
          "visual_quality", "batch",
          "one_step_dub", "dub_sample_384", "integrity", "studio_ui_sample")


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
    parser.add_argument("--stages", default="", help=f"comma-separated stages to run (default: all): {', '.join(STAGES)}")
    parser.add_argument("--sync-seconds", type=float, default=10.0,
                        help="seconds of the real speech to dub for the sync check (default %(default)s; 5 with --quick)")


def cli(args: argparse.Namespace) -> int:
    report = run(Path(args.out), Path(args.shared), Path(args.subject) if args.subject else None, quick=args.quick,
                 sync_real=Path(args.sync_real) if args.sync_real else None,
                 sync_real_audio=Path(args.sync_real_audio) if args.sync_real_audio else None,
                 sync_seconds=args.sync_seconds,
                 stages={x.strip() for x in args.stages.split(",") if x.strip()} or None)
    failed = [k for k, v in report["stages"].items() if "error" in v]
    sys.stdout.write(markdown(report))  # the report is this command's output
    return 1 if failed else 0
