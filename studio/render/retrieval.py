"""The training-free retrieval renderer: real mouths from the subject's own footage.

For every output frame it picks the pool frame (a face crop of the subject's footage) whose
mouth and jaw shape best matches the predicted talking points, warps that frame's lower face onto
the predicted landmarks and blends it into the template crop. No training; CPU real time.

1. Shape features (:func:`shape_features`): the 68 points are taken relative to the nose centre,
   rotated so the eye line is horizontal (head roll removed: the warp restores it), divided by
   the face scale. Mouth: the 13 mouth-PCA coefficients divided by std_k ** ``whiten`` (std
   floored at ``STD_FLOOR`` x the largest, so near-constant components cannot amplify landmark
   jitter) and scaled to total spread 1; jaw: the 9 jaw points divided by the pool's jaw spread,
   times ``jaw_weight``. On the Obama clips half-whitening (0.5) beat plain coefficients (0) and
   full whitening (1) by 0.2-0.5 dB mouth PSNR.
2. Picks (:func:`candidate_sets`, :func:`viterbi_picks`): the ``candidates`` nearest pool
   frames per output frame plus the successors of the previous frame's candidates; a Viterbi
   path minimises squared feature distance + ``jump_cost`` x the median nearest-neighbour
   distance for every pick that does not continue the previous one (the next frame of the same
   source; the same frame again costs half), so picks run along real footage instead of
   flickering between look-alikes (Obama clips: ~5 jumps/s instead of ~26, mouth PSNR equal).
3. Warp (:func:`piecewise_affine_maps`): a Delaunay triangulation of the destination's mouth,
   jaw, lower-nose and cheek points plus a ring of 16 boundary points (mapped by a similarity
   fitted on the stable points) gives one affine per triangle; a triangle-id raster over the
   bounding box turns them into per-pixel maps for a single ``cv2.remap``.
4. Blend: mask = union of the template's and the prediction's lower-face hulls (jaw 2-14,
   lower nose, mouth), dilated by ``mask_dilation`` and feathered by ``feather`` (px at 256,
   scaled with the crop). Colour: Lab mean (and lightness std) matched over the mask's skin (mask
   minus the mouths). Optional ``seamless`` uses cv2.seamlessClone (Poisson) instead, at a large speed cost.
5. Mouth interior (:func:`fill_strength`, :func:`mouth_donor`, :func:`mouth_interior`): short
   footage may never open as wide as the speech needs; the warp then stretches the picked frame's
   closed lips (or its thin slit, or its teeth) over the whole predicted inner-lip area. When the
   predicted inner-lip opening exceeds the picked frame's by more than ``fill_margin`` face-scale
   units, that area gets the interior of the pool's most open mouth instead, its halves hung
   from the predicted lips at their own size (teeth stay teeth-sized) with its shadow colour in
   between, faded in over ``fill_ramp`` and feathered, before the colour match (a pool that never
   opens: darkened lips). Otherwise nothing changes, bit for bit.

The pool is a folder: ``pool.json`` (config, sizes), ``pool.npz`` (points, patch offsets,
sources, JPEG bytes of the lower-face patches; loaded with ``allow_pickle=False``), ``pca/``
(the MouthPCA). Features are recomputed on load (milliseconds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from studio.errors import CheckpointError, InputError
from studio.face import layout
from studio.face.normalize import face_scale, nose_centre
from studio.fsutil import atomic_path
from studio.render.compose import feathered_mask, outline_mask, visible_face_mask
from studio.render import REFERENCE_SIZE, RESAMPLE
from studio.render.base import FrameInputs, Rendered

log = logging.getLogger(__name__)

POOL_FORMAT = "lip-sync-studio/retrieval-pool"
POOL_JSON = "pool.json"  # written last: a pool folder is complete when it is there
POOL_VERSION = 1

# Destination control points of the warp besides the 29 talking points.
LOWER_NOSE = layout.NOSE_LOWER  # 31-35
SIDE_CHEEK = (2, 3, 13, 14)
CONTROL = layout.TALKING + SIDE_CHEEK + LOWER_NOSE  # 38 points
# Where a rising chin may be covered with the picked frame's neck (jaw points, iBUG).
CHIN_ZONE = tuple(range(5, 12))
# The region that is replaced (its hull, per face).
REGION = tuple(range(2, 15)) + LOWER_NOSE + layout.MOUTH
N_RING = 16
MAX_POOL_SIZE = 720
STD_FLOOR = 0.1  # whitening treats minor PCA components as having at least this x the largest std
PATCH_CACHE = 64  # decoded pool patches kept per renderer
# Mouth interior (face-scale units: inner-lip opening / face_scale; ~0.03 closed, ~0.45 wide open).
OPEN_MOUTH = 0.15  # a pool frame at least this open shows its interior (can donate it)
FALLBACK_DARKEN = 0.3  # no open mouth in the pool: the cavity centre is the lip colour x this
U_TABLE = 257  # samples of the lip curves along the mouth (per-pixel lookups instead of interp)


@dataclass(frozen=True)
class RetrievalConfig:
    min_pool_frames: int = 50  # fewer usable frames than this -> InputError (too little footage)
    candidates: int = 12  # nearest pool frames considered per output frame
    jaw_weight: float = 0.7  # weight of the jaw in the shape distance (mouth total = 1)
    pose_weight: float = 0.5  # weight of the head pose (yaw, pitch: PoseBasis) in the pick, so a
    # turned head gets mouths filmed at that turn, not frontal ones warped onto it
    opening_weight: float = 0.5  # weight of the inner-lip opening (over the pool's spread), so the
    # pick opens as far as the prediction and the warp need not stretch or squeeze a mouth. 2.0
    # raised the re-detected opening's r with the asked one (0.86 -> 0.88 on three 5 s dubs) but
    # lowered the one-step Obama dub's r with the real mouth (0.42 -> 0.38): mouths matched on
    # opening alone, not on their shape
    whiten: float = 0.5  # mouth PCA coefficient k is divided by std_k ** whiten (1 = whitened)
    jump_cost: float = 3.0  # Viterbi cost of a pick that does not continue the previous one, in
    # units of the sequence's median nearest-neighbour distance (so it is independent of the
    # feature scale)
    mask_dilation: float = 8.0  # px at 256
    feather: float = 4.0  # Gaussian sigma of the mask edge, px at 256
    colour_match: bool = True
    clip_to_face: bool = True  # cut the mask to the face outline (studio.render.compose.visible_face_mask)
    seamless: bool = False  # Poisson blending (cv2.seamlessClone): slower
    jpeg_quality: int = 93  # pool patches
    fill_mouth: bool = True  # give a mouth interior to predictions that open wider than the pick
    fill_margin: float = 0.08  # face-scale units the predicted inner-lip opening may exceed the
    # picked frame's before anything is filled (up to it the output is exactly the plain warp)
    fill_ramp: float = 0.1  # face-scale units over which the fill fades in to full

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError("candidates must be >= 1")
        if self.min_pool_frames < 1:
            raise ValueError("min_pool_frames must be >= 1")
        if self.fill_margin < 0 or self.fill_ramp <= 0:
            raise ValueError("fill_margin must be >= 0 and fill_ramp > 0")


# ---------------------------------------------------------------------------------------------
# shape features


def _deroll(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) px -> (..., 68, 2): nose-centred, eye line horizontal, / face scale."""
    p = np.asarray(points, np.float64)
    across = p[..., layout.EYE_LEFT, :].mean(-2) - p[..., layout.EYE_RIGHT, :].mean(-2)
    ang = np.arctan2(across[..., 1], across[..., 0])
    c, s = np.cos(-ang), np.sin(-ang)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (..., 2, 2)
    q = (p - nose_centre(p)[..., None, :]) / face_scale(p)[..., None, None]
    return np.einsum("...ij,...nj->...ni", rot, q)


