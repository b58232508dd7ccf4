"""Make the bundled sample media in sample_media/ from a real recording (deterministic).

    .venv/bin/python scripts/make_sample_media.py [--source VIDEO] [--out sample_media]
    .venv/bin/python scripts/make_sample_media.py --real-speech-video /tmp/real_speech.mp4

Writes
  template.mp4          the footage the sample subject is built from: seconds TEMPLATE of the
                        source, cropped CROP around the face and scaled to 384x384, 30 fps, H.264 (crf 23) + AAC
  template_speech.wav   the template's own speech (16 kHz mono 16-bit)
  speech.wav            a different, non-overlapping part of the same address (seconds SPEECH),
                        the default new speech to dub onto the sample

Source
  ``obama_weekly_address.mp4`` from the shared test material (``$STUDIO_SHARED/media/video``,
  default ``../shared``): a White House weekly address by President Barack Obama, 34 s, 1280x720,
  30 fps, AAC 48 kHz. As a work of the US federal government it is in the public domain; the
  shared README allows a cut of it to be bundled as the studio's sample.

How it is made
  ffmpeg (imageio-ffmpeg's binary) cuts each part at the given seconds (decoding from the start,
  so the cut is frame-exact), crops the same fixed 448x448 square around the face (the seated speaker's
  head moves a little: a MediaPipe box of about 185x230 pixels within x 464-699, y 146-405 over
  the whole address), scales it to 384x384 (lanczos) and encodes it single-threaded with bit-exact flags, so running the script
  again with the same ffmpeg gives the same files. The wavs are resampled to 16 kHz mono.

``--real-speech-video PATH`` also writes the original video of the speech.wav part (same crop,
with its audio), for measuring a dub of speech.wav against the real mouth (``studio
sync-check``). It is not bundled (the size budget), so write it outside the project.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.audio import SAMPLE_RATE  # noqa: E402
from studio.media import ffmpeg_exe, read_audio  # noqa: E402

log = logging.getLogger("make_sample_media")

SOURCE_NAME = "obama_weekly_address.mp4"
TEMPLATE = (0.0, 14.2)  # seconds of the source: the footage (ends in a pause)
SPEECH = (26.6, 33.8)  # seconds of the source: the default new speech (no overlap)
CROP = (448, 448, 366, 52)  # width, height, left, top of the crop in the 1280x720 source
SIZE = 384  # the crop is scaled to SIZE x SIZE (the face is then about 160 pixels wide)
CRF = 23


def default_source() -> Path:
    shared = Path(os.environ.get("STUDIO_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
    return shared / "media" / "video" / SOURCE_NAME


def cut_video(source: Path, span: tuple[float, float], out: Path) -> None:
    """Cut seconds ``span`` of ``source`` into ``out`` (cropped, H.264 crf CRF + AAC)."""
    w, h, x, y = CROP
    start, end = span
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-ss", f"{start:.3f}",
           "-t", f"{end - start:.3f}", "-vf", f"crop={w}:{h}:{x}:{y},scale={SIZE}:{SIZE}:flags=lanczos", "-c:v", "libx264",
           "-preset", "medium", "-crf", str(CRF), "-pix_fmt", "yuv420p", "-threads", "1",
           "-c:a", "aac", "-b:a", "96k", "-ac", "1", "-map_metadata", "-1",
           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
           "-movflags", "+faststart", str(out)]
    subprocess.run(cmd, check=True)


def cut_speech(source: Path, span: tuple[float, float]) -> np.ndarray:
    """Seconds ``span`` of the source's speech as 16 kHz mono float32, shape (n,)."""
    audio = read_audio(source)
    a, b = (int(round(t * SAMPLE_RATE)) for t in span)
    return np.asarray(audio[a:b], dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=None, help=f"the address (default: $STUDIO_SHARED/media/video/{SOURCE_NAME})")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "sample_media"))
    ap.add_argument("--real-speech-video", default=None,
                    help="also write the real video of the speech.wav part here (not bundled)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = Path(args.source) if args.source else default_source()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cut_video(source, TEMPLATE, out / "template.mp4")
    sf.write(out / "template_speech.wav", cut_speech(source, TEMPLATE), SAMPLE_RATE, subtype="PCM_16")
    sf.write(out / "speech.wav", cut_speech(source, SPEECH), SAMPLE_RATE, subtype="PCM_16")
    if args.real_speech_video:
        cut_video(source, SPEECH, Path(args.real_speech_video))
    for p in sorted(out.iterdir()):
        log.info("%s: %d bytes", p, p.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
