"""studio.media: probing, streaming, audio decoding, atomic mp4 writing, limits."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from studio import media
from studio.errors import InputError, LimitError
from studio.media import MediaLimits, VideoInfo, VideoWriter

# name: (width, height, fps, has_audio, seconds) per ../shared/README.md
SHARED_VIDEOS = {
    "obama_weekly_address.mp4": (1280, 720, 30, True, 34),
    "obama_clip1.mp4": (256, 256, 30, False, 20),
    "obama_clip2.mp4": (256, 256, 30, False, 30),
    "obama_clip3.mp4": (256, 256, 30, False, 20),
    "andrew_clip_1.mp4": (256, 256, 30, False, 25),
    "andrew_clip_2.mp4": (256, 256, 30, False, 27),
    "reagan_clip1.mp4": (256, 256, 30, False, 26),
    "katie_hill.mp4": (512, 512, 25, True, 8),
    "aoc.mp4": (512, 512, 25, True, 8),
    "theresa_may_5s.mp4": (512, 512, 25, True, 5),
    "young_man_outdoors.mp4": (480, 480, 25, True, 7),
}
# name: seconds per ../shared/README.md
SHARED_SPEECH = {
    "radio_address_16k_stereo.wav": 8,
    "macron_48k_stereo.wav": 12,
    "english_60s_16k.wav": 60,
    "abstract_reading.mp3": 33,
    "german_24bit_extensible.wav": 9,
    "mandarin_news_48k.wav": 8,
}


def _frames(n: int, w: int, h: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth moving gradients (compress well, so the round trip error is small)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for t in range(n):
        r = 127 + 100 * np.sin(xx / 9.0 + t / 3.0 + seed)
        g = 127 + 100 * np.cos(yy / 7.0 - t / 5.0)
        b = np.full_like(r, (40 + 8 * t) % 256)
        out.append(np.stack([r, g, b], -1).astype(np.uint8))
    return out


def _tone(seconds: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def _ffmpeg(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A 40-frame 64x48 25 fps mp4 with 1.6 s of 440 Hz tone, key frame every 10 frames."""
    path = tmp_path_factory.mktemp("clip") / "small.mp4"
    frames = _frames(40, 64, 48)
    with VideoWriter(path, 25, (64, 48), audio=_tone(1.6)) as vw:
        for f in frames:
            vw.write(f)
    return path, frames


# ---------------------------------------------------------------------------------- shared footage


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHARED_VIDEOS))
def test_probe_and_stream_shared_videos(shared, name):
    w, h, fps, has_audio, seconds = SHARED_VIDEOS[name]
    info = media.probe_video(shared / "media" / "video" / name)
    assert (info.width, info.height, info.fps, info.has_audio, info.rotation) == (w, h, fps, has_audio, 0)
    assert abs(info.duration - seconds) < 0.5
    assert info.duration == pytest.approx(info.frames / info.fps)
    n = 0
    for frame in media.iter_frames(info.path):
        assert frame.shape == (h, w, 3) and frame.dtype == np.uint8
        n += 1
    assert n == info.frames
    # OpenCV's header count agrees on these files too (the probe does not rely on it)
    cap = cv2.VideoCapture(info.path)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == info.frames
    cap.release()


@pytest.mark.slow
def test_read_frames_matches_sequential_decode_on_real_clip(shared):
    path = shared / "media" / "video" / "katie_hill.mp4"
    wanted = [199, 3, 120, 0, 61, 62, 3]
    seq = {i: f for i, f in enumerate(media.iter_frames(path)) if i in wanted}
    got = media.read_frames(path, wanted)
    assert len(got) == len(wanted)
    for i, f in zip(wanted, got):
        np.testing.assert_array_equal(f, seq[i])
    part = list(media.iter_frames(path, start=150, stop=153))
    for k, f in enumerate(part):
        np.testing.assert_array_equal(f, media.read_frames(path, [150 + k])[0])


