"""A one-step dub of a new person's video works with no network and no weights folder.

The dub runs in a child process whose audit hook refuses (raises on) every socket connect, send
and name lookup that is not for this machine, and records it; HOME, the caches and the studio's
folders point at an empty temporary folder and STUDIO_WEIGHTS_DIR is unset, so the face model can
only come from the package itself (studio/face/assets/). Where ``unshare -n`` works the child also
runs in a network namespace with only the loopback interface.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_ui_offline import _unshare_prefix
from ui_support import REPO

CHILD = textwrap.dedent(r"""
    import json, sys
    LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", None, ""}
    attempts = []

    def hook(event, args):
        host = None
        if event in ("socket.connect", "socket.sendto"):
            address = args[1]
            host = address[0] if isinstance(address, tuple) and address else None
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if host is not None and host not in LOCAL:
            attempts.append(f"{event} {host!r}")
            raise OSError(f"network blocked by the test: {event} {host!r}")

    sys.addaudithook(hook)
    from studio.cli import main
    rc = main(["dub", "--video", sys.argv[1], "--speech", sys.argv[2], "--out", sys.argv[3]])
    from studio.face import weights
    print("RESULT " + json.dumps({"rc": rc, "attempts": attempts,
                                  "face_model": str(weights.weights_path("face_landmarker", download=False))}))
""")


@pytest.mark.slow
def test_one_step_dub_of_a_new_video_offline_without_weights_dir(shared, tmp_path):
    video = shared / "media" / "video" / "katie_hill.mp4"
    speech = REPO / "sample_media" / "speech.wav"
    empty = tmp_path / "home"
    empty.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "dub.mp4"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STUDIO_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(HOME=str(empty), XDG_CACHE_HOME=str(empty / ".cache"), TORCH_HOME=str(empty / "torch"),
               STUDIO_CACHE_DIR=str(empty / "studio_cache"), STUDIO_WORK_DIR=str(empty / "work"),
               STUDIO_SUBJECTS_DIR=str(empty / "subjects"), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = _unshare_prefix() + [sys.executable, str(script), str(video), str(speech), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["rc"] == 0 and result["attempts"] == []
    assert result["face_model"] == str(REPO / "studio" / "face" / "assets" / "face_landmarker.task")
    from studio.media import probe_video

    info = probe_video(out)
    assert info.has_audio and abs(info.duration - 7.2) < 0.3  # as long as the speech
    assert not (empty / ".cache" / "lip-sync-studio" / "weights").exists()  # nothing was put there
