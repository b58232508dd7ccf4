"""How far does the retrieval renderer's mouth follow what it was asked to draw?

    .venv/bin/python docs/results/render_follow.py OUT_DIR -- DUB ARGUMENTS...

Runs ``python -m studio dub DUB ARGUMENTS... --out OUT_DIR/dub.mp4 --landmarks-csv
OUT_DIR/dub.csv`` in this process, recording the pool frame the renderer picked for every output
frame (``RetrievalRenderer.prepare``), reads what each frame was asked to draw from the CSV,
re-detects the dub (the sync check's detector and cache), and fits the re-detected
inner-lip opening as ``a x asked + b x picked + c`` (face-scale units). ``b`` is how much of the
picked frame's own opening shows through the warp; a renderer that draws what it is asked has
a = 1, b = 0. Also prints the mean shortfall binned by how much wider the ask is than the pick.
Writes OUT_DIR/render_follow.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from studio import media, metrics  # noqa: E402
from studio.render import retrieval  # noqa: E402

BINS = ((-1.0, -0.04), (-0.04, -0.01), (-0.01, 0.01), (0.01, 0.04), (0.04, 1.0))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(__doc__)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    dub, csv = out / "dub.mp4", out / "dub.csv"
    picks: list[np.ndarray] = []
    pool_points: list[np.ndarray] = []
    prepare = retrieval.RetrievalRenderer.prepare

    def recording(self, lms, track):
        state = prepare(self, lms, track)
        picks.append(state)
        pool_points.append(self.pool.points)
        return state

    retrieval.RetrievalRenderer.prepare = recording
    try:
        from studio.cli import main as studio_main
        rc = studio_main(["dub", *argv[2:], "--out", str(dub), "--landmarks-csv", str(csv)])
    finally:
        retrieval.RetrievalRenderer.prepare = prepare
    if rc:
        return rc
    if len(picks) != 1:
        sys.stderr.write("render_follow.py needs a dub with the retrieval renderer (one sequence of picks).\n")
        return 2
    from studio.render.integrity import read_asked
    from studio.sync import default_work_dir, detect_landmarks

    info = media.probe_video(dub)
    clip = detect_landmarks(dub, info, info.frames, default_work_dir(), "mediapipe", False, "render check")
    asked = read_asked(csv).points
    n = min(len(asked), len(picks[0]), clip.meta.frames)
    ok = clip.valid[:n].astype(bool)
    rendered = metrics.openings(clip.landmarks[:n].astype(np.float64))["inner"][ok]
    picked = metrics.openings(pool_points[0][picks[0][:n]].astype(np.float64))["inner"][ok]
    want = metrics.openings(asked[:n])["inner"][ok]
    coef, *_ = np.linalg.lstsq(np.stack([want, picked, np.ones_like(want)], 1), rendered, rcond=None)
    gap = want - picked
    result = {
        "frames": int(ok.sum()),
        "fit": {"asked": round(float(coef[0]), 3), "picked": round(float(coef[1]), 3), "const": round(float(coef[2]), 4)},
        "r_rendered_asked": round(metrics.pearson(rendered, want), 3),
        "r_rendered_picked": round(metrics.pearson(rendered, picked), 3),
        "std": {"asked": round(float(want.std()), 4), "picked": round(float(picked.std()), 4),
                "rendered": round(float(rendered.std()), 4)},
        "shortfall_by_gap": [{"asked_minus_picked": [lo, hi], "frames": int(m.sum()),
                              "mean_rendered_minus_asked": round(float(np.mean(rendered[m] - want[m])), 4)}
                             for lo, hi in BINS if (m := (gap >= lo) & (gap < hi)).any()],
    }
    (out / "render_follow.json").write_text(json.dumps(result, indent=1))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
