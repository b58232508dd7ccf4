"""studio.lru.LRU: bounded by entries and, optionally, by the bytes of the arrays it holds."""

import numpy as np
import pytest

from studio.lru import LRU, nbytes


def test_entries_bound_drops_the_least_recently_used():
    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # now the most recent
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2
    with pytest.raises(ValueError):
        LRU(0)


def test_bytes_bound_keeps_at_most_that_many_array_bytes():
    face = np.zeros((384, 384, 3), np.uint8)  # 442 KB, a viewer thumbnail
    c = LRU(256, max_bytes=4 * face.nbytes)
    for k in range(20):
        c.put(k, face.copy())
    assert len(c) == 4 and c.bytes == 4 * face.nbytes
    assert c.get(19) is not None and c.get(15) is None
    big = np.zeros(10 * face.nbytes, np.uint8)
    c.put("big", big)  # larger than the bound alone: kept (the newest), everything else dropped
    assert len(c) == 1 and c.get("big") is big
    assert nbytes((face, [face, 3])) == 2 * face.nbytes and nbytes("text") == 0
