"""Shared fixtures: one tiny synthetic PASTIS dataset and its Zarr store per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from gfmtune.data.store import convert
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis

TINY = SyntheticSpec(n_patches=20, size=16, frames_per_tile=(5, 9), seed=3)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic PASTIS folder (20 patches, 16 px, 5 and 9 frames). Do not modify."""
    return write_synthetic_pastis(tmp_path_factory.mktemp("pastis"), TINY)


@pytest.fixture(scope="session")
def tiny_store(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Zarr store converted from ``tiny_root``. Do not modify."""
    store = tmp_path_factory.mktemp("store") / "s2.zarr"
    convert(tiny_root, store, threads=2, progress=False)
    return store
