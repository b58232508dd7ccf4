"""Contact sheet of the renderers on real footage (docs/results/contact_sheet.jpg).

Rows: template frames of obama_clip1 whose mouth and jaw are re-driven by the talking points of
frame i + 250 of the same clip (moved onto the template's head by a similarity transform fitted on
the stable points, a stand-in for the mapping network's pose-adapted output). Columns: template |
facial map | retrieval | neural (when a checkpoint is given) | the frame the landmarks came from. The pool is all of obama_clip1 except
the +-5 frames around each landmark source (so its own mouth cannot simply be copied back).

    .venv/bin/python docs/results/make_contact_sheet.py CLIPS_DIR [NEURAL_DIR]
CLIPS_DIR holds obama_clip1 preprocessed (python -m studio preprocess ... --out CLIPS_DIR/obama_clip1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from studio import media
from studio.data.clip import Clip
from studio.face import layout
from studio.render.crop import CropTrack
from studio.render.facemap import facial_map, lower_face_mask
from studio.render.retrieval import RetrievalPool, RetrievalRenderer, _similarity

SIZE = 256
ROWS = (40, 170, 300, 430, 560)
SHIFT = 250


def main(clips_dir: str, neural_dir: str | None = None, out: str = "docs/results/contact_sheet.jpg") -> None:
    tpl = Clip.load(Path(clips_dir) / "obama_clip1")
    pool = RetrievalPool.build(tpl, size=SIZE)
    r = RetrievalRenderer(pool)
    neural = None
    if neural_dir:
        from studio.render.neural import NeuralRenderer

        neural = NeuralRenderer.load(neural_dir, device="cpu")
        assert neural.size == SIZE, neural.size
    crop_cfg = {} if neural is None else {"cfg": neural.crop_config}
    track = CropTrack.from_landmarks(tpl.landmarks, (tpl.meta.width, tpl.meta.height), valid=tpl.valid,
                                     **crop_cfg)
    t = tpl.meta.frames
    src = (np.arange(t) + SHIFT) % t
    stable = list(layout.STABLE)
    talk_px = np.stack([_similarity(tpl.landmarks[j, stable], tpl.landmarks[i, stable])
                        @ np.c_[tpl.landmarks[j, list(layout.TALKING)], np.ones(29)].T
                        for i, j in enumerate(src)]).transpose(0, 2, 1)  # (T, 29, 2) template px
    tp = np.stack([track.to_crop(tpl.landmarks[i], i, SIZE) for i in range(t)])
    pred = np.stack([track.to_crop(talk_px[i], i, SIZE).reshape(58) for i in range(t)])
    ex = np.stack([src - 5, src + 6], axis=1)  # pool frame index == clip frame index here
    picks = r.pick(tp, pred, exclude=ex)  # the whole sequence, as in a dub: temporal smoothing
    frames = media.read_frames(tpl.video_path, list(ROWS))
    dframes = media.read_frames(tpl.video_path, [int(src[i]) for i in ROWS])
    rows = []
    for k, i in enumerate(ROWS):
        crop = track.crop(frames[k], i, SIZE)
        fmap = facial_map(crop, tp[i], pred[i])
        out_img = r.render_frame(crop, tp[i], pred[i], int(picks[i])).image
        ref = track.crop(dframes[k], int(src[i]), SIZE)
        cols = [crop, fmap, out_img]
        if neural is not None:
            nmap = facial_map(crop, tp[i], pred[i], neural.facemap_config)
            lower = (lower_face_mask(tp[i], pred[i], SIZE, neural.facemap_config.dilation * SIZE / 256)
                     if neural.cfg.with_template else None)
            cols.append(neural.render_frame(crop, nmap, lower))
        rows.append(np.concatenate(cols + [ref], axis=1))
    sheet = np.concatenate(rows, axis=0)
    head = np.full((24, sheet.shape[1], 3), 255, np.uint8)
    names = ("template", "facial map", "retrieval") + (("neural",) if neural is not None else ()) + ("landmark source",)
    for c, name in enumerate(names):
        cv2.putText(head, name, (c * SIZE + 8, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    sheet = np.concatenate([head, sheet], axis=0)
    cv2.imwrite(out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(out, sheet.shape)  # a script's output


if __name__ == "__main__":
    main(*sys.argv[1:])
