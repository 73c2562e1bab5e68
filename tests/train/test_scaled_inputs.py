"""``moco_scaled``'s input scaling (reflectance / 10000) reaches a cell's training and its
frozen-encoder feature cache, whose key keeps it apart from ``moco``'s standardised inputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from gfmtune.train.job import Cell, CellJob
from tests.train.conftest import FAST, inputs


def _run(base: Path, out: Path, model: str, cache: Path | None) -> dict:
    data = replace(inputs(base, "100", 6), feature_cache=cache)
    return CellJob(Cell(model, 0.0, "100", 6), data, FAST, out, progress=False).run()


def test_scaled_cells_cached_or_not_and_apart_from_moco(train_data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plain = _run(train_data, tmp_path / "plain", "moco_scaled_tiny", None)
    cached = _run(train_data, tmp_path / "cached", "moco_scaled_tiny", cache)
    for key in ("miou", "miou_paper", "oa"):  # the cache was built from the scaled inputs
        assert cached["test"][key] == pytest.approx(plain["test"][key], rel=1e-5)
    _run(train_data, tmp_path / "moco", "moco_tiny", cache)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # one cache per scaling
    # same seed, same initial weights: only the inputs' scale differs, and it shows
    scaled, standard = (pd.read_csv(tmp_path / x / "history.csv") for x in ("plain", "moco"))
    assert (scaled.train_loss - standard.train_loss).abs().max() > 1e-4
