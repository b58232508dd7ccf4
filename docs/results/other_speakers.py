"""Dubbing protocol on the other shared speakers: first 70 % footage, last 30 % speech.

Clips are read from /tmp/d/NAME (made by `python -m studio preprocess`), models written to /tmp/m;
the table in other_speakers.md comes from /tmp/m/speakers.json.
"""
import json, sys, copy, numpy as np
from studio.config import load_preset
from studio.data.clip import Clip
from studio.train.mapping import train_mapping
from studio.models.checkpoint import MappingModel
from studio.train.evaluate import evaluate_dubbing, dub_predict, track
from studio.metrics import openings, pearson
preset = load_preset(sys.argv[1] if len(sys.argv) > 1 else "cpu")
# 3.5-5.6 s of footage: no room for a 20 % validation block of 64-frame windows; train a fixed
# number of epochs on all of it, 32-frame windows
preset = copy.deepcopy(preset); preset["mapping_train"].update(val_fraction=0.0, window=32, stride=2, max_epochs=40)
rows = {}
for name in ["katie_hill", "aoc", "theresa_may_5s", "young_man_outdoors"]:
    clip = Clip.load(f"/tmp/d/{name}")
    out = train_mapping([clip], "ours", f"/tmp/m/spk_{name}", preset, seed=0, span=(0.0, 0.7))
    m = MappingModel.load(out)
    d = evaluate_dubbing(m, [clip], clip, span=(0.7, 1.0), template_span=(0.0, 0.7))
    sp, tp = track(clip, (0.7, 1.0)), track(clip, (0.0, 0.7))
    dub, idx = dub_predict(m, sp, tp)
    copy_r = pearson(openings(dub)["inner"], openings(tp.landmarks[idx])["inner"])
    rows[name] = {r: {k: round(d[r][k], 3) for k in ("inner_r", "inner_lag", "inner_r_best", "inner_amplitude")}
                  for r in ("dub", "template", "energy", "paper") if r in d}
    rows[name]["copy_r"] = round(copy_r, 3); rows[name]["frames"] = sp.frames
    print(name, json.dumps(rows[name]), flush=True)
json.dump(rows, open("/tmp/m/speakers.json", "w"), indent=1)
