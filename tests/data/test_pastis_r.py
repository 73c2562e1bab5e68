"""torchgeo's PASTIS download (PASTIS-R, folder or zip) as local data: its S2 part only."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from gfmtune import pastis
from gfmtune.cli import main
from gfmtune.data.download.local import (
    ArchiveError,
    not_extracted,
    prepare_local,
    source_fingerprint,
    source_problem,
)
from gfmtune.data.store import convert
from tests.data.fake_servers import SMALL
from tests.data.pastis_r import (
    ARCHIVE,
    EXTRAS,
    TOP,
    s2_part,
    strip_to_torchgeo_fixture,
    write_pastis_r,
    zip_pastis_r,
)
from tests.data.test_store import RAW, assert_store_equals_source

#: what reading metadata without S2 dates raises today (gfmtune/pastis.py, ``_parse_dates``)
NO_S2_DATES = "'dates-S2' must be a non-empty index->YYYYMMDD map"


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchgeo's ``root`` after its download: ``PASTIS-R/`` and ``PASTIS-R.zip`` (read-only)."""
    parent = tmp_path_factory.mktemp("torchgeo")
    root = write_pastis_r(parent)
    zip_pastis_r(root, parent / ARCHIVE)
    return parent


def test_fixture_has_the_pastis_r_layout(download: Path) -> None:
    root = download / TOP
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [*EXTRAS, "ANNOTATIONS", "DATA_S2", pastis.METADATA_FILE, pastis.NORM_FILE]
    )
    props = json.loads((root / pastis.METADATA_FILE).read_text())["features"][0]["properties"]
    pid = props["ID_PATCH"]
    for sat in ("S1A", "S1D"):
        series = np.load(root / f"DATA_{sat}" / f"{sat}_{pid}.npy")
        assert series.shape[:2] == (len(props[f"dates-{sat}"]), 3)
    assert len(json.loads((root / pastis.NORM_FILE).read_text())["Fold_1"]["mean"]) == 10


@pytest.mark.parametrize("where", ["parent", "folder"])
def test_folder_is_accepted_in_place(download: Path, where: str) -> None:
    root = download / TOP
    given = download if where == "parent" else root
    # torchgeo's root holds the zip beside the folder: an archive there is not data
    assert source_problem(given) is None
    assert prepare_local(given) == root


def test_zip_is_extracted_and_accepted(download: Path, tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    root = prepare_local(download / ARCHIVE, dest)
    assert root == dest / TOP
    assert s2_part(root) == s2_part(download / TOP)
    # only the S2 part is written: PASTIS-R's radar and instance parts are not extracted
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == set(s2_part(download / TOP))
    assert not any((root / name).exists() for name in EXTRAS)


def test_skipped_members_are_still_checked(tmp_path: Path) -> None:
    archive = tmp_path / ARCHIVE
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{TOP}/DATA_S1A/../../../evil.txt", b"x")
    with pytest.raises(ArchiveError, match="would escape"):
        prepare_local(archive, tmp_path / "raw")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    ("name", "skipped"),
    [
        ("PASTIS-R/DATA_S1A/S1A_10000.npy", True),
        ("PASTIS-R/DATA_S1D/", True),
        ("PASTIS-R/INSTANCE_ANNOTATIONS/INSTANCES_1.npy", True),
        ("PASTIS-R/NORM_S1D_patch.json", True),
        ("PASTIS-R/NORM_S2_patch.json", False),
        ("PASTIS-R/DATA_S2/S2_10000.npy", False),
        ("PASTIS-R/ANNOTATIONS/TARGET_10000.npy", False),
        ("PASTIS-R/metadata.geojson", False),
        ("PASTIS/DATA_S1A_notes.txt", False),
    ],
)
def test_which_members_are_not_extracted(name: str, skipped: bool) -> None:
    assert not_extracted(name) is skipped


