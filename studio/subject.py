"""A subject: everything the studio knows about one person, in one folder.

Layout of SUBJECT_DIR::

    subject.json        manifest (written last; its presence means the folder is complete)
    clips/<name>/       preprocessed clips (studio.data.clip cache format)
    mapping/<variant>/  mapping checkpoints (studio.models.checkpoint), one per trained variant
    retrieval/          the retrieval renderer's pool (studio.render.retrieval)
    neural/             the neural renderer's checkpoint, when one was trained

``python -m studio make-subject VIDEO... --out SUBJECT_DIR [--neural]`` builds it end to end;
every stage is resumable because each writes atomically and is skipped when already complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from studio.errors import CheckpointError, InputError
from studio.fsutil import read_json, sha256_file, write_json_atomic
from studio.models import VARIANT_LABELS  # noqa: F401  (re-exported for the UI)
from studio.models import VARIANTS as ALL_VARIANTS

log = logging.getLogger(__name__)

MANIFEST = "subject.json"
FORMAT = "lip-sync-studio/subject"
VERSION = 1
AUDIO_FROM_VIDEO = "-"  # in `make-subject --audio`: this video's own sound track

Progress = Callable[[str, float], None]  # (stage description, fraction 0..1)


@dataclass(frozen=True)
class SubjectManifest:
    name: str
    clips: tuple[str, ...]
    variants: tuple[str, ...]
    retrieval: bool
    neural: bool
    created: float = 0.0
    sources: tuple[str, ...] = ()
    format: str = FORMAT
    version: int = VERSION
    extras: dict[str, Any] = field(default_factory=dict)


class Subject:
    """A loaded subject folder. Read-only: building is :func:`make_subject`'s job."""

    def __init__(self, directory: Path, manifest: SubjectManifest) -> None:
        self.directory = directory
        self.manifest = manifest
        self._clips: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.manifest.name

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "Subject":
        directory = Path(directory)
        hint = "Build it with `python -m studio make-subject VIDEO... --out SUBJECT_DIR`."
        raw = read_json(directory / MANIFEST, f"{directory} is not a subject folder (no {MANIFEST}).", hint)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CheckpointError(f"{directory / MANIFEST} is not a subject manifest.", hint)
        try:
            manifest = SubjectManifest(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except TypeError as exc:
            raise CheckpointError(f"{directory / MANIFEST} has unexpected fields: {exc}.", hint) from None
        return cls(directory, manifest)

    # -- parts ----------------------------------------------------------------------------------
    def clip_for_video(self, sha256: str) -> str | None:
        """The name of this subject's clip made from a video with this content hash, if any."""
        for name, sha in self.manifest.extras.get("video_sha256", {}).items():
            if sha == sha256 and name in self.manifest.clips:
                return name
        return None

    def clip_dir(self, name: str) -> Path:
        if name not in self.manifest.clips:
            raise InputError(f"Subject {self.name!r} has no clip {name!r}.",
                             f"Pick one of {list(self.manifest.clips)}.")
        return self.directory / "clips" / name

    def clip(self, name: str):
        from studio.data.clip import Clip

        if name not in self._clips:
            self._clips[name] = Clip.load(self.clip_dir(name))
        return self._clips[name]

    def clips(self) -> list:
        return [self.clip(n) for n in self.manifest.clips]

    def mapping_dir(self, variant: str) -> Path:
        if variant not in ALL_VARIANTS:
            raise InputError(f"Unknown mapping variant {variant!r}.", f"Use one of {list(ALL_VARIANTS)}.")
        if variant not in self.manifest.variants:
            raise CheckpointError(
                f"Subject {self.name!r} has no trained {variant!r} model.",
                f"Trained variants: {list(self.manifest.variants)}. Train it with `python -m studio "
                f"make-subject ... --variants {variant}` or pick a trained one.")
        return self.directory / "mapping" / variant

    @property
    def retrieval_dir(self) -> Path:
        if not self.manifest.retrieval:
            raise CheckpointError(f"Subject {self.name!r} has no retrieval pool.",
                                  "Rebuild the subject with `python -m studio make-subject`.")
        return self.directory / "retrieval"

    @property
    def neural_dir(self) -> Path:
        if not self.manifest.neural:
            raise CheckpointError(f"Subject {self.name!r} has no trained neural renderer.",
                                  "Use the retrieval renderer, or build the subject with --neural.")
        return self.directory / "neural"


def clip_name(video: Path, used: set[str]) -> str:
    """A safe, unique folder name for a clip from its file name."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", video.stem).strip("._") or "clip"
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def sibling_audio(video: Path) -> Path | None:
    """The same-named .wav beside a video, used when the video itself has no audio track."""
    for ext in (".wav", ".mp3", ".m4a", ".flac"):
        cand = video.with_suffix(ext)
        if cand.exists():
            return cand
    return None


def make_subject(videos: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 audios: Sequence[str | os.PathLike[str] | None] | None = None,
                 variants: Sequence[str] = ("ours",), neural: bool = False, preset: str = "cpu",
                 backend: str = "mediapipe", seed: int = 0, name: str | None = None,
                 neural_steps: int | None = None, neural_size: int = 256,
                 prior: str | os.PathLike[str] | None = "auto",
                 progress: Progress | None = None) -> Subject:
    """Build (or complete) a subject folder from footage of one person.

    Stages, each skipped when its output is already complete: preprocess every video (with its
    own audio track, the given audio file, or a same-named .wav beside it), train each mapping
    variant on all clips, build the retrieval pool, optionally train the neural renderer. The
    manifest is written last.

    ``ours`` starts from the multi-speaker prior (``prior``: "auto" = presets/prior when it is
    there, a checkpoint folder, or None to train from scratch) and is fine-tuned on the footage
    as far as its length allows (``studio.train.prior.fine_tune``); footage without usable speech
    of its own (no audio track, silence, or sound the mouth does not follow) gets the prior with
    the person's face shape and a notice in ``manifest.extras["notices"]``. The other variants
    (the paper's ablations) are trained from scratch and need longer footage.
    """
    from studio import media
    from studio.data.preprocess import preprocess
    from studio.render.retrieval import RetrievalPool
    from studio.train.mapping import train_mapping

    out = Path(out_dir)
    videos = [Path(v) for v in videos]
    if not videos:
        raise InputError("No footage given.", "Pass one or more videos of the same person.")
    bad = [v for v in variants if v not in ALL_VARIANTS]
    if bad:
        raise InputError(f"Unknown variant(s) {bad}.", f"Use any of {list(ALL_VARIANTS)}.")
    if audios is not None and len(audios) != len(videos):
        raise InputError("Give one audio file per video (or none).", "Match --audio to the videos in order.")
    report = progress or (lambda stage, frac: None)
    n_stages = len(videos) + len(variants) + 1 + int(neural)
    done = 0

    used: set[str] = set()
    clip_dirs: list[Path] = []
    clips = []
    video_sha: dict[str, str] = {}
    for k, video in enumerate(videos):
        audio = audios[k] if audios is not None else None
        if audio is None and not media.probe_video(video).has_audio:
            audio = sibling_audio(video)
        name_k = clip_name(video, used)
        report(f"preprocess {video.name}", done / n_stages)
        preprocess(video, out / "clips" / name_k, audio=audio, backend=backend, progress=False)
        clips.append(_embed_video(out / "clips" / name_k, video))
        video_sha[name_k] = sha256_file(video)
        clip_dirs.append(out / "clips" / name_k)
        done += 1

    prior_dir = _prior_dir(prior)
    notices: list[str] = []
    for variant in variants:
        report(f"train mapping: {variant}", done / n_stages)
        ckpt = out / "mapping" / variant
        if variant == "ours" and prior_dir is not None and not _person_specific(ckpt):
            from studio.train.prior import adapt_prior, fine_tune, speech_problem

            problem = speech_problem(clips)
            if problem is None:
                fine_tune(clips, ckpt, prior=prior_dir, seed=seed, preset=preset)
            else:
                notices.append(f"{problem} The lip sync uses the multi-speaker prior alone, "
                               "without learning this person's way of speaking.")
                log.warning("%s: %s", out, notices[-1])
                from studio.train.windows import clip_arrays

                adapt_prior(prior_dir, [clip_arrays(c) for c in clips], ckpt)
        elif not (ckpt / "config.json").exists():
            from studio.train.prior import scratch_plan

            plan = scratch_plan([c.meta.frames for c in clips])
            if plan is None:
                notices.append(f"The footage is too short to train the {VARIANT_LABELS.get(variant, variant)} "
                               "model from scratch; it was left out (use 5 s or more).")
                log.warning("%s: %s", out, notices[-1])
            else:
                train_mapping(clips, variant, ckpt, preset=preset, seed=seed, **plan)
        done += 1

    report("build retrieval pool", done / n_stages)
    trained = [v for v in variants if (out / "mapping" / v / "config.json").exists()]
    if not trained:
        raise InputError("The footage is too short to train any of the chosen models.",
                         "Keep the default model (Ours, which starts from the multi-speaker prior) or give 5 s or more.")
    pca_source = out / "mapping" / trained[0]
    RetrievalPool.build_folder(clip_dirs, out / "retrieval", pca_dir=pca_source)
    done += 1

    if neural:
        from studio.train.renderer import train_renderer

        report("train neural renderer", done / n_stages)
        kw = {} if neural_steps is None else {"steps": neural_steps}
        train_renderer(clip_dirs, out / "neural", size=neural_size, **kw)
        done += 1

    manifest = SubjectManifest(
        name=name or out.name, clips=tuple(p.name for p in clip_dirs),
        variants=tuple(v for v in variants if (out / "mapping" / v / "config.json").exists()),
        retrieval=True, neural=bool(neural), created=time.time(), sources=tuple(str(v) for v in videos),
        extras={"video_sha256": video_sha, "notices": notices})
    old = _existing_manifest(out)
    if old is not None:  # keep variants trained earlier
        merged = tuple(v for v in ALL_VARIANTS if v in set(old.variants) | set(variants)
                       and (out / "mapping" / v / "config.json").exists())
        manifest = dataclasses.replace(manifest, variants=merged, neural=manifest.neural or old.neural)
    write_json_atomic(out / MANIFEST, dataclasses.asdict(manifest))
    report("done", 1.0)
    return Subject.load(out)


def _person_specific(ckpt: Path) -> bool:
    """A finished checkpoint trained from scratch (before the prior, or with ``prior=None``):
    completing the subject must not replace it."""
    try:
        return "identity" not in json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _prior_dir(prior: str | os.PathLike[str] | None) -> Path | None:
    from studio.train.prior import PRIOR_DIR

    if prior is None:
        return None
    if prior == "auto":
        return PRIOR_DIR if (PRIOR_DIR / "config.json").exists() else None
    return Path(prior)


def _embed_video(clip_dir: Path, video: Path):
    """Copy the footage into the clip folder and point the clip at it (``meta.video``, relative),
    so that a subject folder is self-contained and can be moved or committed."""
    import shutil

    from studio.data.clip import CLIP_JSON, Clip
    from studio.fsutil import atomic_path

    target = clip_dir / f"video{video.suffix.lower() or '.mp4'}"
    meta = json.loads((clip_dir / CLIP_JSON).read_text())
    if meta.get("video") != target.name or not target.exists():
        with atomic_path(target) as tmp:
            shutil.copyfile(video, tmp)
        meta["video"] = target.name
        write_json_atomic(clip_dir / CLIP_JSON, meta)
    return Clip.load(clip_dir)


def _existing_manifest(out: Path) -> SubjectManifest | None:
    try:
        return Subject.load(out).manifest
    except CheckpointError:
        return None


def pair_speech(videos: Sequence[str | os.PathLike[str]],
                speech: Sequence[str | os.PathLike[str]] | None) -> list[Path | None]:
    """Separate speech files for footage: one entry per video (None: the video's own track).

    A speech file belongs to the video with the same file stem (``anna_1.mp4`` + ``anna_1.wav``);
    when no stem matches and there are as many files as videos, they pair in order. Anything else
    raises InputError, so a speech file is never silently put under the wrong video.
    """
    vids = [Path(v) for v in videos]
    files = [Path(a) for a in (speech or [])]
    if not files:
        return [None] * len(vids)
    by_stem = {f.stem: f for f in files}
    matched = [by_stem.get(v.stem) for v in vids]
    if any(m is not None for m in matched):
        unused = sorted(f.name for f in files if f not in matched)
        if unused:
            raise InputError(f"Speech file(s) {', '.join(unused)} match no footage by name.",
                             "Name each speech file like its video (anna_1.mp4 + anna_1.wav), or give "
                             "exactly one speech file per video, in the same order.")
        return matched
    if len(files) != len(vids):
        raise InputError(f"{len(files)} speech file(s) for {len(vids)} video(s), and no names match.",
                         "Name each speech file like its video (anna_1.mp4 + anna_1.wav), or give "
                         "exactly one speech file per video, in the same order.")
    return list(files)


def command_line(videos: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 audios: Sequence[str | os.PathLike[str] | None] | None = None, variants: Sequence[str] = ("ours",),
                 name: str | None = None, preset: str = "cpu", neural: bool = False,
                 neural_steps: int | None = None) -> list[str]:
    """The ``make-subject`` command (name and arguments) that builds ``out`` as :func:`make_subject`
    would with these settings: for running the build as a child process (the studio does)."""
    args = ["make-subject", *[str(v) for v in videos], "--out", str(out), "--variants", ",".join(variants),
            "--preset", preset]
    if name:
        args += ["--name", name]
    if audios is not None and any(a is not None for a in audios):
        args += ["--audio", *[AUDIO_FROM_VIDEO if a is None else str(a) for a in audios]]
    if neural:
        args += ["--neural"] + (["--neural-steps", str(int(neural_steps))] if neural_steps else [])
    return args


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="footage of one person (video files)")
    parser.add_argument("--out", required=True, help="subject folder to create or complete")
    parser.add_argument("--audio", nargs="*", default=None,
                        help=f"one audio file per video, '{AUDIO_FROM_VIDEO}' for a video's own track "
                             "(default: the video's own track, else a same-named .wav)")
    parser.add_argument("--variants", default="ours",
                        help="comma-separated mapping variants to train, or 'all' (default: ours)")
    parser.add_argument("--neural", action="store_true", help="also train the neural renderer (slow on CPU)")
    parser.add_argument("--neural-steps", type=int, default=None, help="neural renderer training steps")
    parser.add_argument("--neural-size", type=int, default=256, help="neural renderer resolution")
    parser.add_argument("--preset", default="cpu", help="training preset (presets/*.toml)")
    parser.add_argument("--backend", default="mediapipe", choices=("mediapipe", "fan"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior", default="auto",
                        help="multi-speaker prior to fine-tune 'ours' from (default: presets/prior); 'none' = from scratch")
    parser.add_argument("--name", default=None, help="display name (default: the folder name)")


def cli(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    variants = ALL_VARIANTS if args.variants == "all" else tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bar = tqdm(total=100, desc="make-subject", unit="%")

    def progress(stage: str, frac: float) -> None:
        bar.set_postfix_str(stage)
        bar.n = int(round(100 * frac))
        bar.refresh()

    try:
        audios = None if args.audio is None else [None if a == AUDIO_FROM_VIDEO else a for a in args.audio]
        subject = make_subject(args.videos, args.out, audios=audios, variants=variants, neural=args.neural,
                               preset=args.preset, backend=args.backend, seed=args.seed, name=args.name,
                               neural_steps=args.neural_steps, neural_size=args.neural_size,
                               prior=None if args.prior == "none" else args.prior, progress=progress)
    finally:
        bar.close()
    log.info("subject %s ready in %s: clips %s, variants %s", subject.name, subject.directory,
             list(subject.manifest.clips), list(subject.manifest.variants))
    return 0
