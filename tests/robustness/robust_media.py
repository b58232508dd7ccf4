"""Bad and awkward inputs for the robustness tests, made on the fly in a temporary folder.

Every builder writes one input file (or a subject folder) and returns its path. Faces come from
the bundled sample template (licence-clean, 384x384), rearranged into the awkward layouts the
issue lists (no face, two faces, a face leaving the frame, a tiny face, ...); audio comes from
the bundled sample speech. Nothing here reads ../shared.
"""

from __future__ import annotations

import functools
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from studio import media
from studio.audio import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SUBJECT = REPO / "presets" / "sample_subject"
SAMPLE_SPEECH = REPO / "sample_media" / "speech.wav"
SAMPLE_TEMPLATE = REPO / "sample_media" / "template.mp4"
UNICODE_NAME = "Sprache ünï 音声 — take 2"  # spaces, accents, CJK, a dash


@functools.lru_cache(maxsize=1)
def sample_frames() -> tuple[np.ndarray, ...]:
    """The first 25 frames of the sample template: RGB uint8 (384, 384, 3)."""
    return tuple(media.iter_frames(SAMPLE_TEMPLATE, 0, 25))


@functools.lru_cache(maxsize=1)
def sample_signal() -> np.ndarray:
    """The sample speech: (S,) float32 at 16 kHz (11.9 s with a pause in the middle)."""
    return media.read_audio(SAMPLE_SPEECH)


def write_video(path: Path, frames, fps: float = 25.0, audio=None) -> Path:
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with media.VideoWriter(path, fps, (w, h), audio=audio) as vw:
        for f in frames:
            vw.write(np.ascontiguousarray(f))
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error", *args],
                   check=True, capture_output=True, timeout=120)


def _place(face: np.ndarray, width: int, height: int, x: int, y: int, side: int) -> np.ndarray:
    """A grey (height, width) canvas with ``face`` resized to side x side at (x, y), clipped."""
    canvas = np.full((height, width, 3), 60, np.uint8)
    g = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + side), min(height, y + side)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = g[y0 - y:y1 - y, x0 - x:x1 - x]
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image[..., ::-1])
    assert ok
    return data.tobytes()


# -- video (template) inputs -------------------------------------------------------------------

def video_normal(d: Path, n: int = 12) -> Path:
    return write_video(d / "normal.mp4", sample_frames()[:n])


def video_empty(d: Path) -> Path:
    p = d / "empty.mp4"
    p.write_bytes(b"")
    return p


def video_truncated(d: Path) -> Path:
    full = write_video(d / "full_for_truncation.mp4", sample_frames()[:12])
    p = d / "truncated.mp4"
    data = full.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def video_text(d: Path) -> Path:
    p = d / "notes.mp4"
    p.write_text("This is a text file, not a video.\n" * 50)
    return p


def video_is_audio(d: Path) -> Path:
    """Audio only where video is needed (a wav given as the template)."""
    p = d / "speech_as_template.wav"
    sf.write(str(p), sample_signal()[: 2 * SAMPLE_RATE], SAMPLE_RATE)
    return p


def video_is_image(d: Path) -> Path:
    p = d / "photo.mp4"
    p.write_bytes(png_bytes(sample_frames()[0]))
    return p


def video_no_face(d: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = [cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), (9, 9), 3)
              for _ in range(12)]
    return write_video(d / "no_face.mp4", frames)


def video_partial_face(d: Path) -> Path:
    """The face in the first half only, an empty room after."""
    f = sample_frames()
    return write_video(d / "partial_face.mp4", list(f[:8]) + [np.full_like(f[0], 90)] * 8)


def video_two_faces(d: Path) -> Path:
    """Two faces side by side (a large and a smaller one): the larger must be used."""
    f = sample_frames()[:12]
    frames = [np.hstack([x, _place(x, 256, 384, 32, 96, 192)]) for x in f]
    return write_video(d / "two_faces.mp4", frames)


