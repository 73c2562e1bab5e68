"""Prediction maps: two tiny trained cells, their test-fold GeoTIFFs, the labels and the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import xarray as xr

from gfmtune.cli import main
from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.data.manifests import write_label_splits, write_timesteps
from gfmtune.data.store import convert
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
from gfmtune.models.registry import get_spec
from gfmtune.pastis import TEST_FOLD
from gfmtune.results.aggregate import collect
from gfmtune.results.maps import cell_folder, class_colours, family_slug
from gfmtune.train.job import Cell, CellJob, Inputs
from gfmtune.train.loop import forward_fn
from gfmtune.train.settings import TrainSettings

QUICK = TrainSettings(epochs=1, batch_size=4, workers=0)
CELLS = (Cell("utae_tiny", None, "100", 6), Cell("croma_tiny", 0.0, "100", 6))


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run folder with two trained cells, tables/miou.csv, and predict-maps run on it."""
    run = tmp_path_factory.mktemp("maps") / "results" / "tiny"
    raw = write_synthetic_pastis(run / "raw", SyntheticSpec(30, 32, (7, 10), seed=3))
    store = run / "data" / "s2.zarr"
    convert(raw, store, threads=2, progress=False)
    write_label_splits(store, run / "manifests" / "label_split", [100], "paper")
    write_timesteps(store, run / "manifests" / "timesteps", [6], "paper")
    inputs = Inputs(store, run / "manifests" / "label_split" / "100.csv",
                    run / "manifests" / "timesteps" / "6.csv")  # fmt: skip
    models, metrics = {}, []
    for cell in CELLS:
        folder = cell_folder(run / "cells", cell.model, cell.ft_rate, cell.label_percent,
                             cell.timesteps, cell.seed)  # fmt: skip
        job = CellJob(cell, inputs, QUICK, folder, device="cpu", progress=False)
        job.run()
        models[cell.model] = job.model  # the best weights, as the cell's test metrics used
        metrics.append(folder / "metrics.json")
    (run / "tables").mkdir()
    collect(metrics).to_csv(run / "tables" / "miou.csv", index=False)
    assert main(["predict-maps", "--run", str(run), "--no-progress", "--threads", "2"]) == 0
    return {"run": run, "store": store, "inputs": inputs, "models": models}


def test_one_geotiff_per_test_patch_on_the_store_grid(mapped: dict) -> None:
    run = mapped["run"]
    with xr.open_zarr(mapped["store"]) as ds:
        test = ds.fold.values == TEST_FOLD
        ids = ds.patch_id.values[test].tolist()
        bounds = ds.bounds.values[test]
        labels = ds.label.values[test]
        crs = ds.attrs["crs"]
    assert crs and len(ids) > 0
    chosen = pd.read_csv(run / "maps" / "cells.csv")
    assert sorted(chosen.family) == ["CROMA", "U-TAE"]
    assert set(chosen.patches) == {len(ids)}
    colours = class_colours()
    for folder in ("croma", "u-tae", "labels"):
        files = sorted((run / "maps" / folder).glob("*.tif"))
        assert sorted(int(f.stem) for f in files) == sorted(ids)
        for pid, box, label in zip(ids, bounds, labels, strict=True):
            with rasterio.open(run / "maps" / folder / f"{pid}.tif") as src:
                assert src.crs == rasterio.crs.CRS.from_user_input(crs)
                assert np.allclose(tuple(src.bounds), box)
                assert src.count == 1 and src.dtypes[0] == "uint8" and src.nodata is None
                assert src.compression == rasterio.enums.Compression.lzw
                table = src.colormap(1)
                assert all(table[c] == colours[c] for c in range(20))
                values = src.read(1)
            assert values.shape == label.shape and values.max() <= 19
            if folder == "labels":
                assert np.array_equal(values, label)
    assert not list((run / "maps").rglob(".*.tmp"))


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.model)
def test_maps_are_the_models_argmax(mapped: dict, cell: Cell) -> None:
    spec, model = get_spec(cell.model), mapped["models"][cell.model]
    ds = PastisZarrDataset.evaluation(mapped["store"], mapped["inputs"].timesteps, TEST_FOLD)
    item = ds[len(ds) // 2]
    with torch.no_grad():
        model.eval()
        forward = forward_fn(model, spec, item["days"][None])
        logits = spec.policy.predict(forward, ds.normalise.tensor(item["image"][None]))
    expected = logits.argmax(1)[0].numpy()
    path = mapped["run"] / "maps" / family_slug(spec.family) / f"{item['patch_id']}.tif"
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(1), expected)


def test_figure_and_cli_help(mapped: dict, capsys: pytest.CaptureFixture) -> None:
    for suffix in (".png", ".pdf"):
        path = mapped["run"] / "figures" / f"predictions{suffix}"
        assert path.stat().st_size > 1000
    assert main(["--help"]) == 0
    assert "predict-maps" in capsys.readouterr().out


def test_frozen_gfm_cell_needs_its_checkpoint_folder(mapped: dict) -> None:
    from gfmtune.results.maps import Choice, load_cell_model

    choice = Choice("CROMA", "croma", 0.0, "100", 6, 0, 1.0, mapped["run"])
    with pytest.raises(ValueError, match="--weights-dir"):
        load_cell_model(choice, QUICK, None)


def test_best_cell_per_family_skips_cells_without_weights(tmp_path) -> None:
    from gfmtune.results.maps import best_cells

    table = pd.DataFrame(
        {"model": ["CROMA", "CROMA", "U-TAE", "DINO"],
         "model_name": ["croma_tiny", "croma_tiny", "utae_tiny", "dino_tiny"],
         "ft_rate": [0.0, 1.0, np.nan, 0.1], "label_percent": [100.0, 10.0, 100.0, 100.0],
         "timesteps": [6, 1, 6, 6], "seed": [0, 1, 0, 0], "miou_paper": [50.0, 40.0, 45.0, 60.0]}
    )  # fmt: skip
    for name, ft, percent, t, seed in (
        ("croma_tiny", 1.0, 10.0, 1, 1),
        ("utae_tiny", None, 100, 6, 0),
    ):
        folder = cell_folder(tmp_path, name, ft, percent, t, seed)
        folder.mkdir(parents=True)
        (folder / "best.pt").write_bytes(b"")
    chosen = {c.family: c for c in best_cells(table, tmp_path)}
    assert sorted(chosen) == ["CROMA", "U-TAE"]  # DINO kept no best.pt
    assert chosen["CROMA"].folder.relative_to(tmp_path).as_posix() == (
        "model~croma_tiny/ft_rate~1/label_percent~10/timesteps~1/seed~1"
    )
    assert chosen["U-TAE"].folder.name == "seed~0" and chosen["U-TAE"].ft_rate is None
    assert not chosen["CROMA"].frozen and chosen["CROMA"].slug == "croma"
