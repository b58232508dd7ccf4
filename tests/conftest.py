"""Shared fixtures. SHARED points at ../shared (override with STUDIO_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("STUDIO_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared test material not found at {SHARED} (set STUDIO_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def weights_dir(shared: Path) -> Path:
    return shared / "weights"


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one torch thread avoids OpenMP spinning on a busy shared 2-core machine."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