@pytest.mark.parametrize("name", sorted(SHARED_SPEECH))
def test_read_audio_shared_speech(shared, name):
    x = media.read_audio(shared / "media" / "speech" / name)
    assert x.ndim == 1 and x.dtype == np.float32
    assert abs(len(x) / 16000 - SHARED_SPEECH[name]) < 0.6
    assert np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x**2)) > 0.01  # real speech, not silence


def test_24bit_extensible_wav_that_wave_cannot_open(shared):
    path = shared / "media" / "speech" / "german_24bit_extensible.wav"
    with pytest.raises(wave.Error):
        wave.open(str(path)).close()
    native, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = media.read_audio(path)
    assert len(x) == pytest.approx(len(native) * 16000 / rate, abs=1)
    y = media.read_audio(path, sample_rate=rate)  # no resampling: exactly the channel mean
    np.testing.assert_allclose(y, native.mean(axis=1), atol=1e-6)


def test_audio_track_of_video(shared):
    x = media.read_audio(shared / "media" / "video" / "katie_hill.mp4")
    assert abs(len(x) / 16000 - 8.0) < 0.1
    assert np.sqrt(np.mean(x**2)) > 0.01


def test_video_without_audio_stream_is_input_error(shared):
    with pytest.raises(InputError, match="no audio"):
        media.read_audio(shared / "media" / "video" / "obama_clip1.mp4")


# ---------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_bit_depths_and_resampling(tmp_path, subtype):
    rate = 44100
    tone = _tone(1.0, rate, 1000.0, 0.4)
    stereo = np.stack([tone, 0.5 * tone], 1)
    path = tmp_path / "t.wav"
    sf.write(path, stereo, rate, subtype=subtype)
    x = media.read_audio(path)
    assert x.shape == (16000,) and x.dtype == np.float32
    assert _peak_hz(x, 16000) == pytest.approx(1000.0, abs=2)
    expected = 0.75 * _tone(1.0, 16000, 1000.0, 0.4)
    core = slice(200, -200)  # resampler edges
    tol = 0.02 if subtype == "PCM_U8" else 2e-3
    np.testing.assert_allclose(x[core], expected[core], atol=tol)


def test_extensible_multichannel_wav(tmp_path):
    rate = 48000
    tone = _tone(0.5, rate, 300.0, 0.3)
    six = np.stack([tone] * 4 + [np.zeros_like(tone)] * 2, 1)
    path = tmp_path / "six.wav"
    sf.write(path, six, rate, subtype="PCM_24", format="WAVEX")  # WAVE_FORMAT_EXTENSIBLE
    assert int.from_bytes(path.read_bytes()[20:22], "little") == 0xFFFE
    x = media.read_audio(path)
    assert len(x) == 8000
    np.testing.assert_allclose(x[100:-100], (4 / 6) * _tone(0.5, 16000, 300.0, 0.3)[100:-100], atol=2e-3)