def video_face_leaving(d: Path) -> Path:
    """The face slides out of the frame to the right."""
    f = sample_frames()[:14]
    return write_video(d / "face_leaving.mp4", [_place(x, 384, 384, 32 * k, 0, 384) for k, x in enumerate(f)])


def video_profile(d: Path) -> Path:
    """Extreme yaw, approximated: the face squeezed to a quarter of its width (a frontal photo has
    no real profile view), so a detector sees a very narrow, turned-looking face."""
    frames = [np.pad(cv2.resize(x, (96, 384), interpolation=cv2.INTER_AREA), ((0, 0), (144, 144), (0, 0)),
                     constant_values=60) for x in sample_frames()[:10]]
    return write_video(d / "profile.mp4", frames)


def video_tiny_face(d: Path) -> Path:
    """A 32-pixel face in a 320x320 frame."""
    return write_video(d / "tiny_face.mp4", [_place(x, 320, 320, 140, 140, 32) for x in sample_frames()[:10]])


def video_4k(d: Path) -> Path:
    """3840x2160, 4 frames: the face in the middle, about 1400 px tall."""
    frames = [np.pad(cv2.resize(x, (1440, 1440)), ((360, 360), (1200, 1200), (0, 0)), constant_values=60)
              for x in sample_frames()[:4]]
    return write_video(d / "uhd_4k.mp4", frames)


def video_fps(d: Path, fps: float, n: int) -> Path:
    return write_video(d / f"rate_{fps:g}fps.mp4", sample_frames()[:n], fps=fps)


def video_vfr(d: Path) -> Path:
    """Variable frame rate: the second half of the frames three times as far apart."""
    src = write_video(d / "vfr_source.mp4", sample_frames()[:20])
    out = d / "vfr.mp4"
    ffmpeg("-i", str(src), "-vf", "setpts='if(lt(N,10),PTS,PTS*3)'", "-fps_mode", "vfr", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(out))
    return out


def video_rotated(d: Path) -> Path:
    """A phone video: stored landscape (384x288, the face lying on its side) with a display matrix
    that turns it 90 degrees clockwise, upright (288x384), for playback."""
    stored = [np.ascontiguousarray(np.rot90(x[:, 48:336], k=1)) for x in sample_frames()[:10]]  # (288, 384, 3)
    src = write_video(d / "rotated_source.mp4", stored)
    out = d / "rotated.mp4"
    ffmpeg("-display_rotation", "-90", "-i", str(src), "-c", "copy", str(out))
    return out


def video_odd_size(d: Path) -> Path:
    return write_video(d / "odd_size.mp4", [x[:383, :381] for x in sample_frames()[:10]])


def video_unicode_name(d: Path) -> Path:
    return write_video(d / f"{UNICODE_NAME}.mp4", sample_frames()[:10])


def video_short_template(d: Path) -> Path:
    """One second of template (25 frames) for speech ten times as long."""
    return write_video(d / "one_second.mp4", sample_frames()[:25])


def video_one_frame(d: Path) -> Path:
    return write_video(d / "one_frame.mp4", sample_frames()[:1])


def video_with_sound(d: Path) -> Path:
    """A video whose own track is speech (usable as the speech input)."""
    sig = sample_signal()[: int(2.0 * SAMPLE_RATE)]
    return write_video(d / "video_with_sound.mp4", sample_frames()[:25] * 2, audio=sig)


# -- audio (speech) inputs ---------------------------------------------------------------------

def _resampled(rate: int) -> np.ndarray:
    return media.resample(sample_signal()[: 3 * SAMPLE_RATE], SAMPLE_RATE, rate)


def audio_empty(d: Path) -> Path:
    p = d / "empty.wav"
    p.write_bytes(b"")
    return p


def audio_text(d: Path) -> Path:
    p = d / "readme.wav"
    p.write_text("hello, this is not audio\n" * 40)
    return p


