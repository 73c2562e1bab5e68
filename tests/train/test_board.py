"""Optional TensorBoard event files of a cell: the history rows, read back; a clear error naming
the extra when the package is missing."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gfmtune.train.board import FOLDER
from gfmtune.train.job import Cell, CellJob
from tests.train.conftest import FAST, inputs

CELL = Cell("utae_tiny", None, "100", 6)


def test_event_files_hold_the_history_per_epoch(train_data: Path, tmp_path: Path) -> None:
    settings = replace(FAST, epochs=2, tensorboard=True)
    CellJob(CELL, inputs(train_data), settings, tmp_path, progress=False).run()
    history = pd.read_csv(tmp_path / "history.csv")
    events = EventAccumulator(str(tmp_path / FOLDER))
    events.Reload()
    columns = [c for c in history.columns if c != "epoch"]
    assert sorted(events.Tags()["scalars"]) == sorted(columns)
    assert {"train_loss", "val_miou_paper", "lr_decoder", "seconds"} <= set(columns)
    for column in columns:
        scalars = events.Scalars(column)
        assert [s.step for s in scalars] == [1, 2]
        # event files store float32
        assert [s.value for s in scalars] == pytest.approx(list(history[column]), rel=1e-6)


def test_missing_package_stops_at_job_start_naming_the_extra(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    settings = replace(FAST, tensorboard=True)
    with pytest.raises(ValueError, match=r"pip install 'gfmtune\[tensorboard\]'"):
        CellJob(CELL, inputs(train_data), settings, tmp_path / "cell", progress=False)
    assert not (tmp_path / "cell").exists()
    CellJob(CELL, inputs(train_data), FAST, tmp_path / "off", progress=False)  # setting off: fine
