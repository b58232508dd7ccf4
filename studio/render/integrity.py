"""Does the dub show a whole face, the one it was asked to draw? Judged frame by frame.

    python -m studio integrity DUB.mp4 --asked LANDMARKS.csv --template TEMPLATE.mp4 [--sheet SHEET.png]

``LANDMARKS.csv`` is what ``python -m studio dub ... --landmarks-csv`` writes: per output frame its
template frame and the 68 points the renderer was asked to draw (``x0..y67``; the template's own
points ``tx0..ty67`` beside them). Two measures, each per frame:

- **landmark error**: 68 landmarks are re-detected on every dub frame by MediaPipe in image mode
  (each frame alone: no tracking, no temporal smoothing, unlike the project's preprocessing) and
  compared with the asked points, per region: jaw (iBUG 2-14), mouth (48-67), upper face (17-47),
  as the median point distance over the outer-eye distance (points 36-45). The only 68-point
  model whose weights work offline here is MediaPipe's, so the re-detector is not independent of
  the one that made the template's landmarks; the floor below measures how much it disagrees
  with itself.
- **outside change** (``outside``): the fraction of the face's area, OUTSIDE the template's face
  outline and the asked one (jaw contour closed over the brows, plus the lips; dilated by
  ``outline_margin`` px), where the dub differs from its template frame by more than
  ``change_threshold`` grey levels (3x3 box-blurred, largest channel). A dub may change nothing
  there (hair, background, the far side of a turned head). MediaPipe fits a face model, so it
  reads a face through a pasted wedge of hair or background that any viewer sees at once: on the
  earlier katie_hill one-step dub the jaw error stayed at 0.08 while 2.4 % of the face's area
  had been painted outside it, on every frame.

- **lip bend** (``bend``): the sharpest bend, in degrees, of the asked lower lip (outer 55-59,
  inner 65-67) at any of its points; the limit is the template's own points' p99 + ``bend_margin``.
  This one reads the asked points, not the picture, because the re-detector cannot see it:
  MediaPipe fits a smooth lip through a lower lip torn into a V (asked: a 100-degree bend at
  point 57 on the first katie_hill frames; re-detected on the dub: 25, the template's own 22),
  so the landmark error stayed at 0.04 on frames any viewer sees as broken. The renderer draws
  what it is asked, so an impossible ask is an impossible picture.

A frame is **broken** when its jaw or mouth error exceeds ``broken_error`` (0.10), its outside
change exceeds ``broken_outside`` (0.5 %), its asked lip bends past the limit, or no face is
re-detected. The **floor** is the same
landmark measure on the template frames themselves against the template's own points (detector
disagreement); its outside change is 0 by construction. A dub passes when its broken fraction is
at most the floor's + ``max_broken_excess`` and its jaw p95 at most ``max_jaw_ratio`` x the
floor's (the targets of issue 21).

The contact sheet shows the worst frames by this measure and a few at random: for each, the
template frame and the dub frame cut around the face, the asked points (orange) and the
re-detected ones (cyan) drawn on the dub, and the frame's errors. The command prints a table on
stderr and one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from studio import media
from studio.errors import InputError, NoFaceError
from studio.face import layout

log = logging.getLogger(__name__)

REGIONS: dict[str, tuple[int, ...]] = {"jaw": tuple(range(2, 15)), "mouth": layout.MOUTH,
                                       "upper": tuple(range(17, 48))}


@dataclass(frozen=True)
class IntegrityConfig:
    broken_error: float = 0.10  # jaw or mouth median error / outer-eye distance above which a frame is broken
    broken_outside: float = 0.005  # fraction of the face's area changed outside the face outline
    change_threshold: float = 24.0  # grey levels: a pixel "changed" (re-encoding moves far less)
    outline_margin: float = 3.0  # px the face outlines are dilated by before "outside" starts
    max_broken_excess: float = 0.01  # pass: broken fraction <= floor + this
    max_jaw_ratio: float = 1.15  # pass: jaw p95 <= this x the floor's
    bend_margin: float = 20.0  # degrees an asked lip may bend past the template's sharpest (p99)
    worst: int = 8  # contact sheet: worst frames
    random: int = 4  # ... and frames at random
    tile: int = 224  # px of one picture in the sheet
    seed: int = 0

    def __post_init__(self) -> None:
        if self.broken_error <= 0 or self.broken_outside <= 0 or self.change_threshold <= 0:
            raise ValueError("thresholds must be positive")


# -- inputs ------------------------------------------------------------------------------------

def points_columns(prefix: str = "") -> list[str]:
    return [f"{prefix}{a}{i}" for i in range(68) for a in "xy"]


@dataclass(frozen=True, eq=False)
class Asked:
    """What a dub was asked to draw. T output frames.

    template_frame (T,) int; points (T, 68, 2) frame px; template (T, 68, 2) the template's own
    points, or None when the CSV does not have them (older files)."""

    template_frame: np.ndarray
    points: np.ndarray
    template: np.ndarray | None


def read_asked(path: str | os.PathLike[str]) -> Asked:
    """Read a ``dub --landmarks-csv`` file; InputError when it is missing or not such a file."""
    import pandas as pd

    p = Path(path)
    hint = "Write it with `python -m studio dub ... --landmarks-csv LANDMARKS.csv` (or the studio's CSV download)."
    if not p.is_file():
        raise InputError(f"The landmarks file {p} does not exist.", hint)
    try:
        df = pd.read_csv(p)
    except Exception as exc:  # parser errors, encodings, empty files: the same to the user
        raise InputError(f"{p.name} is not a readable CSV file ({exc}).", hint) from None
    missing = [c for c in ["template_frame"] + points_columns() if c not in df.columns]
    if missing:
        raise InputError(f"{p.name} lacks the columns {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}.", hint)
    if len(df) == 0:
        raise InputError(f"{p.name} has no frames.", hint)
    pts = df[points_columns()].to_numpy(np.float64).reshape(len(df), 68, 2)
    if not np.isfinite(pts).all():
        raise InputError(f"{p.name} has missing or non-numeric landmark values.", hint)
    tpl = None
    if all(c in df.columns for c in points_columns("t")):
        tpl = df[points_columns("t")].to_numpy(np.float64).reshape(len(df), 68, 2)
    return Asked(df["template_frame"].to_numpy(np.int64), pts, tpl)


# -- measures (pure) -------------------------------------------------------------------------------

def region_errors(found: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """found, ref (T, 68, 2) px (found NaN where no face) -> {region: (T,)} median point distance
    over the outer-eye distance of ``ref`` (NaN where no face)."""
    ref = np.asarray(ref, np.float64)
    eyes = np.maximum(np.linalg.norm(ref[:, 36] - ref[:, 45], axis=-1), 1e-6)
    d = np.linalg.norm(np.asarray(found, np.float64) - ref, axis=-1) / eyes[:, None]
    return {name: np.median(d[:, list(idx)], axis=1) for name, idx in REGIONS.items()}


def _outline_fill(points: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    from studio.render.compose import OUTER_LIP, face_outline

    m = np.zeros(shape, np.uint8)
    for pts in points:
        cv2.fillPoly(m, [np.round(face_outline(pts) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
        lips = cv2.convexHull(np.asarray(pts, np.float32)[list(OUTER_LIP)]).reshape(-1, 2)
        cv2.fillConvexPoly(m, np.round(lips * 16).astype(np.int32), 255, cv2.LINE_8, 4)
    return m


def outside_change(dub: np.ndarray, template: np.ndarray, faces: Sequence[np.ndarray],
                   cfg: IntegrityConfig = IntegrityConfig()) -> float:
    """dub, template (H, W, 3) uint8 frames; faces: (68, 2) px point sets whose outlines may
    change (the template's and the asked). -> changed area outside them / the face's area."""
    inside = _outline_fill(faces, dub.shape[:2])
    area = max(int((inside > 0).sum()), 1)
    k = int(2 * round(cfg.outline_margin) + 1)
    grown = cv2.dilate(inside, np.ones((k, k), np.uint8)) if k > 1 else inside
    diff = np.abs(dub.astype(np.int16) - template.astype(np.int16)).max(axis=2).astype(np.uint8)
    diff = cv2.blur(diff, (3, 3))
    return float(((diff > cfg.change_threshold) & (grown == 0)).sum() / area)


LOWER_LIP_BENDS = ((54, 55, 56), (55, 56, 57), (56, 57, 58), (57, 58, 59), (58, 59, 48), (65, 66, 67))


def lip_bend(points: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) degrees: the largest turn of the lower lip's outline at one of its
    points (0: straight on; a lip torn into a V turns by 90 or more at its centre)."""
    p = np.asarray(points, np.float64)
    turns = []
    for a, b, c in LOWER_LIP_BENDS:
        u, v = p[:, b] - p[:, a], p[:, c] - p[:, b]
        turns.append(np.abs(np.degrees(np.arctan2(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0], (u * v).sum(1)))))
    return np.max(turns, axis=0)


