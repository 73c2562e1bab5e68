"""The validation fold resident on the device: loaded once, the loader's metrics exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.pastis import VAL_FOLD
from gfmtune.train import job, resident
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.loader import build_loader
from gfmtune.train.resident import ResidentBatches
from tests.train.conftest import FAST, inputs

CELL = Cell("dino_tiny", 0.1, "100", 6)


def _validations(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """Make every evaluation record the type of what it reads."""
    evaluate, seen = job.evaluate, []

    def recording(model, spec, loader, *args, **kwargs):
        seen.append(type(loader))
        return evaluate(model, spec, loader, *args, **kwargs)

    monkeypatch.setattr(job, "evaluate", recording)
    return seen


def test_resident_validation_gives_the_loader_metrics_exactly(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _validations(monkeypatch)
    results = {}
    for setting in (False, True):
        settings = replace(FAST, epochs=2, val_resident=setting)
        out = tmp_path / str(setting)
        results[setting] = CellJob(CELL, inputs(train_data), settings, out, progress=False).run()
    # 2 validations and the test per run, from the resident batches when forced
    assert seen == [*[job.DataLoader] * 3, *[ResidentBatches] * 2, job.DataLoader]
    assert results[True]["val_best"] == results[False]["val_best"]
    assert results[True]["test"] == results[False]["test"]
    assert results[True]["best_epoch"] == results[False]["best_epoch"]
    columns = ["train_loss", "val_miou", "val_miou_paper", "val_oa"]
    loader, held = (pd.read_csv(tmp_path / str(s) / "history.csv")[columns] for s in (False, True))
    pd.testing.assert_frame_equal(loader, held, check_exact=True)


def test_no_resident_fold_with_a_frame_draw(train_data: Path) -> None:
    data = PastisZarrDataset(train_data / "s2.zarr", inputs(train_data).timesteps, (VAL_FOLD,))
    loader = build_loader(data, 4, FAST, False)
    cpu = torch.device("cpu")
    assert resident.resident(loader, True, cpu, "authors") is loader
    assert resident.resident(loader, "auto", cpu, "none") is loader
    held = resident.resident(loader, True, cpu, "none")
    assert isinstance(held, ResidentBatches) and len(held) == len(loader)


def test_fold_bytes_counts_every_item(train_data: Path) -> None:
    data = PastisZarrDataset(train_data / "s2.zarr", inputs(train_data).timesteps, (VAL_FOLD,))
    items = [data[k] for k in range(len(data))]
    total = sum(v.nbytes for item in items for v in item.values() if isinstance(v, torch.Tensor))
    assert resident.fold_bytes(data) == total > 0
