"""r of a dub's predicted inner-lip opening against the real mouth at every lag in +-8 frames.

    .venv/bin/python docs/results/lag_curve.py CKPT_DIR SPEECH_CLIP_DIR TEMPLATE_CLIP_DIR

CKPT_DIR is a mapping checkpoint (e.g. SUBJECT/mapping/ours); the clip folders are what
``python -m studio preprocess`` writes (the speech clip with its own video, so that its real
mouth is known). The speech is dubbed onto the template as ``studio evaluate --protocol dubbing``
does. Beside each lag: the speech clip's own log energy against its own mouth, which shows where
that clip's sound sits relative to its picture (a reference whose energy peaks late makes every
prediction look late). A positive lag means the compared track is late.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from studio import metrics  # noqa: E402
from studio.data.clip import Clip  # noqa: E402
from studio.models.checkpoint import MappingModel  # noqa: E402
from studio.train import evaluate  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    model = MappingModel.load(argv[0])
    speech = evaluate.track(Clip.load(argv[1]))
    template = evaluate.track(Clip.load(argv[2]))
    points, _ = evaluate.dub_predict(model, speech, template)
    points = evaluate.on_speech_frames(points, template.fps, speech)
    pred = metrics.openings(points)["inner"]
    real = metrics.openings(speech.truth)["inner"]
    energy = metrics.log_energy(speech.energy)
    sys.stdout.write("lag  predicted  energy\n")
    for lag in range(-8, 9):
        sys.stdout.write(f"{lag:+d}   {metrics.lagged_r(pred, real, lag):.3f}     "
                         f"{metrics.lagged_r(energy, real, lag):.3f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