def summarize(errors: dict[str, np.ndarray], outside: np.ndarray | None, cfg: IntegrityConfig,
              bend: np.ndarray | None = None, bend_limit: float | None = None) -> dict[str, Any]:
    """Per-region median / p95 (over frames with a face), broken fraction and its causes."""
    found = np.isfinite(errors["jaw"])
    out: dict[str, Any] = {"frames": int(len(found)), "no_face": int((~found).sum())}
    for name, e in errors.items():
        v = e[found]
        out[name] = {"median": float(np.median(v)) if v.size else float("nan"),
                     "p95": float(np.percentile(v, 95)) if v.size else float("nan")}
    bad_lm = ~found | (np.nan_to_num(errors["jaw"], nan=9) > cfg.broken_error) | \
        (np.nan_to_num(errors["mouth"], nan=9) > cfg.broken_error)
    bad = bad_lm.copy()
    if bend is not None and bend_limit is not None:
        over = bend > bend_limit
        bad |= over
        out["bend"] = {"p95": float(np.percentile(bend, 95)), "max": float(bend.max()), "limit": float(bend_limit),
                       "frames_over": float(over.mean())}
    if outside is not None:
        bad |= outside > cfg.broken_outside
        out["outside"] = {"mean": float(outside.mean()), "max": float(outside.max()),
                          "frames_over": float((outside > cfg.broken_outside).mean())}
    out["broken"] = float(bad.mean())
    out["broken_landmarks"] = float(bad_lm.mean())
    out["broken_frames"] = np.flatnonzero(bad).tolist()
    return out


