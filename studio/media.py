"""All file I/O of video and audio: probing, frame streaming, audio decoding, mp4 writing.

Tools: OpenCV's FFmpeg backend (``cv2.VideoCapture``) decodes frames; the FFmpeg binary bundled
with imageio-ffmpeg (``imageio_ffmpeg.get_ffmpeg_exe()``; there is no system ffmpeg or ffprobe)
probes files, decodes audio that soundfile cannot read, and encodes H.264/AAC mp4.

Rules this module guarantees (other parts rely on them):

- Frames are RGB ``uint8`` arrays of shape (H, W, 3), *upright*: phone videos that carry a
  rotation (display matrix / ``rotate`` tag) are rotated on decode, and ``VideoInfo.width`` /
  ``height`` are the upright sizes, i.e. the shape of the frames :func:`iter_frames` yields.
  ``VideoInfo.rotation`` reports the tag as degrees clockwise (0, 90, 180, 270), the same
  convention as ``cv2.CAP_PROP_ORIENTATION_META``.
- Frame count rule: ``VideoInfo.frames`` is the number of packets of the first video stream that
  the demuxer delivers *minus those flagged discard* (``ffmpeg -map 0:v:0 -c copy -f framecrc -``:
  container read only, no decode, 10-40 ms on the shared clips). Each H.264/MPEG-4/VP9 packet is
  one frame; discard-flagged packets precede an edit list's start (a clip cut between key frames
  with ``-c copy``) and are decoded only as references, never output. This equals the number of
  frames :func:`iter_frames` yields (tests check every shared clip, mkv/webm, VFR, an edit-list
  cut and a half-downloaded file). ``cv2.CAP_PROP_FRAME_COUNT`` is not used: it is the header's
  ``nb_frames`` (131 instead of 92 for the edit-list cut, the full count for a truncated file)
  or ``duration * fps`` when the header lacks it.
  Frames are yielded as decoded ("passthrough"), never duplicated or dropped to force a constant
  rate; ``fps`` is the stream's average rate and ``duration = frames / fps`` is the length of the
  frame sequence as the pipeline uses it. OpenCV's frame-number seek is used only for files with
  evenly spaced packets and no discards; otherwise frames are skipped by decoding forward.
- Audio is returned as (S,) float32 mono in [-1, 1] at the requested rate: channels are averaged
  and the rate is converted with ``scipy.signal.resample_poly`` (a polyphase FIR resampler).
- Files are written atomically: a temporary name beside the target, renamed on success.

Speed (``benchmark``; 720p H.264 obama_weekly_address.mp4, 2 shared cores): OpenCV decodes about
800-990 frames/s including the BGR->RGB conversion, an ffmpeg rawvideo rgb24 pipe about 700-730,
so OpenCV is the decoder and the pipe is the fallback for files OpenCV cannot open. Probing takes
about 30 ms; encoding 720p (libx264 veryfast, crf 18) about 150 frames/s (larger frames use faster
presets, see ``encoder_preset``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import math
import os
import re
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from studio.errors import InputError, LimitError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
PathLike = str | os.PathLike[str]

# ffmpeg prints rates rounded to 2 decimals; these are the exact NTSC rates they stand for.
_NTSC_RATES = tuple(Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120, 240))
_SEEK_FORWARD_FRAMES = 48  # read_frames decodes forward instead of seeking for gaps up to this
_IMAGE_CODECS = {"png", "mjpeg", "bmp", "webp", "tiff", "gif", "jpegls", "jpeg2000", "qoi", "jpegxl"}


# --------------------------------------------------------------------------------------------
# ffmpeg binary


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of imageio-ffmpeg's bundled ffmpeg binary."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: Sequence[str], *, timeout: float | None = None) -> subprocess.CompletedProcess:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    log.debug("ffmpeg %s", " ".join(map(str, args)))
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"Reading the file took longer than {timeout:.0f} s and was stopped.",
                         "The file may be damaged, very large or on a slow disk; copy it locally, "
                         "trim it, or re-encode it as mp4 / wav.") from exc


def _tail(text: str | bytes, n: int = 600) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text.strip()[-n:]


# --------------------------------------------------------------------------------------------
# probing


@dataclass(frozen=True)
class Colour:
    """How a video's YUV samples are to be read (its colour tags): range "tv" (limited) or "pc"
    (full), matrix (ffmpeg's ``-colorspace``), primaries and transfer. Names are ffmpeg's."""

    range: str
    space: str
    primaries: str
    transfer: str

    def encoder_args(self) -> list[str]:
        """ffmpeg output options: convert RGB with this matrix and range, and tag the stream."""
        return ["-colorspace", self.space, "-color_primaries", self.primaries, "-color_trc", self.transfer,
                "-color_range", self.range]

    def scale_filter(self) -> str:
        """The RGB -> YUV conversion that matches the tags (swscale's names), then the tags on
        the frames themselves (the encoder takes them from there)."""
        return (f"scale=out_color_matrix={_SWS_MATRIX[self.space]}:out_range={'full' if self.range == 'pc' else 'tv'},"
                f"format=yuv420p,setparams=range={self.range}:color_primaries={self.primaries}:"
                f"color_trc={self.transfer}:colorspace={self.space}")


_SWS_MATRIX = {"bt709": "bt709", "bt470bg": "bt601", "smpte170m": "smpte170m", "bt2020nc": "bt2020",
               "fcc": "fcc", "smpte240m": "smpte240m"}
_PRIMARIES = {"bt709", "bt470bg", "smpte170m", "bt2020", "bt470m", "smpte240m", "film", "smpte428",
              "smpte431", "smpte432"}
_TRANSFERS = {"bt709", "smpte170m", "gamma22", "gamma28", "smpte240m", "linear", "iec61966-2-1",
              "iec61966-2-4", "bt2020-10", "bt2020-12", "smpte2084", "arib-std-b67", "bt470m", "bt470bg"}


def _parse_colour(desc: str) -> Colour | None:
    """The colour tags in a video stream's ``ffmpeg -i`` description, e.g. ``yuv420p(tv, bt709)``
    or ``yuv420p(tv, bt470bg/bt470bg/smpte170m, progressive)``; None when untagged or unknown."""
    m = re.search(r"\byuv[a-z0-9]*\(([^)]*)\)", desc)
    if m is None:
        return None
    tokens = [t.strip() for t in m.group(1).split(",")]
    rng = next((t for t in tokens if t in ("tv", "pc")), "tv")
    for t in tokens:
        parts = t.split("/")
        if len(parts) == 1 and parts[0] in _SWS_MATRIX and parts[0] in _PRIMARIES | {"bt2020nc"}:
            space = parts[0]
            prim = "bt2020" if space == "bt2020nc" else space
            trc = {"bt2020nc": "bt709", "bt470bg": "gamma28"}.get(space, space)
            return Colour(rng, space, prim, trc if trc in _TRANSFERS else "bt709")
        if len(parts) == 3 and parts[0] in _SWS_MATRIX:  # matrix/primaries/transfer; "unknown" parts
            prim = parts[1] if parts[1] in _PRIMARIES else ("bt2020" if parts[0] == "bt2020nc" else parts[0])
            trc = parts[2] if parts[2] in _TRANSFERS else ("smpte170m" if parts[0] == "smpte170m" else "bt709")
            if prim not in _PRIMARIES:
                prim = "bt709"
            return Colour(rng, parts[0], prim, trc)
    return None


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video file.

    width, height: of the upright frames that :func:`iter_frames` yields.
    rotation: degrees clockwise the stored frames are turned for display (0, 90, 180, 270).
    duration: frames / fps in seconds.
    """

    path: str
    fps: float
    frames: int
    width: int
    height: int
    duration: float
    has_audio: bool
    rotation: int
    colour: Colour | None = None  # its colour tags, when it has (known) ones


@dataclass(frozen=True)
class _Streams:
    """Parsed ``ffmpeg -i`` stream listing."""

    video: str | None  # the first (non cover-art) video stream line
    audio: bool
    rotation: int
    container_seconds: float | None


_STREAM_RE = re.compile(r"^\s*Stream #\d+:\d+.*?: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_DISPLAY_MATRIX_RE = re.compile(
    r"(?:displaymatrix|Display Matrix): rotation of (-?\d+(?:\.\d+)?) degrees", re.I)
_ROTATE_TAG_RE = re.compile(r"^\s*rotate\s*:\s*(-?\d+)", re.M)


def _parse_streams(stderr: str) -> _Streams:
    video: str | None = None
    audio = False
    rotation = 0
    in_video = False  # inside the chosen video stream's block (its metadata / side data)
    for line in stderr.splitlines():
        m = _STREAM_RE.match(line)
        if m:
            in_video = False
            kind, desc = m.groups()
            if kind == "Video" and video is None and "attached pic" not in desc:
                video, in_video = desc, True
            elif kind == "Audio":
                audio = True
            continue
        if line.startswith(("Output #", "Stream mapping")):
            break
        if in_video:
            d = _DISPLAY_MATRIX_RE.search(line)
            if d:  # ffmpeg reports the display matrix counter-clockwise
                rotation = int(round(-float(d.group(1)))) % 360
            r = _ROTATE_TAG_RE.match(line)
            if r and rotation == 0:
                rotation = int(r.group(1)) % 360
    seconds = None
    m = _DURATION_RE.search(stderr)
    if m:
        h, mi, s = m.groups()
        seconds = int(h) * 3600 + int(mi) * 60 + float(s)
    rotation = int(90 * round(rotation / 90)) % 360
    return _Streams(video, audio, rotation, seconds)


def _parse_rate(desc: str) -> float | None:
    """The stream's average frame rate from its ``ffmpeg -i`` description (fps, else tbr)."""
    for unit in ("fps", "tbr"):
        m = re.search(r"([\d.]+)(k?) " + unit + r"\b", desc)
        if m:
            value = float(m.group(1)) * (1000 if m.group(2) else 1)
            if value > 0:
                for exact in _NTSC_RATES:
                    if abs(value - float(exact)) < 0.006:
                        return float(exact)
                return value
    return None


def _check_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"The {what} file {p} does not exist.", "Check the path and try again.")
    if not p.is_file():
        raise InputError(f"{p} is not a file.", f"Give the path of a {what} file.")
    if p.stat().st_size == 0:
        raise InputError(f"The {what} file {p.name} is empty (0 bytes).",
                         "The upload or copy probably failed; provide the file again.")
    return p


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1][-200:] if lines else ""


