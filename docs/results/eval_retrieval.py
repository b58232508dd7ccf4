"""Retrieval renderer reconstruction on real footage -> docs/results/retrieval_reconstruction.md.

Every 10th frame of each clip is rendered from its own true landmarks; the pool is the clip's own
footage minus that frame's +-5 neighbours; picks run over the whole contiguous sequence (temporal
term included). "own template": the frame itself is the template (only the masked lower face is
replaced). "template i-15": frame i-15 is the template (another mouth, slightly other pose);
"template as is" is the mouth PSNR of leaving that template unchanged (the baseline to beat).

    PYTHONPATH=. .venv/bin/python docs/results/eval_retrieval.py CLIP_DIR... [--size 256]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from studio.data.clip import Clip
from studio.render.retrieval import evaluate_clip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default="docs/results/retrieval_reconstruction.md")
    args = ap.parse_args()
    lines = ["| clip | template | frames | mouth PSNR | mouth SSIM | crop PSNR | crop SSIM | template as is (mouth PSNR) | pick jumps/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in args.clips:
        clip = Clip.load(d)
        for shift in (0, 15):
            t0 = time.perf_counter()
            r = evaluate_clip(clip, size=args.size, template_shift=shift)
            base = f"{r['template_mouth_psnr']:.2f}" if shift else "-"
            lines.append(f"| {Path(d).name} | {'own' if not shift else 'i-15'} | {r['frames']} | "
                         f"{r['mouth_psnr']:.2f} | {r['mouth_ssim']:.3f} | {r['crop_psnr']:.2f} | "
                         f"{r['crop_ssim']:.3f} | {base} | {r['jumps_per_s']:.1f} |")
            print(lines[-1], f"({time.perf_counter() - t0:.1f} s)", flush=True)
    head = (f"# Retrieval renderer: reconstruction on real footage ({args.size} px crops)\n\n"
            + (__doc__ or "").split("\n\n")[1] + "\n\n")
    Path(args.out).write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