def frame_score(errors: dict[str, np.ndarray], outside: np.ndarray | None, cfg: IntegrityConfig,
                bend: np.ndarray | None = None, bend_limit: float | None = None) -> np.ndarray:
    """(T,) badness of each frame in units of its thresholds (> 1: broken); no face: 10."""
    s = np.maximum(errors["jaw"], errors["mouth"]) / cfg.broken_error
    if outside is not None:
        s = np.maximum(s, outside / cfg.broken_outside)
    if bend is not None and bend_limit is not None:
        s = np.maximum(s, bend / bend_limit)
    return np.where(np.isfinite(s), s, 10.0)


def verdict(dub: dict[str, Any], floor: dict[str, Any] | None, cfg: IntegrityConfig) -> dict[str, Any]:
    """Pass / fail against the floor (or against zero broken frames with no floor)."""
    base_broken = floor["broken"] if floor else 0.0
    ok_broken = dub["broken"] <= base_broken + cfg.max_broken_excess + 1e-12
    out = {"broken_limit": base_broken + cfg.max_broken_excess, "broken_ok": bool(ok_broken)}
    if floor:
        limit = cfg.max_jaw_ratio * floor["jaw"]["p95"]
        out |= {"jaw_p95_limit": limit, "jaw_ok": bool(dub["jaw"]["p95"] <= limit + 1e-12)}
    out["passed"] = bool(ok_broken and out.get("jaw_ok", True))
    return out


# -- re-detection and the sheet --------------------------------------------------------------------

def redetect(frames: Iterable[np.ndarray]) -> np.ndarray:
    """(T, 68, 2) float64 px: MediaPipe landmarks of each frame on its own (NaN: no face)."""
    from studio.face.landmarks import make_backend

    out = []
    with make_backend("mediapipe") as backend:
        for f in frames:
            d = backend.detect(f)
            out.append(np.full((68, 2), np.nan) if d is None else d.landmarks.astype(np.float64))
    if not out:
        raise InputError("The video has no frames.", "Check that the file is a playable video.")
    return np.stack(out)


