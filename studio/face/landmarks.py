"""Face landmark backends: 68 iBUG points per frame, in pixels of the source frame.

Two real backends behind one interface (:class:`LandmarkBackend`, chosen by
:func:`make_backend`):

- ``"mediapipe"``: MediaPipe Tasks FaceLandmarker (``face_landmarker.task``). Clips run in VIDEO
  mode, where the landmarker tracks the face from the previous frame's mesh and runs its face
  detector only when tracking is lost; stills run in IMAGE mode. The 478-point mesh is mapped to
  68 points by the table in :mod:`studio.face.mp68`. It also gives the facial transformation
  matrix (4x4, canonical face model -> camera, centimetres).
- ``"fan"``: face-alignment's 2D-FAN (``face_alignment.FaceAlignment``) with a BlazeFace or SFD
  detector. The detector runs every ``detect_every`` frames; in between, the face box is derived
  from the previous frame's landmarks (calibrated against the last detector box), and a frame
  whose landmark confidence drops below ``fan_min_score`` is re-detected.

Several faces: the largest (by box area) is used. Frames without a face are flagged
(``found``); gaps of at most ``max_gap`` frames are interpolated linearly, longer gaps are
logged, marked invalid, and hold the nearest valid frame's points (:func:`fill_gaps`). No face in
any frame raises :class:`~studio.errors.NoFaceError`.

Model files come from :mod:`studio.face.weights` (never from the libraries' own downloaders).
"""

from __future__ import annotations

import abc
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from studio.errors import InputError, NoFaceError, WeightsError
from studio.face import mp68
from studio.face.weights import weights_path

log = logging.getLogger(__name__)

BACKENDS = ("mediapipe", "fan")
NO_FACE_HINT = ("Use footage where one face is clearly visible, facing the camera and well lit, "
                "for most of the clip.")


@dataclass(frozen=True)
class LandmarkConfig:
    max_gap: int = 5  # frames: longer runs without a face are left invalid
    num_faces: int = 1  # faces the detector may return; the largest is used
    min_confidence: float = 0.5  # mediapipe detection / presence / tracking confidence
    max_side: int = 0  # mediapipe: downscale frames whose longer side exceeds this (0 = never)
    fan_detector: str = "blazeface"  # "blazeface" (BlazeFace back model) or "sfd"
    detect_every: int = 10  # fan: run the face detector every N frames, track boxes in between
    fan_min_score: float = 0.25  # fan: mean heatmap peak below which a tracked face is re-detected

    def __post_init__(self) -> None:
        if self.max_gap < 0:
            raise ValueError("max_gap must be >= 0")
        if self.num_faces < 1:
            raise ValueError("num_faces must be >= 1")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("min_confidence must be in [0, 1]")
        if self.max_side < 0:
            raise ValueError("max_side must be >= 0")
        if self.fan_detector not in ("blazeface", "sfd"):
            raise ValueError("fan_detector must be 'blazeface' or 'sfd'")
        if self.detect_every < 1:
            raise ValueError("detect_every must be >= 1")


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in one frame. landmarks (68, 2) float32 pixels; box (4,) x0, y0, x1, y1 pixels;
    transform (4, 4) facial transformation matrix (mediapipe) or None; mesh (478, 3) mediapipe
    mesh in pixels (z in the same scale as x) or None."""

    landmarks: np.ndarray
    box: np.ndarray
    score: float = 1.0
    transform: np.ndarray | None = None
    mesh: np.ndarray | None = None

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass(frozen=True, eq=False)
class TrackResult:
    """Landmarks of a frame sequence, T frames.

    landmarks  (T, 68, 2) float32 pixels, gaps filled (see fill_gaps)
    found      (T,) bool   the backend found a face in that frame
    valid      (T,) bool   found, or inside a short (<= max_gap) gap
    boxes      (T, 4) float32 face boxes x0, y0, x1, y1, filled like the landmarks
    transforms (T, 4, 4) float32 facial transformation matrices (mediapipe) or None
    long_gaps  [(start, stop)) frame ranges longer than max_gap without a face
    """

    landmarks: np.ndarray
    found: np.ndarray
    valid: np.ndarray
    boxes: np.ndarray
    transforms: np.ndarray | None = None
    long_gaps: list[tuple[int, int]] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.found)


def box_of(points: np.ndarray) -> np.ndarray:
    """(N, 2+) points -> (4,) float32 bounding box x0, y0, x1, y1."""
    p = np.asarray(points)[:, :2]
    return np.concatenate([p.min(axis=0), p.max(axis=0)]).astype(np.float32)


def fill_gaps(values: np.ndarray, found: np.ndarray,
              max_gap: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Fill frames without a face. values (T, ...) (rows where found is False are ignored);
    found (T,) bool. Returns (filled (T, ...) float32, valid (T,) bool, long gaps [(start, stop)]).

    A gap between two found frames of length <= max_gap is interpolated linearly; a gap at the
    start or end of length <= max_gap holds the nearest found frame. Both count as valid. Longer
    gaps hold the nearest found frame (the earlier one, or the later one at the very start) and
    are invalid. With no found frame at all, values are returned as zeros and nothing is valid.
    """
    v = np.asarray(values, dtype=np.float32)
    f = np.asarray(found, dtype=bool)
    t = len(f)
    out = np.zeros_like(v)
    valid = f.copy()
    idx = np.flatnonzero(f)
    if idx.size == 0:
        return out, np.zeros(t, bool), ([(0, t)] if t else [])
    out[f] = v[f]
    gaps: list[tuple[int, int]] = []
    # runs of missing frames
    missing = np.flatnonzero(~f)
    if missing.size:
        starts = missing[np.r_[True, np.diff(missing) > 1]]
        stops = missing[np.r_[np.diff(missing) > 1, True]] + 1
        for a, b in zip(starts.tolist(), stops.tolist()):
            n = b - a
            if a == 0:  # leading gap: hold the first found frame
                out[a:b] = v[b]
            elif b == t:  # trailing gap: hold the last found frame
                out[a:b] = v[a - 1]
            elif n <= max_gap:
                w = (np.arange(1, n + 1, dtype=np.float32) / (n + 1)).reshape(-1, *([1] * (v.ndim - 1)))
                out[a:b] = v[a - 1] * (1 - w) + v[b] * w
            else:  # long inner gap: hold the nearer end
                mid = a + n // 2
                out[a:mid] = v[a - 1]
                out[mid:b] = v[b]
            if n <= max_gap:
                valid[a:b] = True
            else:
                gaps.append((a, b))
    return out, valid, gaps


