"""Synthetic data of docs/results/mapping.md: `python docs/results/make_synthetic_data.py OUT_DIR`.

One identity (shape_variation=0: the paper's person-specific setting); the generator's default
head motion, camera distance and detector noise; training and test speech disjoint.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from studio.data.synth import SynthConfig, synthesize  # noqa: E402

S = REPO.parent / "shared" / "media"
TRAIN = [(1, S / "speech/english_60s_16k.wav"), (2, S / "video/andrew_clip_1.wav"),
         (3, S / "video/andrew_clip_2.wav"), (4, S / "video/reagan_clip1.wav"), (5, S / "video/obama_clip2.wav")]
TEST = [(101, S / "speech/abstract_reading.mp3", 33), (102, S / "video/obama_clip1.wav", 21),
        (103, S / "video/obama_clip3.wav", 21), (104, S / "speech/macron_48k_stereo.wav", 12),
        (105, S / "speech/radio_address_16k_stereo.wav", 8)]

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cfg = SynthConfig(shape_variation=0.0)
    for seed, speech in TRAIN:
        synthesize(out / f"train{seed}", 120, seed, speech=speech, render=False, config=cfg)
    for seed, speech, seconds in TEST:
        synthesize(out / f"test{seed}", seconds, seed, speech=speech, render=False, config=cfg)