def _tile(frame: np.ndarray, centre: np.ndarray, half: float, size: int,
          marks: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = ()) -> np.ndarray:
    img = frame.copy()
    r = max(1, int(round(half / 90)))
    for pts, colour in marks:
        for q in np.asarray(pts)[list(REGIONS["jaw"]) + list(layout.MOUTH)]:
            if np.isfinite(q).all():
                cv2.circle(img, (int(round(q[0])), int(round(q[1]))), r, colour, -1, cv2.LINE_AA)
    k = size / (2 * half)
    m = np.array([[k, 0, size / 2 - k * centre[0]], [0, k, size / 2 - k * centre[1]]])
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def contact_sheet(path: str | os.PathLike[str], dub: Sequence[np.ndarray], template: Sequence[np.ndarray],
                  asked: Asked, found: np.ndarray, score: np.ndarray, errors: dict[str, np.ndarray],
                  outside: np.ndarray | None, cfg: IntegrityConfig = IntegrityConfig(),
                  bend: np.ndarray | None = None) -> list[int]:
    """Write the sheet (PNG or JPEG by suffix): rows of (template, dub, dub + points) for the
    ``worst`` frames by ``score`` then ``random`` others. Returns the frames shown, in order."""
    order = [int(i) for i in np.argsort(-score, kind="stable")[:cfg.worst]]
    rest = [i for i in range(len(score)) if i not in order]
    rng = np.random.default_rng(cfg.seed)
    order += sorted(int(i) for i in rng.choice(rest, size=min(cfg.random, len(rest)), replace=False))
    rows = []
    for i in order:
        a = asked.points[i]
        centre = a[list(layout.MOUTH) + list(REGIONS["jaw"])].mean(0)
        half = 1.6 * float(np.linalg.norm(a[36] - a[45]))
        tpl = template[i] if i < len(template) else np.zeros_like(dub[i])
        row = np.concatenate([_tile(tpl, centre, half, cfg.tile), _tile(dub[i], centre, half, cfg.tile),
                              _tile(dub[i], centre, half, cfg.tile, [(a, (255, 140, 0)), (found[i], (0, 230, 255))])], 1)
        text = f"{i}: jaw {errors['jaw'][i]:.2f} mouth {errors['mouth'][i]:.2f}"
        if outside is not None:
            text += f" out {100 * outside[i]:.1f}%"
        if bend is not None:
            text += f" lip {bend[i]:.0f}deg"
        cv2.rectangle(row, (0, 0), (row.shape[1], 22), (0, 0, 0), -1)
        cv2.putText(row, text + ("  BROKEN" if score[i] > 1 else ""), (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 80, 80) if score[i] > 1 else (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    sheet = np.concatenate(rows, 0)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(p), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise InputError(f"Could not write the contact sheet {p}.", "Use a .png or .jpg path in a writable folder.")
    return order


# -- the whole check ---------------------------------------------------------------------------

def _template_points(asked: Asked, template_video: Path | None, work_dir: Path | None) -> np.ndarray | None:
    if asked.template is not None:
        return asked.template
    if template_video is None:
        return None
    from studio.data.preprocess import preprocess
    from studio.fsutil import sha256_file

    from studio.sync import default_work_dir

    work = work_dir or default_work_dir()
    clip = preprocess(template_video, Path(work) / f"{sha256_file(template_video)[:16]}-mediapipe-all", progress=False)
    if asked.template_frame.max() >= clip.meta.frames:
        raise InputError(f"The landmarks ask for template frame {int(asked.template_frame.max())}, the template "
                         f"has {clip.meta.frames}.", "Pass the template the dub was made from.")
    return clip.landmarks[asked.template_frame].astype(np.float64)


def integrity_check(dub_video: str | os.PathLike[str], asked_csv: str | os.PathLike[str], *,
                    template_video: str | os.PathLike[str] | None = None, sheet: str | os.PathLike[str] | None = None,
                    work_dir: str | os.PathLike[str] | None = None,
                    cfg: IntegrityConfig = IntegrityConfig()) -> dict[str, Any]:
    """Score a dub (see the module docstring). Returns ``{"dub": {...}, "floor": {...} | None,
    "verdict": {...}, "sheet": path | None, ...}``; the dub row has per-region ``median`` / ``p95``,
    ``broken`` (fraction), ``broken_frames``, ``no_face`` and, with a template, ``outside``."""
    asked = read_asked(asked_csv)
    dub_path = Path(dub_video)
    info = media.probe_video(dub_path)
    n = min(info.frames, len(asked.points))
    if info.frames < len(asked.points) - 1 or len(asked.points) < info.frames - 1:
        raise InputError(f"The dub has {info.frames} frames, {Path(asked_csv).name} {len(asked.points)}.",
                         "Pass the landmarks CSV written by the same dub.")
    dub = list(media.iter_frames(dub_path, 0, n))
    asked = Asked(asked.template_frame[:n], asked.points[:n], None if asked.template is None else asked.template[:n])
    tpl_frames: list[np.ndarray] = []
    if template_video is not None:
        tpath = Path(template_video)
        tinfo = media.probe_video(tpath)
        if (tinfo.width, tinfo.height) != (info.width, info.height):
            raise InputError(f"The template is {tinfo.width}x{tinfo.height}, the dub {info.width}x{info.height}.",
                             "Pass the template video the dub was made from.")
        if asked.template_frame.max() >= tinfo.frames:
            raise InputError(f"The landmarks ask for template frame {int(asked.template_frame.max())}, the template "
                             f"has {tinfo.frames}.", "Pass the template the dub was made from.")
        allf = list(media.iter_frames(tpath))
        tpl_frames = [allf[int(k)] for k in asked.template_frame]
    found = redetect(dub)
    if not np.isfinite(found).any():
        raise NoFaceError(f"No face was re-detected in any frame of {dub_path.name}.",
                          "Check that the file is the dub (a visible face), not another video.")
    errors = region_errors(found, asked.points)
    outside = None
    tpl_pts = _template_points(asked, Path(template_video) if template_video else None,
                               Path(work_dir) if work_dir else None) if tpl_frames else asked.template
    if tpl_frames:
        # the face that may change is the template's (from the CSV, else tracked on the template) and the asked
        faces = list(tpl_pts[:n]) if tpl_pts is not None else list(asked.points[:n])
        outside = np.array([outside_change(d, t, [tp, a], cfg) for d, t, tp, a in
                            zip(dub, tpl_frames, faces, asked.points)])
    bend, bend_limit = lip_bend(asked.points), None
    if tpl_pts is not None:
        bend_limit = float(np.percentile(lip_bend(tpl_pts[:n]), 99)) + cfg.bend_margin
    result: dict[str, Any] = {"dub": summarize(errors, outside, cfg, bend, bend_limit), "floor": None}
    if tpl_frames and tpl_pts is not None:
        floor_found = redetect(tpl_frames)
        result["floor"] = summarize(region_errors(floor_found, tpl_pts), np.zeros(n), cfg)
    result["verdict"] = verdict(result["dub"], result["floor"], cfg)
    result["sheet"] = None
    if sheet is not None:
        score = frame_score(errors, outside, cfg, bend, bend_limit)
        shown = contact_sheet(sheet, dub, tpl_frames or dub, asked, found, score, errors, outside, cfg, bend)
        result["sheet"] = str(sheet)
        result["sheet_frames"] = shown
    result |= {"dub_video": str(dub_path), "asked": str(asked_csv),
               "template_video": str(template_video) if template_video else None, "config": asdict(cfg)}
    return result


def table(result: dict[str, Any]) -> str:
    rows = [("dub", result["dub"]), ("floor (template)", result["floor"])]
    lines = ["| video | broken | jaw median / p95 | mouth median / p95 | upper p95 | outside mean / frames over "
             "| asked lip bend max / limit |", "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        if r is None:
            continue
        o = r.get("outside")
        lines.append(f"| {name} | {100 * r['broken']:.1f} % | {r['jaw']['median']:.3f} / {r['jaw']['p95']:.3f} | "
                     f"{r['mouth']['median']:.3f} / {r['mouth']['p95']:.3f} | {r['upper']['p95']:.3f} | "
                     + (f"{100 * o['mean']:.2f} % / {100 * o['frames_over']:.1f} % |" if o else "n/a |")
                     + (f" {r['bend']['max']:.0f} / {r['bend']['limit']:.0f} deg |" if r.get("bend") else " n/a |"))
    v = result["verdict"]
    lines.append(f"\npassed: {'yes' if v['passed'] else 'NO'} (broken <= {100 * v['broken_limit']:.1f} %"
                 + (f", jaw p95 <= {v['jaw_p95_limit']:.3f})" if "jaw_p95_limit" in v else ")"))
    return "\n".join(lines)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Check a dub frame by frame: re-detect its landmarks and compare them with what it was "
                          "asked to draw (jaw, mouth, upper face), find pixels changed outside the face, and score "
                          "the template the same way as the floor. Prints a table on stderr and one JSON object "
                          "on the last line of stdout.")
    parser.add_argument("dub", help="the rendered dub (mp4)")
    parser.add_argument("--asked", required=True, help="the dub's landmarks CSV (dub --landmarks-csv)")
    parser.add_argument("--template", default=None, help="the template video the dub was made from (floor and "
                        "outside-the-face check)")
    parser.add_argument("--sheet", default=None, help="write a contact sheet of the worst frames (.png or .jpg)")
    parser.add_argument("--work-dir", default=None, help="cache for the template's landmarks")


def cli(args: argparse.Namespace) -> int:
    from studio.fsutil import json_safe

    result = integrity_check(args.dub, args.asked, template_video=args.template, sheet=args.sheet,
                             work_dir=args.work_dir)
    print(table(result), file=sys.stderr)
    print(json.dumps(json_safe(result)))
    return 0 if result["verdict"]["passed"] else 1
