"""A small thread-safe LRU mapping for data caches (decoded speech, templates, predictions, UI
thumbnails). Models are the model manager's (``studio.manager``), which bounds them by memory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np


def nbytes(value: Any) -> int:
    """Bytes held by ``value``'s numpy arrays (an array, or a tuple/list of them); 0 otherwise."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 0


class LRU:
    """At most ``size`` entries and, when ``max_bytes`` is given, at most that many bytes of numpy
    arrays (:func:`nbytes`); the least recently used entry is dropped first (the newest entry is
    always kept, even when it alone is larger)."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._d: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Bytes of numpy arrays held now."""
        with self._lock:
            return sum(self._bytes.values())

    def get(self, key: Hashable) -> Any:
        """The value under ``key`` (now the most recent), or None."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            self._bytes[key] = nbytes(value) if self.max_bytes is not None else 0
            total = sum(self._bytes.values())
            while len(self._d) > self.size or (self.max_bytes is not None and total > self.max_bytes
                                               and len(self._d) > 1):
                old, _ = self._d.popitem(last=False)
                total -= self._bytes.pop(old)

    def get_or(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value under ``key``, made by ``make()`` on a miss. ``make`` runs outside the lock:
        two threads may both make it; both get a valid value."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = make()
        self.put(key, value)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)
