"""Command line: ``python -m studio COMMAND ...`` (also the ``studio`` console script).

Each command lives in the module that owns its work; that module defines
``add_cli_arguments(parser)`` and ``cli(args) -> int``. Modules are imported only when their
command runs, so ``--help`` is instant. A StudioError is printed as a message (exit 2), never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from studio.errors import StudioError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("studio.data.preprocess", "landmarks, head pose and audio features of a video -> clip cache"),
    "synth": ("studio.data.synth", "synthetic talking-head clip with ground truth (large head rotation)"),
    "train-mapping": ("studio.train.mapping", "train an audio -> landmark model (a variant of the cascade or a baseline)"),
    "evaluate": ("studio.train.evaluate", "evaluate a mapping checkpoint on clips (JSON on the last line)"),
    "ablate": ("studio.train.ablate", "train and evaluate all seven variants -> the paper's Table 1"),
    "facemap": ("studio.render.facemap", "draw the synthetic facial map of one frame"),
    "train-renderer": ("studio.train.renderer", "train the neural (pix2pixHD + self-attention) renderer"),
    "train-prior": ("studio.train.prior", "train the multi-speaker prior mapping (presets/prior) on ../shared"),
    "loso": ("studio.train.loso", "leave-one-speaker-out evaluation of the prior (dubbing protocol) -> table"),
    "loso-groups": ("studio.train.loso_groups", "leave-speaker-out by folds of speakers, pooled score groups, permutation null -> table"),
    "make-subject": ("studio.subject", "build a subject folder from footage of one person"),
    "dub": ("studio.pipeline", "dub a template video with new speech"),
    "dub-batch": ("studio.batch", "dub every row of a manifest CSV (local worker pool or Ray), resumable"),
    "sync-check": ("studio.sync", "score a rendered dub's mouth against the real video of its speech (JSON on the last line)"),
    "integrity": ("studio.render.integrity", "re-detect a dub's face frame by frame against what it was asked to draw; pixels changed outside the face; contact sheet (JSON on the last line)"),
    "quality": ("studio.render.quality", "flicker, sharpness and seam of a rendered dub against a real video (JSON on the last line)"),
    "bench": ("studio.bench", "measure speed and memory of every stage -> JSON + markdown report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Lip Sync Studio command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the global part first; the chosen command's module builds its own sub-parser.
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return 0 if not argv else 2
    logging.basicConfig(level=logging.DEBUG if top.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    module_name, help_text = COMMANDS[top.command]
    module = importlib.import_module(module_name)
    cmd = argparse.ArgumentParser(prog=f"studio {top.command}", description=help_text)
    module.add_cli_arguments(cmd)
    idx = argv.index(top.command)
    args = cmd.parse_args(argv[idx + 1:])
    try:
        return int(module.cli(args) or 0)
    except StudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
