"""``frame_draw: authors``: the authors' per-load 50-frame draw, seeded, in the dataset and in
training (ShapingFT ``Pastis.__getitem__``: ``randperm(N)[:50]``, then the linspace rule)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from gfmtune import pastis
from gfmtune.data.dataset import AuthorsDraw, PastisZarrDataset
from gfmtune.data.manifests import write_label_splits, write_timesteps
from gfmtune.data.store import convert
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.loader import build_loader
from gfmtune.train.settings import TrainSettings
from tests.train.conftest import (
    FAST,
    Interrupted,
    inputs,
    interrupt_after,
    kill_mid_training,
    train_argv,
)

# 10 patches of 16 px, every fold with one 40-frame and one 61-frame series
LONG = SyntheticSpec(n_patches=10, size=16, frames_per_tile=(40, 61), seed=5)
AUTHORS = replace(FAST, frame_draw="authors")
UTAE = Cell("utae_tiny", None, "100", 6)  # U-TAE also reads the days, so they must follow


@pytest.fixture(scope="module")
def long_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raw/, s2.zarr, label_split/100.csv, timesteps/{1,6,35}.csv (paper) and 38.csv (uniform)."""
    base = tmp_path_factory.mktemp("long_data")
    write_synthetic_pastis(base / "raw", LONG)
    convert(base / "raw", base / "s2.zarr", threads=2, progress=False)
    write_label_splits(base / "s2.zarr", base / "label_split", [100], "paper")
    write_timesteps(base / "s2.zarr", base / "timesteps", [1, 6, 35], "paper")
    write_timesteps(base / "s2.zarr", base / "timesteps", [38], "uniform")
    return base


def _dataset(base: Path, t: int, fold: int, draw: AuthorsDraw | None) -> PastisZarrDataset:
    timesteps = base / "timesteps" / f"{t}.csv"
    return PastisZarrDataset.evaluation(base / "s2.zarr", timesteps, fold, draw=draw)


def authors_frames(n_frames: int, t: int, generator: torch.Generator) -> np.ndarray:
    """Their rule, written out: ``randperm(N)[:50]``, then t = 1 the last drawn, t > 1
    ``linspace(0, 49, 35, dtype=long)`` nested 35 -> 25 -> 15 -> 6 until t."""
    drawn = torch.randperm(n_frames, generator=generator)[:50]
    if t == 1:
        return drawn[[-1]].numpy()
    index = torch.linspace(0, 49, 35, dtype=torch.long)
    for size in (35, 25, 15, 6):
        index = index[torch.linspace(0, len(index) - 1, size, dtype=torch.long)]
        if size == t:
            return drawn[index].numpy()
    raise AssertionError(f"t={t} is not one of their subsets")


def _frames(ds: PastisZarrDataset) -> list[list[int]]:
    return [ds.frames_of(k)[0].tolist() for k in range(len(ds))]


@pytest.mark.parametrize("t", [1, 6, 35])
def test_long_series_follow_the_authors_rule(long_data: Path, t: int) -> None:
    for fold in (1, 4, 5):
        draw = AuthorsDraw(seed=3, split="val", pass_index=7)
        ds, plain = _dataset(long_data, t, fold, draw), _dataset(long_data, t, fold, None)
        lengths = set()
        for k in range(len(ds)):
            item, pid = ds[k], int(ds.patch_ids[k])
            series = np.load(pastis.s2_path(long_data / "raw", pid))
            lengths.add(len(series))
            if len(series) > 50:
                expected = authors_frames(len(series), t, draw.generator(pid))
                assert len(set(expected.tolist())) == t
                if t == 35:
                    assert np.any(np.diff(expected) < 0), "the draw keeps the shuffled order"
            else:
                expected = plain.frames[k]  # N <= 50: the manifest's frames
                assert torch.equal(plain[k]["image"], item["image"])
            assert np.array_equal(item["image"].numpy(), series[expected])
            dates = ds.reader.dates(ds.reader.index_of(pid))[expected]
            assert item["days"].tolist() == pastis.days_since_reference(dates).tolist()
        assert lengths == {40, 61}


def test_draws_are_seeded_per_split_pass_and_patch(long_data: Path) -> None:
    def frames(seed: int = 0, split: str = "train", pass_index: int = 0) -> list[list[int]]:
        return _frames(_dataset(long_data, 6, 4, AuthorsDraw(seed, split, pass_index)))

    reference = frames()
    assert reference == frames(), "two instances with the same seed draw the same frames"
    manifest = _dataset(long_data, 6, 4, None)
    long = [k for k in range(len(manifest)) if manifest.reader.n_frames(manifest.positions[k]) > 50]
    short = [k for k in range(len(manifest)) if k not in long]
    for other in (frames(pass_index=1), frames(split="val"), frames(seed=1)):
        assert all(other[k] != reference[k] for k in long)
        assert all(other[k] == reference[k] == manifest.frames[k].tolist() for k in short)

    ds = _dataset(long_data, 1, 4, AuthorsDraw(0, "val"))
    dates = set()
    for epoch in range(6):  # t = 1: a random date at every pass
        ds.start_pass(epoch)
        dates.add(int(ds[long[0]]["days"][0]))
    assert len(dates) > 1