def test_cli_download_of_the_zip_writes_inventory(download: Path, tmp_path: Path) -> None:
    inventory, dest = tmp_path / "inventory.json", tmp_path / "raw"
    argv = ["download", "--source", "local", "--root", str(download / ARCHIVE)]
    assert main([*argv, "--dest", str(dest), "--inventory", str(inventory)]) == 0
    data = json.loads(inventory.read_text())
    assert data["source"] == "local" and data["root"] == str((dest / TOP).resolve())


def test_radar_files_do_not_count_in_the_fingerprint(download: Path, tmp_path: Path) -> None:
    root = shutil.copytree(download / TOP, tmp_path / TOP)
    before = source_fingerprint(root)
    for path in (root / "DATA_S1A").iterdir():
        path.unlink()
    (root / "NORM_S1D_patch.json").write_text("{}")
    assert source_fingerprint(root) == before


def _hd_copy(root: Path, dest: Path) -> Path:
    """The equivalent PASTIS-HD folder for the S2 part: the same files, nothing else."""
    for rel, content in s2_part(root).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(content)
    return dest


@pytest.mark.filterwarnings("ignore:variable 'reflectance' has multiple fill values")
def test_store_from_pastis_r_equals_store_from_pastis_hd(download: Path, tmp_path: Path) -> None:
    root = prepare_local(download / ARCHIVE, tmp_path / "raw")
    hd = _hd_copy(download / TOP, tmp_path / "PASTIS-HD")
    convert(root, tmp_path / "r.zarr", progress=False)
    convert(hd, tmp_path / "hd.zarr", progress=False)
    assert_store_equals_source(tmp_path / "r.zarr", hd)
    a = xr.open_zarr(tmp_path / "r.zarr", mask_and_scale=RAW)
    b = xr.open_zarr(tmp_path / "hd.zarr", mask_and_scale=RAW)
    assert a.sizes["patch"] == SMALL.n_patches
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    digest = zarr.open_group(tmp_path / "r.zarr").attrs["content_digest"]
    assert digest == zarr.open_group(tmp_path / "hd.zarr").attrs["content_digest"]


@pytest.fixture(scope="module")
def torchgeo_fixture(download: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchgeo's test fixture's layout (no S2 dates, no NORM files): folder and zip."""
    parent = tmp_path_factory.mktemp("torchgeo_fixture")
    root = strip_to_torchgeo_fixture(shutil.copytree(download / TOP, parent / TOP))
    zip_pastis_r(root, parent / ARCHIVE)
    return parent


def test_torchgeo_fixture_folder_is_refused_naming_the_dates(torchgeo_fixture: Path) -> None:
    with pytest.raises(pastis.PastisFormatError, match=NO_S2_DATES) as err:
        prepare_local(torchgeo_fixture / TOP)
    assert str(torchgeo_fixture / TOP / pastis.METADATA_FILE) in str(err.value)


def test_torchgeo_fixture_zip_is_refused_through_the_cli(
    torchgeo_fixture: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inventory = tmp_path / "inventory.json"
    argv = ["download", "--source", "local", "--root", str(torchgeo_fixture / ARCHIVE)]
    with caplog.at_level(logging.ERROR):
        assert main([*argv, "--dest", str(tmp_path / "raw"), "--inventory", str(inventory)]) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and NO_S2_DATES in messages[0], messages
    assert not inventory.exists()


def test_torchgeo_fixture_with_dates_is_refused_naming_the_norm_file(
    download: Path, tmp_path: Path
) -> None:
    """A later version of torchgeo's fixture writes the dates, still no NORM_S2_patch.json."""
    root = strip_to_torchgeo_fixture(shutil.copytree(download / TOP, tmp_path / TOP), True)
    with pytest.raises(pastis.PastisFormatError, match="cannot read normalisation file") as err:
        prepare_local(tmp_path)
    assert str(root / pastis.NORM_FILE) in str(err.value)