@pytest.mark.parametrize("ext,args", [
    ("mp3", ["-c:a", "libmp3lame", "-b:a", "128k"]),
    ("m4a", ["-c:a", "aac", "-b:a", "128k"]),
    ("aac", ["-c:a", "aac", "-b:a", "128k", "-f", "adts"]),
    ("flac", ["-c:a", "flac"]),
    ("ogg", ["-c:a", "libvorbis"]),
])
def test_compressed_formats(tmp_path, ext, args):
    src = tmp_path / "src.wav"
    sf.write(src, np.stack([_tone(2.0, 22050, 500.0, 0.4)] * 2, 1), 22050, subtype="PCM_16")
    out = tmp_path / f"t.{ext}"
    _ffmpeg("-i", str(src), *args, str(out))
    x = media.read_audio(out)
    assert abs(len(x) / 16000 - 2.0) < 0.1
    assert _peak_hz(x, 16000) == pytest.approx(500.0, abs=2)
    assert np.sqrt(np.mean(x[2000:-2000] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.1)


def test_wav_bytes_round_trip(tmp_path):
    x = _tone(0.3, 16000, 200.0, 0.9)
    x[5] = 3.0  # clipped
    data = media.wav_bytes(x)
    (tmp_path / "w.wav").write_bytes(data)
    with wave.open(str(tmp_path / "w.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, len(x))
    y = media.read_audio(tmp_path / "w.wav")
    assert y[5] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(np.delete(y, 5), np.delete(x, 5), atol=1 / 32767)


# ---------------------------------------------------------------------------------- bad inputs


def _bad_files(tmp_path: Path, real_mp4: Path) -> dict[str, Path]:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(real_mp4.read_bytes()[:10_000])
    png = tmp_path / "picture.wav"
    ok, enc = cv2.imencode(".png", np.full((32, 32, 3), 200, np.uint8))
    png.write_bytes(enc.tobytes())
    missing = tmp_path / "missing.mp4"
    return {"text": text, "empty": empty, "trunc": trunc, "png": png, "missing": missing}


def test_bad_files_are_input_errors(tmp_path, shared):
    for name, path in _bad_files(tmp_path, shared / "media" / "video" / "katie_hill.mp4").items():
        with pytest.raises(InputError) as err:
            media.read_audio(path)
        assert err.value.message and err.value.hint, name
        with pytest.raises(InputError) as err:
            media.probe_video(path)
        assert err.value.message and err.value.hint, name
    with pytest.raises(InputError, match="empty"):
        media.read_audio(tmp_path / "empty.mp4")
    with pytest.raises(InputError, match="not a recognised media file"):
        media.probe_video(tmp_path / "notes.mp4")
    with pytest.raises(InputError, match="image"):
        media.read_audio(tmp_path / "picture.wav")
    with pytest.raises(InputError, match="does not exist"):
        media.probe_video(tmp_path / "missing.mp4")


def test_truncated_real_mp4(tmp_path, shared):
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes((shared / "media" / "video" / "katie_hill.mp4").read_bytes()[:10_000])
    with pytest.raises(InputError, match="truncated"):
        media.probe_video(trunc)
    with pytest.raises(InputError):
        media.read_audio(trunc)


def test_audio_only_and_image_are_not_videos(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone(0.5), 16000)
    with pytest.raises(InputError, match="no video"):
        media.probe_video(wav)
    png = tmp_path / "still.mp4"
    ok, enc = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    png.write_bytes(enc.tobytes())
    with pytest.raises(InputError):
        media.probe_video(png)


def test_silent_audio_file_with_zero_samples(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(InputError, match="no audio samples"):
        media.read_audio(path)


# ---------------------------------------------------------------------------------- writing


def test_write_and_read_back(small_clip):
    path, frames = small_clip
    info = media.probe_video(path)
    assert (info.width, info.height, info.frames, info.fps, info.has_audio) == (64, 48, 40, 25.0, True)
    assert info.duration == pytest.approx(1.6)
    got = list(media.iter_frames(path))
    assert len(got) == 40
    err = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(got, frames)])
    assert err < 4.0  # crf 18 on smooth gradients
    audio = media.read_audio(path)
    assert abs(len(audio) / 16000 - 1.6) < 0.1
    assert _peak_hz(audio, 16000) == pytest.approx(440.0, abs=3)
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40 and cap.get(cv2.CAP_PROP_FPS) == 25
    ok, bgr = cap.read()
    assert ok and bgr.shape == (48, 64, 3)
    cap.release()
    from moviepy import VideoFileClip

    with VideoFileClip(str(path)) as clip:
        assert clip.fps == 25 and tuple(clip.size) == (64, 48)
        assert clip.duration == pytest.approx(1.6, abs=0.1)
        assert clip.audio is not None
        assert np.abs(clip.get_frame(0.5).astype(int) - frames[12]).mean() < 4.0


def test_start_stop_and_read_frames(small_clip):
    path, _ = small_clip
    all_frames = list(media.iter_frames(path))
    part = list(media.iter_frames(path, start=13, stop=27))
    assert len(part) == 14
    for a, b in zip(part, all_frames[13:27]):
        np.testing.assert_array_equal(a, b)
    assert list(media.iter_frames(path, start=38, stop=1000)).__len__() == 2
    wanted = [39, 0, 25, 24, 7, 25]
    for i, f in zip(wanted, media.read_frames(path, wanted)):
        np.testing.assert_array_equal(f, all_frames[i])
    with pytest.raises(InputError):
        media.read_frames(path, [40])
    with pytest.raises(InputError):
        list(media.iter_frames(path, start=-1))


def test_ffmpeg_pipe_decoder_agrees_with_opencv(small_clip):
    path, _ = small_clip
    info = media.probe_video(path)
    a = list(media._iter_frames_cv2(info, 5, 40))
    b = list(media._iter_frames_pipe(info, 5, 40))
    assert len(a) == len(b) == 35
    for x, y in zip(a, b):
        assert np.abs(x.astype(int) - y).mean() < 2.0  # different YUV->RGB rounding only


def test_failure_mid_write_leaves_no_file(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, 25, (32, 32)) as vw:
            for f in _frames(5, 32, 32):
                vw.write(f)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_keeps_existing_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(InputError, match="expects"):
        with VideoWriter(out, 25, (32, 32)) as vw:
            vw.write(_frames(1, 32, 32)[0])
            vw.write(np.zeros((32, 30, 3), np.uint8))
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with pytest.raises(InputError, match="uint8"):
        with VideoWriter(out, 25, (32, 32)) as vw:
            vw.write(np.zeros((32, 32, 3), np.float32))
    assert out.read_bytes() == b"previous result"


def test_success_replaces_existing_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")
    with VideoWriter(out, 30, (32, 32)) as vw:
        for f in _frames(3, 32, 32):
            vw.write(f)
    assert media.probe_video(out).frames == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_odd_size_is_padded_to_even(tmp_path):
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 24, (33, 21)) as vw:
        for f in _frames(4, 33, 21):
            vw.write(f)
    info = media.probe_video(out)
    assert (info.width, info.height, info.frames) == (34, 22, 4)


def test_writer_audio_from_path_and_mux(tmp_path, small_clip):
    speech = tmp_path / "speech.flac"
    sf.write(speech, _tone(1.0, 48000, 660.0, 0.3), 48000)
    out = tmp_path / "a.mp4"
    with VideoWriter(out, 25, (32, 32), audio=speech) as vw:
        for f in _frames(25, 32, 32):
            vw.write(f)
    assert media.probe_video(out).has_audio
    assert _peak_hz(media.read_audio(out), 16000) == pytest.approx(660.0, abs=3)
    silent = tmp_path / "silent.mp4"
    with VideoWriter(silent, 25, (32, 32)) as vw:
        for f in _frames(25, 32, 32):
            vw.write(f)
    assert not media.probe_video(silent).has_audio
    with pytest.raises(InputError, match="no audio"):
        VideoWriter(tmp_path / "x.mp4", 25, (32, 32), audio=silent)
    # replace the track in place: video packets copied, new audio
    before = list(media.iter_frames(out))
    media.mux_audio(out, _tone(1.0, 16000, 880.0), out)
    assert _peak_hz(media.read_audio(out), 16000) == pytest.approx(880.0, abs=3)
    for a, b in zip(before, media.iter_frames(out)):
        np.testing.assert_array_equal(a, b)
    media.mux_audio(silent, small_clip[0], tmp_path / "m.mp4")  # audio from another video
    assert media.probe_video(tmp_path / "m.mp4").has_audio
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "m.mp4", "silent.mp4", "speech.flac"]


