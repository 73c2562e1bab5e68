"""The Zarr store holds exactly the source data, validates input and survives being killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from rasterio.crs import CRS

from gfmtune import pastis
from gfmtune.data.reader import FrameReader, open_store
from gfmtune.data.store import PAD_VALUE, convert, partial_path, progress_path
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis

#: xarray's warning at opening the store: reflectance declares two fill values, both masked
TWO_FILL_VALUES = "ignore:variable 'reflectance' has multiple fill values"
#: ``xr.open_zarr``'s ``mask_and_scale`` that keeps reflectance's stored integers, sentinels
#: included (False for every variable would also undo the dates' NaT)
RAW = {"reflectance": False}


def assert_store_equals_source(store: Path, root: Path) -> None:
    ds = xr.open_zarr(store, mask_and_scale=RAW)
    table = pastis.read_metadata(root).frame
    assert ds.patch_id.values.tolist() == table.patch_id.tolist()
    assert ds.fold.values.tolist() == table.fold.tolist()
    for i, (pid, dates) in enumerate(zip(table.patch_id, table.dates, strict=True)):
        n = len(dates)
        assert int(ds.n_frames[i]) == n
        refl = ds.reflectance[i].values
        assert np.array_equal(refl[:n], np.load(pastis.s2_path(root, pid)))
        assert (refl[n:] == PAD_VALUE).all()
        target = np.load(pastis.target_path(root, pid))[0]
        assert np.array_equal(ds.label[i].values, target.astype(np.uint8))
        assert np.array_equal(ds.dates[i].values[:n].astype("datetime64[D]"), dates)
        assert np.isnat(ds.dates[i].values[n:]).all()


def test_store_content_and_attributes(tiny_store: Path, tiny_root: Path) -> None:
    assert_store_equals_source(tiny_store, tiny_root)
    ds = xr.open_zarr(tiny_store, mask_and_scale=RAW)
    assert ds.reflectance.dtype == np.int16 and ds.label.dtype == np.uint8
    assert ds.band.values.tolist() == list(pastis.BANDS)
    assert ds.reflectance.dims == ("patch", "time", "band", "y", "x")
    assert ds.attrs["class_names"] == list(pastis.CLASS_NAMES)
    assert ds.attrs["nodata"] == pastis.NODATA and ds.attrs["crs"] == "EPSG:2154"
    assert ds.attrs["norm_published"] == pastis.read_norm(tiny_root)
    assert ds.attrs["norm_paper"]["mean"] == list(pastis.PAPER_MEAN)
    assert ds.bounds.shape == (20, 4) and ds.tile.values[0].startswith("T")
    assert 0 < ds.attrs["size_report"]["compression_ratio"] < 1


@pytest.mark.filterwarnings(TWO_FILL_VALUES)
def test_xarray_masks_nodata_and_padding(tiny_store: Path) -> None:
    """As a user opens it: both sentinels are NaN, every other value is the stored one, and the
    reader gfmtune trains from still gives the stored integers."""
    raw = zarr.open_array(tiny_store / "reflectance")[:]
    nodata, pad = raw == pastis.NODATA, raw == PAD_VALUE
    assert nodata.any() and pad.any(), "fixture must hold both sentinels"
    refl = xr.open_zarr(tiny_store).reflectance
    assert refl.dtype == np.float32
    values = refl.values
    np.testing.assert_array_equal(np.isnan(values), nodata | pad)
    np.testing.assert_array_equal(values[~(nodata | pad)], raw[~(nodata | pad)])
    assert refl.encoding["_FillValue"] == PAD_VALUE
    assert refl.encoding["missing_value"] == pastis.NODATA
    reader = FrameReader(tiny_store)
    for i in range(len(reader)):
        frames = np.arange(reader.n_frames(i))
        np.testing.assert_array_equal(reader.read_frames(i, frames), raw[i, : len(frames)])


def test_gfmtune_opens_the_store_without_the_fill_value_warning(tiny_store: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", xr.SerializationWarning)
        with open_store(tiny_store) as ds:
            assert ds.reflectance.dtype == np.float32  # masked, as a user's open_zarr gives it


def test_crs_is_a_cf_grid_mapping(tiny_store: Path) -> None:
    ds = xr.open_zarr(tiny_store, mask_and_scale=RAW)
    assert "spatial_ref" in ds.coords and ds.spatial_ref.ndim == 0
    for name in ("reflectance", "label"):
        assert ds[name].attrs["grid_mapping"] == "spatial_ref"
        assert "spatial_ref" in ds[name].encoding["coordinates"].split()
    attrs = ds.spatial_ref.attrs
    assert attrs["crs_wkt"] == attrs["spatial_ref"]
    assert CRS.from_wkt(attrs["crs_wkt"]) == CRS.from_epsg(2154)
    assert ds.attrs["crs"] == "EPSG:2154"  # the group attribute stays
    # xarray's own CF decoding of the grid mapping finds it too
    decoded = xr.open_zarr(tiny_store, decode_coords="all", mask_and_scale=RAW)
    assert decoded.reflectance.encoding["grid_mapping"] == "spatial_ref"


@pytest.mark.filterwarnings(TWO_FILL_VALUES)
def test_rioxarray_reads_crs_and_nodata(tiny_store: Path) -> None:
    pytest.importorskip("rioxarray")
    ds = xr.open_zarr(tiny_store)
    assert ds.reflectance.rio.crs.to_epsg() == 2154 and ds.label.rio.crs.to_epsg() == 2154
    assert ds.reflectance.rio.encoded_nodata == PAD_VALUE


def test_no_grid_mapping_without_a_crs(tiny_root: Path, tmp_path: Path) -> None:
    root = _copy(tiny_root, tmp_path / "raw")
    meta = json.loads((root / "metadata.geojson").read_text())
    del meta["crs"]
    (root / "metadata.geojson").write_text(json.dumps(meta))
    convert(root, tmp_path / "s2.zarr", progress=False)
    ds = xr.open_zarr(tmp_path / "s2.zarr", mask_and_scale=RAW)
    assert "spatial_ref" not in ds.variables and "grid_mapping" not in ds.reflectance.attrs
    assert ds.attrs["crs"] == "" and ds.reflectance.attrs["long_name"]


def test_recomputed_statistics_exclude_nodata(tiny_store: Path, tiny_root: Path) -> None:
    table = pastis.read_metadata(tiny_root).frame
    train = table[table.fold.isin(pastis.TRAIN_FOLDS)].patch_id
    values = np.concatenate(
        [
            np.load(pastis.s2_path(tiny_root, i)).transpose(1, 0, 2, 3).reshape(10, -1)
            for i in train
        ],
        axis=1,
    ).astype(np.float64)
    masked = np.ma.masked_equal(values, pastis.NODATA)
    assert masked.mask.any(), "fixture must contain nodata for this test to mean something"
    stats = xr.open_zarr(tiny_store, mask_and_scale=RAW).attrs["norm_train_folds"]
    np.testing.assert_allclose(stats["mean"], masked.mean(1), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], masked.std(1), rtol=1e-5)


def test_chunks_one_frame_sharded_per_patch(tiny_store: Path) -> None:
    arr = zarr.open_array(tiny_store / "reflectance")
    assert arr.chunks == (1, 1, 10, 16, 16)
    assert arr.shards == (1, 9, 10, 16, 16)
    shard_files = [p for p in (tiny_store / "reflectance").rglob("*") if p.is_file()]
    assert len(shard_files) == 20 + 1  # one shard per patch, plus zarr.json


def _copy(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    return dest


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (
            lambda r, pid: np.save(pastis.s2_path(r, pid), np.zeros((5, 10, 16, 16), np.float32)),
            "dtype float32 is not int16",
        ),
        (
            lambda r, pid: np.save(pastis.s2_path(r, pid), np.zeros((4, 10, 16, 16), np.int16)),
            "4 frames but metadata lists",
        ),
        (
            lambda r, pid: np.save(pastis.target_path(r, pid), np.full((3, 16, 16), 25, np.uint8)),
            "outside 0..19",
        ),
        (lambda r, pid: pastis.s2_path(r, pid).write_bytes(b"not a npy"), "cannot read S2"),
    ],
)
def test_bad_patch_names_file_and_leaves_no_store(tiny_root, tmp_path, corrupt, expected) -> None:
    root = _copy(tiny_root, tmp_path / "raw")
    table = pastis.read_metadata(root).frame
    pid = int(table.patch_id[table.dates.map(len) == 5].iloc[1])
    corrupt(root, pid)
    store = tmp_path / "s2.zarr"
    with pytest.raises(pastis.PastisFormatError, match=expected) as err:
        convert(root, store, progress=False)
    assert str(pid) in str(err.value)
    assert not store.exists()


def test_dates_not_increasing_rejected(tiny_root: Path, tmp_path: Path) -> None:
    root = _copy(tiny_root, tmp_path / "raw")
    meta = json.loads((root / "metadata.geojson").read_text())
    dates = meta["features"][2]["properties"]["dates-S2"]
    dates["1"], dates["2"] = dates["2"], dates["1"]
    (root / "metadata.geojson").write_text(json.dumps(meta))
    pid = meta["features"][2]["properties"]["ID_PATCH"]
    with pytest.raises(pastis.PastisFormatError, match=f"ID_PATCH {pid}.*strictly increasing"):
        convert(root, tmp_path / "s2.zarr", progress=False)
    assert not (tmp_path / "s2.zarr").exists()


SLOW_CONVERT = """
import sys, time
import gfmtune.data.store as store
load = store.pastis.load_s2
store.pastis.load_s2 = lambda *a, **k: (time.sleep(0.15), load(*a, **k))[1]
store.convert(sys.argv[1], sys.argv[2], threads=1, progress=False)
"""


def test_killed_conversion_resumes(tmp_path: Path) -> None:
    root = write_synthetic_pastis(tmp_path / "raw", SyntheticSpec(30, 16, (6, 11), seed=2))
    store = tmp_path / "s2.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(root), str(store)])
    log = progress_path(store)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) > 6:  # header + >= 6 patches
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not store.exists(), "a killed conversion must not leave a complete-looking store"
    assert partial_path(store).exists()
    written = len(log.read_text().splitlines()) - 1
    assert 6 <= written < 30

    report = convert(root, store, threads=2, progress=False)
    assert report["resumed_patches"] >= 6
    assert not partial_path(store).exists() and not log.exists()
    assert_store_equals_source(store, root)


def test_changed_input_restarts_partial(tiny_root: Path, tmp_path: Path) -> None:
    root = _copy(tiny_root, tmp_path / "raw")
    store = tmp_path / "s2.zarr"
    partial_path(store).mkdir()
    progress_path(store).write_text(json.dumps({"fingerprint": "other input"}) + "\n")
    report = convert(root, store, progress=False)
    assert report["resumed_patches"] == 0
    assert_store_equals_source(store, root)


def _reverse_bands(root: Path) -> None:
    """Rewrite every S2 series of ``root`` with its bands reversed (same sizes, other content)."""
    for path in (root / "DATA_S2").iterdir():
        np.save(path, np.load(path)[:, ::-1])


def test_content_digest_follows_source_content(
    tiny_store: Path, tiny_root: Path, tmp_path: Path
) -> None:
    digest = zarr.open_group(tiny_store).attrs["content_digest"]
    assert isinstance(digest, str) and len(digest) == 64 and int(digest, 16) >= 0
    same = _copy(tiny_root, tmp_path / "same")
    convert(same, tmp_path / "same.zarr", progress=False)  # other path, same bytes
    assert zarr.open_group(tmp_path / "same.zarr").attrs["content_digest"] == digest
    other = _copy(tiny_root, tmp_path / "other")
    _reverse_bands(other)
    convert(other, tmp_path / "other.zarr", progress=False)
    assert zarr.open_group(tmp_path / "other.zarr").attrs["content_digest"] != digest
    assert open_store(tmp_path / "other.zarr").attrs["content_digest"] != digest


def test_a_failed_patch_stops_the_conversion(tiny_root: Path, tmp_path: Path) -> None:
    root = _copy(tiny_root, tmp_path / "raw")
    pid = int(pastis.read_metadata(root).frame.patch_id.iloc[6])
    pastis.s2_path(root, pid).write_bytes(b"not a npy")
    store = tmp_path / "s2.zarr"
    with pytest.raises(pastis.PastisFormatError, match=f"S2_{pid}.npy"):
        convert(root, store, threads=1, progress=False)
    written = len(progress_path(store).read_text().splitlines()) - 1
    assert 6 <= written <= 7, "patches after the failed one must not be converted"
