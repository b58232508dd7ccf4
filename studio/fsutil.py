"""File-system helpers: content hashes and atomic writes (a crash never leaves a half file)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    Works for files and folders. On any exception the temporary is removed and ``target`` is left
    exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller creates a file or a folder at this path
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON via a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def json_safe(value):
    """For reports: numpy scalars -> Python numbers, NaN / inf -> None, floats rounded to 4
    decimals, recursively through dicts, lists and tuples."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return round(v, 4) if math.isfinite(v) else None
    return value


def read_npz(path, what: str, hint: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """The arrays ``keys`` (and those of ``optional`` that are present) of a small npz file,
    loaded without pickle. A missing or unreadable file, or a missing key, is a CheckpointError
    naming ``what`` (e.g. "Conditioning file") with ``hint``."""
    import numpy as np

    from studio.errors import CheckpointError

    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: np.asarray(z[k]) for k in keys}
            out.update({k: np.asarray(z[k]) for k in optional if k in z.files})
    except FileNotFoundError:
        raise CheckpointError(f"{what} missing: {path}.", hint) from None
    except Exception as exc:
        raise CheckpointError(f"{what} {path} is unreadable: {exc}.", hint) from None
    return out


def read_json(path: str | os.PathLike[str], missing: str, hint: str) -> Any:
    """The parsed JSON of a small checkpoint/metadata file. A missing file is a CheckpointError
    saying ``missing`` (e.g. "X is not a subject folder (no subject.json)."); an unreadable one
    (I/O error, bad JSON, not UTF-8) a CheckpointError naming the file; both with ``hint``."""
    from studio.errors import CheckpointError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(missing, hint) from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or not UTF-8 at all
        raise CheckpointError(f"{path} is unreadable: {exc}.", hint) from None