class LandmarkBackend(abc.ABC):
    """68-point landmarks of stills (:meth:`detect`) and clips (:meth:`track`)."""

    name = "abstract"

    def __init__(self, config: LandmarkConfig = LandmarkConfig()) -> None:
        self.config = config

    @abc.abstractmethod
    def detect(self, frame_rgb: np.ndarray) -> Detection | None:
        """The largest face in one RGB uint8 (H, W, 3) image, or None."""

    @abc.abstractmethod
    def _track_raw(self, frames: Iterable[np.ndarray], fps: float) -> Iterable[Detection | None]:
        """Per-frame detections of a clip, in order (None where no face)."""

    def track(self, frames: Iterable[np.ndarray], *, fps: float = 30.0, source: str = "") -> TrackResult:
        """Landmarks of a clip. frames: RGB uint8 (H, W, 3) images in order (streamed).

        Raises NoFaceError naming ``source`` if no frame has a face, InputError if there are no
        frames.
        """
        lms, boxes, tfs, found = [], [], [], []
        has_tf = False
        for det in self._track_raw(frames, fps):
            found.append(det is not None)
            if det is None:
                lms.append(np.zeros((68, 2), np.float32))
                boxes.append(np.zeros(4, np.float32))
                tfs.append(np.eye(4, dtype=np.float32))
            else:
                lms.append(det.landmarks)
                boxes.append(det.box)
                tfs.append(det.transform if det.transform is not None else np.eye(4, dtype=np.float32))
                has_tf = has_tf or det.transform is not None
        what = source or "the video"
        if not found:
            raise InputError(f"{what} has no frames.", "Check that the file is a playable video.")
        f = np.array(found)
        if not f.any():
            raise NoFaceError(f"No face found in {what}.", NO_FACE_HINT)
        g = self.config.max_gap
        landmarks, valid, gaps = fill_gaps(np.stack(lms), f, g)
        box_arr, _, _ = fill_gaps(np.stack(boxes), f, g)
        transforms = fill_gaps(np.stack(tfs), f, g)[0] if has_tf else None
        for a, b in gaps:
            log.warning("%s: no face in frames %d-%d (%d frames, longer than max_gap=%d); "
                        "marked invalid", what, a, b - 1, b - a, g)
        log.info("%s: face found in %d of %d frames (%s)", what, int(f.sum()), len(f), self.name)
        return TrackResult(landmarks=landmarks, found=f, valid=valid, boxes=box_arr,
                           transforms=transforms, long_gaps=gaps)

    def close(self) -> None:
        """Release the model (idempotent)."""

    def __enter__(self) -> "LandmarkBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_frame(frame: np.ndarray) -> np.ndarray:
    f = np.asarray(frame)
    if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) frame, got {f.dtype} {f.shape}")
    return np.ascontiguousarray(f)