def test_zero_frames_is_an_error(tmp_path):
    with pytest.raises(InputError, match="No frames"):
        with VideoWriter(tmp_path / "none.mp4", 25, (32, 32)):
            pass
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("display_rotation,expected", [(90, 270), (-90, 90), (180, 180)])
def test_rotated_phone_video_is_upright(tmp_path, small_clip, display_rotation, expected):
    path, _ = small_clip
    rotated = tmp_path / "rot.mp4"
    _ffmpeg("-display_rotation", str(display_rotation), "-i", str(path), "-c", "copy", str(rotated))
    info = media.probe_video(rotated)
    assert info.rotation == expected
    assert (info.width, info.height) == ((48, 64) if expected in (90, 270) else (64, 48))
    stored = list(media.iter_frames(path))
    shown = list(media.iter_frames(rotated))
    assert len(shown) == len(stored) == info.frames
    k = {90: -1, 180: 2, 270: 1}[expected]  # clockwise `expected` degrees == np.rot90 by -expected/90
    for a, b in zip(stored, shown):
        np.testing.assert_array_equal(np.rot90(a, k), b)
    piped = list(media._iter_frames_pipe(info, 0, 3))
    assert piped[0].shape == shown[0].shape
    assert np.abs(piped[0].astype(int) - shown[0]).mean() < 2.0
    assert media.read_frames(rotated, [7])[0].shape == shown[0].shape


