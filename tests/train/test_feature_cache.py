"""The frozen-encoder feature cache gives the uncached result, is shared, and stays off for
random crops."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from gfmtune.train.job import Cell, CellJob
from tests.train.conftest import FAST, inputs


def _job(base: Path, out: Path, cell: Cell, cache: Path | None, settings=FAST) -> CellJob:
    data = replace(inputs(base, cell.label_percent, cell.timesteps), feature_cache=cache)
    return CellJob(cell, data, settings, out, progress=False)


def test_cache_gives_the_uncached_result(train_data: Path, tmp_path: Path) -> None:
    cell = Cell("dino_tiny", 0.0, "100", 6)
    plain = _job(train_data, tmp_path / "plain", cell, None).run()
    cached = _job(train_data, tmp_path / "cached", cell, tmp_path / "cache").run()
    for key in ("miou", "miou_paper", "oa"):
        assert cached["test"][key] == pytest.approx(plain["test"][key], rel=1e-5)
    supports = {c: v["support"] for c, v in plain["test"]["per_class"].items()}
    assert supports == {c: v["support"] for c, v in cached["test"]["per_class"].items()}
    assert cached["best_epoch"] == plain["best_epoch"]
    a, b = (pd.read_csv(tmp_path / x / "history.csv") for x in ("plain", "cached"))
    assert a.train_loss.to_numpy() == pytest.approx(b.train_loss.to_numpy(), rel=1e-5)
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "complete.json").exists()
    n_files = len(list(caches[0].glob("*.pt")))
    assert n_files == 40  # every patch of the store, so every label fraction can share it

    # another label fraction reuses the same cache: no new feature file is written
    before = {p: p.stat().st_mtime_ns for p in caches[0].glob("*.pt")}
    _job(train_data, tmp_path / "ten", Cell("dino_tiny", 0.0, "10", 6), tmp_path / "cache").run()
    assert {p: p.stat().st_mtime_ns for p in caches[0].glob("*.pt")} == before


def test_cache_off_for_random_crops_and_trainable_encoders(train_data, tmp_path) -> None:
    cache = tmp_path / "cache"
    _job(train_data, tmp_path / "croma", Cell("croma_tiny", 0.0, "100", 6), cache).run()
    _job(train_data, tmp_path / "ft", Cell("dino_tiny", 0.1, "100", 6), cache).run()
    off = replace(FAST, feature_cache=False)
    _job(train_data, tmp_path / "off", Cell("dino_tiny", 0.0, "100", 6), cache, off).run()
    assert not cache.exists() or not any(cache.iterdir())
