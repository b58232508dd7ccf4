"""Sync check: re-detect landmarks on a dubbed video and correlate its mouth opening with the prediction.

    STUDIO_WEIGHTS_DIR=../shared/weights .venv/bin/python docs/results/sync_check.py OUT.mp4 LANDMARKS.csv /tmp/redetect

LANDMARKS.csv is what `python -m studio dub ... --landmarks-csv` wrote for OUT.mp4.
"""

import sys

import numpy as np
import pandas as pd

from studio.data.preprocess import preprocess
from studio.face import layout


def main(video: str, csv: str, out: str) -> None:
    clip = preprocess(video, out, progress=False)
    table = pd.read_csv(csv)
    pts = np.stack([np.stack([table[f"x{i}"], table[f"y{i}"]], -1) for i in range(68)], 1)
    n = min(len(pts), clip.meta.frames)
    seen = layout.mouth_opening(clip.landmarks[:n]) / clip.scale[:n]
    predicted = layout.mouth_opening(pts[:n]) / clip.scale[:n]
    r = np.corrcoef(seen, predicted)[0, 1]
    print(f"frames {n}, faces found {clip.meta.faces_found}, Pearson r {r:.3f}")  # the script's output


if __name__ == "__main__":
    main(*sys.argv[1:4])
