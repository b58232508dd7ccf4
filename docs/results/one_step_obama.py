"""One-step dub of obama_clip1 with obama_clip3.wav, scored against the real clip 3 video.

``STUDIO_WEIGHTS_DIR=../shared/weights python docs/results/one_step_obama.py [WORK_DIR]``

The path a user takes with ``python -m studio dub --video obama_clip1.mp4 --speech obama_clip3.wav``:
no subject; the studio builds one from obama_clip1.mp4 and its own speech (obama_clip1.wav beside
it) starting from the shipped prior (presets/prior, trained without obama_clip3), then predicts.
The prediction is put into the template's pixels exactly as the pipeline does and compared with
landmarks detected on the real obama_clip3.mp4 (``studio.metrics.compare_tracks``), beside no lip
sync (the template's own mouth) and the speech-energy baseline. One JSON line on stdout.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from studio.data.preprocess import preprocess  # noqa: E402
from studio.metrics import compare_tracks, resample, score_energy  # noqa: E402
from studio.pipeline import Pipeline  # noqa: E402

V = Path(os.environ.get("STUDIO_SHARED", REPO.parent / "shared")) / "media" / "video"

if __name__ == "__main__":
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="one-step-"))
    os.environ["STUDIO_CACHE_DIR"] = str(work / "cache")  # an empty cache: the subject is built
    pipe = Pipeline(work_dir=work / "pipe")
    subject = pipe.subject_for_video(V / "obama_clip1.mp4")
    speech = pipe.speech(V / "obama_clip3.wav")
    tpl = pipe.template(subject, None)
    pred = pipe.predict(subject, speech, tpl, "ours")
    lms = pipe.landmarks(pred, tpl, subject)
    real = preprocess(V / "obama_clip3.mp4", work / "real3", audio=V / "obama_clip3.wav", progress=False)
    n = real.meta.frames
    dub = resample(lms.points, lms.fps, n, real.meta.fps)
    none = resample(tpl.landmarks[pred.frame_index], lms.fps, n, real.meta.fps)
    energy = resample(pred.energy, lms.fps, n, real.meta.fps)
    rows = {"dub": compare_tracks(dub, real.landmarks, real.valid),
            "template": compare_tracks(none, real.landmarks, real.valid),
            "energy": score_energy(energy, real.landmarks, real.valid)}
    mapping = json.loads((subject.mapping_dir("ours") / "config.json").read_text())
    print(json.dumps({"subject": str(subject.directory), "mapping_result": mapping["result"],
                      "audio_shift": mapping.get("identity", {}).get("audio_shift"),
                      **{f"{row}_{k}": round(float(v[k]), 3) for row, v in rows.items()
                         for k in ("inner_r", "inner_lag", "inner_amplitude")}}))