def shape_features(points: np.ndarray, pca, jaw_scale: float, jaw_weight: float, whiten: float = 0.5) -> np.ndarray:
    """(..., 68, 2) px (talking points already the wanted ones) -> (..., 13 + 18) float32.

    ``pca``: a fitted :class:`studio.face.pca.MouthPCA`; ``jaw_scale``: the spread of the
    normalized jaw points over the pool (see :meth:`RetrievalPool.jaw_scale`).
    """
    n = _deroll(points)
    std = pca.coef_std.astype(np.float64)
    w = np.maximum(std, STD_FLOOR * std.max()) ** -whiten
    mouth = pca.transform(layout.mouth_vector(n).astype(np.float32)) * w / np.sqrt(((std * w) ** 2).sum())
    jaw = n[..., layout.JAW, :].reshape(*n.shape[:-2], 2 * layout.N_JAW)
    return np.concatenate([mouth, jaw_weight * jaw / jaw_scale], axis=-1).astype(np.float32)


class PoseBasis(NamedTuple):
    """Head pose as the pool sees it: the main modes of the stable points' layout (brows, nose,
    eyes; derolled and scaled as in :func:`shape_features`), which over one person's footage are
    yaw, pitch and their mix. mean (2 * 27,), basis (K, 2 * 27) rows scaled so that the pool's
    features have total spread 1."""

    mean: np.ndarray
    basis: np.ndarray


def fit_pose_basis(points: np.ndarray, k: int = 3) -> PoseBasis:
    """(N, 68, 2) px of the pool -> its :class:`PoseBasis` (the top ``k`` principal axes)."""
    x = _deroll(points)[:, list(layout.STABLE), :].reshape(len(points), -1)
    mean = x.mean(0)
    _, sig, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(k, len(sig))
    spread = np.sqrt((sig[:k] ** 2).sum() / max(len(x), 1)) + 1e-9
    return PoseBasis(mean, vt[:k] / spread)


def pose_features(points: np.ndarray, basis: PoseBasis) -> np.ndarray:
    """(..., 68, 2) px -> (..., K) float32: the head pose coordinates of :func:`fit_pose_basis`.
    Only the stable points count, so a wanted face has its template frame's pose."""
    n = _deroll(points)
    x = n[..., list(layout.STABLE), :].reshape(*n.shape[:-2], -1)
    return ((x - basis.mean) @ basis.basis.T).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the pool


def _encode_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "JPEG encoding failed"
    return buf.reshape(-1)


def _patch_box(points: np.ndarray, size: int, margin: float) -> tuple[int, int, int, int]:
    """Integer x0, y0, x1, y1 around a face's replaced region + margin, clipped to the crop."""
    pts = points[list(CONTROL)]
    x0, y0 = np.floor(pts.min(0) - margin).astype(int)
    x1, y1 = np.ceil(pts.max(0) + margin).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


def _ring_margin(cfg: RetrievalConfig, size: int) -> float:
    """Distance of the warp's outer ring from the control points (px): beyond the feathered mask."""
    return (cfg.mask_dilation + 3.5 * cfg.feather) * size / REFERENCE_SIZE + 4.0


