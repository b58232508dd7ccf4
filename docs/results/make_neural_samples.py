"""Neural renderer on held-out frames -> docs/results/neural_samples.jpg (facial map | neural | real).

Renders, with a checkpoint from ``python -m studio train-renderer``, the middle held-out frame of
each clip (the last 20 % of every clip, never trained on) from its own true landmarks and prints
PSNR / SSIM (whole crop and mouth region) of each against the real crop.

    PYTHONPATH=. .venv/bin/python docs/results/make_neural_samples.py CKPT_DIR CLIP_DIR... \
        [--out docs/results/neural_samples.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from studio.render.neural import NeuralRenderer
from studio.train.renderer import (Pairs, build_pairs, image_metrics, model_inputs, sample_sheet,
                                   split_by_time, write_image)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--out", default="docs/results/neural_samples.jpg")
    args = ap.parse_args()
    r = NeuralRenderer.load(args.ckpt, device="cpu")
    cache = Path(args.ckpt) / "pairs"  # the trainer's pair cache: no re-decoding
    parts = [build_pairs(c, r.size, cache, r.facemap_config, r.crop_config) for c in args.clips]
    _, val = split_by_time(Pairs.concat(parts), float(r.info.get("train", {}).get("val_fraction", 0.2)))
    idx = np.array([np.flatnonzero(val.clip == c)[np.count_nonzero(val.clip == c) // 2]
                    for c in np.unique(val.clip)])
    x = model_inputs(r.cfg, val, idx, r.facemap_config)
    out = r.render(x[..., :3], x[..., 3:] if r.cfg.with_template else None)
    for i, o in zip(idx, out):
        m = image_metrics(o, val.crops[i], val.points[i])
        print(val.names[val.clip[i]], int(val.frames[i]), {k: round(v, 3) for k, v in m.items()})
    write_image(args.out, sample_sheet(val.maps[idx], out, val.crops[idx]), quality=85)


if __name__ == "__main__":
    main()
