"""Launched with the network blocked, the studio makes no outbound connection attempt and works.

The studio runs in a child process with an audit hook that records every socket connect, send
and name lookup that is not for this machine; where ``unshare -n`` works (Linux, root or user
namespaces) the child also runs in a network namespace with only the loopback interface, so an
attempt could not succeed anyway. The child loads the page and its config, predicts and renders
over the API, then reports what the hook saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ui_support import REPO, free_port, sample_or_tiny, speech_wav, studio_env

HOOK = textwrap.dedent(r"""
    import json, socket, sys, time
    LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", None, ""}
    attempts = []

    def host_of(address):
        if isinstance(address, tuple) and address:
            return address[0]
        return None  # AF_UNIX paths and the like are not network traffic

    def hook(event, args):
        if event == "socket.connect" or event == "socket.sendto":
            host = host_of(args[1])
            if host is not None and host not in LOCAL:
                attempts.append(f"{event} {args[1]!r}")
        elif event == "socket.getaddrinfo":
            host = args[0]
            if isinstance(host, bytes):
                host = host.decode()
            if host not in LOCAL:
                attempts.append(f"{event} {host!r}")

    sys.addaudithook(hook)
""")

CHILD = HOOK + textwrap.dedent(r"""
    port, subject, speech, clip = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    from studio.ui import app
    demo = app.launch(prevent_thread_lock=True, server_port=int(port))
    import httpx
    page = httpx.get(demo.local_url, timeout=60)
    config = httpx.get(demo.local_url + "config", timeout=60)
    from gradio_client import Client, handle_file
    client = Client(demo.local_url, verbose=False)
    summary = client.predict(subject, handle_file(speech), clip, None, "ours", api_name="/predict")[-1]
    video = client.predict("retrieval", 50, 150, "standard", api_name="/render")[0]
    time.sleep(2.0)  # give any background thread (analytics, version checks) its chance
    demo.close()
    print("RESULT " + json.dumps({"page": page.status_code, "config": config.status_code, "summary": summary,
                                  "video": bool(video), "attempts": attempts}))
""")


def _unshare_prefix() -> list[str]:
    """A command prefix running in a new network namespace with loopback up, if that works here."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else []


def test_the_audit_hook_sees_outbound_attempts(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(HOOK + textwrap.dedent('''
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=0.2)  # TEST-NET-1: never routed
        except OSError:
            pass
        try:
            socket.getaddrinfo("example.invalid", 443)
        except OSError:
            pass
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.close()
        print("RESULT " + json.dumps(attempts))
    '''))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60).stdout
    attempts = json.loads(out.split("RESULT ")[-1])
    assert any("192.0.2.1" in a for a in attempts) and any("example.invalid" in a for a in attempts)


@pytest.mark.slow
def test_launch_offline_makes_no_outbound_attempts(tmp_path_factory, tmp_path):
    base = tmp_path_factory.getbasetemp()
    subject = sample_or_tiny(base)
    clip = json.loads((subject / "subject.json").read_text())["clips"][0]
    speech = speech_wav(base / "offline" / "speech.wav", 2.0)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, **studio_env(base / "offline", subject), PYTHONPATH=str(REPO),
               HF_HUB_OFFLINE="1", NO_PROXY="*")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    prefix = _unshare_prefix()
    cmd = prefix + [sys.executable, str(script), str(free_port()), str(subject.resolve()), str(speech), clip]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["page"] == 200 and result["config"] == 200
    assert "frames" in result["summary"] and result["video"]
    assert result["attempts"] == [], f"outbound attempts (unshare: {bool(prefix)}): {result['attempts']}"