def _input_failure(p: Path, stderr: str, what: str) -> InputError:
    low = stderr.lower()
    if "low score" in low or "invalid data found" in low and "moov atom" not in low:
        why = "is not a recognised media file or is corrupt"
    elif "moov atom not found" in low:
        why = "is truncated or unfinished (its index, the 'moov atom', is missing)"
    elif "permission denied" in low:
        why = "cannot be read (permission denied)"
    else:
        why = "could not be read"
    fmt = "mp4 (H.264)" if what == "video" else "wav or mp3"
    return InputError(f"The {what} file {p.name} {why}.",
                      f"Re-export or re-download it as {fmt} and try again. (ffmpeg: {_last_line(stderr)})")


def probe_video(path: PathLike) -> VideoInfo:
    """Inspect a video file without decoding it (demuxing only: milliseconds for a short clip).

    Raises InputError for a missing, empty, corrupt or truncated file and for files without a
    video stream (audio-only files, text, still images).
    """
    return _probe(path)[0]


def _count_packets(listing: str) -> tuple[int, bool]:
    """Parse ``-f framecrc`` lines -> (frames the decoder outputs, packets evenly spaced).

    A line is ``stream, dts, pts, duration, size, crc[, F=0xFLAGS]`` (no F when the flags are
    exactly "key"). Packets flagged discard (0x4) are decoded only as references for an edit
    list that starts between key frames and never come out of the decoder, so they are not
    frames.
    """
    frames, durations, discarded = 0, set(), False
    lines = [ln for ln in listing.splitlines() if ln and not ln.startswith("#")]
    for k, line in enumerate(lines):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6:
            continue
        flags = int(fields[6][2:], 16) if len(fields) > 6 and fields[6].startswith("F=") else 1
        if flags & 4:
            discarded = True
            continue
        frames += 1
        if k < len(lines) - 1:
            durations.add(fields[3])
    return frames, not discarded and len(durations) <= 1


