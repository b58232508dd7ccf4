"""Measure the person-match score of ``studio.face.identity_check`` on the real footage of ../shared.

    STUDIO_WEIGHTS_DIR=../shared/weights nice .venv/bin/python docs/results/identity_check.py \
        [--shared ../shared] [--work /tmp/idcheck] [--json docs/results/identity_check.json]

Every video of ../shared/media/video, plus five made from two of them (the sample template cut,
shrunk to 160x160, darkened and tinted, pasted small into a 854x480 frame; the Obama address
shrunk to 640x360 and 426x240), is preprocessed once into WORK/clips/NAME (``python -m studio
preprocess``; cached there). Each clip is then scored against each *subject*: a person's other
clips, as a subject built from them would hold them (Obama: his other clips, leaving out the clip
itself and any clip cut from the same recording; Andrew: the other clip; the sample subject: its
own folder, presets/sample_subject; everyone else: their one clip). A clip is never scored
against itself. Four different 16-frame samplings of each clip and subject show how much the
score moves with the frames picked.

Prints a markdown table (the production sampling) and the worst same-person / best
different-person scores of each sampling; writes every score to --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

from studio import media
from studio.data.clip import Clip
from studio.data.preprocess import preprocess
from studio.face import identity_check as idc
from studio.subject import Subject

log = logging.getLogger("identity_check")

REPO = Path(__file__).resolve().parents[2]
VIDEOS = ("obama_clip1", "obama_clip2", "obama_clip3", "obama_weekly_address", "andrew_clip_1", "andrew_clip_2",
          "reagan_clip1", "katie_hill", "aoc", "theresa_may_5s", "young_man_outdoors")
# name -> (source, start s, seconds, ffmpeg video filter): same-person clips under other conditions
DERIVED = {
    "astro_small": ("sample", 20, 6, "scale=160:160"),
    "astro_dark": ("sample", 8, 6, "eq=gamma=0.6:brightness=-0.08:contrast=0.8,colorbalance=rs=0.2:bs=-0.2"),
    "astro_wide": ("sample", 28, 6, "scale=200:200,pad=854:480:420:60:color=gray"),
    "obama_weekly_360": ("obama_weekly_address", 12, 8, "scale=640:360"),
    "obama_weekly_240": ("obama_weekly_address", 12, 8, "scale=426:240"),
}
SAMPLINGS = 4  # sampling k takes every 4th usable frame from the k-th; k = -1: all (production)


def person(name: str) -> str:
    for p in ("obama", "andrew", "astro"):
        if name.startswith(p):
            return p
    return name


def recording(name: str) -> str:
    return "obama_weekly_address" if name.startswith("obama_weekly") else name


def make_derived(name: str, shared: Path, out: Path) -> Path:
    src, start, seconds, vf = DERIVED[name]
    video = REPO / "sample_media" / "template.mp4" if src == "sample" else shared / "media" / "video" / f"{src}.mp4"
    path = out / f"{name}.mp4"
    if not path.exists():
        subprocess.run([media.ffmpeg_exe(), "-y", "-loglevel", "error", "-ss", str(start), "-t", str(seconds),
                        "-i", str(video), "-vf", vf, "-c:v", "libx264", "-crf", "23", "-an", str(path)], check=True)
    return path


def load_clips(shared: Path, work: Path) -> dict[str, Clip]:
    clips = {}
    (work / "derived").mkdir(parents=True, exist_ok=True)
    for name in VIDEOS + tuple(DERIVED):
        video = (shared / "media" / "video" / f"{name}.mp4" if name in VIDEOS
                 else make_derived(name, shared, work / "derived"))
        clips[name] = preprocess(video, work / "clips" / name, progress=False)
    return clips


def sampled(clip: Clip, k: int, n: int, cfg: idc.IdentityConfig) -> idc.IdentityDescriptor | None:
    usable = idc.usable_frames(clip.found, clip.pose, clip.landmarks, cfg)
    if k >= 0:
        usable = usable[k::SAMPLINGS]
    if len(usable) < cfg.min_frames:
        return None
    pick = idc.spread(usable, n)
    return idc.describe_frames(media.read_frames(clip.video_path, pick.tolist()), clip.landmarks[pick], cfg)


def subject_sets(clips: dict[str, Clip]) -> dict[str, list[str]]:
    subjects: dict[str, list[str]] = {}
    for name in clips:
        if not name.startswith("astro"):
            subjects.setdefault(person(name), []).append(name)
    return subjects


def measure(clips: dict[str, Clip], sample_subject: Subject, cfg: idc.IdentityConfig,
            samplings: int = SAMPLINGS) -> dict:
    subjects = subject_sets(clips)
    results = {}
    for k in [-1] + list(range(samplings)):
        probe = {n: sampled(c, k, cfg.frames, cfg) for n, c in clips.items()}
        astro = [sampled(c, k, cfg.subject_frames, cfg) for c in sample_subject.clips()]
        scores = {}
        for p, dp in probe.items():
            if dp is None:
                log.warning("%s: no frames fit to judge", p)
                continue
            scores[(p, "astro")] = idc.score(dp, idc.combine([d for d in astro if d is not None]))
            for s, members in subjects.items():
                ref = [m for m in members if recording(m) != recording(p)]
                if not ref:
                    continue
                per = max(cfg.min_frames, cfg.subject_frames // len(ref))
                ds = [sampled(clips[m], k, per, cfg) for m in ref]
                scores[(p, s)] = idc.score(dp, idc.combine([d for d in ds if d is not None]))
        results[k] = scores
    return results


def summary(scores: dict) -> tuple[tuple, tuple]:
    same = min((v, k) for k, v in scores.items() if person(k[0]) == k[1])
    diff = max((v, k) for k, v in scores.items() if person(k[0]) != k[1])
    return same, diff


def table(scores: dict, clips: list[str], subjects: list[str]) -> str:
    lines = ["| template clip | " + " | ".join(subjects) + " |", "|---|" + "---:|" * len(subjects)]
    for p in clips:
        cells = []
        for s in subjects:
            v = scores.get((p, s))
            cells.append("-" if v is None else (f"**{v:.2f}**" if person(p) == s else f"{v:.2f}"))
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--work", default="/tmp/idcheck")
    ap.add_argument("--json", default=None)
    ap.add_argument("--frames", type=int, default=idc.IdentityConfig.frames, help="frames per template clip")
    ap.add_argument("--samplings", type=int, default=SAMPLINGS, help="extra frame samplings (0-4)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = idc.IdentityConfig(frames=args.frames)
    clips = load_clips(Path(args.shared), Path(args.work))
    results = measure(clips, Subject.load(REPO / "presets" / "sample_subject"), cfg, args.samplings)
    subjects = ["obama", "andrew", "astro"] + [s for s in subject_sets(clips) if s not in ("obama", "andrew")]
    log.info("\n%s\n", table(results[-1], list(clips), subjects))
    for k, scores in results.items():
        (ws, wk), (bd, bk) = summary(scores)
        log.info("sampling %s: worst same person %.3f (%s vs %s), best different people %.3f (%s vs %s), gap %.3f",
                 "production" if k < 0 else k, ws, *wk, bd, *bk, ws - bd)
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): {f"{p}|{s}": round(v, 4) for (p, s), v in sc.items()}
                                               for k, sc in results.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
