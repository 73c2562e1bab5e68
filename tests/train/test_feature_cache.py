"""The frozen-encoder feature cache gives the uncached result and is shared; CROMA's evaluation
windows are cached, its random training crops not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.models.policies import window_corners
from gfmtune.models.registry import build_model, get_spec
from gfmtune.pastis import TEST_FOLD, VAL_FOLD
from gfmtune.tensorio import load_tensors
from gfmtune.train import job
from gfmtune.train.feature_cache import cache_key
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


def test_cache_off_when_switched_off_and_for_trainable_encoders(train_data, tmp_path) -> None:
    cache = tmp_path / "cache"
    assert not FAST.eval_cache  # the default
    _job(train_data, tmp_path / "croma", Cell("croma_tiny", 0.0, "100", 6), cache).run()
    _job(train_data, tmp_path / "ft", Cell("dino_tiny", 0.1, "100", 6), cache).run()
    off = replace(FAST, feature_cache=False)
    _job(train_data, tmp_path / "off", Cell("dino_tiny", 0.0, "100", 6), cache, off).run()
    assert not cache.exists() or not any(cache.iterdir())


def _encoder_calls_per_evaluation(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every evaluation of a job count its encoder calls into the returned list."""
    evaluate, counts = job.evaluate, []

    def counting(model, *args, **kwargs):
        calls = []
        hook = model.encoder.register_forward_hook(lambda *_: calls.append(1))
        try:
            return evaluate(model, *args, **kwargs)
        finally:
            hook.remove()
            counts.append(len(calls))

    monkeypatch.setattr(job, "evaluate", counting)
    return counts


def test_eval_cache_of_frozen_croma_gives_the_uncached_evaluation(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen croma_tiny: its validation and test windows' features are cached once; every
    evaluation then decodes them without calling the encoder, with the uncached metrics."""
    calls = _encoder_calls_per_evaluation(monkeypatch)
    cell = Cell("croma_tiny", 0.0, "100", 6)
    plain = _job(train_data, tmp_path / "plain", cell, None).run()
    uncached_calls = list(calls)
    calls.clear()
    on = replace(FAST, eval_cache=True)  # off by default (disk at paper size)
    cached = _job(train_data, tmp_path / "cached", cell, tmp_path / "cache", on).run()
    assert len(uncached_calls) == 4 and min(uncached_calls) > 0  # 3 validations and the test
    assert calls == [0, 0, 0, 0]

    a, b = (tmp_path / x / "confusion_test.csv" for x in ("plain", "cached"))
    assert a.read_text() == b.read_text()
    for key in ("miou", "miou_paper", "oa"):
        assert cached["test"][key] == pytest.approx(plain["test"][key], rel=1e-6)
        assert cached["val_best"][key] == pytest.approx(plain["val_best"][key], rel=1e-6)
    h_plain, h_cached = (pd.read_csv(tmp_path / x / "history.csv") for x in ("plain", "cached"))
    for column in ("train_loss", "val_miou", "val_miou_paper", "val_oa"):
        np.testing.assert_allclose(h_cached[column], h_plain[column], rtol=1e-6)

    # one cache, of the validation and test patches only: training encodes its random crops
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    ts = train_data / "timesteps" / "6.csv"
    evaluated = PastisZarrDataset(train_data / "s2.zarr", ts, (VAL_FOLD, TEST_FOLD))
    assert {p.stem for p in folder.glob("*.pt")} == {str(p) for p in evaluated.patch_ids}
    levels = load_tensors(folder / f"{evaluated.patch_ids[0]}.pt")
    assert levels[0].shape[:2] == (4, 6)  # 2 x 2 windows of 6 frames


def test_eval_cache_key_holds_the_window_geometry(train_data: Path) -> None:
    spec = get_spec("croma_tiny")
    encoder = build_model("croma_tiny", encoder_trainable=False).encoder
    args = (spec, encoder, "digest", train_data / "timesteps" / "6.csv", "paper", "keep", None)
    keys = {
        cache_key(*args),
        cache_key(*args, window_corners((32, 32), 24)),
        cache_key(*args, window_corners((30, 30), 24)),
    }
    assert len(keys) == 3