@dataclass(frozen=True, eq=False)
class RetrievalPool:
    """Lower-face patches of one subject's footage. N = pool frames, S = crop size.

    points   (N, 68, 2) float32 crop px
    offsets  (N, 2) int32: the patch's top-left corner in the crop (x0, y0)
    sources  (N, 2) int32: (source clip number, frame index) of each pool frame
    jpeg     (B,) uint8 all patches' JPEG bytes; jpeg_index (N + 1,) int64 their boundaries
    pca      the MouthPCA used for the features; jaw_scale float
    """

    size: int
    points: np.ndarray
    offsets: np.ndarray
    sources: np.ndarray
    jpeg: np.ndarray
    jpeg_index: np.ndarray
    pca: object
    jaw_scale: float
    cfg: RetrievalConfig = RetrievalConfig()

    def __len__(self) -> int:
        return len(self.points)

    def features(self, cfg: RetrievalConfig | None = None) -> np.ndarray:
        """(N, 31) shape features of the pool frames."""
        c = cfg or self.cfg
        return shape_features(self.points, self.pca, self.jaw_scale, c.jaw_weight, c.whiten)

    def patch(self, j: int) -> np.ndarray:
        """Pool frame j's lower-face patch, (h, w, 3) uint8 RGB, top-left at ``offsets[j]``."""
        buf = self.jpeg[self.jpeg_index[j]:self.jpeg_index[j + 1]]
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def successor(self) -> np.ndarray:
        """(N,) int64: index of the pool frame that follows j in its source, or -1."""
        nxt = np.full(len(self), -1, np.int64)
        same = (self.sources[1:, 0] == self.sources[:-1, 0]) & (self.sources[1:, 1] == self.sources[:-1, 1] + 1)
        nxt[:-1][same] = np.arange(1, len(self))[same]
        return nxt

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_crops(cls, crops: Iterable[np.ndarray], points: np.ndarray, *, pca=None,
                   sources: np.ndarray | None = None, cfg: RetrievalConfig = RetrievalConfig(),
                   progress: Callable[[int], None] | None = None) -> "RetrievalPool":
        """Build from face crops. crops: N arrays (S, S, 3) uint8; points (N, 68, 2) crop px;
        sources (N, 2) (clip number, frame index), default one clip 0..N-1; pca: a MouthPCA, or
        None to fit one on these frames."""
        pts = np.asarray(points, np.float32)
        _check_enough(len(pts), cfg)
        return cls._assemble(zip(crops, pts), sources, pca, cfg, progress)

    @classmethod
    def build(cls, clips, pca=None, size: int | None = None, cfg: RetrievalConfig = RetrievalConfig(),
              crop_cfg=None, stride: int = 1, max_frames: int | None = None,
              progress: Callable[[int], None] | None = None,
              detect: Callable[[np.ndarray], np.ndarray | None] | None = None) -> "RetrievalPool":
        """Build from preprocessed clip(s) (studio.data.clip.Clip): every ``stride``-th frame with
        a detected face, cropped at ``size`` with the same crop rule as the templates. Frames are
        streamed; only the JPEG-coded lower-face patches are kept.

        detect: frame (H, W, 3) RGB -> (68, 2) frame px or None, a per-frame detector whose points
        replace the clip's tracked ones (:func:`frame_points`): a pool frame is shown out of its
        time, so its points must describe its own picture, not a track's memory of the frames
        before it. None keeps the clip's points.

        size None: the footage's native face size (median crop side in source pixels, rounded up
        to a multiple of 16, at most 720): upsampling beyond it adds bytes, not detail; the warp
        renders into crops of any size."""
        from studio import media
        from studio.render.crop import CropConfig, CropTrack

        clips = [clips] if not isinstance(clips, (list, tuple)) else list(clips)
        crop_cfg = crop_cfg or CropConfig()
        if size is None:
            sides = np.concatenate([CropTrack.from_landmarks(c.landmarks, (c.meta.width, c.meta.height),
                                                             crop_cfg, valid=c.valid).sides for c in clips])
            size = int(min(MAX_POOL_SIZE, 16 * np.ceil(np.median(sides) / 16)))
        plan = [(c, int(i)) for c, clip in enumerate(clips) for i in np.nonzero(clip.found)[0][::stride]]
        plan = plan[:max_frames] if max_frames is not None else plan
        _check_enough(len(plan), cfg)

        def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for c, clip in enumerate(clips):
                wanted = {i for cc, i in plan if cc == c}
                if not wanted:
                    continue
                track = CropTrack.from_landmarks(clip.landmarks, (clip.meta.width, clip.meta.height),
                                                 crop_cfg, valid=clip.valid)
                for i, frame in enumerate(media.iter_frames(clip.video_path, 0, max(wanted) + 1)):
                    if i in wanted:
                        pts = clip.landmarks[i] if detect is None else frame_points(clip.landmarks[i], detect(frame))
                        yield track.crop(frame, i, size), track.to_crop(pts, i, size)

        pool = cls._assemble(pairs(), np.asarray(plan), pca, cfg, progress)
        if len(pool) != len(plan):
            raise InputError(f"Only {len(pool)} of {len(plan)} frames could be decoded for the pool.",
                             "Check the clip's video file (re-encode it or preprocess it again).")
        return pool

    @classmethod
    def build_folder(cls, clip_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                     pca_dir: str | os.PathLike[str] | None = None, size: int | None = None,
                     cfg: RetrievalConfig = RetrievalConfig(), progress: Callable[[int], None] | None = None
                     ) -> "RetrievalPool":
        """Load clip folders, build the pool and save it to ``out_dir``. pca_dir: a folder with a
        saved MouthPCA (e.g. a mapping checkpoint); None or unreadable: fit one on the pool."""
        from studio.data.clip import Clip
        from studio.face.pca import MouthPCA

        pca = None
        if pca_dir is not None:
            try:
                pca = MouthPCA.load(pca_dir)
            except CheckpointError as exc:
                log.warning("no usable mouth PCA in %s (%s); fitting one on the pool", pca_dir, exc.message)
        clips = [Clip.load(d) for d in clip_dirs]
        with _frame_detector(clips) as detect:
            pool = cls.build(clips, pca=pca, size=size, cfg=cfg, progress=progress, detect=detect)
        pool.save(out_dir)
        log.info("retrieval pool: %d frames at %d px -> %s (%.1f MB)", len(pool), pool.size, out_dir,
                 pool.jpeg.nbytes / 1e6)
        return pool

    @classmethod
    def _assemble(cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], sources: np.ndarray | None,
                  pca, cfg: RetrievalConfig, progress: Callable[[int], None] | None) -> "RetrievalPool":
        points, offsets, chunks, size = [], [], [], None
        for j, (crop, pts) in enumerate(pairs):
            size = crop.shape[0] if size is None else size
            assert crop.shape == (size, size, 3), f"crop {j} is {crop.shape}, expected ({size}, {size}, 3)"
            pts = np.asarray(pts, np.float32)
            x0, y0, x1, y1 = _patch_box(pts, size, 1.25 * _ring_margin(cfg, size) + 2)
            points.append(pts)
            offsets.append((x0, y0))
            chunks.append(_encode_jpeg(np.ascontiguousarray(crop[y0:y1, x0:x1]), cfg.jpeg_quality))
            if progress is not None:
                progress(j + 1)
        n = len(points)
        _check_enough(n, cfg)
        pts = np.stack(points)
        normed = _deroll(pts)
        if pca is None:
            from studio.face.pca import MouthPCA

            pca = MouthPCA.fit(layout.mouth_vector(normed).astype(np.float32))
        jaw = normed[:, layout.JAW, :]
        jaw_scale = float(np.sqrt(((jaw - jaw.mean(0)) ** 2).sum(-1).mean()) + 1e-6)
        index = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
        src = np.stack([np.zeros(n), np.arange(n)], 1) if sources is None else np.asarray(sources)[:n]
        return cls(int(size), pts, np.asarray(offsets, np.int32), src.astype(np.int32),
                   np.concatenate(chunks), index, pca, jaw_scale, cfg)

    # -- I/O -------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the pool folder atomically (pool.json, pool.npz, pca/)."""
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            np.savez(tmp / "pool.npz", points=self.points, offsets=self.offsets, sources=self.sources,
                     jpeg=self.jpeg, jpeg_index=self.jpeg_index)
            self.pca.save(tmp / "pca")
            meta = {"format": POOL_FORMAT, "version": POOL_VERSION, "size": self.size,
                    "frames": len(self), "jaw_scale": self.jaw_scale, "config": dataclasses.asdict(self.cfg)}
            (tmp / POOL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "RetrievalPool":
        """Read a pool folder; CheckpointError when missing, corrupt or of another version."""
        from studio.config import from_dict
        from studio.face.pca import MouthPCA

        directory = Path(directory)
        hint = f"Rebuild the subject's retrieval pool (python -m studio make-subject), or delete {directory}."
        try:
            meta = json.loads((directory / POOL_JSON).read_text())
            with np.load(directory / "pool.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError as exc:
            raise CheckpointError(f"Retrieval pool file missing: {exc.filename}.", hint) from None
        except Exception as exc:  # json / zip / pickle errors: the same to the user
            raise CheckpointError(f"Retrieval pool in {directory} is unreadable: {exc}.", hint) from None
        if not isinstance(meta, dict) or meta.get("format") != POOL_FORMAT or meta.get("version") != POOL_VERSION:
            raise CheckpointError(f"{directory} is not a retrieval pool of version {POOL_VERSION}.", hint)
        n = int(meta.get("frames", -1))
        shapes = {"points": (n, 68, 2), "offsets": (n, 2), "sources": (n, 2), "jpeg_index": (n + 1,)}
        for k, shape in shapes.items():
            if k not in arrays or arrays[k].shape != shape:
                raise CheckpointError(f"{directory}/pool.npz: {k} is missing or not of shape {shape}.", hint)
        if "jpeg" not in arrays or arrays["jpeg_index"][-1] != len(arrays["jpeg"]):
            raise CheckpointError(f"{directory}/pool.npz: the patch data is truncated.", hint)
        cfg = from_dict(RetrievalConfig, meta.get("config"), where=str(directory / POOL_JSON))
        return cls(int(meta["size"]), arrays["points"].astype(np.float32), arrays["offsets"],
                   arrays["sources"], arrays["jpeg"], arrays["jpeg_index"], MouthPCA.load(directory / "pca"),
                   float(meta["jaw_scale"]), cfg)


MAX_REDETECT_SHIFT = 0.15  # face scales: a per-frame detection further from the track is not trusted


def frame_points(tracked: np.ndarray, detected: np.ndarray | None) -> np.ndarray:
    """A pool frame's 68 points (frame px): the per-frame ``detected`` ones where they agree with
    the clip's ``tracked`` ones to within ``MAX_REDETECT_SHIFT`` face scales (median point
    distance), else ``tracked``.

    Measured on one-step dubs of katie_hill, theresa_may_5s and young_man_outdoors: with tracked
    points, the inner-lip opening re-detected on the rendered dub followed the opening asked for
    at r 0.75; with per-frame points at r 0.86. MediaPipe's video mode smooths over time, so a
    tracked mouth lags its picture by up to 0.1 face scales when it opens fast; a warp from those
    points puts the visible lips somewhere else than the landmarks it was asked to reach.
    """
    t = np.asarray(tracked, np.float32)
    if detected is None:
        return t
    d = np.asarray(detected, np.float32)
    shift = float(np.median(np.linalg.norm(d - t, axis=-1)))
    return d if shift <= MAX_REDETECT_SHIFT * float(face_scale(t)) else t


@contextlib.contextmanager
def _frame_detector(clips) -> Iterator[Callable[[np.ndarray], np.ndarray | None] | None]:
    """The per-frame detector of the clips' landmark backend (image mode), or None for clips
    whose landmarks are not detections (synthetic ground truth) or come from several backends."""
    from studio.face.landmarks import BACKENDS, make_backend

    names = {getattr(c.meta, "backend", None) for c in clips}
    name = names.pop() if len(names) == 1 else None
    if name not in BACKENDS:
        yield None
        return
    backend = make_backend(name)
    try:
        def detect(frame: np.ndarray) -> np.ndarray | None:
            found = backend.detect(frame)
            return None if found is None else found.landmarks

        yield detect
    finally:
        backend.close()


def _check_enough(n: int, cfg: RetrievalConfig) -> None:
    if n < cfg.min_pool_frames:
        raise InputError(
            f"Too little footage for the retrieval renderer: {n} usable frames, it needs at least "
            f"{cfg.min_pool_frames}.",
            "Add more footage of the subject (a few seconds of talking with the face visible).")


# ---------------------------------------------------------------------------------------------
# picking


def nearest_candidates(query: np.ndarray, pool: np.ndarray, k: int,
                       exclude: np.ndarray | None = None, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """k nearest pool rows per query row. query (T, F), pool (N, F); exclude (T, 2) int: pool
    index range [lo, hi) banned for each query row (or None). -> indices (T, k), sq. dists (T, k)."""
    t, n = len(query), len(pool)
    k = min(k, n)
    pn = (pool.astype(np.float64) ** 2).sum(1)
    idx = np.zeros((t, k), np.int64)
    dist = np.zeros((t, k))
    for a in range(0, t, chunk):
        q = query[a:a + chunk].astype(np.float64)
        d = (q ** 2).sum(1)[:, None] + pn[None] - 2 * q @ pool.T.astype(np.float64)
        if exclude is not None:
            cols = np.arange(n)[None]
            ex = exclude[a:a + chunk]
            d[(cols >= ex[:, :1]) & (cols < ex[:, 1:])] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        pd = np.take_along_axis(d, part, 1)
        order = np.argsort(pd, axis=1)
        idx[a:a + chunk] = np.take_along_axis(part, order, 1)
        dist[a:a + chunk] = np.maximum(np.take_along_axis(pd, order, 1), 0)
    return idx, dist


def candidate_sets(query: np.ndarray, pool: np.ndarray, successor: np.ndarray, k: int,
                   exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per output frame: its k nearest pool frames plus the successors of the previous frame's
    candidates (so a pick can keep running along real footage even when the next footage frame
    is not among the k nearest), the best 2k by distance. query (T, F), pool (N, F), successor
    (N,), exclude (T, 2) or None -> candidates (T, 2k) int64, squared distances (T, 2k)."""
    near, near_d = nearest_candidates(query, pool, k, exclude)
    t, m = len(query), 2 * near.shape[1]
    cand = np.zeros((t, m), np.int64)
    cost = np.zeros((t, m))
    prev = None
    for i in range(t):
        idx, d = near[i], near_d[i]
        if prev is not None:
            extra = successor[prev]
            extra = np.unique(extra[extra >= 0])
            if exclude is not None:
                extra = extra[(extra < exclude[i, 0]) | (extra >= exclude[i, 1])]
            extra = np.setdiff1d(extra, idx)
            if len(extra):
                de = ((pool[extra].astype(np.float64) - query[i]) ** 2).sum(1)
                idx, d = np.concatenate([idx, extra]), np.concatenate([d, de])
        order = np.argsort(d, kind="stable")[:m]
        idx, d = idx[order], d[order]
        pad = m - len(idx)  # fewer than m: repeat the best (a duplicate changes no path cost)
        cand[i] = np.concatenate([idx, np.full(pad, idx[0])])
        cost[i] = np.concatenate([d, np.full(pad, d[0])])
        prev = idx
    return cand, cost


def viterbi_picks(cand: np.ndarray, cost: np.ndarray, successor: np.ndarray, jump_cost: float) -> np.ndarray:
    """Best path through candidates. cand (T, K) pool indices, cost (T, K) unary costs,
    successor (N,) next frame of each pool frame or -1. Transition: 0 to the successor,
    jump_cost / 2 to stay on the same frame, jump_cost otherwise. -> (T,) pool indices."""
    t, k = cand.shape
    acc = cost[0].copy()
    back = np.zeros((t, k), np.int64)
    for i in range(1, t):
        prev = cand[i - 1]
        cont = successor[prev][:, None] == cand[i][None, :]
        stay = prev[:, None] == cand[i][None, :]
        trans = np.where(cont, 0.0, np.where(stay, jump_cost / 2, jump_cost))
        total = acc[:, None] + trans  # (K prev, K cur)
        back[i] = np.argmin(total, axis=0)
        acc = total[back[i], np.arange(k)] + cost[i]
    path = np.zeros(t, np.int64)
    path[-1] = int(np.argmin(acc))
    for i in range(t - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return cand[np.arange(t), path]


# ---------------------------------------------------------------------------------------------
# warping and blending


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity mapping src (M, 2) onto dst (M, 2) (Umeyama)."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / max((s ** 2).sum() / len(src), 1e-12)
    a = scale * r
    return np.hstack([a, (md - a @ ms)[:, None]])


def _ring(points: np.ndarray, margin: float) -> np.ndarray:
    """(N_RING, 2): an ellipse around the control points, ``margin`` px beyond their box."""
    pts = points[list(CONTROL)]
    lo, hi = pts.min(0), pts.max(0)
    c, half = (lo + hi) / 2, (hi - lo) / 2 * np.sqrt(2) + margin  # the ellipse through the box corners
    a = np.linspace(0, 2 * np.pi, N_RING, endpoint=False)
    return c + half * np.stack([np.cos(a), np.sin(a)], 1)


def piecewise_affine_maps(dst: np.ndarray, src: np.ndarray, box: tuple[int, int, int, int]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward maps of a piecewise-affine warp over a Delaunay triangulation of ``dst``.

    dst, src (M, 2) corresponding points (destination and source px); box (x0, y0, x1, y1) of the
    destination region. -> map_x, map_y (h, w) float32 source coordinates for cv2.remap, and
    inside (h, w) bool: covered by a triangle that is not folded over in the source.
    """
    from scipy.spatial import Delaunay

    x0, y0, x1, y1 = box
    tri = Delaunay(dst).simplices  # (K, 3)
    d = dst[tri]  # (K, 3, 2)
    s = src[tri]
    a = np.concatenate([d, np.ones((len(tri), 3, 1))], axis=2)  # (K, 3, 3)
    det = np.linalg.det(a)
    ok = np.abs(det) > 1e-6
    coef = np.zeros((len(tri), 3, 2))
    coef[ok] = np.linalg.solve(a[ok], s[ok])  # [x y 1] @ coef = src
    ids = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shift = 4
    for k in np.nonzero(ok)[0]:
        poly = np.round((d[k] - [x0, y0]) * (1 << shift)).astype(np.int32)
        cv2.fillConvexPoly(ids, poly, int(k) + 1, cv2.LINE_8, shift)
    table = np.concatenate([np.zeros((1, 3, 2)), coef]).astype(np.float32)  # id 0 = outside
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    t = table.reshape(-1, 6)
    map_x = np.take(t[:, 0], ids) * xs + np.take(t[:, 2], ids) * ys + np.take(t[:, 4], ids)
    map_y = np.take(t[:, 1], ids) * xs + np.take(t[:, 3], ids) * ys + np.take(t[:, 5], ids)
    # a triangle whose corners come in the other order in the source is folded over: what it would
    # show is a mirror image (far-side mouth corners bunched at a silhouette); leave it out
    def area(t: np.ndarray) -> np.ndarray:  # (K, 3, 2) -> (K,) signed (twice the) area
        u, v = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
        return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

    s_area, d_area = area(s), area(d)
    keep = np.concatenate([[False], ok & (np.sign(s_area) == np.sign(d_area))])
    return map_x, map_y, keep[ids]


UNFOLD_STEPS = (1.0, 0.8, 0.6, 0.4, 0.2)


def _folds(dst: np.ndarray, src: np.ndarray) -> int:
    """Triangles of the Delaunay triangulation of dst (M, 2) that are folded over in src (M, 2)."""
    from scipy.spatial import Delaunay

    tri = Delaunay(dst).simplices

    def area(p: np.ndarray) -> np.ndarray:
        u, v = p[tri[:, 1]] - p[tri[:, 0]], p[tri[:, 2]] - p[tri[:, 0]]
        return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

    a, b = area(dst), area(src)
    return int(((np.abs(a) > 1e-6) & (np.sign(a) != np.sign(b))).sum())


def _unfold(dst: np.ndarray, src: np.ndarray, sim: np.ndarray, n_moving: int) -> np.ndarray:
    """Warp destination points without folds. dst, src (M, 2) control points (destination and
    pool px); sim (2, 3) the similarity taking the pool frame's stable points onto the
    destination's; the first ``n_moving`` points (the talking points) may move.

    On a strongly turned head the far side's points bunch together near the silhouette, and a
    wanted mouth a little wider or narrower than the picked one there puts corners in another
    order than in the pick: the piecewise-affine warp then folds the picture over itself (a
    mirrored sliver of lip, a seam across the cheek). The talking points are moved back towards
    the pick's own shape (seen in the destination through ``sim``) in steps of
    ``UNFOLD_STEPS`` until no triangle folds; the first step is the wanted shape itself, so on
    the frames that do not fold nothing changes. Triangles still folded after the last step are
    left out by :func:`piecewise_affine_maps`."""
    if _folds(dst, src) == 0:
        return dst
    own = src[:n_moving] @ sim[:, :2].T + sim[:, 2]
    for lam in UNFOLD_STEPS[1:]:
        cand = dst.copy()
        cand[:n_moving] = own + lam * (dst[:n_moving] - own)
        if _folds(cand, src) == 0:
            return cand
    return dst


def _hull_poly(points: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    return cv2.convexHull(points[list(idx)].astype(np.float32)).reshape(-1, 2)


def _colour_transfer(warped: np.ndarray, target: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Match the Lab mean (and the lightness contrast) of ``warped`` to ``target`` over the
    ``where`` pixels; uint8 in/out. Chroma spread is not scaled: on skin it is small and noisy,
    and scaling it pushes the lips towards odd colours. Statistics use every other pixel."""
    sel = where[::2, ::2]
    if sel.sum() < 25:
        return warped
    sw = cv2.cvtColor(warped[::2, ::2][sel][:, None, :], cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    st = cv2.cvtColor(target[::2, ::2][sel][:, None, :], cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    mw, mt = sw.mean(0), st.mean(0)
    ratio = np.ones(3, np.float32)
    ratio[0] = np.clip(st[:, 0].std() / max(sw[:, 0].std(), 1e-3), 0.8, 1.25)
    lut = np.clip((np.arange(256, dtype=np.float32)[:, None] - mw) * ratio + mt, 0, 255)
    lut = np.round(lut).astype(np.uint8).reshape(256, 1, 3)
    return cv2.cvtColor(cv2.LUT(cv2.cvtColor(warped, cv2.COLOR_RGB2LAB), lut), cv2.COLOR_LAB2RGB)


# ---------------------------------------------------------------------------------------------
# mouth interior (footage that never opens as wide as the prediction)


class _LipFrame(NamedTuple):
    """A mouth's inner lips in a local frame: origin (2,) the inner corner 60, ex (2,) unit vector
    to corner 64, ey (2,) unit vector down, width px; top / low (2, 5): (u, v) of the upper
    (60-64) and lower (60, 67, 66, 65, 64) inner lip, u in [0, 1] along ex, v px along ey."""

    origin: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    width: float
    top: np.ndarray
    low: np.ndarray


def _lip_frame(points: np.ndarray) -> _LipFrame:
    """(68, 2) px -> the :class:`_LipFrame` of its inner lips."""
    p = np.asarray(points, np.float64)
    origin = p[60]
    span = p[64] - origin
    width = max(float(np.hypot(*span)), 1e-6)
    ex = span / width
    ey = np.array([-ex[1], ex[0]])

    def curve(idx: list[int]) -> np.ndarray:
        d = p[idx] - origin
        return np.stack([np.maximum.accumulate(d @ ex / width), d @ ey])

    return _LipFrame(origin, ex, ey, width, curve([60, 61, 62, 63, 64]), curve([60, 67, 66, 65, 64]))


class MouthDonor(NamedTuple):
    """The pool's most open mouth, whose interior fills openings the picked frame lacks.

    patch (h, w, 3) uint8 RGB (pool colours); points (68, 2) float64 patch px; dark (3,) float32
    RGB: the interior's shadow colour (the mean of its darkest tenth), painted beyond its gap;
    lips: its :class:`_LipFrame`; scale: its face scale (px).
    """

    patch: np.ndarray
    points: np.ndarray
    dark: np.ndarray
    lips: _LipFrame
    scale: float


def opening_ratio(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) px -> (...,): inner-lip opening in face-scale units (~0.03 closed, ~0.45 wide)."""
    return layout.mouth_opening(points) / face_scale(points)


def fill_strength(want: float, have: float, cfg: RetrievalConfig) -> float:
    """Opacity in [0, 1] of the filled interior when the prediction opens ``want`` and the picked
    frame ``have`` (face-scale units): 0 up to ``fill_margin`` more, 1 from ``fill_margin +
    fill_ramp`` more."""
    return float(np.clip((want - have - cfg.fill_margin) / cfg.fill_ramp, 0.0, 1.0))


def _poly_mask(poly: np.ndarray, shape: tuple[int, int], origin: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """(h, w) uint8 0..255: polygon (M, 2) px (any shape), anti-aliased; ``origin`` = the mask's
    top-left corner in the polygon's coordinates."""
    m = np.zeros(shape, np.uint8)
    q = np.round((np.asarray(poly, np.float64) - origin) * 16).astype(np.int32)
    cv2.fillPoly(m, [q], 255, cv2.LINE_AA, 4)
    return m


def mouth_donor(pool: RetrievalPool) -> MouthDonor | None:
    """The pool frame with the widest inner-lip opening, if at least ``OPEN_MOUTH`` (else None).
    Decodes its patch."""
    ratio = opening_ratio(pool.points.astype(np.float64))
    j = int(np.argmax(ratio))
    if ratio[j] < OPEN_MOUTH:
        return None
    patch = pool.patch(j)
    pts = pool.points[j].astype(np.float64) - pool.offsets[j]
    inside = cv2.erode(_poly_mask(pts[list(layout.INNER_LIP)], patch.shape[:2]), np.ones((3, 3), np.uint8)) > 127
    pixels = patch[inside].astype(np.float32)
    if len(pixels) < 10:
        return None
    luma = pixels @ np.float32([0.299, 0.587, 0.114])
    dark = pixels[luma <= np.percentile(luma, 10)].mean(0)
    return MouthDonor(patch, pts, dark.astype(np.float32), _lip_frame(pts), float(face_scale(pts)))


def mouth_interior(warped: np.ndarray, dst: np.ndarray, box: tuple[int, int, int, int],
                   donor: MouthDonor | None, strength: float, px: float) -> np.ndarray:
    """Fill the predicted inner-lip area of ``warped`` with a mouth interior.

    warped (h, w, 3) uint8 covering ``box`` (x0, y0, x1, y1) of the crop; dst (68, 2) crop px, the
    predicted face; donor from :func:`mouth_donor`; strength in [0, 1] the opacity; px the crop's
    pixels per reference pixel. -> (h, w, 3) uint8 (``warped`` itself when nothing is to fill).

    With a donor, the upper half of its interior hangs from the predicted upper inner lip and the
    lower half stands on the lower one, each at its own size (scaled by the face scales, not
    stretched to the predicted gap: teeth stay teeth-sized; only along the mouth and, for a
    narrower gap, compressed); the middle the donor cannot cover is its shadow colour, darker
    towards the centre. Without a donor (the pool never opens), the area shades from darkened
    lips at the edge to darker at the centre.
    """
    x0, y0, x1, y1 = box
    inner = dst[list(layout.INNER_LIP)].astype(np.float64)
    sigma = 0.8 * px
    pad = int(np.ceil(3 * sigma)) + 2
    lo = np.maximum(np.floor(inner.min(0)).astype(int) - pad, [x0, y0])
    hi = np.minimum(np.ceil(inner.max(0)).astype(int) + pad + 1, [x1, y1])
    if (hi <= lo).any():
        return warped
    sx0, sy0 = lo - [x0, y0]
    sx1, sy1 = hi - [x0, y0]
    sub = warped[sy0:sy1, sx0:sx1]
    shape = sub.shape[:2]
    hard = _poly_mask(inner, shape, lo)
    if donor is not None:
        d, s = _lip_frame(dst), donor.lips
        unit = donor.scale / float(face_scale(dst))  # donor px per output px
        # functions of u (the position along the mouth) as tables: float32 all the way
        grid = np.linspace(0.0, 1.0, U_TABLE)
        top_d, low_d = np.interp(grid, *d.top), np.interp(grid, *d.low)
        top_s, low_s = np.interp(grid, *s.top), np.interp(grid, *s.low)
        gap_s = np.maximum(low_s - top_s, 1e-3)  # the donor's gap, donor px
        gap = np.maximum(low_d - top_d, 1e-3) * unit  # the predicted one, donor px
        squeeze = np.maximum(gap_s / gap, 1.0)  # a narrower prediction compresses the donor
        base = s.origin + (grid * s.width)[:, None] * s.ex + top_s[:, None] * s.ey  # (U, 2) donor upper lip
        table = np.stack([top_d * unit, gap, gap_s, squeeze, base[:, 0], base[:, 1]]).astype(np.float32)
        # the maps are smooth: computed every f-th pixel (at the pixel centres cv2.resize assumes)
        f = max(1, int(round(px)))
        hc, wc = -(-shape[0] // f), -(-shape[1] // f)
        xs = (lo[0] - d.origin[0] + (np.arange(wc) + 0.5) * f - 0.5).astype(np.float32)[None, :]
        ys = (lo[1] - d.origin[1] + (np.arange(hc) + 0.5) * f - 0.5).astype(np.float32)[:, None]
        u = np.clip(xs * np.float32(d.ex[0] / d.width) + ys * np.float32(d.ex[1] / d.width), 0, 1)
        k = (u * np.float32(U_TABLE - 1) + np.float32(0.5)).astype(np.intp)
        top_u, gap_u, gap_s_u, squeeze_u, base_x, base_y = (np.take(t, k) for t in table)
        # donor px below the predicted upper inner lip
        v = (xs * np.float32(d.ey[0] * unit) + ys * np.float32(d.ey[1] * unit)) - top_u
        upper = v < gap_u / 2
        from_lip = np.maximum(np.where(upper, v, gap_u - v), 0) * squeeze_u
        down = np.where(upper, from_lip, gap_s_u - from_lip)
        # beyond half the donor's gap from either lip: its shadow, deeper towards the middle
        beyond = (from_lip - gap_s_u / 2) / gap_s_u
        maps = np.stack([base_x + down * np.float32(s.ey[0]), base_y + down * np.float32(s.ey[1]),
                         np.clip(beyond * np.float32(1 / 0.15), 0, 1),
                         1 - np.float32(0.3) * np.clip(beyond, 0, 1)], -1)
        if f > 1:
            maps = cv2.resize(maps, (wc * f, hc * f), interpolation=cv2.INTER_LINEAR)[:shape[0], :shape[1]]
        fill = cv2.remap(donor.patch, np.ascontiguousarray(maps[..., 0]), np.ascontiguousarray(maps[..., 1]),
                         RESAMPLE, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        fill += (donor.dark * maps[..., 3:] - fill) * maps[..., 2:3]
    else:
        lips = (_poly_mask(dst[list(layout.OUTER_LIP)], shape, lo) > 127) & (hard < 128)
        lip = np.median(sub[lips], 0) if lips.sum() >= 5 else np.float32([150, 70, 70])
        gap = max(float(layout.mouth_opening(dst)), 1.0)
        depth = np.clip(cv2.distanceTransform((hard > 127).astype(np.uint8), cv2.DIST_L2, 3) / (0.25 * gap), 0, 1)
        fill = lip * (FALLBACK_DARKEN * (2.0 - depth[..., None]))
    alpha = cv2.GaussianBlur(hard.astype(np.float32) * np.float32(strength / 255), (0, 0), sigma)
    out = warped.copy()
    fill8 = np.clip(fill + 0.5, 0, 255).astype(np.uint8)
    out[sy0:sy1, sx0:sx1] = cv2.blendLinear(fill8, sub, alpha, 1 - alpha)
    return out


class RetrievalRenderer:
    """Renders face crops from a :class:`RetrievalPool` (see the module docstring).

    Frame API: :meth:`render_frame` (a given pool frame). Sequence API: :meth:`pick` then
    :meth:`render` (streams :class:`Rendered` results).
    """

    def __init__(self, pool: RetrievalPool, cfg: RetrievalConfig | None = None) -> None:
        """cfg None: this version's defaults for picking and blending (not the settings stored
        with the pool, which only record how it was built), so saved pools pick up tuning."""
        self.pool = pool
        self.cfg = cfg or RetrievalConfig()
        self._pose = fit_pose_basis(pool.points)
        self._opening_scale = float(np.std(opening_ratio(pool.points.astype(np.float64)))) + 1e-3
        self._features = self._with_pose(pool.features(self.cfg), pool.points)
        self._successor = pool.successor()
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # one renderer may serve several UI sessions
        self._donor: tuple[MouthDonor | None] | None = None  # found on first need

    @classmethod
    def load(cls, directory: str | os.PathLike[str], cfg: RetrievalConfig | None = None) -> "RetrievalRenderer":
        """A renderer over the pool saved in ``directory`` (see :meth:`RetrievalPool.save`)."""
        return cls(RetrievalPool.load(directory), cfg)

    def _with_pose(self, shape: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(T, 31) shape features + the pose (K) and opening (1) terms of (T, 68, 2) points."""
        pose = self.cfg.pose_weight * pose_features(points, self._pose)
        opening = self.cfg.opening_weight * opening_ratio(np.asarray(points, np.float64)) / self._opening_scale
        return np.concatenate([shape, pose, opening[..., None].astype(np.float32)], axis=-1)

    def features(self, template_points: np.ndarray, predicted_talk: np.ndarray) -> np.ndarray:
        """(T, 68, 2), (T, 58) template crop px -> (T, 31 + K + 1) pick features of the wanted
        faces: their shape, their template frame's head pose and their opening."""
        wanted = layout.with_talking(template_points, predicted_talk)
        shape = shape_features(wanted, self.pool.pca, self.pool.jaw_scale, self.cfg.jaw_weight, self.cfg.whiten)
        return self._with_pose(shape, wanted)

    def pick(self, template_points: np.ndarray, predicted_talk: np.ndarray,
             exclude: np.ndarray | None = None) -> np.ndarray:
        """Pool frame per output frame. template_points (T, 68, 2), predicted_talk (T, 58) crop
        px; exclude (T, 2) banned pool index ranges [lo, hi) or None. -> (T,) int64."""
        q = self.features(np.asarray(template_points), np.asarray(predicted_talk))
        cand, dist = candidate_sets(q, self._features, self._successor, self.cfg.candidates, exclude)
        scale = float(np.median(dist[:, 0])) + 1e-6  # a typical nearest-neighbour distance
        return viterbi_picks(cand, dist, self._successor, self.cfg.jump_cost * scale)

    def _patch(self, j: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(j)
        if hit is not None:
            return hit
        patch = self.pool.patch(j)
        with self._lock:
            while len(self._cache) >= PATCH_CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[j] = patch
        return patch

    def _donor_face(self, index: int, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """(h, w) float32 in [0, 1]: 1 where the warp samples pool frame ``index`` inside its own
        face outline (:func:`studio.render.compose.visible_face_mask` of its points, in patch px),
        0 outside it; map_x, map_y the warp's maps into the patch."""
        patch = self._patch(index)
        pts = self.pool.points[index].astype(np.float64) - self.pool.offsets[index]
        px = self.pool.size / REFERENCE_SIZE
        inside = outline_mask((pts,), patch.shape[:2], 0.0, 3.0 * px)
        return cv2.remap(inside, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def mouth_donor(self) -> MouthDonor | None:
        """The pool's most open mouth (:func:`mouth_donor`), found once."""
        with self._lock:
            if self._donor is None:
                self._donor = (mouth_donor(self.pool),)
                if self._donor[0] is None:
                    log.info("the retrieval pool never opens its mouth (inner lips < %.2f face scale): "
                             "wider predicted mouths get darkened lips, no teeth", OPEN_MOUTH)
            return self._donor[0]

    def render_frame(self, template_crop: np.ndarray, template_points: np.ndarray,
                     predicted_talk: np.ndarray, index: int) -> Rendered:
        """Put pool frame ``index``'s mouth and jaw, warped to ``predicted_talk``, into the crop.

        template_crop (S, S, 3) uint8; template_points (68, 2) crop px; predicted_talk (58,) crop
        px. S may differ from the pool's size.
        """
        tp = np.asarray(template_points, np.float64)
        dst = layout.with_talking(tp, np.asarray(predicted_talk, np.float64).reshape(-1))
        return self.warp_into(template_crop, tp, dst, index)

    def warp_into(self, template_crop: np.ndarray, template_points: np.ndarray, points: np.ndarray,
                  index: int) -> Rendered:
        """:meth:`render_frame` with the wanted face as 68 points (crop px): the template's points
        with the predicted mouth and jaw, as :func:`studio.render.base.frame_inputs` gives them."""
        cfg = self.cfg
        crop = np.asarray(template_crop)
        size = crop.shape[0]
        assert crop.shape == (size, size, 3), f"template_crop must be (S, S, 3), got {crop.shape}"
        tp = np.asarray(template_points, np.float64)
        dst = np.asarray(points, np.float64)
        src = self.pool.points[index].astype(np.float64)
        patch = self._patch(index)
        off = self.pool.offsets[index].astype(np.float64)

        px = size / REFERENCE_SIZE
        margin = _ring_margin(cfg, size)
        ring_dst = _ring(dst, margin)
        stable = list(layout.STABLE)
        ring_src = ring_dst @ _similarity(dst[stable], src[stable])[:, :2].T + \
            _similarity(dst[stable], src[stable])[:, 2]
        ctrl = list(CONTROL)
        d_pts = _unfold(np.concatenate([dst[ctrl], ring_dst]), np.concatenate([src[ctrl], ring_src]),
                        _similarity(src[stable], dst[stable]), layout.N_TALKING)
        s_pts = np.concatenate([src[ctrl], ring_src]) - off
        # work only where the feathered mask can be non-zero (the ring lies beyond it)
        polys = [_hull_poly(tp, REGION), _hull_poly(dst, REGION)]
        both = np.concatenate(polys)
        reach = (cfg.mask_dilation + 3 * cfg.feather) * px + 2
        lo = np.floor(both.min(0) - reach).astype(int)
        hi = np.ceil(both.max(0) + reach).astype(int) + 1
        box = (max(lo[0], 0), max(lo[1], 0), min(hi[0], size), min(hi[1], size))
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            return Rendered(crop.copy(), np.zeros((size, size), np.float32), int(index))
        map_x, map_y, inside = piecewise_affine_maps(d_pts, s_pts, box)
        warped = cv2.remap(patch, map_x, map_y, RESAMPLE, borderMode=cv2.BORDER_REPLICATE)
        if cfg.fill_mouth:
            strength = fill_strength(float(opening_ratio(dst)), float(opening_ratio(src)), cfg)
            if strength > 0:
                warped = mouth_interior(warped, dst, box, self.mouth_donor(), strength, px)

        alpha = feathered_mask(polys, box, cfg.mask_dilation * px, cfg.feather * px)
        alpha *= inside
        if cfg.clip_to_face:
            # never past the template's jaw contour (hair, background), and inside the wanted face
            # only pixels that were face in the picked frame too: on a head turned otherwise than
            # the pick, what lies beyond its jaw contour (hair, shadow) is not drawn onto the cheek
            alpha = np.minimum(alpha, visible_face_mask(tp, dst, size)[y0:y1, x0:x1])
            # ... except below a chin that rises above the template's: there the picked frame's
            # neck is what the template's old chin must be covered with. Only there: beside the
            # jaw's corners the picked frame's hair or shadow would open a dark wedge in the
            # cheek (theresa_may_5s, a closing mouth), so the template's side of the jaw stays.
            wanted = outline_mask((dst - [x0, y0],), alpha.shape, 0.0, cfg.feather * px)
            chin = np.concatenate([tp[list(CHIN_ZONE)], dst[list(CHIN_ZONE)]])
            below = cv2.GaussianBlur(_poly_mask(cv2.convexHull(chin.astype(np.float32)).reshape(-1, 2),
                                                alpha.shape, (x0, y0)).astype(np.float32) / 255.0,
                                     (0, 0), cfg.feather * px)
            alpha *= np.maximum(self._donor_face(index, map_x, map_y), (1.0 - wanted) * below)
        target = crop[y0:y1, x0:x1]
        if cfg.colour_match:
            mouths = feathered_mask([_hull_poly(tp, layout.MOUTH), _hull_poly(dst, layout.MOUTH)],
                                     box, 3 * px, 0)
            skin = (alpha > 0.9) & (mouths < 0.5)
            warped = _colour_transfer(warped, target, skin)
        out = crop.copy()
        if cfg.seamless:
            m8 = (alpha > 0.05).astype(np.uint8) * 255
            ys, xs = np.nonzero(m8)
            if len(xs):
                centre = (int((xs.min() + xs.max() + 1) // 2 + x0), int((ys.min() + ys.max() + 1) // 2 + y0))
                full_src = crop.copy()
                full_src[y0:y1, x0:x1] = warped
                full_mask = np.zeros((size, size), np.uint8)
                full_mask[y0:y1, x0:x1] = m8
                out = cv2.seamlessClone(full_src, crop, full_mask, centre, cv2.NORMAL_CLONE)
        else:
            out[y0:y1, x0:x1] = cv2.blendLinear(warped, target, alpha, 1 - alpha)
        mask = np.zeros((size, size), np.float32)
        mask[y0:y1, x0:x1] = alpha
        return Rendered(out, mask, int(index))

    # -- the renderer interface (studio.render.base) ----------------------------------------------
    @property
    def crop_config(self):
        from studio.render.crop import CropConfig

        return CropConfig()

    def render_size(self, requested: int) -> int:
        return int(requested)  # any size: pool patches are warped to the crop

    def prepare(self, lms, track) -> np.ndarray:
        """The pool frame of every output frame (Viterbi over the whole sequence): (T,) int64."""
        return self.pick(lms.template, layout.talking_vector(lms.points))

    def draw(self, inputs: FrameInputs, i: int, state: np.ndarray) -> Rendered:
        return self.warp_into(inputs.crop, inputs.template_points, inputs.points, int(state[i]))

    def render(self, template_crops: Iterable[np.ndarray], template_points: np.ndarray,
               predicted_talk: np.ndarray, picks: np.ndarray | None = None,
               exclude: np.ndarray | None = None) -> Iterator[Rendered]:
        """Stream T rendered crops. template_crops: T arrays (S, S, 3); template_points
        (T, 68, 2) and predicted_talk (T, 58) in crop px; picks (T,) or None to :meth:`pick`."""
        tp = np.asarray(template_points)
        talk = np.asarray(predicted_talk)
        assert tp.shape[1:] == (68, 2) and talk.shape == (len(tp), layout.TALK_DIM), \
            f"template_points {tp.shape} / predicted_talk {talk.shape} do not match (T, 68, 2) / (T, 58)"
        if picks is None:
            picks = self.pick(tp, talk, exclude)
        for i, crop in enumerate(template_crops):
            yield self.render_frame(crop, tp[i], talk[i], int(picks[i]))


# ---------------------------------------------------------------------------------------------
# evaluation and speed


def region_box(points: np.ndarray, size: int, idx: Sequence[int] = layout.MOUTH,
               pad: float = 0.25) -> tuple[int, int, int, int]:
    """Integer box around points ``idx`` of (68, 2) ``points``, padded by ``pad`` x its size."""
    p = np.asarray(points)[list(idx)]
    lo, hi = p.min(0), p.max(0)
    ext = (hi - lo) * pad
    x0, y0 = np.floor(lo - ext).astype(int)
    x1, y1 = np.ceil(hi + ext).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


def reconstruction_scores(rendered: np.ndarray, real: np.ndarray, points: np.ndarray) -> dict[str, float]:
    """PSNR / SSIM of one rendered crop against the real one: mouth region and whole crop.

    rendered, real (S, S, 3) uint8; points (68, 2) crop px (the mouth box comes from them).
    """
    from skimage.metrics import peak_signal_noise_ratio as psnr
    from skimage.metrics import structural_similarity as ssim

    x0, y0, x1, y1 = region_box(points, real.shape[0])
    a, b = rendered[y0:y1, x0:x1], real[y0:y1, x0:x1]
    win = min(7, min(a.shape[:2]) | 1 if min(a.shape[:2]) % 2 else min(a.shape[:2]) - 1)
    return {
        "mouth_psnr": float(psnr(b, a, data_range=255)),
        "mouth_ssim": float(ssim(b, a, channel_axis=2, data_range=255, win_size=max(win, 3))),
        "crop_psnr": float(psnr(real, rendered, data_range=255)),
        "crop_ssim": float(ssim(real, rendered, channel_axis=2, data_range=255)),
    }


def evaluate_reconstruction(crops: np.ndarray, points: np.ndarray, pool: RetrievalPool,
                            test: Sequence[int], radius: int = 5, template_shift: int = 0,
                            cfg: RetrievalConfig | None = None) -> dict[str, float]:
    """Render test frames from their own true landmarks with their +-``radius`` neighbours
    excluded from the pool; mean scores (see :func:`reconstruction_scores`).

    crops (T, S, S, 3) uint8 real crops of pool source 0 (the pool's frame j = crop j when built
    from the same clip with sources (0, j)); points (T, 68, 2) crop px; test: frame indices
    (ascending). Picks are made over the whole contiguous run min(test)..max(test), as in a dub
    (the temporal term included), and the test frames are scored. template_shift: 0 renders into
    the real frame itself (only the mouth region is replaced); k > 0 uses frame i - k (or i + k
    near the start) as the template, a harder test whose template has another mouth and a
    slightly different head pose. Also returns ``jumps_per_s`` (30 fps assumed) of the picks.
    """
    r = RetrievalRenderer(pool, cfg)
    test = np.asarray(test, np.int64)
    seq = np.arange(test.min(), test.max() + 1)
    src = pool.sources
    ex = np.zeros((len(seq), 2), np.int64)
    for n, i in enumerate(seq):
        inside = np.nonzero((src[:, 0] == 0) & (np.abs(src[:, 1] - i) <= radius))[0]
        ex[n] = (inside.min(), inside.max() + 1) if len(inside) else (0, 0)
    tmpl = np.where(seq - template_shift >= 0, seq - template_shift, seq + template_shift)
    talk = layout.talking_vector(points[seq])
    picks = r.pick(points[tmpl], talk, ex)
    scores = []
    for i in test:
        n = int(i - seq[0])
        out = r.render_frame(crops[tmpl[n]], points[tmpl[n]], talk[n], int(picks[n]))
        s = reconstruction_scores(out.image, crops[i], points[i])
        if template_shift:  # the baseline: the template left as it is
            s["template_mouth_psnr"] = reconstruction_scores(crops[tmpl[n]], crops[i], points[i])["mouth_psnr"]
        scores.append(s)
    keys = scores[0].keys()
    jumps = float((np.diff(picks) != 1).sum() / max(len(seq) / 30.0, 1e-9))
    return {k: float(np.mean([s[k] for s in scores])) for k in keys} | {"frames": len(test), "jumps_per_s": jumps}


def evaluate_clip(clip, size: int = 256, frames: int | None = None, test_every: int = 10,
                  radius: int = 5, template_shift: int = 0, cfg: RetrievalConfig = RetrievalConfig(),
                  crop_cfg=None) -> dict[str, float]:
    """Reconstruction on one preprocessed clip: the pool is the clip's own first ``frames``
    frames (all when None), every ``test_every``-th of them (away from the ends) is rendered from
    its true landmarks with its +-``radius`` neighbours excluded (see
    :func:`evaluate_reconstruction`). Holds the crops in memory: keep ``frames`` x size^2 small."""
    from studio import media
    from studio.render.crop import CropConfig, CropTrack

    t = clip.meta.frames if frames is None else min(frames, clip.meta.frames)
    track = CropTrack.from_landmarks(clip.landmarks, (clip.meta.width, clip.meta.height),
                                     crop_cfg or CropConfig(), valid=clip.valid)
    crops = np.zeros((t, size, size, 3), np.uint8)
    for i, frame in enumerate(media.iter_frames(clip.video_path, 0, t)):
        crops[i] = track.crop(frame, i, size)
    points = np.stack([track.to_crop(clip.landmarks[i], i, size) for i in range(t)]).astype(np.float32)
    pool = RetrievalPool.from_crops(list(crops), points, cfg=cfg)
    margin = max(radius + 1, template_shift)
    test = [i for i in range(margin, t - radius - 1, test_every) if clip.found[i]]
    return evaluate_reconstruction(crops, points, pool, test, radius, template_shift, cfg) | {"size": size}


def _bench_faces(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic (points (68, 2), crop (S, S, 3)) pairs: mean face, varying mouth, noise texture."""
    from studio.face.meanface import mean_face

    rng = np.random.default_rng(seed)
    base = mean_face()[:, :2].astype(np.float64)
    base = (base - base.mean(0)) / np.ptp(base[:, 1]) * 0.6 * size + [size / 2, size * 0.55]
    pts = np.repeat(base[None], n, 0)
    opening = rng.uniform(0, 1, n)
    lower = list(range(55, 60)) + list(range(65, 68)) + list(layout.JAW)
    pts[:, lower, 1] += opening[:, None] * 0.06 * size
    small = rng.integers(0, 255, (n, size // 16, size // 16, 3), dtype=np.uint8)
    crops = np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC) for s in small])
    return pts.astype(np.float32), crops


def benchmark(size: int = 720, frames: int = 60, pool_frames: int = 60, **_: object) -> dict:
    """Retrieval renderer speed at ``size`` on synthetic crops: warp + colour match + blend per
    frame (wall and CPU time); picking, pool patch decoding and paste-back into a 1280x720 frame
    timed separately. Returns plain numbers."""
    pts, crops = _bench_faces(max(pool_frames, 50), size)
    pool = RetrievalPool.from_crops(list(crops), pts, cfg=RetrievalConfig(min_pool_frames=10))
    r = RetrievalRenderer(pool)
    qp, qc = _bench_faces(frames, size, seed=1)
    t0 = time.perf_counter()
    picks = r.pick(qp, layout.talking_vector(qp))
    t_pick = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in set(picks.tolist()):
        r._patch(j)
    t_decode = (time.perf_counter() - t0) / max(len(set(picks.tolist())), 1)
    r.render_frame(qc[0], qp[0], layout.talking_vector(qp[0]), int(picks[0]))  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(frames):
        r.render_frame(qc[i], qp[i], layout.talking_vector(qp[i]), int(picks[i]))
    t_render = (time.perf_counter() - t0) / frames
    c_render = (time.process_time() - c0) / frames  # CPU time of all threads: load-independent
    # paste-back of a rendered 720 crop into a 1280x720 frame (studio.render.compose)
    from studio.render.compose import compose_frame, face_mask
    from studio.render.crop import CropTrack

    frame = cv2.resize(qc[0], (1280, 720))
    track = CropTrack(np.array([[640.0, 360.0]]), np.array([400.0]), (1280, 720), np.array([True]))
    mask = face_mask(qp[0], size)
    t0 = time.perf_counter()
    for _ in range(10):
        compose_frame(frame, qc[1], track, 0, mask)
    t_paste = (time.perf_counter() - t0) / 10
    return {"retrieval_size": size, "retrieval_fps": 1.0 / t_render,
            "retrieval_ms_per_frame": 1000 * t_render, "retrieval_cpu_ms_per_frame": 1000 * c_render,
            "retrieval_pick_ms_per_frame": 1000 * t_pick / frames,
            "retrieval_patch_decode_ms": 1000 * t_decode, "paste_back_ms_1280x720": 1000 * t_paste}