def _probe(path: PathLike) -> tuple[VideoInfo, bool]:
    """(VideoInfo, regular): regular = constant packet spacing and no edit-list discards, so
    OpenCV's frame-number seek (which converts the number to a time stamp) is exact."""
    p = _check_file(path, "video")
    proc = _run_ffmpeg(["-i", str(p), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
                       timeout=300)
    stderr = proc.stderr.decode("utf-8", "replace")
    streams = _parse_streams(stderr)
    if streams.video is None:
        if "Input #0" in stderr and "Stream #0" in stderr:
            raise InputError(f"{p.name} has no video stream.",
                             "Pick a video file (mp4, mov, mkv, webm) of the person speaking.")
        raise _input_failure(p, stderr, "video")
    frames, regular = _count_packets(proc.stdout.decode("ascii", "replace"))
    if proc.returncode != 0 or frames == 0:
        raise _input_failure(p, stderr, "video")
    if "partial file" in stderr:  # the index lists packets whose data is cut off
        raise InputError(f"The video file {p.name} is incomplete: it ends before the data its index "
                         "lists (an interrupted download or copy).",
                         "Download or copy the file again, or re-export it, and try again.")
    size = re.search(r"(?<![\w.])(\d{1,5})x(\d{1,5})(?![\w.])", streams.video)
    fps = _parse_rate(streams.video)
    if size is None or fps is None:
        raise InputError(f"Cannot read the frame size or frame rate of {p.name}.",
                         "Re-encode it as H.264 mp4 (e.g. with ffmpeg or HandBrake) and try again.")
    width, height = int(size.group(1)), int(size.group(2))
    if streams.rotation in (90, 270):
        width, height = height, width
    codec = streams.video.split(" ", 1)[0].strip(",")
    if frames == 1 and (codec in _IMAGE_CODECS or (streams.container_seconds or 0) <= 0.05):
        raise InputError(f"{p.name} is a still image, not a video.",
                         "Provide a video clip of the person speaking.")
    if not regular:
        log.info("%s: variable frame spacing or an edit list; frames are read sequentially", p.name)
    info = VideoInfo(path=str(p), fps=fps, frames=frames, width=width, height=height,
                     duration=frames / fps, has_audio=streams.audio, rotation=streams.rotation,
                     colour=_parse_colour(streams.video))
    return info, regular


# --------------------------------------------------------------------------------------------
# frames


def _open_capture(p: Path) -> cv2.VideoCapture | None:
    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        return None
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def _check_range(info: VideoInfo, start: int, stop: int | None) -> tuple[int, int]:
    stop = info.frames if stop is None else min(int(stop), info.frames)
    start = int(start)
    if start < 0 or start > info.frames:
        raise InputError(f"Start frame {start} is outside the video ({info.frames} frames).",
                         f"Choose a start between 0 and {info.frames - 1}.")
    return start, max(start, stop)


def encoder_preset(width: int, height: int) -> str:
    """x264 speed preset for a frame size. Encoding dominates the CPU time of a large dub (10 s of
    1080x1920, 2 cores: veryfast 17.7 s of CPU, superfast 11.4 s, ultrafast 6.3 s; files 6.7 /
    10.4 / 18 MB at crf 18, the same quality setting), so the preset gets faster as frames grow:
    veryfast up to 720p, superfast up to 1920x1080, ultrafast above."""
    pixels = width * height
    if pixels <= 1280 * 720:
        return "veryfast"
    return "superfast" if pixels < 1920 * 1080 else "ultrafast"


def prefetch(items, depth: int = 4) -> Iterator:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead (order kept).

    For pipelines whose stages release the GIL (video decoding, OpenCV, the encoder's pipe): the
    producer's work overlaps the consumer's. An exception in the producer is raised in the
    consumer at that item; closing this generator early stops the producer (and closes ``items``
    in its own thread) before returning.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((None, item)):
                    break
            else:
                put((None, end))
        except BaseException as exc:  # handed to the consumer
            put((exc, None))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def iter_frames(path: PathLike, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Stream frames ``start <= i < stop`` as upright RGB uint8 (H, W, 3) arrays.

    Only one frame is held at a time. ``stop=None`` (or past the end) reads to the end.
    """
    info, seekable = _probe(path)
    start, stop = _check_range(info, start, stop)
    return _iter_frames_cv2(info, start, stop, seekable)


def _iter_frames_cv2(info: VideoInfo, start: int, stop: int, seekable: bool = False) -> Iterator[np.ndarray]:
    cap = _open_capture(Path(info.path))
    if cap is None:
        log.info("OpenCV cannot open %s; decoding through an ffmpeg pipe", info.path)
        yield from _iter_frames_pipe(info, start, stop)
        return
    try:
        if start > _SEEK_FORWARD_FRAMES and seekable:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        else:
            for i in range(start):
                if not cap.grab():
                    return
        for i in range(start, stop):
            ok, bgr = cap.read()
            if not ok:
                # A frame count from the container can exceed what decodes in a damaged file.
                log.warning("%s: decoding stopped at frame %d of %d", info.path, i, stop)
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def _iter_frames_pipe(info: VideoInfo, start: int, stop: int) -> Iterator[np.ndarray]:
    """Decode with the ffmpeg binary to a raw rgb24 pipe (autorotated, one frame per packet)."""
    if stop <= start:
        return
    args = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", info.path, "-map", "0:v:0",
            "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    if start > 0:
        args += ["-vf", f"select=gte(n\\,{start})"]
    args += ["-frames:v", str(stop - start), "-"]
    nbytes = info.width * info.height * 3
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        for _ in range(stop - start):
            buf = bytearray(nbytes)
            view, got = memoryview(buf), 0
            while got < nbytes:
                n = proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
            if got < nbytes:
                return
            yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def read_frames(path: PathLike, indices: Sequence[int]) -> list[np.ndarray]:
    """Random access to a few frames: RGB uint8 (H, W, 3) in the order of ``indices``.

    Indices are visited in sorted order; a gap of up to ``_SEEK_FORWARD_FRAMES`` is decoded
    forward, a larger one seeks (OpenCV seeks to the previous key frame and decodes up to the
    frame, so the result equals the frame from sequential decoding).
    """
    info, seekable = _probe(path)
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return []
    if wanted[0] < 0 or wanted[-1] >= info.frames:
        raise InputError(f"Frame index out of range: the video has {info.frames} frames "
                         f"(0..{info.frames - 1}).",
                         "Ask for frames inside the video.")
    got: dict[int, np.ndarray] = {}
    cap = _open_capture(Path(info.path))
    if cap is None:
        for i in wanted:
            got[i] = next(_iter_frames_pipe(info, i, i + 1))
    else:
        try:
            pos = 0
            for i in wanted:
                if i < pos or (seekable and i - pos > _SEEK_FORWARD_FRAMES):
                    cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                    pos = i
                while pos < i:
                    if not cap.grab():
                        break
                    pos += 1
                ok, bgr = cap.read()
                if not ok:
                    raise InputError(f"Frame {i} of {Path(info.path).name} cannot be decoded.",
                                     "The file may be damaged; re-encode it and try again.")
                pos += 1
                got[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
    return [got[int(i)].copy() for i in indices]


# --------------------------------------------------------------------------------------------
# audio


def _to_mono_float(data: np.ndarray) -> np.ndarray:
    """(S, C) or (S,) any float -> (S,) float32 mono (channel mean), NaN/inf -> 0."""
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    return np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly): (S,) -> (round(S * out / in),) float32."""
    x = np.asarray(signal, dtype=np.float32)
    if int(rate_in) == int(rate_out) or x.size == 0:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(rate_in), int(rate_out))
    return resample_poly(x, int(rate_out) // g, int(rate_in) // g).astype(np.float32)


def _read_soundfile(p: Path) -> tuple[np.ndarray, int] | None:
    import soundfile as sf

    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile cannot parse it: let ffmpeg try
        log.debug("soundfile cannot read %s: %s", p, exc)
        return None
    return data, int(rate)


def _read_ffmpeg_audio(p: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream at its own rate and channel count via a temporary wav."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="studio-audio-") as tmp:
        out = Path(tmp) / "audio.wav"
        proc = _run_ffmpeg(["-i", str(p), "-map", "0:a:0", "-vn", "-c:a", "pcm_f32le", "-f", "wav",
                            str(out)], timeout=600)
        stderr = proc.stderr.decode("utf-8", "replace")
        streams = _parse_streams(stderr)
        if "Stream #0" in stderr and not streams.audio:
            codec = (streams.video or "").split(" ", 1)[0].strip(",")
            what = ("an image, not audio" if codec in _IMAGE_CODECS
                    else "a video without sound" if streams.video else "not an audio file")
            raise InputError(f"{p.name} has no audio track ({what}).",
                             "Give the speech as a separate audio file (wav, mp3, m4a, flac, ogg), "
                             "or use a video that has sound.")
        if proc.returncode != 0 or not out.exists():
            raise _input_failure(p, stderr, "audio")
        try:
            data, rate = sf.read(str(out), dtype="float32", always_2d=True)
        except Exception as exc:
            raise InputError(f"The audio of {p.name} could not be decoded.",
                             f"Convert it to wav and try again. ({exc})") from exc
    return data, int(rate)


def read_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any audio file or a video's audio track as (S,) float32 mono in [-1, 1].

    WAV (8/16/24/32-bit int, 32/64-bit float, WAVE_FORMAT_EXTENSIBLE), FLAC and OGG are read by
    soundfile; everything soundfile rejects (mp3 on old libsndfile, m4a/aac, video files) is
    decoded by ffmpeg. Channels are averaged; the rate is converted with resample_poly.
    Raises InputError when the file is missing, empty, corrupt, not audio, has no audio track or
    holds no samples.
    """
    p = _check_file(path, "audio")
    got = _read_soundfile(p)
    data, rate = got if got is not None else _read_ffmpeg_audio(p)
    if data.shape[0] == 0:
        raise InputError(f"{p.name} contains no audio samples.", "Provide a file with recorded speech.")
    x = resample(_to_mono_float(data), rate, sample_rate)
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)


def probe_audio_seconds(path: PathLike) -> float | None:
    """An audio file's (or a video container's) duration from its header, without decoding it,
    so that limits are checked before the work; None when the header does not tell. libsndfile
    clamps a header that promises more samples than the file holds to what is there."""
    import soundfile as sf

    p = _check_file(path, "audio")
    try:
        info = sf.info(str(p))
        if info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:  # not a format libsndfile reads: ask ffmpeg's demuxer
        pass
    proc = _run_ffmpeg(["-i", str(p)], timeout=60)
    return _parse_streams(proc.stderr.decode("utf-8", "replace")).container_seconds


def wav_bytes(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """(S,) float in [-1, 1] (values beyond are clipped) -> a 16-bit PCM mono wav file's bytes."""
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ValueError(f"wav_bytes expects a mono (S,) signal, got shape {x.shape}")
    # x * 32768 is the inverse of how readers (soundfile, scipy) scale int16 back to [-1, 1)
    pcm = np.clip(np.round(np.nan_to_num(x) * 32768.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _has_audio_stream(p: Path) -> bool:
    proc = _run_ffmpeg(["-i", str(p)], timeout=60)
    return _parse_streams(proc.stderr.decode("utf-8", "replace")).audio


AUDIO_BITRATE = "192k"  # AAC; a speech file keeps its own sample rate and channels


def _audio_input(audio: np.ndarray | PathLike, tmpdir: Path) -> Path:
    """An ffmpeg-readable file holding ``audio`` (a 16 kHz array or a file with sound)."""
    if isinstance(audio, np.ndarray):
        if audio.size == 0:
            raise InputError("The audio to put into the video is empty.", "Provide speech with some samples.")
        out = tmpdir / "audio.wav"
        out.write_bytes(wav_bytes(audio, SAMPLE_RATE))
        return out
    p = _check_file(audio, "audio")
    if not _has_audio_stream(p):
        raise InputError(f"{p.name} has no audio track to put into the video.",
                         "Give a wav/mp3 file (or a video with sound) as the audio.")
    return p


def _temp_beside(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + (path.suffix or ".mp4"),
                                dir=path.parent)
    os.close(fd)
    return Path(name)


# --------------------------------------------------------------------------------------------
# writing


class VideoWriter:
    """Write RGB frames to an H.264 (yuv420p) mp4, optionally with AAC audio, atomically.

    ``size = (width, height)`` of the frames passed to :meth:`write`. Odd sizes are padded by one
    black pixel on the right/bottom (yuv420p needs even sizes). ``audio`` is a (S,) float32
    16 kHz array or a path to a file with sound; it is muxed as is (not cut or padded to the video
    length; no ``-shortest``). The file is written under a temporary name beside ``path`` and
    renamed on a clean close; on an exception (or :meth:`abort`) the temporary is removed and an
    existing ``path`` is left untouched.

        with VideoWriter(out, fps=25, size=(w, h), audio=speech) as vw:
            for frame in frames:
                vw.write(frame)
    """

    def __init__(self, path: PathLike, fps: float, size: tuple[int, int],
                 audio: np.ndarray | PathLike | None = None, crf: int = 18,
                 preset: str = "auto", colour: Colour | None = None) -> None:
        self.path = Path(path)
        self.width, self.height = int(size[0]), int(size[1])
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"size must be positive (width, height), got {size}")
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="studio-writer-")
        self._tmp = _temp_beside(self.path)
        self._log = open(Path(self._tmpdir.name) / "ffmpeg.log", "w+b")
        self._proc: subprocess.Popen | None = None
        try:
            audio_file = None if audio is None else _audio_input(audio, Path(self._tmpdir.name))
            rate = Fraction(self.fps).limit_denominator(1001)
            args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
                    "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
                    "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0"]
            if audio_file is not None:
                args += ["-i", str(audio_file), "-map", "0:v:0", "-map", "1:a:0",
                         "-c:a", "aac", "-b:a", AUDIO_BITRATE]
            filters = ["pad=ceil(iw/2)*2:ceil(ih/2)*2"] if self.width % 2 or self.height % 2 else []
            if colour is not None:  # keep the source's colour: same matrix and range, same tags
                filters.append(colour.scale_filter())
                args += colour.encoder_args()
            if filters:
                args += ["-vf", ",".join(filters)]
            if preset == "auto":
                preset = encoder_preset(self.width, self.height)
            args += ["-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)),
                     "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", str(self._tmp)]
            self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._log)
        except BaseException:
            self._cleanup()
            raise

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame of shape (height, width, 3)."""
        if self._proc is None:
            raise RuntimeError("VideoWriter is closed")
        f = np.asarray(frame)
        if f.dtype != np.uint8 or f.shape != (self.height, self.width, 3):
            self.abort()
            raise InputError(
                f"Frame {self.frames_written} has shape {f.shape} and dtype {f.dtype}; the video "
                f"expects ({self.height}, {self.width}, 3) uint8 RGB.",
                "Resize/convert every frame to the size given to VideoWriter.")
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(np.ascontiguousarray(f).data)
        except (BrokenPipeError, OSError) as exc:
            msg = self._stderr()
            self.abort()
            raise InputError("The video encoder (ffmpeg) stopped unexpectedly.",
                             f"Check free disk space and the output folder. ({msg})") from exc
        self.frames_written += 1

    def close(self) -> Path:
        """Finish encoding and move the file into place; returns the final path."""
        if self._proc is None:
            return self.path
        proc = self._proc
        try:
            assert proc.stdin is not None
            proc.stdin.close()
        except OSError:
            pass
        rc = proc.wait()
        self._proc = None
        if rc != 0 or self.frames_written == 0:
            msg = self._stderr()
            self._cleanup()
            if self.frames_written == 0:
                raise InputError("No frames were written, so no video was made.", "Write at least one frame.")
            raise InputError(f"Encoding {self.path.name} failed.",
                             f"Check free disk space and the audio input. (ffmpeg said: {msg})")
        os.replace(self._tmp, self.path)
        self._cleanup()
        log.info("wrote %s (%d frames at %.3f fps)", self.path, self.frames_written, self.fps)
        return self.path

    def abort(self) -> None:
        """Stop encoding and delete the temporary file; ``path`` is not touched."""
        if self._proc is not None:
            self._proc.kill()
            try:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
            except OSError:
                pass
            self._proc.wait()
            self._proc = None
        self._cleanup()

    def _stderr(self) -> str:
        try:
            self._log.flush()
            self._log.seek(0)
            return _tail(self._log.read(), 400)
        except (OSError, ValueError):
            return ""

    def _cleanup(self) -> None:
        if self._tmp.exists():
            self._tmp.unlink()
        if not self._log.closed:
            self._log.close()
        self._tmpdir.cleanup()

    def __del__(self) -> None:  # a writer dropped without close() must not leave a temp file
        try:
            if getattr(self, "_proc", None) is not None:
                self.abort()
        except Exception:
            pass


def mux_audio(video_path: PathLike, audio: np.ndarray | PathLike, out_path: PathLike) -> Path:
    """Copy ``video_path``'s video stream (no re-encode) with ``audio`` as its only audio track.

    audio: (S,) float32 at 16 kHz or a path to a file with sound (encoded to AAC). ``out_path``
    may equal ``video_path``; it is written atomically.
    """
    src = _check_file(video_path, "video")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="studio-mux-") as tmpdir:
        audio_file = _audio_input(audio, Path(tmpdir))
        tmp = _temp_beside(out)
        try:
            proc = _run_ffmpeg(["-y", "-i", str(src), "-i", str(audio_file), "-map", "0:v:0",
                                "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", AUDIO_BITRATE,
                                "-movflags", "+faststart", "-f", "mp4", str(tmp)], timeout=600)
            if proc.returncode != 0:
                raise InputError(f"Could not put the audio into {src.name}.",
                                 f"Check both files play. (ffmpeg said: {_tail(proc.stderr, 300)})")
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    return out


# --------------------------------------------------------------------------------------------
# limits


@dataclass(frozen=True)
class MediaLimits:
    """Input limits checked before any heavy work (sizes in MB of 10^6 bytes, pixels upright)."""

    max_file_mb: float = 1000.0
    max_video_seconds: float = 600.0
    max_width: int = 3840
    max_height: int = 3840
    max_audio_seconds: float = 600.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "MediaLimits":
        """The defaults, overridden by ``STUDIO_MAX_FILE_MB``, ``STUDIO_MAX_VIDEO_SECONDS``,
        ``STUDIO_MAX_WIDTH``, ``STUDIO_MAX_HEIGHT``, ``STUDIO_MAX_AUDIO_SECONDS`` (how a hosted
        studio is configured); InputError for a value that is not a positive number."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for f in dataclasses.fields(cls):
            name = f"STUDIO_{f.name.upper()}"
            if env.get(name, "").strip():
                try:
                    value = float(env[name])
                except ValueError:
                    value = float("nan")
                if not (math.isfinite(value) and value > 0):
                    raise InputError(f"{name}={env[name]!r} is not a positive number.",
                                     f"Set {name} to a positive number or unset it (default {f.default}).")
                values[f.name] = int(value) if f.type in (int, "int") else value
        return cls(**values)


def check_file_size(path: PathLike, limits: MediaLimits = MediaLimits()) -> None:
    """LimitError if the file is larger than ``limits.max_file_mb`` (InputError if it is missing)."""
    if not Path(path).is_file():
        _check_file(path, "input")  # raises: missing, or a folder
    mb = Path(path).stat().st_size / 1e6
    if mb > limits.max_file_mb:
        raise LimitError(f"{Path(path).name} is {mb:.0f} MB; the limit is {limits.max_file_mb:g} MB.",
                         "Trim or compress the file (e.g. re-encode at a lower bitrate) and try again.")


def check_video(info: VideoInfo, limits: MediaLimits = MediaLimits()) -> None:
    """LimitError if the video's file size, duration or resolution exceeds ``limits``."""
    check_file_size(info.path, limits)
    if info.duration > limits.max_video_seconds:
        raise LimitError(f"The video is {info.duration:.1f} s long; the limit is "
                         f"{limits.max_video_seconds:g} s.",
                         "Trim the video to a shorter clip and try again.")
    if info.width > limits.max_width or info.height > limits.max_height:
        raise LimitError(f"The video is {info.width}x{info.height}; the limit is "
                         f"{limits.max_width}x{limits.max_height}.",
                         "Downscale the video (e.g. to 1080p) and try again.")


def check_audio_seconds(seconds: float, limits: MediaLimits = MediaLimits()) -> None:
    """LimitError if the audio is longer than ``limits.max_audio_seconds``."""
    if seconds > limits.max_audio_seconds:
        raise LimitError(f"The audio is {seconds:.1f} s long; the limit is {limits.max_audio_seconds:g} s.",
                         "Trim the speech to a shorter part and try again.")


# --------------------------------------------------------------------------------------------
# benchmark


def benchmark(video: PathLike | None = None, seconds: float = 3.0, encode_frames: int = 120) -> dict:
    """Decode fps (OpenCV and the ffmpeg pipe) of ``video`` and 720p encode fps.

    video: a clip to decode (e.g. the 720p obama_weekly_address.mp4); without one a synthetic
    720p clip is encoded first and decoded. Each decoder runs for at most ``seconds``.
    """
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
        w, h = 1280, 720
        yy, xx = np.mgrid[0:h, 0:w]
        base = ((xx[..., None] * np.array([1, 2, 3]) + yy[..., None]) % 256).astype(np.uint8)
        out = Path(tmp) / "enc.mp4"
        t0 = time.perf_counter()
        with VideoWriter(out, 30, (w, h)) as vw:
            for i in range(encode_frames):
                vw.write(np.roll(base, 4 * i, axis=1))
        result["encode_fps_720p"] = encode_frames / (time.perf_counter() - t0)
        info = probe_video(video if video is not None else out)
        result["decode_video"] = Path(info.path).name
        result["decode_size"] = f"{info.width}x{info.height}"
        for name, fn in (("cv2", _iter_frames_cv2), ("ffmpeg_pipe", _iter_frames_pipe)):
            n, t0 = 0, time.perf_counter()
            for _ in fn(info, 0, info.frames):
                n += 1
                if time.perf_counter() - t0 > seconds:
                    break
            result[f"decode_fps_{name}"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        probe_video(info.path)
        result["probe_ms"] = 1000 * (time.perf_counter() - t0)
    return result