# -- MediaPipe ---------------------------------------------------------------------------------
class MediaPipeBackend(LandmarkBackend):
    """MediaPipe Tasks FaceLandmarker; 478 mesh points -> 68 via :mod:`studio.face.mp68`."""

    name = "mediapipe"

    def __init__(self, config: LandmarkConfig = LandmarkConfig(), *,
                 model_path: str | Path | None = None) -> None:
        super().__init__(config)
        self.model_path = Path(model_path) if model_path else weights_path("face_landmarker")
        self._image_mode = None

    def _create(self, video: bool):
        from mediapipe.tasks.python import BaseOptions, vision

        c = self.config
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=c.num_faces, min_face_detection_confidence=c.min_confidence,
            min_face_presence_confidence=c.min_confidence, min_tracking_confidence=c.min_confidence,
            output_facial_transformation_matrixes=True)
        try:
            return vision.FaceLandmarker.create_from_options(opts)
        except (RuntimeError, ValueError) as exc:
            raise WeightsError(f"MediaPipe could not load {self.model_path}: {exc}.",
                               f"Delete {self.model_path} so that it is downloaded again.") from None

    def _prepare(self, frame: np.ndarray):
        import cv2
        import mediapipe as mp

        f = _check_frame(frame)
        side = max(f.shape[:2])
        if self.config.max_side and side > self.config.max_side:
            s = self.config.max_side / side
            f = cv2.resize(f, (round(f.shape[1] * s), round(f.shape[0] * s)), interpolation=cv2.INTER_AREA)
        return mp.Image(image_format=mp.ImageFormat.SRGB, data=f)

    def _pick(self, result, width: int, height: int) -> Detection | None:
        best = None
        for k, face in enumerate(result.face_landmarks):
            # normalized coordinates do not depend on a downscale: -> pixels of the source frame
            mesh = np.array([(p.x, p.y, p.z) for p in face], dtype=np.float32)
            mesh *= np.array([width, height, width], np.float32)
            tf = None
            if result.facial_transformation_matrixes and k < len(result.facial_transformation_matrixes):
                tf = np.asarray(result.facial_transformation_matrixes[k], np.float32).reshape(4, 4)
            det = Detection(landmarks=mp68.to68(mesh[:, :2]), box=box_of(mesh), transform=tf, mesh=mesh)
            if best is None or det.area > best.area:
                best = det
        return best

    def detect(self, frame_rgb: np.ndarray) -> Detection | None:
        if self._image_mode is None:
            self._image_mode = self._create(video=False)
        h, w = frame_rgb.shape[:2]
        return self._pick(self._image_mode.detect(self._prepare(frame_rgb)), w, h)

    def _track_raw(self, frames: Iterable[np.ndarray], fps: float):
        landmarker = self._create(video=True)
        try:
            last_ms = -1
            for i, frame in enumerate(frames):
                image = self._prepare(frame)
                ms = max(int(round(i * 1000.0 / fps)), last_ms + 1)  # strictly increasing
                last_ms = ms
                h, w = frame.shape[:2]
                yield self._pick(landmarker.detect_for_video(image, ms), w, h)
        finally:
            landmarker.close()

    def close(self) -> None:
        if self._image_mode is not None:
            self._image_mode.close()
            self._image_mode = None


# -- face-alignment (2D-FAN) --------------------------------------------------------------------
def _face_alignment(fan_path: Path, detector: str, detector_kwargs: dict, device: str):
    """A face_alignment.FaceAlignment whose FAN weights come from ``fan_path`` (no downloads)."""
    import face_alignment
    import torch
    from face_alignment.models import FAN

    class _FaceAlignment(face_alignment.FaceAlignment):
        def _load_native(self, network_name, network_size, device, dtype):  # noqa: ARG002
            net = FAN(network_size)
            try:
                state = torch.load(fan_path, map_location=device, weights_only=True)
                if isinstance(state, dict) and "state_dict" in state:
                    state = state["state_dict"]
                net.load_state_dict(state)
            except Exception as exc:  # unpickling, zip and key errors all mean a bad file
                raise WeightsError(f"Cannot load the 2D-FAN weights {fan_path}: {exc}.",
                                   f"Delete {fan_path} so that it is downloaded again.") from None
            net.to(device, dtype=dtype)
            net.eval()
            return net

    kwargs = dict(device=device, flip_input=False, face_detector=detector,
                  face_detector_kwargs=detector_kwargs)
    if "compile" in inspect.signature(face_alignment.FaceAlignment.__init__).parameters:
        kwargs["compile"] = False  # torch.compile costs minutes on CPU
    try:
        return _FaceAlignment(face_alignment.LandmarksType.TWO_D, **kwargs)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"Cannot load the {detector} face detector: {exc}.",
                           "Delete its files in the weights folder so that they are downloaded "
                           "again.") from None


