"""The environment is the one scripts/setup.sh promises."""

import subprocess
import sys
from importlib import metadata


def test_exactly_one_opencv_distribution():
    names = {d.metadata["Name"].lower() for d in metadata.distributions()}
    opencv = sorted(n for n in names if n.startswith("opencv"))
    assert opencv == ["opencv-contrib-python"], opencv
    import cv2

    assert cv2.__version__ == metadata.version("opencv-contrib-python").rsplit(".", 1)[0]
    assert hasattr(cv2, "ximgproc")  # a contrib module: the contrib build is the one imported


def test_cli_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "studio", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("preprocess", "synth", "train-mapping", "evaluate", "ablate", "dub", "bench"):
        assert cmd in out.stdout


def test_import_has_no_heavy_side_effects():
    code = "import sys, studio, studio.cli; print('torch' in sys.modules, 'gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
