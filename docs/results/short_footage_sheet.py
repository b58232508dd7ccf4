"""Short footage, wide mouths: the retrieval renderer's mouth-interior fill, before / after.

The pool is the first 2.5 s of theresa_may_5s.mp4 (62 frames); the frames of the last 2.5 s are
rendered from their own landmarks with the inner lips and jaw opened ``--extra`` face-scale
units further (0.3: openings 0.33-0.74 against the pool's widest 0.46), once with
``RetrievalConfig(fill_mouth=False)`` (before) and once with the default ``fill_mouth=True``
(after). Writes a contact sheet (rows before / after, 6 frames) and prints the numbers used in
docs/results/short_footage.md: mouth darkness inside the predicted inner lips, the per-frame
render time (CPU and wall, switch off vs on, interleaved), and what the switch changes on the
clip's own, unopened landmarks (frames changed; own-clip reconstruction PSNR, off vs on).

    PYTHONPATH=. STUDIO_WEIGHTS_DIR=../shared/weights .venv/bin/python docs/results/short_footage_sheet.py \\
        [--video ../shared/media/video/theresa_may_5s.mp4] [--clip-dir DIR]

--video defaults to $STUDIO_SHARED (else ../shared)/media/video/theresa_may_5s.mp4; --clip-dir: where
the preprocessed clip is kept (reused when it matches; default a folder in the system temp dir).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from studio import media
from studio.data.preprocess import preprocess
from studio.face import layout
from studio.face.normalize import face_scale
from studio.render.crop import CropConfig, CropTrack
from studio.render.retrieval import (RetrievalConfig, RetrievalPool, RetrievalRenderer, evaluate_clip,
                                     fill_strength, opening_ratio)

REPO = Path(__file__).resolve().parents[2]
TILE = 160  # contact-sheet tile side
POOL_SECONDS = 2.5
LUMA = np.array([0.299, 0.587, 0.114])
DARK = 80  # luma below this counts as mouth cavity
# lower lip (outer, inner), the lip corners (half), the jaw 4-12 (more at the chin)
LOWER_LIP = (55, 56, 57, 58, 59, 65, 66, 67)
CORNERS = (48, 54, 60, 64)
JAW_GAIN = np.array([0.3, 0.5, 0.7, 0.9, 1.0, 0.9, 0.7, 0.5, 0.3])


def open_wider(points: np.ndarray, extra: float) -> np.ndarray:
    """(T, 68, 2) px -> (T, 68, 2): inner-lip opening + ``extra`` face-scale units (lower lip and
    jaw moved down, perpendicular to the eye line)."""
    p = np.array(points, np.float64)
    across = p[:, layout.EYE_LEFT].mean(1) - p[:, layout.EYE_RIGHT].mean(1)
    down = np.stack([-across[:, 1], across[:, 0]], 1) / np.linalg.norm(across, axis=1, keepdims=True)
    step = (extra * face_scale(p))[:, None] * down  # (T, 2)
    p[:, LOWER_LIP] += step[:, None]
    p[:, CORNERS] += 0.5 * step[:, None]
    p[:, layout.JAW] += JAW_GAIN[None, :, None] * step[:, None]
    return p.astype(np.float32)


def inner_stats(img: np.ndarray, pts: np.ndarray) -> tuple[float, float]:
    """(S, S, 3) ``img`` inside the inner-lip polygon of (68, 2) ``pts`` (2 px in): mean luma and
    the share of pixels darker than ``DARK`` (a visible mouth cavity)."""
    m = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(pts[60:68]).astype(np.int32)], 1)
    luma = img[cv2.erode(m, np.ones((5, 5), np.uint8)) > 0] @ LUMA
    return (float(luma.mean()), float((luma < DARK).mean())) if len(luma) else (np.nan, np.nan)


def tile(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(TILE, TILE, 3): the lower face around the mouth of (68, 2) ``pts``."""
    c = pts[list(layout.MOUTH)].mean(0) + [0, 0.25 * face_scale(pts)]
    half = 1.3 * face_scale(pts)
    x0, y0 = np.round(c - half).astype(int)
    side = int(round(2 * half))
    pad = cv2.copyMakeBorder(img, side, side, side, side, cv2.BORDER_REPLICATE)
    return cv2.resize(pad[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side], (TILE, TILE),
                      interpolation=cv2.INTER_AREA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("STUDIO_SHARED", REPO.parent / "shared"))
    ap.add_argument("--video", default=str(shared / "media/video/theresa_may_5s.mp4"))
    ap.add_argument("--clip-dir", default=str(Path(tempfile.gettempdir()) / "lipsync_short_footage"))
    ap.add_argument("--extra", type=float, default=0.3, help="added opening, face-scale units")
    ap.add_argument("--out", default=str(REPO / "docs/results/short_footage_sheet.png"))
    ap.add_argument("--reps", type=int, default=5, help="timing rounds")
    ap.add_argument("--size", type=int, default=256, help="render crop side (px)")
    args = ap.parse_args()

    clip = preprocess(args.video, args.clip_dir, progress=False)
    track = CropTrack.from_landmarks(clip.landmarks, (clip.meta.width, clip.meta.height), CropConfig(),
                                     valid=clip.valid)
    crops = np.stack([track.crop(f, i, args.size) for i, f in enumerate(media.iter_frames(clip.video_path))])
    pts = np.stack([track.to_crop(clip.landmarks[i], i, args.size) for i in range(len(crops))]).astype(np.float32)
    n_pool = int(round(POOL_SECONDS * clip.meta.fps))
    pool = RetrievalPool.from_crops(list(crops[:n_pool]), pts[:n_pool])
    query = np.arange(n_pool, len(crops))
    wide = open_wider(pts[query], args.extra)
    talk = layout.talking_vector(wide)

    off = RetrievalRenderer(pool, RetrievalConfig(fill_mouth=False))
    on = RetrievalRenderer(pool, RetrievalConfig(fill_mouth=True))
    picks = on.pick(pts[query], talk)
    assert (picks == off.pick(pts[query], talk)).all(), "the switch must not change the picks"
    want = opening_ratio(wide.astype(np.float64))
    have = opening_ratio(pool.points[picks].astype(np.float64))
    strength = np.array([fill_strength(w, h, on.cfg) for w, h in zip(want, have)])

    def render(r: RetrievalRenderer, pred: np.ndarray, pk: np.ndarray) -> np.ndarray:
        return np.stack([r.render_frame(crops[i], pts[i], pred[n], int(pk[n])).image
                         for n, i in enumerate(query)])

    before, after = render(off, talk, picks), render(on, talk, picks)
    filled = strength > 0
    dark = {k: np.array([inner_stats(im, p) for im, p in zip(imgs, wide)]) for k, imgs in
            (("before", before), ("after", after))}  # (T, 2) mean luma, dark share

    # the clip's own (unopened) landmarks: what the switch changes there
    own = layout.talking_vector(pts[query])
    own_picks = on.pick(pts[query], own)
    changed = int((render(off, own, own_picks) != render(on, own, own_picks)).reshape(len(query), -1).any(1).sum())
    recon = {k: evaluate_clip(clip, size=args.size, test_every=1, template_shift=15,
                              cfg=RetrievalConfig(fill_mouth=k == "on"))["mouth_psnr"]
             for k in ("off", "on")}

    # per-frame time, switch off / on interleaved (the machine is shared: medians of the rounds)
    cases = {"opened": (talk, picks), "own": (own, own_picks)}
    wall = {(c, k): [] for c in cases for k in ("off", "on")}
    cpu = {(c, k): [] for c in cases for k in ("off", "on")}
    for _ in range(args.reps):
        for c, (pred, pk) in cases.items():
            for k, r in (("off", off), ("on", on)):
                t0, c0 = time.perf_counter(), time.process_time()
                render(r, pred, pk)
                wall[c, k].append((time.perf_counter() - t0) / len(query))
                cpu[c, k].append((time.process_time() - c0) / len(query))

    print(f"pool: frames 0-{n_pool - 1} ({len(pool)}), widest opening {opening_ratio(pool.points).max():.3f}; "
          f"query frames {query[0]}-{query[-1]} opened +{args.extra}: wanted {want.min():.3f}-{want.max():.3f}")
    print(f"frames filled: {filled.sum()} / {len(query)} (full strength: {(strength >= 1).sum()})")
    for k, v in dark.items():
        print(f"inside the predicted inner lips, filled frames, {k}: mean luma {v[filled, 0].mean():.1f}, "
              f"share of pixels with luma < {DARK} {v[filled, 1].mean():.3f}")
    for c, k in wall:
        print(f"render ms/frame, {c} landmarks, fill {k}: CPU median {1000 * np.median(cpu[c, k]):.2f} "
              f"(min {1000 * min(cpu[c, k]):.2f}), wall median {1000 * np.median(wall[c, k]):.2f}")
    print(f"own landmarks (frames {query[0]}-{query[-1]}): {changed} / {len(query)} frames differ with the fill on")
    print(f"own-clip reconstruction (whole clip as pool, +-5 excluded, template i-15): mouth PSNR "
          f"off {recon['off']:.2f} dB, on {recon['on']:.2f} dB")

    # contact sheet: 6 filled frames spread over the query, rows before / after
    cand = np.nonzero(filled)[0]
    cols = cand[np.round(np.linspace(0, len(cand) - 1, 6)).astype(int)] if len(cand) else np.arange(6)
    left, head = 64, 18
    sheet = np.full((head + 2 * TILE, left + len(cols) * TILE, 3), 255, np.uint8)
    for k, n in enumerate(cols):
        x = left + k * TILE
        sheet[head:head + TILE, x:x + TILE] = tile(before[n], wide[n])
        sheet[head + TILE:, x:x + TILE] = tile(after[n], wide[n])
        cv2.putText(sheet, f"f{query[n]} open {want[n]:.2f}", (x + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    for row, text in enumerate(("before", "after")):
        cv2.putText(sheet, text, (4, head + (2 * row + 1) * TILE // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(sheet, f"pool {opening_ratio(pool.points).max():.2f}", (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (90, 90, 90), 1, cv2.LINE_AA)
    cv2.imwrite(args.out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
