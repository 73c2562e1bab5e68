"""A small synthetic store (32 px, so CROMA-tiny's 24 px crops fit) and its manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gfmtune.data.manifests import write_label_splits, write_timesteps
from gfmtune.data.store import convert
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
from gfmtune.train.job import Inputs
from gfmtune.train.settings import TrainSettings

FAST = TrainSettings(epochs=3, batch_size=4, workers=0)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with s2.zarr, label_split/{10,100}.csv and timesteps/{1,6}.csv."""
    base = tmp_path_factory.mktemp("train_data")
    root = write_synthetic_pastis(base / "raw", SyntheticSpec(40, 32, (9, 14), seed=4))
    convert(root, base / "s2.zarr", threads=2, progress=False)
    write_label_splits(base / "s2.zarr", base / "label_split", [10, 100], "paper")
    write_timesteps(base / "s2.zarr", base / "timesteps", [1, 6], "paper")
    return base


def inputs(base: Path, percent: str = "100", t: int = 6) -> Inputs:
    return Inputs(base / "s2.zarr", base / "label_split" / f"{percent}.csv",
                  base / "timesteps" / f"{t}.csv")  # fmt: skip
