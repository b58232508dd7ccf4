"""Frozen configuration dataclasses and presets (presets/*.toml).

Each module owns the dataclass for its own settings; this module turns TOML sections into them,
rejecting unknown keys so that a typo in a preset is an error rather than a silent default.
A per-request change is ``dataclasses.replace(cfg, field=value)``, never mutation.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from studio.errors import InputError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = Path(os.environ.get("STUDIO_PRESETS_DIR", REPO_ROOT / "presets"))


def cache_dir() -> Path:
    """Where the studio keeps what it can rebuild (one-step subjects, downloads):
    ``$STUDIO_CACHE_DIR``, default ``~/.cache/lip-sync-studio``. Read at call time."""
    return Path(os.environ.get("STUDIO_CACHE_DIR") or Path.home() / ".cache" / "lip-sync-studio")


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise InputError naming the valid ones.

    Lists become tuples so that the result stays hashable and frozen.
    """
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(
            f"Unknown setting(s) {unknown} in {where or cls.__name__}.",
            f"Valid settings are: {sorted(names)}.",
        )
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**clean)  # type: ignore[call-arg]
    except (TypeError, ValueError) as exc:
        raise InputError(f"Invalid settings in {where or cls.__name__}: {exc}", "Fix the preset file.") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def preset_path(name: str | os.PathLike[str]) -> Path:
    """Resolve a preset name (``paper``, ``cpu``) or a path to a .toml file."""
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = PRESETS_DIR / f"{name}.toml"
    if candidate.exists():
        return candidate
    known = sorted(x.stem for x in PRESETS_DIR.glob("*.toml"))
    raise InputError(f"Unknown preset {str(name)!r}.", f"Use one of {known} or a path to a .toml file.")


def load_preset(name: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read a preset file into ``{section: {key: value}}``."""
    path = preset_path(name)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML must be UTF-8
        raise InputError(f"Preset {path} is not valid TOML: {exc}", "Fix the file's syntax (UTF-8 text).") from exc
