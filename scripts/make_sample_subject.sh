#!/usr/bin/env bash
# Rebuild presets/sample_subject (all seven mapping variants + retrieval pool) from the bundled
# sample footage. Needs the MediaPipe face_landmarker.task weights (downloaded on first use, or
# STUDIO_WEIGHTS_DIR pointing at a folder holding it). About 5 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
.venv/bin/python -m studio make-subject sample_media/template.mp4 --out "$tmp/sample_subject" \
  --variants all --name "Sample (astronaut)" --preset cpu --seed 0
rm -rf presets/sample_subject
mv "$tmp/sample_subject" presets/sample_subject
rmdir "$tmp"
