"""ModelManager: load once under concurrency, LRU eviction under a memory bound, failures."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from studio.manager import ModelManager, default_manager, estimate_size, select_device


def test_slow_loader_from_8_threads_loads_once_and_all_get_the_same_object():
    manager = ModelManager(max_bytes=10**9, device="cpu")
    calls = []
    started = threading.Barrier(8)

    def loader(device):
        calls.append(device)
        time.sleep(0.2)  # long enough that every thread asks while the load is in flight
        return {"weights": np.ones(1000, np.float32), "done": True}

    def ask(_):
        started.wait()
        return manager.get("model", loader)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert calls == ["cpu"]
    assert all(r is results[0] for r in results)
    assert results[0]["done"] is True
    stats = manager.stats()
    assert stats["loads"] == 1 and stats["misses"] == 8 and stats["used_bytes"] == 4000


def test_nobody_sees_a_half_loaded_object():
    manager = ModelManager(max_bytes=10**9, device="cpu")
    in_loader = threading.Event()
    release = threading.Event()

    class Model:
        def __init__(self):
            self.ready = False

    def loader(device):
        m = Model()
        in_loader.set()
        release.wait(5)
        m.ready = True
        return m

    seen = []
    owner = threading.Thread(target=lambda: seen.append(manager.get("m", loader)))
    owner.start()
    assert in_loader.wait(5)
    assert "m" not in manager  # not published while loading
    waiter = threading.Thread(target=lambda: seen.append(manager.get("m", loader)))
    waiter.start()
    time.sleep(0.05)
    assert seen == []  # the waiter is blocked, not handed a partial model
    release.set()
    owner.join(5)
    waiter.join(5)
    assert len(seen) == 2 and all(m.ready for m in seen) and seen[0] is seen[1]


def test_different_keys_load_in_parallel():
    manager = ModelManager(max_bytes=10**9, device="cpu")
    both_inside = threading.Barrier(2, timeout=5)

    def loader(device):
        both_inside.wait()  # deadlocks (BrokenBarrierError) if loads were serialized
        return object()

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda k: manager.get(k, loader, size_bytes=1), ["a", "b"])
    assert a is not b


def test_lru_eviction_order():
    manager = ModelManager(max_bytes=300, device="cpu")
    for key in ["a", "b", "c"]:
        manager.get(key, lambda d: key, size_bytes=100)
    assert manager.keys() == ["a", "b", "c"]
    manager.get("a", lambda d: pytest.fail("a is held; no reload"))  # a is now most recent
    manager.get("d", lambda d: "d", size_bytes=100)  # over budget: b is the least recent
    assert manager.keys() == ["c", "a", "d"]
    manager.get("e", lambda d: "e", size_bytes=200)  # needs two slots: c then a go
    assert manager.keys() == ["d", "e"]
    stats = manager.stats()
    assert stats["evictions"] == 3 and stats["used_bytes"] == 300
    assert [row["key"] for row in stats["entries"]] == ["e", "d"]
    reloaded = []
    manager.get("b", lambda d: reloaded.append(1) or "b", size_bytes=100)
    assert reloaded == [1]


def test_an_object_bigger_than_the_bound_is_kept_alone():
    manager = ModelManager(max_bytes=100, device="cpu")
    manager.get("small", lambda d: 1, size_bytes=50)
    assert manager.get("huge", lambda d: 2, size_bytes=500) == 2
    assert manager.keys() == ["huge"]


def test_a_failing_loader_leaves_no_entry_and_raises_to_every_waiter():
    manager = ModelManager(max_bytes=10**9, device="cpu")
    calls = []
    started = threading.Barrier(8)

    def loader(device):
        calls.append(1)
        time.sleep(0.2)
        raise OSError("disk on fire")

    def ask(_):
        started.wait()
        try:
            manager.get("bad", loader)
        except OSError as exc:
            return str(exc)
        return "no error"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(ask, range(8)))
    assert outcomes == ["disk on fire"] * 8
    assert len(calls) == 1
    assert "bad" not in manager and manager.stats()["loading"] == []
    # The next request tries again and can succeed.
    assert manager.get("bad", lambda d: "fixed") == "fixed"


def test_estimate_size_counts_arrays_tensors_and_modules_once():
    a = np.zeros((10, 10), np.float64)
    assert estimate_size(a) == 800
    assert estimate_size({"x": a, "view": a[:5], "again": [a]}) == 800
    module = torch.nn.Linear(10, 4)  # 44 float32 parameters
    assert estimate_size(module) == 44 * 4

    class Holder:
        def __init__(self):
            self.net = module
            self.pca = np.zeros(13, np.float32)
            self.name = "x"

    assert estimate_size(Holder()) == 44 * 4 + 13 * 4
    t = torch.zeros(100)
    assert estimate_size([t, t[:10]]) == 400


def test_manager_size_defaults_to_the_estimate():
    manager = ModelManager(max_bytes=10**9, device="cpu")
    manager.get("net", lambda d: torch.nn.Linear(10, 4).to(d))
    assert manager.stats()["used_bytes"] == 44 * 4


def test_device_selection(monkeypatch):
    assert select_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(None) == "cpu"
    assert select_device("cuda") == "cpu"  # falls back with a warning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(None) == "cuda"
    assert select_device("cuda:1") == "cuda:1"
    assert ModelManager(device=None).device == "cuda"
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    assert select_device(None) == "cpu"


def test_loader_receives_the_managers_device():
    manager = ModelManager(device="cpu")
    assert manager.get("k", lambda device: device) == "cpu"


def test_default_manager_is_one_object():
    assert default_manager() is default_manager()


def test_bad_bound_is_rejected():
    with pytest.raises(ValueError):
        ModelManager(max_bytes=0)


def test_a_loader_may_load_other_keys_but_not_itself():
    manager = ModelManager(device="cpu")
    outer = manager.get("subject", lambda d: {"pca": manager.get("pca", lambda d2: "P", size_bytes=1)},
                        size_bytes=1)
    assert outer == {"pca": "P"} and "pca" in manager
    with pytest.raises(RuntimeError, match="itself"):
        manager.get("loop", lambda d: manager.get("loop", lambda d2: 1))
    assert "loop" not in manager


def test_the_pipeline_uses_the_default_manager_and_its_memory_bound(monkeypatch):
    from studio import manager as manager_module
    from studio.pipeline import Pipeline

    monkeypatch.setattr(manager_module, "_default", None)
    monkeypatch.setenv("STUDIO_MODEL_MEMORY_MB", "300")
    pipe = Pipeline()
    assert pipe.manager is manager_module.default_manager()
    assert pipe.manager.max_bytes == 300 * 2**20
