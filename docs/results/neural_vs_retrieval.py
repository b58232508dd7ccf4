"""Neural vs retrieval renderer on the same held-out Obama frames -> a markdown table on stdout.

The neural run (``train-renderer``, e.g. /tmp/nc/run) holds its facial-map/crop pairs in
``RUN/pairs``; both renderers are scored on the last 20 % of every clip (the frames the network
never saw), each frame rendered from its own true landmarks into its own crop (only the lower
face is replaced), with the same measure (``studio.train.renderer.image_metrics``). The retrieval
pool is the first 80 % of the same clip (the network's training frames), so both renderers know
the same footage. "template as is" is the crop with its lower face left blank (mid grey), the
floor, and "real crop" the ceiling, 1.0.

    PYTHONPATH=. .venv/bin/python docs/results/neural_vs_retrieval.py /tmp/nc/run /tmp/d/obama_clip{1,2,3}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def score(renderer, pairs, facemap_cfg) -> dict[str, float]:
    from studio.train.renderer import evaluate

    return {k: v for k, v in evaluate(renderer, pairs, facemap_cfg).items() if k != "frames"}


def retrieval_scores(train, val) -> dict[str, float]:
    """Retrieval renders of ``val`` (own crop as template, own landmarks) from a pool of ``train``."""
    from studio.face import layout
    from studio.render.retrieval import RetrievalPool, RetrievalRenderer
    from studio.train.renderer import image_metrics

    pool = RetrievalPool.from_crops(list(train.crops), train.points)
    r = RetrievalRenderer(pool)
    talk = layout.talking_vector(val.points)
    no_exclusion = np.zeros((len(val), 2), np.int64)
    picks = r.pick(val.points, talk, no_exclusion)
    rows = [image_metrics(r.render_frame(val.crops[n], val.points[n], talk[n], int(picks[n])).image,
                          val.crops[n], val.points[n]) for n in range(len(val))]
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}


def run(run_dir: Path, clips: list[str]) -> str:
    from studio.render.neural import NeuralRenderer, masked_template
    from studio.train.renderer import build_pairs, image_metrics, lower_face_masks, split_by_time

    renderer = NeuralRenderer.load(run_dir, device="cpu")
    fcfg = renderer.facemap_config
    size = renderer.size
    lines = ["| clip | held-out frames | renderer | mouth PSNR (dB) | mouth SSIM | crop PSNR (dB) | crop SSIM |",
             "|---|---|---|---|---|---|---|"]
    for d in clips:
        pairs = build_pairs(d, size, run_dir / "pairs", fcfg, renderer.crop_config)
        train, val = split_by_time(pairs, 0.2)
        blank = masked_template(val.crops, lower_face_masks(val.points, size, fcfg))
        floor = [image_metrics(b, c, p) for b, c, p in zip(blank, val.crops, val.points)]
        rows = {"neural": score(renderer, val, fcfg), "retrieval": retrieval_scores(train, val),
                "template as is (lower face blank)": {k: float(np.mean([f[k] for f in floor])) for k in floor[0]}}
        for name, m in rows.items():
            lines.append(f"| {Path(d).name} | {len(val)} | {name} | {m['mouth_psnr']:.2f} | {m['mouth_ssim']:.3f} | "
                         f"{m['psnr']:.2f} | {m['ssim']:.3f} |")
    head = f"neural run {run_dir}: step {renderer.info.get('step')}, {json.dumps(dataclasses.asdict(renderer.cfg))}"
    return head + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("clips", nargs="+")
    args = ap.parse_args()
    print(run(Path(args.run), args.clips))
