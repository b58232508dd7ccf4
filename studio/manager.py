"""The one in-process owner of loaded models and subjects.

``ModelManager.get(key, loader)`` returns the object stored under ``key``, calling
``loader(device)`` the first time it is asked for. Loaded objects are kept under a memory bound
and the least recently used are dropped when a new one does not fit.

Thread safety: many threads (Gradio's workers, a CLI's prefetch) may ask at once.

- A key is loaded once: the first thread that asks runs the loader; others asking for the same
  key meanwhile wait for it and receive the same object. Different keys load in parallel.
- Nobody sees a half-loaded object: an object is published only after its loader returned.
- A loader that raises stores nothing; its exception is raised in the loading thread and in
  every thread that was waiting for that key. The next request tries again.
- Per-request settings are never stored here: they are arguments of the pipeline's functions.
  A key names everything that changes what is loaded (e.g. ``("mapping", subject_dir, variant,
  device)``); the loaded objects are treated as read-only by their users.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BYTES = 2 * 1024**3
_MAX_DEPTH = 6  # how deep estimate_size looks into containers and object attributes


def select_device(prefer: str | None = None) -> str:
    """'cuda' when CUDA is available (or ``prefer`` says so and it is), else 'cpu'.

    ``prefer`` (or the STUDIO_DEVICE environment variable) may be 'cpu', 'cuda' or 'cuda:N';
    asking for CUDA where there is none falls back to the CPU with a warning.
    """
    prefer = prefer or os.environ.get("STUDIO_DEVICE") or None
    if prefer == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return prefer if prefer and prefer.startswith("cuda") else "cuda"
    if prefer and prefer.startswith("cuda"):
        log.warning("CUDA was asked for (%s) but is not available; using the CPU", prefer)
    return "cpu"


def estimate_size(obj: Any) -> int:
    """Bytes held by numpy arrays and torch tensors/modules inside ``obj`` (approximate).

    Looks into dicts, lists, tuples, sets, dataclasses and plain objects' attributes, a few
    levels deep; each array or tensor storage is counted once. Other Python objects count 0.
    """
    torch = sys.modules.get("torch")  # nothing can hold a tensor if torch was never imported
    seen: set[int] = set()

    def size(o: Any, depth: int) -> int:
        if id(o) in seen or depth > _MAX_DEPTH:
            return 0
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            if base is not o:
                if id(base) in seen:
                    return 0
                seen.add(id(base))
            return int(base.nbytes)
        if torch is not None:
            if isinstance(o, torch.Tensor):
                try:
                    key = o.untyped_storage().data_ptr()
                    n = o.untyped_storage().nbytes()
                except (RuntimeError, NotImplementedError):
                    key, n = id(o), o.element_size() * o.numel()
                if ("storage", key) in seen_storages:
                    return 0
                seen_storages.add(("storage", key))
                return int(n)
            if isinstance(o, torch.nn.Module):
                return sum(size(t, depth + 1) for t in list(o.parameters()) + list(o.buffers())) + sum(
                    size(v, depth + 1) for k, v in vars(o).items() if not k.startswith("_"))
        if isinstance(o, (str, bytes, int, float, bool, type(None))):
            return 0
        if isinstance(o, dict):
            return sum(size(v, depth + 1) for v in o.values())
        if isinstance(o, (list, tuple, set, frozenset)):
            return sum(size(v, depth + 1) for v in o)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return sum(size(getattr(o, f.name, None), depth + 1) for f in dataclasses.fields(o))
        attrs = getattr(o, "__dict__", None)
        if isinstance(attrs, dict):
            return sum(size(v, depth + 1) for v in attrs.values())
        slots = getattr(type(o), "__slots__", ())
        return sum(size(getattr(o, s, None), depth + 1) for s in ([slots] if isinstance(slots, str) else slots))

    seen_storages: set[tuple[str, int]] = set()
    return size(obj, 0)


@dataclasses.dataclass
class _Entry:
    value: Any
    size: int
    load_seconds: float
    hits: int = 0


class _Loading:
    """A load in flight: waiters block on ``done`` and then read ``value`` or ``error``."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ModelManager:
    """Lazily loaded, memory-bounded (LRU), thread-safe store of models and subjects.

    max_bytes: the memory bound for everything held (estimated with :func:`estimate_size`
        unless ``get`` is told the size). An object bigger than the bound alone is still kept
        (it is in use) while everything else is dropped.
    device: 'cpu', 'cuda', 'cuda:N' or None (CUDA when available, else CPU; resolved lazily).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, device: str | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._prefer = device
        self._device: str | None = None
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # oldest use first
        self._loading: dict[Hashable, _Loading] = {}
        self._counts = {"hits": 0, "misses": 0, "loads": 0, "failures": 0, "evictions": 0}

    @property
    def device(self) -> str:
        """The device models are loaded onto (chosen once, on first use)."""
        with self._lock:
            if self._device is None:
                self._device = select_device(self._prefer)
            return self._device

    def get(self, key: Hashable, loader: Callable[[str], T], size_bytes: int | None = None) -> T:
        """The object under ``key``; ``loader(device)`` makes it on first use (once, whoever asks).

        size_bytes: the object's memory, if known; else estimated after loading.
        Raises whatever the loader raised (in every thread that waited for this key).
        """
        device = self.device
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.hits += 1
                self._counts["hits"] += 1
                return entry.value
            self._counts["misses"] += 1
            pending = self._loading.get(key)
            owner = pending is None
            if owner:
                pending = self._loading[key] = _Loading()
        assert pending is not None
        if not owner:
            if pending.owner == threading.get_ident():
                raise RuntimeError(f"the loader of {key!r} asked for {key!r} itself")
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value

        start = time.perf_counter()
        try:
            value = loader(device)
        except BaseException as exc:
            with self._lock:
                self._counts["failures"] += 1
                del self._loading[key]
            pending.error = exc
            pending.done.set()
            log.debug("loading %r failed: %s", key, exc)
            raise
        seconds = time.perf_counter() - start
        size = int(size_bytes) if size_bytes is not None else estimate_size(value)
        with self._lock:
            self._entries[key] = _Entry(value, size, seconds)
            self._counts["loads"] += 1
            del self._loading[key]
            self._evict_over_budget(keep=key)
        pending.value = value
        pending.done.set()
        log.debug("loaded %r (%.1f MB) in %.2f s on %s", key, size / 1e6, seconds, device)
        return value

    def _evict_over_budget(self, keep: Hashable) -> None:
        """Drop least recently used entries until the total fits (caller holds the lock)."""
        total = sum(e.size for e in self._entries.values())
        for old in list(self._entries):
            if total <= self.max_bytes:
                break
            if old == keep:
                continue
            total -= self._entries.pop(old).size
            self._counts["evictions"] += 1
            log.debug("evicted %r", old)
        if total > self.max_bytes:
            log.warning("%r alone (%.0f MB) exceeds the model memory bound (%.0f MB)", keep,
                        self._entries[keep].size / 1e6, self.max_bytes / 1e6)

    def evict(self, key: Hashable) -> bool:
        """Drop ``key`` if held; True if it was."""
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        """Drop everything held (loads in flight still complete and are stored)."""
        with self._lock:
            self._entries.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[Hashable]:
        """Held keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> dict[str, Any]:
        """A snapshot for the UI: device, bound, bytes used, counters and one row per entry."""
        with self._lock:
            rows = [{"key": _key_text(k), "size_bytes": e.size, "hits": e.hits,
                     "load_seconds": round(e.load_seconds, 4)} for k, e in reversed(self._entries.items())]
            return {
                "device": self._device or "(not chosen yet)",
                "max_bytes": self.max_bytes,
                "used_bytes": sum(e.size for e in self._entries.values()),
                "entries": rows,  # most recently used first
                "loading": [_key_text(k) for k in self._loading],
                **self._counts,
            }


def _key_text(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " / ".join(str(k) for k in key)
    return str(key)


_default: ModelManager | None = None
_default_lock = threading.Lock()


def default_manager() -> ModelManager:
    """The process-wide manager shared by the CLI and the studio (made on first use).

    Its bound is STUDIO_MODEL_MEMORY_MB megabytes (default 2048); its device STUDIO_DEVICE.
    """
    global _default
    with _default_lock:
        if _default is None:
            mb = float(os.environ.get("STUDIO_MODEL_MEMORY_MB", DEFAULT_MAX_BYTES / 2**20))
            _default = ModelManager(max_bytes=int(mb * 2**20))
        return _default
