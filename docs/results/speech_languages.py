"""Does the prior's mouth follow speech in languages it never heard? (issue 22)

``python docs/results/speech_languages.py [--prior presets/prior]``

Each speech file of ../shared/media/speech is turned into features (logfbank aligned to video
frames, then the prior's own ``audio_norm``) and dubbed by the prior onto the first 10 s of
obama_clip1 (preprocessed into a temporary folder). There is no real mouth for these files, so
the measure is the predicted inner-lip opening against the speech's own log RMS energy (best r
within +-3 frames) and the opening's spread relative to the English files: a prior that fell
apart on a language would give r near 0 or a flat mouth. Prints one JSON line per file.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from studio.audio import features_for_video, frame_energy
from studio.data.preprocess import preprocess
from studio.media import read_audio
from studio.metrics import best_lag, log_energy, openings
from studio.models.checkpoint import MappingModel
from studio.train.evaluate import dub_landmarks, track
from studio.train.prior import PRIOR_DIR, adapt_prior
from studio.train.windows import clip_arrays

FILES = ("english_60s_16k.wav", "radio_address_16k_stereo.wav", "macron_48k_stereo.wav",
         "german_24bit_extensible.wav", "mandarin_news_48k.wav")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prior", default=str(PRIOR_DIR))
    ap.add_argument("--shared", default=os.environ.get("STUDIO_SHARED", "../shared"))
    args = ap.parse_args()
    shared = Path(args.shared)
    tmp = Path(tempfile.mkdtemp(prefix="speech-languages-"))
    v = shared / "media" / "video"
    tpl = preprocess(v / "obama_clip1.mp4", tmp / "tpl", audio=v / "obama_clip1.wav", stop=300, progress=False)
    model = MappingModel.load(adapt_prior(args.prior, [clip_arrays(tpl)], tmp / "subject"))
    t = track(tpl)
    for name in FILES + ("silence",):
        wave = np.zeros(16000 * 5, np.float32) if name == "silence" else read_audio(shared / "media" / "speech" / name)
        frames = int(len(wave) / 16000 * t.fps)
        idx = np.arange(frames) % t.frames
        talk = model.predict(features_for_video(wave, t.fps, frames), t.pose[idx], t.cheek[idx], fps=t.fps)
        inner = openings(dub_landmarks(talk, t, idx))["inner"]
        energy = log_energy(frame_energy(wave, frames, t.fps))
        lag, r = best_lag(inner, energy, 3)
        print(json.dumps({"speech": name, "seconds": round(len(wave) / 16000, 1), "energy_r_best": round(r, 3),
                          "lag": lag, "opening_std": round(float(inner.std()), 4),
                          "opening_mean": round(float(inner.mean()), 4)}))


if __name__ == "__main__":
    main()
