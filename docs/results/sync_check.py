"""Sync check against REAL speech: dub a speech whose real video is known, then `studio sync-check`.

    # the bundled sample: the second half of the template's own speech dubbed onto its first half,
    # compared with the template's real second half
    STUDIO_WEIGHTS_DIR=../shared/weights .venv/bin/python docs/results/sync_check.py sample OUT_DIR

    # real footage: the first SECONDS of REAL's speech dubbed onto TEMPLATE with SUBJECT, compared with REAL
    STUDIO_WEIGHTS_DIR=../shared/weights .venv/bin/python docs/results/sync_check.py real OUT_DIR \
        --subject SUBJECT --real REAL.mp4 [--real-audio REAL.wav] [--template TEMPLATE.mp4] [--seconds 10]

Prints the sync-check table (stderr) and its JSON (last line of stdout). The earlier version of this
script correlated the re-detected mouth of the render with the PREDICTED landmarks, which measures
how faithfully the renderer draws the prediction, not whether the mouth is in sync with the speech;
`studio sync-check` compares with the real video of the speech instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from studio import media  # noqa: E402
from studio.audio import SAMPLE_RATE  # noqa: E402
from studio.config import REPO_ROOT  # noqa: E402
from studio.pipeline import Pipeline  # noqa: E402
from studio.sync import sync_check, table  # noqa: E402


def cut_video(src: Path, out: Path, start: int, stop: int, audio) -> Path:
    info = media.probe_video(src)
    with media.VideoWriter(out, info.fps, (info.width, info.height), audio=audio) as w:
        for frame in media.iter_frames(src, start, stop):
            w.write(frame)
    return out


def sample(out: Path) -> tuple[Path, Path, Path | None, Path]:
    """(subject, speech, template, real) for the bundled sample's halves."""
    tpl = REPO_ROOT / "sample_media" / "template.mp4"
    speech = media.read_audio(REPO_ROOT / "sample_media" / "template_speech.wav")
    info = media.probe_video(tpl)
    half = info.frames // 2
    k = int(round(half / info.fps * SAMPLE_RATE))
    first = cut_video(tpl, out / "first_half.mp4", 0, half, speech[:k])
    real = cut_video(tpl, out / "real_second_half.mp4", half, info.frames, speech[k:])
    wav = out / "second_half_speech.wav"
    wav.write_bytes(media.wav_bytes(speech[k:]))
    return REPO_ROOT / "presets" / "sample_subject", wav, first, real


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("sample", "real"))
    p.add_argument("out", help="folder for the cut media, the dub and the landmark caches")
    p.add_argument("--subject")
    p.add_argument("--real")
    p.add_argument("--real-audio")
    p.add_argument("--template")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "sample":
        subject, speech, template, real = sample(out)
        real_audio = None
    else:
        if not (args.subject and args.real):
            p.error("real mode needs --subject and --real")
        subject, real = Path(args.subject), Path(args.real)
        real_audio = Path(args.real_audio) if args.real_audio else None
        template = Path(args.template) if args.template else None
        signal = media.read_audio(real_audio or real)
        speech = out / "speech.wav"
        speech.write_bytes(media.wav_bytes(signal[: int(round(args.seconds * SAMPLE_RATE))]))
    dub = Pipeline(work_dir=out / "pipeline").dub(subject, speech, out / "dub.mp4", template=template)
    res = sync_check(dub, real, real_audio=real_audio, template_video=template, work_dir=out / "sync")
    print(table(res), file=sys.stderr)
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
