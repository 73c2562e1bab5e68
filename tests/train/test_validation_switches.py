"""Switches that change the paper's validation, off by default: ``val_patches`` (a fixed
subset of the validation fold) and ``val_every`` (validate every k epochs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.settings import TrainSettings
from tests.train.conftest import FAST, inputs
from tests.train.conftest import train_data as train_data  # the fixture, for this module

UTAE = Cell("utae_tiny", None, "100", 1)


def test_a_sample_is_the_same_patches_every_time(train_data: Path) -> None:
    store, ts = train_data / "s2.zarr", train_data / "timesteps" / "1.csv"
    every = PastisZarrDataset.evaluation(store, ts, 4)
    picks = [PastisZarrDataset.evaluation(store, ts, 4, sample=3).positions for _ in range(2)]
    assert len(picks[0]) == 3 and list(picks[0]) == list(picks[1]) == sorted(picks[0])
    assert set(picks[0]) < set(every.positions)
    whole = PastisZarrDataset.evaluation(store, ts, 4, sample=len(every) + 5)
    assert list(whole.positions) == list(every.positions)


def test_val_patches_validates_on_the_subset_and_tests_on_the_whole_fold(
    train_data: Path, tmp_path: Path
) -> None:
    """One epoch: the best checkpoint is that epoch's either way, so the test metrics agree,
    while the validation metrics come from one patch."""
    settings = replace(FAST, epochs=1)
    runs = {}
    for name, patches in (("whole", None), ("one", 1)):
        job = CellJob(UTAE, inputs(train_data, "100", 1), replace(settings, val_patches=patches),
                      tmp_path / name, progress=False)  # fmt: skip
        runs[name] = job.run()
    assert runs["one"]["test"] == runs["whole"]["test"]
    assert runs["one"]["val_best"] != runs["whole"]["val_best"]
    recorded = json.loads((tmp_path / "one" / "provenance.json").read_text())
    assert recorded["settings"]["val_patches"] == 1


def test_val_every_validates_only_on_its_epochs_and_the_last(
    train_data: Path, tmp_path: Path
) -> None:
    settings = replace(FAST, epochs=5, val_every=2)
    CellJob(UTAE, inputs(train_data, "100", 1), settings, tmp_path, progress=False).run()
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.dropna(subset=["val_miou"]).epoch.tolist() == [2, 4, 5]


def test_the_switches_are_settings_with_the_paper_as_default() -> None:
    assert TrainSettings().val_patches is None and TrainSettings().val_every == 1
    assert TrainSettings.from_mapping({"val_patches": 50}).val_patches == 50