# ---------------------------------------------------------------------------------- limits


def test_limits(small_clip):
    info = media.probe_video(small_clip[0])
    media.check_video(info, MediaLimits())
    media.check_audio_seconds(10, MediaLimits())
    with pytest.raises(LimitError, match="long"):
        media.check_video(info, MediaLimits(max_video_seconds=1.0))
    with pytest.raises(LimitError, match="64x48"):
        media.check_video(info, MediaLimits(max_width=32))
    with pytest.raises(LimitError, match="MB"):
        media.check_video(info, MediaLimits(max_file_mb=0.001))
    with pytest.raises(LimitError):
        media.check_audio_seconds(601, MediaLimits())
    big = VideoInfo(info.path, 30.0, 30 * 700, 640, 480, 700.0, True, 0)
    with pytest.raises(LimitError):
        media.check_video(big)


def test_benchmark_runs(tmp_path, small_clip):
    result = media.benchmark(small_clip[0], seconds=0.2, encode_frames=3)
    assert result["decode_fps_cv2"] > 0 and result["decode_fps_ffmpeg_pipe"] > 0
    assert result["encode_fps_720p"] > 0 and result["decode_size"] == "64x48"


# ---------------------------------------------------------------------------------- frame counting


def test_frame_count_rule_on_awkward_containers(tmp_path, small_clip):
    path, _ = small_clip
    variants = {
        "vp9.webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "100k"],
        "h264.mkv": ["-c:v", "libx264", "-bf", "3"],
        "h264.ts": ["-c:v", "libx264"],  # codec tag 0x001B must not be read as a size
        "ntsc.mov": ["-c:v", "libx264", "-r", "30000/1001"],
        "vfr.mp4": ["-vf", "setpts='if(lt(N,20),PTS,PTS*2)'", "-fps_mode", "vfr", "-c:v", "libx264"],
    }
    for name, args in variants.items():
        out = tmp_path / name
        _ffmpeg("-i", str(path), "-an", *args, str(out))
        info = media.probe_video(out)
        frames = list(media.iter_frames(out))
        assert len(frames) == info.frames == (48 if name == "ntsc.mov" else 40), name
        assert info.duration == pytest.approx(len(frames) / info.fps)
        for i, f in zip([39, 2, 30], media.read_frames(out, [39, 2, 30])):
            np.testing.assert_array_equal(f, frames[i])
    assert media.probe_video(tmp_path / "ntsc.mov").fps == pytest.approx(30000 / 1001, abs=1e-9)
    assert media.probe_video(tmp_path / "vfr.mp4").fps < 25  # the average rate


