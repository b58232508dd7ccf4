#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv, offline-safe after the first run.
# Usage: bash scripts/setup.sh        (idempotent: skips work when pyproject.toml is unchanged)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f .venv/.setup-stamp ] && [ "$(cat .venv/.setup-stamp)" = "$stamp" ]; then
  exit 0
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip wheel
# The CPU build of torch first: an unpinned torch would pull several GB of CUDA packages.
pip install torch==2.13.0
pip install -e ".[dev,cluster]"
# face-alignment depends on opencv-python, mediapipe on opencv-contrib-python; both ship a `cv2`
# package into the same folder and whichever is installed last wins, file by file. Keep exactly
# one: remove both, then reinstall the contrib build (a superset) alone.
pip uninstall -y opencv-python opencv-python-headless opencv-contrib-python >/dev/null 2>&1 || true
pip install --no-deps --force-reinstall opencv-contrib-python==5.1.0.95
echo "$stamp" > .venv/.setup-stamp
