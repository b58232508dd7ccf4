"""Contact sheet of the sample dub next to the real video of the same speech.

    .venv/bin/python docs/results/make_sample_dub_sheet.py DUB.mp4 REAL.mp4 [OUT.jpg]

DUB: ``python -m studio dub --subject presets/sample_subject --speech sample_media/speech.wav``;
REAL: the real video of that part of the address (``scripts/make_sample_media.py
--real-speech-video``). Each tile is a dub frame (left) beside the real frame at the same time
(right), labelled with the frame number and both inner-lip openings (68-point 62-66 distance over
the 36-45 eye-corner distance, re-detected with the MediaPipe backend). Tiles: the 3 most open
and 3 most closed dub frames, the 3 frames where the z-scored openings differ most ("worst"),
and 3 at random (seed 0). Default OUT: docs/results/sample_dub_sheet.jpg.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

from studio import media
from studio.face.landmarks import MediaPipeBackend

TILE = 192


def openings(frames: list[np.ndarray]) -> np.ndarray:
    """Inner-lip opening over eye-corner distance per frame, shape (n,); nan where no face."""
    out = np.full(len(frames), np.nan)
    with MediaPipeBackend() as backend:
        for i, f in enumerate(frames):
            d = backend.detect(f)
            if d is not None:
                p = d.landmarks
                out[i] = np.linalg.norm(p[62] - p[66]) / np.linalg.norm(p[36] - p[45])
    return out


def main(dub: str, real: str, out: str = "docs/results/sample_dub_sheet.jpg") -> None:
    fd, fr = list(media.iter_frames(dub)), list(media.iter_frames(real))
    n = min(len(fd), len(fr))
    od, orl = openings(fd[:n]), openings(fr[:n])
    z = lambda x: (x - np.nanmean(x)) / np.nanstd(x)  # noqa: E731
    diff = np.nan_to_num(np.abs(z(od) - z(orl)), nan=-1)
    rng = np.random.default_rng(0)
    order = np.argsort(np.nan_to_num(od, nan=0))
    picks = ([("open", i) for i in order[::-1][:3]] + [("closed", i) for i in order[:3]]
             + [("worst", i) for i in np.argsort(diff)[::-1][:3]]
             + [("random", i) for i in sorted(rng.choice(n, 3, replace=False))])
    tiles = []
    for label, i in picks:
        pair = np.concatenate([cv2.resize(fd[i], (TILE, TILE), interpolation=cv2.INTER_AREA),
                               cv2.resize(fr[i], (TILE, TILE), interpolation=cv2.INTER_AREA)], axis=1)
        pair = cv2.cvtColor(pair, cv2.COLOR_RGB2BGR)
        text = f"{label} f{i}  dub {od[i]:.2f} real {orl[i]:.2f}"
        cv2.rectangle(pair, (0, 0), (2 * TILE, 18), (0, 0, 0), -1)
        cv2.putText(pair, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.line(pair, (TILE, 0), (TILE, TILE), (255, 255, 255), 1)
        tiles.append(pair)
    rows = [np.concatenate(tiles[k:k + 3], axis=1) for k in range(0, 12, 3)]
    sheet = np.concatenate(rows, axis=0)
    cv2.imwrite(out, sheet, [cv2.IMWRITE_JPEG_QUALITY, 82])
    print(f"{out}: {sheet.shape[1]}x{sheet.shape[0]}; opening r at lag 0 "
          f"{np.corrcoef(np.nan_to_num(od), np.nan_to_num(orl))[0, 1]:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