@pytest.mark.slow
def test_edit_list_cut_between_key_frames(tmp_path, shared):
    """A stream-copied cut keeps the GOP's leading packets, flagged discard: not frames."""
    out = tmp_path / "cut.mp4"
    _ffmpeg("-ss", "1.3", "-i", str(shared / "media" / "video" / "obama_clip1.mp4"), "-t", "3",
            "-c", "copy", str(out))
    info = media.probe_video(out)
    frames = list(media.iter_frames(out))
    assert len(frames) == info.frames
    assert abs(info.frames - 90) <= 3
    cap = cv2.VideoCapture(str(out))
    header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # includes the discarded lead-in packets
    cap.release()
    assert header > info.frames
    for i, f in zip([60, 5], media.read_frames(out, [60, 5])):
        np.testing.assert_array_equal(f, frames[i])
    np.testing.assert_array_equal(next(media.iter_frames(out, start=70)), frames[70])


@pytest.mark.slow
def test_half_downloaded_faststart_mp4(tmp_path, shared):
    """Index at the front, data cut off: an InputError, not a frame count that cannot be met."""
    full = tmp_path / "fs.mp4"
    _ffmpeg("-i", str(shared / "media" / "video" / "theresa_may_5s.mp4"), "-c", "copy",
            "-movflags", "+faststart", str(full))
    half = tmp_path / "half.mp4"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match="incomplete"):
        media.probe_video(half)
    assert media.probe_video(full).frames == 125


def test_prefetch_keeps_order_raises_where_it_failed_and_stops_early():
    import threading

    from studio.media import prefetch

    assert list(prefetch(iter(range(50)), 3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("decoder broke")

    got = []
    with pytest.raises(ValueError, match="decoder broke"):
        for x in prefetch(failing(), 2):
            got.append(x)
    assert got == [1, 2]

    closed = threading.Event()

    def endless():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.set()

    it = prefetch(endless(), 2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed.is_set()


def test_encoder_preset_gets_faster_with_frame_size():
    from studio.media import encoder_preset

    assert encoder_preset(1280, 720) == "veryfast"
    assert encoder_preset(1080, 1080) == "superfast"
    assert encoder_preset(1080, 1920) == encoder_preset(1920, 1080) == "ultrafast"


def test_colour_tags_are_read_and_kept_through_a_round_trip(tmp_path):
    """A BT.709 (HD) video written back with its colour tags carries the same tags (so players
    show it like the source) and, decoded again, matches the frames that were written (codec loss
    only: the RGB -> YUV conversion uses the tagged matrix, not ffmpeg's BT.601 default)."""
    src = tmp_path / "hd709.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1",
           "-vf", "scale=out_color_matrix=bt709:out_range=tv", "-colorspace", "bt709", "-color_primaries", "bt709",
           "-color_trc", "bt709", "-color_range", "tv", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
           str(src))
    info = media.probe_video(src)
    assert info.colour == media.Colour("tv", "bt709", "bt709", "bt709")
    frames = list(media.iter_frames(src))
    outs = {}
    for name, colour in (("tagged", info.colour), ("untagged", None)):
        out = tmp_path / f"{name}.mp4"
        with VideoWriter(out, 25, (320, 240), crf=12, colour=colour) as w:
            for f in frames:
                w.write(f)
        outs[name] = (media.probe_video(out).colour,
                      np.mean([np.abs(a.astype(int) - b.astype(int)).mean()
                               for a, b in zip(frames, media.iter_frames(out))]))
    assert outs["tagged"][0] == info.colour and outs["untagged"][0] is None
    assert outs["tagged"][1] < 2.0 and outs["untagged"][1] < 2.0  # codec loss only, either way
    assert media._parse_colour("yuv420p(tv, bt470bg/bt470bg/smpte170m, progressive)") == \
        media.Colour("tv", "bt470bg", "bt470bg", "smpte170m")
    assert media._parse_colour("yuv420p(progressive)") is None and media._parse_colour("rgb24") is None
