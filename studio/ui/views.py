"""Pictures and plots the studio shows: pure functions of arrays (no gradio, no I/O).

- :func:`overlay` — a face crop with the predicted 29 talking points and the template's own
  points drawn in distinct colours.
- :func:`timeline_figure` — plotly: mouth and jaw opening, mouth PCA coefficients and head pose
  over time, silence shaded, the current frame marked.
- :func:`loss_figure` — plotly: training loss curves (live, while a subject is built).
- :func:`tile` — panels side by side with a caption each (variant comparisons).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from studio.face import layout

# RGB colours
PREDICTED = (255, 96, 0)  # orange: the network's (edited) talking points
TEMPLATE = (0, 200, 255)  # cyan: the template frame's own talking points
OTHER = (235, 235, 235)  # the rest of the face (not predicted)
DISPLAY_SIZE = 384  # side of the face crop the viewer shows, px

_TALK_CONTOURS = [c for c in layout.CONTOURS if c[0] in ("outer_lip", "inner_lip")]


def overlay(face: np.ndarray, template_pts: np.ndarray, predicted_pts: np.ndarray,
            caption: str | None = None) -> np.ndarray:
    """Draw on a copy of ``face`` (S, S, 3) uint8: the rest of the face (the template's other 39
    points, small dots), the template's talking points (cyan rings and lines) and the predicted
    ones (orange dots and lines), with a legend.

    template_pts, predicted_pts: (68, 2) in ``face`` pixels; only the 29 talking points of
    ``predicted_pts`` are drawn. Returns (S, S, 3) uint8.
    """
    img = np.ascontiguousarray(face.copy())
    s = img.shape[0]
    shift = 4  # cv2 sub-pixel drawing: coordinates and radii in 1/16 px
    one = 1 << shift
    r = max(2.0, s / 150)
    q = lambda p: np.round(np.asarray(p, np.float64) * one).astype(np.int32)  # noqa: E731
    rad = lambda x: int(round(x * one))  # noqa: E731
    tpl = np.asarray(template_pts, np.float64)
    pred = np.asarray(predicted_pts, np.float64)
    talking = set(layout.TALKING)
    for i in range(68):
        if i not in talking:
            cv2.circle(img, tuple(q(tpl[i])), rad(0.6 * r), OTHER, -1, cv2.LINE_AA, shift)
    width = max(1, int(round(s / 300)))
    for pts, colour in ((tpl, TEMPLATE), (pred, PREDICTED)):
        for _, idx, closed in _TALK_CONTOURS:
            cv2.polylines(img, [q(pts[list(idx)])], closed, colour, width, cv2.LINE_AA, shift)
        cv2.polylines(img, [q(pts[list(layout.JAW)])], False, colour, width, cv2.LINE_AA, shift)
    for i in layout.TALKING:
        cv2.circle(img, tuple(q(tpl[i])), rad(r + 1), TEMPLATE, width, cv2.LINE_AA, shift)
    for i in layout.TALKING:
        cv2.circle(img, tuple(q(pred[i])), rad(r), PREDICTED, -1, cv2.LINE_AA, shift)
    scale = s / 700
    line = int(round(24 * s / 384))
    _label(img, "predicted", (8, int(1.5 * line)), PREDICTED, scale)
    _label(img, "template", (8, int(2.5 * line)), TEMPLATE, scale)
    if caption:
        _label(img, caption, (8, s - 10), (255, 255, 255), scale)
    return img


def _label(img: np.ndarray, text: str, org: tuple[int, int], colour, scale: float) -> None:
    """Text on a dark box (readable on any background). org: the text's bottom-left corner."""
    thick = max(1, int(round(2 * scale)))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = org
    x0, y0, x1, y1 = max(0, x - 3), max(0, y - h - 4), min(img.shape[1], x + w + 3), min(img.shape[0], y + base + 2)
    img[y0:y1, x0:x1] = (img[y0:y1, x0:x1].astype(np.uint16) * 2 // 5).astype(np.uint8)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def tile(panels: Sequence[np.ndarray], captions: Sequence[str] = ()) -> np.ndarray:
    """Panels (each (S, S, 3) uint8, same size) side by side, a caption on each: (S, n*S, 3).
    The width is rounded up to an even number of pixels (H.264 needs even sizes)."""
    out = np.concatenate([np.asarray(p) for p in panels], axis=1)
    if out.shape[1] % 2:
        out = np.pad(out, ((0, 0), (0, 1), (0, 0)))
    s = panels[0].shape[0]
    for k, text in enumerate(captions):
        _label(out, text, (k * panels[0].shape[1] + 8, s - 10), (255, 255, 0), s / 500)
    return np.ascontiguousarray(out)


def silence_runs(voiced: np.ndarray) -> list[tuple[int, int]]:
    """(T,) bool -> [(start, end)] frame runs where nobody speaks, end exclusive."""
    v = np.asarray(voiced, bool)
    if v.size == 0:
        return []
    edges = np.flatnonzero(np.diff(v.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [v.size]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if not v[a]]


def _r(x: np.ndarray) -> list[float]:
    return np.round(np.asarray(x, np.float64), 4).tolist()


def timeline_figure(fps: float, mouth: np.ndarray, jaw: np.ndarray, coefs: np.ndarray, pose: np.ndarray,
                    voiced: np.ndarray, frame: int | None = None, mouth_net: np.ndarray | None = None,
                    jaw_net: np.ndarray | None = None):
    """The Dub tab's timeline (plotly Figure) over T output frames at ``fps``.

    Three stacked panels sharing the time axis: mouth and jaw opening after edits (normalized
    units; ``mouth_net`` / ``jaw_net`` (T,) the same before edits, dotted), the mouth PCA
    coefficients coefs (T, 13) (the first three shown, the rest a click away in the legend), and
    head pose (T, 3) yaw, pitch, roll in degrees. voiced (T,) bool: silent runs are shaded grey.
    frame: the current frame, marked with a red line.

    Built from plain dicts without plotly's per-property validation: ~5 ms instead of ~250 ms
    for make_subplots, which matters because it is redrawn on every edit.
    """
    import plotly.graph_objects as go

    tt = _r(np.arange(len(mouth)) / fps)
    panels = (("y", (0.70, 1.0), "Mouth / jaw opening (face scales)"), ("y2", (0.36, 0.64), "Mouth PCA coefficients"),
              ("y3", (0.0, 0.30), "Head pose (degrees)"))

    def line(y, name, axis, **style):
        return {"type": "scatter", "mode": "lines", "x": tt, "y": _r(y), "name": name, "xaxis": "x",
                "yaxis": axis, **style}

    data = [line(mouth, "mouth opening", "y", line={"color": "#ff6000"}),
            line(jaw, "jaw opening", "y", line={"color": "#1f77b4"})]
    if mouth_net is not None:
        data.append(line(mouth_net, "mouth (network)", "y", line={"color": "#ff6000", "dash": "dot", "width": 1}))
    if jaw_net is not None:
        data.append(line(jaw_net, "jaw (network)", "y", line={"color": "#1f77b4", "dash": "dot", "width": 1}))
    data += [line(coefs[:, k], f"PC{k + 1}", "y2", line={"width": 1}, visible=True if k < 3 else "legendonly")
             for k in range(coefs.shape[1])]
    data += [line(pose[:, k], name, "y3", line={"width": 1}) for k, name in enumerate(("yaw", "pitch", "roll"))]
    shapes = [{"type": "rect", "xref": "x", "yref": "paper", "x0": a / fps, "x1": b / fps, "y0": 0, "y1": 1,
               "fillcolor": "grey", "opacity": 0.18, "line": {"width": 0}, "layer": "below"}
              for a, b in silence_runs(voiced)]
    if frame is not None:
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": frame / fps, "x1": frame / fps,
                       "y0": 0, "y1": 1, "line": {"color": "red", "width": 2}})
    layout = {"height": 560, "margin": {"l": 40, "r": 10, "t": 50, "b": 40}, "uirevision": "timeline",
              "legend": {"font": {"size": 10}}, "shapes": shapes,
              "xaxis": {"anchor": "y3", "domain": [0, 1], "title": {"text": "time (s)"}},
              "annotations": [{"text": title, "xref": "paper", "yref": "paper", "x": 0.5, "y": dom[1],
                               "yanchor": "bottom", "xanchor": "center", "showarrow": False}
                              for _, dom, title in panels]}
    for axis, dom, _ in panels:
        layout["yaxis" + axis[1:]] = {"domain": list(dom), "anchor": "x"}
    return go.Figure(data=data, layout=layout, _validate=False)


def loss_figure(histories: dict[str, list[dict]]):
    """Training curves: {name: [{"epoch", "train_loss", "val_loss"}, ...]} -> plotly Figure."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
        for key, dash in (("train_loss", "solid"), ("val_loss", "dot")):
            ys = [h.get(key) for h in hist]
            if any(y is not None for y in ys):
                fig.add_trace(go.Scatter(x=ep, y=ys, name=f"{name} {key.split('_')[0]}", line={"dash": dash}))
    fig.update_layout(height=320, margin={"l": 40, "r": 10, "t": 30, "b": 40}, title="Mapping training loss",
                      xaxis_title="epoch", yaxis_type="log")
    return fig
