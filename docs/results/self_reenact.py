"""Self-reenactment of a real clip: does the rendered dub show what was predicted?

    STUDIO_WEIGHTS_DIR=../shared/weights .venv/bin/python docs/results/self_reenact.py OUT_DIR CLIP.mp4 [...]
        [--split 0.7] [--renderer retrieval]

For each clip: the first 70 % (picture and sound) is the footage a new user has, the last 30 %
is the real video of the speech to dub. A one-step dub (``Pipeline.subject_for_video`` on the
first part, then predict, landmarks, render) puts the last part's speech on the first part.
Scored against the real last part (its landmarks re-detected, ``studio.sync.sync_check``):

- predicted: the landmarks the renderer was asked to draw;
- rendered: the dub video, landmarks re-detected;
- template (no lip sync) and speech energy, the floors.

Each at lag 0 and at the best lag within +-3 frames (the lag apart). Prints one JSON line per clip
and writes OUT_DIR/self_reenact.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from studio import media, metrics  # noqa: E402
from studio.pipeline import Pipeline, PipelineConfig  # noqa: E402

CONFIG = PipelineConfig()
from studio.sync import sync_check  # noqa: E402

MAX_LAG = 3


def cut(video: Path, out_dir: Path, split: float) -> tuple[Path, Path, Path]:
    """(first part with sound, last part with sound, last part's speech wav) of ``video``."""
    import soundfile as sf

    info = media.probe_video(video)
    k = int(round(split * info.frames))
    signal = media.read_audio(video)
    cut_at = int(round(k / info.fps * 16000))
    frames = list(media.iter_frames(video))
    paths = out_dir / f"{video.stem}_first.mp4", out_dir / f"{video.stem}_last.mp4", out_dir / f"{video.stem}_last.wav"
    for path, part, sound in ((paths[0], frames[:k], signal[:cut_at]), (paths[1], frames[k:], signal[cut_at:])):
        with media.VideoWriter(path, info.fps, (info.width, info.height), audio=sound.astype(np.float32)) as vw:
            for f in part:
                vw.write(f)
    sf.write(paths[2], signal[cut_at:], 16000)
    return paths


def score(points: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    s = metrics.compare_tracks(points, real, mask=mask, max_lag=MAX_LAG, shape=False)
    return {"r": round(s["inner_r"], 3), "r_best": round(s["inner_r_best"], 3), "lag": int(s["inner_lag"]),
            "amplitude": round(s["inner_amplitude"], 3)}


def run(video: Path, out_dir: Path, split: float, renderer: str) -> dict:
    first, last, last_wav = cut(video, out_dir, split)
    return run_dub(first, last_wav, last, None, out_dir, renderer, video.name)


def run_dub(first: Path, speech_path: Path, last: Path, real_audio: Path | None, out_dir: Path, renderer: str,
            name: str) -> dict:
    """One-step dub of ``speech_path`` onto the footage ``first``, scored against ``last``, the real
    video of that speech (its sound in ``real_audio`` when the video has none)."""
    video = Path(name)
    pipe = Pipeline(config=CONFIG)
    subject = pipe.subject_for_video(first)
    speech = pipe.speech(speech_path)
    tpl = pipe.template(subject, None)
    pred = pipe.predict(subject, speech, tpl, "ours")
    lms = pipe.landmarks(pred, tpl, subject)
    dub = out_dir / f"{video.stem}_dub.mp4"
    pipe.render(subject, tpl, speech, lms, dub, renderer)
    res = sync_check(dub, last, real_audio=real_audio, template_video=first, work_dir=out_dir / "sync", max_lag=MAX_LAG, tracks=True)
    tr = res["tracks"]
    n = len(tr["real"])
    asked = metrics.resample(lms.points.astype(np.float64), tpl.meta.fps, n, tr["fps"])
    row = {"clip": name, "frames": n, "renderer": renderer,
           "predicted": score(asked, tr["real"], tr["mask"]),
           "rendered": {k: round(res["dub"][f"inner_{k}"], 3) if k != "lag" else int(res["dub"]["inner_lag"])
                        for k in ("r", "r_best", "lag", "amplitude")},
           "template": {k: round(res["template"][f"inner_{k}"], 3) if k != "lag" else int(res["template"]["inner_lag"])
                        for k in ("r", "r_best", "lag")} if res["template"] else None,
           "energy": {k: round(res["energy"][f"inner_{k}"], 3) if k != "lag" else int(res["energy"]["inner_lag"])
                      for k in ("r", "r_best", "lag")}}
    # how the re-detected opening follows the asked one (the renderer's fidelity, not sync)
    op_asked = metrics.openings(asked)["inner"]
    op_dub = metrics.openings(tr["dub"])["inner"]
    m = tr["mask"]
    lag, r_lag = metrics.best_lag(op_dub, op_asked, MAX_LAG)
    row["fidelity"] = {"r": round(metrics.pearson(op_dub[m], op_asked[m]), 3), "lag": lag, "r_best": round(r_lag, 3),
                       "slope": round(float(np.polyfit(op_asked[m], op_dub[m], 1)[0]), 3)}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("clips", nargs="*")
    ap.add_argument("--pair", nargs=3, metavar=("FOOTAGE", "SPEECH", "REAL"), action="append", default=[],
                    help="dub SPEECH onto FOOTAGE (one step), score against REAL (its sound: SPEECH)")
    ap.add_argument("--split", type=float, default=0.7)
    ap.add_argument("--renderer", default="retrieval")
    ap.add_argument("--no-limits", action="store_true", help="ask for the prediction as it is (no shape or "
                    "opening limit, PipelineConfig.opening_margin=0)")
    args = ap.parse_args()
    global CONFIG
    if args.no_limits:
        CONFIG = PipelineConfig(opening_margin=0.0)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in args.clips:
        rows.append(run(Path(c), out, args.split, args.renderer))
        print(json.dumps(rows[-1]), flush=True)
    for footage, speech, real in args.pair:
        rows.append(run_dub(Path(footage), Path(speech), Path(real), Path(speech), out, args.renderer,
                            f"{Path(speech).name} on {Path(footage).name}"))
        print(json.dumps(rows[-1]), flush=True)
    (out / "self_reenact.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