def test_draws_do_not_depend_on_workers(long_data: Path) -> None:
    split, timesteps = long_data / "label_split" / "100.csv", long_data / "timesteps" / "6.csv"
    draw = AuthorsDraw(2, "train")
    ds = PastisZarrDataset.training(long_data / "s2.zarr", split, timesteps, draw=draw)
    ds.start_pass(3)
    batches = {
        workers: [b["image"] for b in DataLoader(ds, batch_size=2, num_workers=workers)]
        for workers in (0, 2)
    }
    assert all(torch.equal(a, b) for a, b in zip(*batches.values(), strict=True))
    ds.start_pass(4)
    redrawn = next(iter(DataLoader(ds, batch_size=len(ds))))["image"]
    assert not torch.equal(redrawn, torch.cat(batches[0])), "the next epoch draws anew"


def test_persistent_workers_draw_each_epoch_as_the_main_process(long_data: Path) -> None:
    """Workers kept alive across epochs see each epoch's ``start_pass`` (shared memory): two
    epochs of a gfmtune loader with 2 persistent workers draw what 0 workers draw."""
    split, timesteps = long_data / "label_split" / "100.csv", long_data / "timesteps" / "6.csv"
    ds = PastisZarrDataset.training(
        long_data / "s2.zarr", split, timesteps, draw=AuthorsDraw(2, "train")
    )
    epochs = {}
    for workers in (0, 2):
        loader = build_loader(ds, 2, replace(FAST, workers=workers), shuffle=False)
        assert loader.persistent_workers == (workers > 0)
        epochs[workers], pids = [], set()
        for epoch in (0, 1):
            ds.start_pass(epoch)
            epochs[workers].append(torch.cat([b["image"] for b in loader]))
            pids.add(tuple(w.pid for w in getattr(loader._iterator, "_workers", [])))
        assert len(pids) == 1, "the same worker processes serve both epochs"
    assert all(torch.equal(a, b) for a, b in zip(epochs[0], epochs[2], strict=True))
    assert not torch.equal(*epochs[0]), "the second epoch draws anew"


def test_more_than_35_frames_is_refused(long_data: Path) -> None:
    with pytest.raises(ValueError, match="t=38 with strategy 'paper' exceeds its base grid of 35"):
        _dataset(long_data, 38, 4, AuthorsDraw(0, "val"))
    assert _dataset(long_data, 38, 4, None).timesteps == 38  # without the draw: the manifest


def _run(base: Path, out: Path, settings: TrainSettings = AUTHORS, cell: Cell = UTAE) -> dict:
    return CellJob(cell, inputs(base, "100", cell.timesteps), settings, out, progress=False).run()


def _spy(monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, int]]:
    """Record (split, pass) of every draw."""
    seen, frames = set(), AuthorsDraw.frames

    def spy(self: AuthorsDraw, n_frames: int, t: int, patch_id: int) -> np.ndarray:
        seen.add((self.split, self.pass_index))
        return frames(self, n_frames, t, patch_id)

    monkeypatch.setattr(AuthorsDraw, "frames", spy)
    return seen


def test_training_is_reproducible_and_resumable(long_data: Path, tmp_path: Path) -> None:
    reference = _run(long_data, tmp_path / "ref")
    again = _run(long_data, tmp_path / "again")
    assert again["test"] == reference["test"] and again["val_best"] == reference["val_best"]
    assert _losses(tmp_path / "again") == _losses(tmp_path / "ref")
    _run(long_data, tmp_path / "plain", FAST)
    assert _losses(tmp_path / "plain") != _losses(tmp_path / "ref"), "the draw changes the input"

    out = tmp_path / "killed"
    (tmp_path / "settings.json").write_text(json.dumps(AUTHORS.to_dict()))
    kill_mid_training(train_argv(inputs(long_data), UTAE, tmp_path / "settings.json", out), out)
    assert 1 <= torch.load(out / "state.pt", weights_only=True)["loop"]["epoch"] < AUTHORS.epochs
    resumed = _run(long_data, out)
    assert resumed["test"] == reference["test"] and resumed["val_best"] == reference["val_best"]
    assert _losses(out) == _losses(tmp_path / "ref") and resumed["attempts"] == 2


def test_resumed_epochs_draw_their_own_frames(long_data, tmp_path, monkeypatch) -> None:
    interrupt_after(monkeypatch, 2)
    seen = _spy(monkeypatch)
    with pytest.raises(Interrupted):
        _run(long_data, tmp_path)
    assert seen == {(split, e) for split in ("train", "val") for e in (0, 1)}
    monkeypatch.undo()
    seen = _spy(monkeypatch)
    _run(long_data, tmp_path)
    assert seen == {("train", 2), ("val", 2), ("test", 0)}  # from the saved epoch on; test once


def test_no_feature_cache_with_the_draw(long_data: Path, tmp_path: Path) -> None:
    cell = Cell("dino_tiny", 0.0, "100", 6)
    for draw in ("authors", "none"):
        data = replace(inputs(long_data), feature_cache=tmp_path / draw / "cache")
        settings = replace(FAST, epochs=1, frame_draw=draw)
        CellJob(cell, data, settings, tmp_path / draw / "cell", progress=False).run()
    assert not (tmp_path / "authors" / "cache").exists()
    assert any((tmp_path / "none" / "cache").iterdir()), "the cache applies without the draw"


def _losses(folder: Path) -> list[float]:
    return pd.read_csv(folder / "history.csv").train_loss.tolist()