def audio_is_image(d: Path) -> Path:
    p = d / "photo.wav"
    p.write_bytes(png_bytes(sample_frames()[0]))
    return p


def audio_is_silent_video(d: Path) -> Path:
    """Video only where audio is needed (an mp4 without a sound track given as the speech)."""
    return write_video(d / "silent_video.mp4", sample_frames()[:10])


def audio_rate(d: Path, rate: int) -> Path:
    p = d / f"speech_{rate // 1000}k.wav"
    sf.write(str(p), _resampled(rate), rate, subtype="PCM_16")
    return p


def audio_subtype(d: Path, subtype: str) -> Path:
    p = d / f"speech_{subtype.lower()}.wav"
    sf.write(str(p), sample_signal()[: 3 * SAMPLE_RATE], SAMPLE_RATE, subtype=subtype)
    return p


def audio_six_channels(d: Path) -> Path:
    x = sample_signal()[: 3 * SAMPLE_RATE]
    p = d / "speech_5_1.wav"
    sf.write(str(p), np.stack([x * g for g in (1.0, 0.9, 0.8, 0.1, 0.5, 0.5)], axis=1), SAMPLE_RATE,
             subtype="PCM_16")
    return p


def audio_silent(d: Path) -> Path:
    p = d / "silence.wav"
    sf.write(str(p), np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    return p


def audio_one_sample(d: Path) -> Path:
    p = d / "one_sample.wav"
    sf.write(str(p), sample_signal()[:1], SAMPLE_RATE)
    return p


def audio_one_video_frame(d: Path) -> Path:
    p = d / "one_frame_of_audio.wav"
    sf.write(str(p), sample_signal()[8000:8640], SAMPLE_RATE)  # 40 ms = one frame at 25 fps
    return p


def audio_nonfinite(d: Path) -> Path:
    x = sample_signal()[: 3 * SAMPLE_RATE].copy()
    x[::997] = np.nan
    x[5::1009] = np.inf
    x[7::1013] = -np.inf
    p = d / "nan_inf.wav"
    sf.write(str(p), x, SAMPLE_RATE, subtype="FLOAT")
    return p


def audio_truncated(d: Path) -> Path:
    """A wav whose header promises more samples than the file holds."""
    full = d / "full_for_truncation.wav"
    sf.write(str(full), sample_signal()[: 3 * SAMPLE_RATE], SAMPLE_RATE, subtype="PCM_16")
    p = d / "truncated.wav"
    data = full.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def audio_unicode_name(d: Path) -> Path:
    p = d / f"{UNICODE_NAME}.wav"
    sf.write(str(p), sample_signal()[: 3 * SAMPLE_RATE], SAMPLE_RATE)
    return p


def audio_wrong_extension(d: Path) -> Path:
    """A wav named .mp3 (what browsers and phones produce more often than one would think)."""
    p = d / "really_a_wav.mp3"
    sf.write(str(p), sample_signal()[: 3 * SAMPLE_RATE], SAMPLE_RATE)
    return p


def audio_long(d: Path) -> Path:
    """The 7.2 s sample speech twice (14.4 s): with the one-second template, over ten times as long."""
    p = d / "long_speech.wav"
    sf.write(str(p), np.concatenate([sample_signal(), sample_signal()]), SAMPLE_RATE)
    return p


def audio_short(d: Path, seconds: float = 2.0) -> Path:
    p = d / f"speech_{seconds:g}s.wav"
    if not p.exists():
        sf.write(str(p), sample_signal()[int(3.0 * SAMPLE_RATE):int((3.0 + seconds) * SAMPLE_RATE)], SAMPLE_RATE)
    return p


# -- edits -------------------------------------------------------------------------------------

def edits_file(d: Path, name: str, content: str | bytes) -> Path:
    p = d / f"{name}.json"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


# -- subjects (tampered copies of the sample) --------------------------------------------------

def copy_subject(d: Path, name: str) -> Path:
    """A full copy (no links: tampering must never reach the bundled files) of the sample subject."""
    out = d / name
    shutil.copytree(SAMPLE_SUBJECT, out)
    manifest = json.loads((out / "subject.json").read_text())
    manifest["name"] = name
    (out / "subject.json").write_text(json.dumps(manifest))
    return out


def _tamper_npz(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key, fn in changes.items():
        arrays[key] = fn(arrays[key].copy())
    path.unlink()
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def subject_nan_clip(d: Path) -> Path:
    out = copy_subject(d, "nan_clip")

    def poison(a):
        a[5, 30] = np.nan
        return a

    _tamper_npz(out / "clips" / "template" / "arrays.npz", landmarks=poison)
    return out


def subject_inf_clip(d: Path) -> Path:
    out = copy_subject(d, "inf_clip")

    def poison(a):
        a[40:44] = np.inf
        return a

    _tamper_npz(out / "clips" / "template" / "arrays.npz", audio=poison)
    return out


def subject_other_variant(d: Path) -> Path:
    """mapping/ours/ holds the LSTM baseline's complete checkpoint."""
    out = copy_subject(d, "other_variant")
    shutil.rmtree(out / "mapping" / "ours")
    shutil.copytree(out / "mapping" / "lstm", out / "mapping" / "ours")
    return out


def subject_swapped_weights(d: Path) -> Path:
    """mapping/ours/model.safetensors is the 'no-cheek' network's (a different architecture)."""
    out = copy_subject(d, "swapped_weights")
    shutil.copyfile(out / "mapping" / "no-cheek" / "model.safetensors", out / "mapping" / "ours" / "model.safetensors")
    return out


def subject_corrupt_weights(d: Path) -> Path:
    out = copy_subject(d, "corrupt_weights")
    p = out / "mapping" / "ours" / "model.safetensors"
    data = bytearray(p.read_bytes())
    data = data[: len(data) // 2]
    p.write_bytes(bytes(data))
    return out


class _Marker:
    """Unpickling this object creates ``path`` (proof that a pickle was executed)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weights": _Marker(str(marker))})


def subject_pickle_weights(d: Path, marker: Path) -> Path:
    """model.safetensors replaced by a pickle that would create ``marker`` if it were loaded."""
    out = copy_subject(d, "pickle_weights")
    (out / "mapping" / "ours" / "model.safetensors").write_bytes(malicious_pickle(marker))
    return out


def subject_pickle_npz(d: Path, marker: Path) -> Path:
    """norm.npz whose arrays are pickled objects (np.save with allow_pickle) carrying the marker."""
    out = copy_subject(d, "pickle_npz")
    p = out / "mapping" / "ours" / "norm.npz"
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    obj = np.empty(1, dtype=object)
    obj[0] = _Marker(str(marker))
    arrays["audio_mean"] = obj
    p.unlink()
    with open(p, "wb") as fh:
        np.savez(fh, **arrays)
    return out


def subject_corrupt_pool(d: Path) -> Path:
    out = copy_subject(d, "corrupt_pool")
    (out / "retrieval" / "pool.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    return out


def subject_missing_video(d: Path) -> Path:
    """The clip's embedded video was deleted (a half-copied subject folder)."""
    out = copy_subject(d, "missing_video")
    (out / "clips" / "template" / "video.mp4").unlink()
    return out


def subject_binary_json(d: Path, which: str) -> Path:
    """One of the subject's JSON files overwritten with bytes that are not even UTF-8."""
    rel = {"manifest": "subject.json", "clip": "clips/template/clip.json", "checkpoint": "mapping/ours/config.json"}
    out = copy_subject(d, f"binary_{which}")
    (out / rel[which]).write_bytes(b"\xff\xfe\x00\x81{not json\x00")
    return out