class FanBackend(LandmarkBackend):
    """face-alignment 2D-FAN with BlazeFace (back model) or SFD detection and box tracking."""

    name = "fan"

    def __init__(self, config: LandmarkConfig = LandmarkConfig(), *, device: str = "cpu") -> None:
        super().__init__(config)
        if config.fan_detector == "sfd":
            det_kw = {"path_to_detector": str(weights_path("sfd"))}
        else:
            # The back model works at 256x256 and finds faces that fill only part of the frame;
            # the front model (128x128) is for selfie framing.
            det_kw = {"path_to_detector": str(weights_path("blazeface_back")),
                      "path_to_anchor": str(weights_path("blazeface_back_anchors")), "back_model": True}
        self.fa = _face_alignment(weights_path("fan_2d"), config.fan_detector, det_kw, device)
        self._calib = np.zeros(4, np.float32)  # detector box - landmark box, in landmark-box sizes

    def _detect_boxes(self, frame: np.ndarray) -> list[np.ndarray]:
        boxes = self.fa.face_detector.detect_from_image(frame.copy())
        return [np.asarray(b[:4], np.float32) for b in boxes if b[2] - b[0] > 4 and b[3] - b[1] > 4]

    def _fit(self, frame: np.ndarray, box: np.ndarray) -> Detection | None:
        # float64: face-alignment assigns the box's size into a torch tensor, which rejects float32
        lms, scores, _ = self.fa.get_landmarks_from_image(
            frame, detected_faces=[np.asarray(box, np.float64)], return_landmark_score=True)
        if lms is None:
            return None
        pts = np.asarray(lms[0], np.float32)[:, :2]
        return Detection(landmarks=pts, box=box.astype(np.float32), score=float(np.mean(scores[0])))

    def _detect_and_fit(self, frame: np.ndarray) -> Detection | None:
        boxes = self._detect_boxes(frame)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: float((b[2] - b[0]) * (b[3] - b[1])))
        det = self._fit(frame, box)
        if det is not None:
            lb = box_of(det.landmarks)
            size = np.maximum(np.r_[lb[2] - lb[0], lb[3] - lb[1]], 1.0)
            self._calib = ((box - lb) / np.r_[size, size]).astype(np.float32)
        return det

    def _box_from_landmarks(self, pts: np.ndarray) -> np.ndarray | None:
        lb = box_of(pts)
        w, h = lb[2] - lb[0], lb[3] - lb[1]
        if w < 4 or h < 4:
            return None
        return (lb + self._calib * np.r_[w, h, w, h]).astype(np.float32)

    def detect(self, frame_rgb: np.ndarray) -> Detection | None:
        return self._detect_and_fit(_check_frame(frame_rgb))

    def _track_raw(self, frames: Iterable[np.ndarray], fps: float):  # noqa: ARG002
        prev: Detection | None = None
        for i, frame in enumerate(frames):
            frame = _check_frame(frame)
            det = None
            box = self._box_from_landmarks(prev.landmarks) if prev is not None else None
            if box is not None and i % self.config.detect_every != 0:
                det = self._fit(frame, box)
                if det is not None and det.score < self.config.fan_min_score:
                    det = None  # lost: re-detect below
            if det is None:
                det = self._detect_and_fit(frame)
            prev = det
            yield det


def make_backend(name: str, config: LandmarkConfig = LandmarkConfig(), **kw) -> LandmarkBackend:
    """A landmark backend by name ("mediapipe" or "fan"). Keyword args go to its constructor."""
    if name == "mediapipe":
        return MediaPipeBackend(config, **kw)
    if name == "fan":
        return FanBackend(config, **kw)
    raise InputError(f"Unknown landmark backend {name!r}.", f"Use one of {list(BACKENDS)}.")
