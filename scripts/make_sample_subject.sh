#!/usr/bin/env bash
# Rebuild presets/sample_subject from the bundled sample footage (sample_media/template.mp4, a cut
# of a White House weekly address; see sample_media/README.md): 'ours' fine-tuned from the bundled
# multi-speaker prior (presets/prior, as a default make-subject does), the six other mapping
# variants for the ablations tab, and the retrieval pool. The face model ships with the package,
# so nothing is downloaded. About 5-10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
"$python" -m studio make-subject sample_media/template.mp4 --out "$tmp/sample_subject" \
  --variants all --prior presets/prior --name "Sample (weekly address)" --preset cpu --seed 0
rm -rf presets/sample_subject
mv "$tmp/sample_subject" presets/sample_subject
rmdir "$tmp"
