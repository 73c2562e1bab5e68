"""Fault matrix of the data stages: bad input data and archives, impossible timesteps, a full
disk, and a source that changes under a resumed conversion, each run through ``gfmtune``.

Every failing case must exit with code 1, log a message naming the offending file (or key), and
leave no output a rerun would trust: no inventory, no store, no manifest at its final path. A
conversion killed with SIGKILL and resumed is ``tests/data/test_store.py``'s
``test_killed_conversion_resumes``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
import zarr

from gfmtune import pastis
from gfmtune.cli import main
from gfmtune.data.inventory import write_inventory
from gfmtune.data.store import partial_path, progress_path
from tests.data.fake_servers import make_archive
from tests.data.test_local_source import _tar_member, _tar_with, _zip_with
from tests.data.test_store import _reverse_bands, assert_store_equals_source


@dataclass
class Case:
    """A copy of the tiny dataset to break, the scratch folder and pytest's monkeypatch."""

    root: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch

    def patch_id(self, index: int = 1, frames: int = 5) -> int:
        """The ``index``-th patch with ``frames`` frames (never the first patch of the table)."""
        table = pastis.read_metadata(self.root).frame
        return int(table.patch_id[table.dates.map(len) == frames].iloc[index])

    def s2(self, index: int = 1) -> Path:
        return pastis.s2_path(self.root, self.patch_id(index))

    def target(self, index: int = 1) -> Path:
        return pastis.target_path(self.root, self.patch_id(index))

    def edit_metadata(self, edit: Callable[[list[dict]], None]) -> Path:
        """Apply ``edit`` to the features of ``metadata.geojson``; return its path."""
        path = self.root / pastis.METADATA_FILE
        meta = json.loads(path.read_text())
        edit(meta["features"])
        path.write_text(json.dumps(meta))
        return path


#: A fault breaks the case's data and returns (the data.root to use, text the error must name).
Fault = Callable[[Case], tuple[Path, str]]


def _saved(path: Path, array: np.ndarray, **kwargs: bool) -> str:
    np.save(path, array, **kwargs)
    return str(path)


def _written(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _swap_dates(features: list[dict]) -> None:
    dates = features[2]["properties"]["dates-S2"]
    dates["1"], dates["2"] = dates["2"], dates["1"]


def _drop_last_date(features: list[dict]) -> None:
    dates = features[1]["properties"]["dates-S2"]
    del dates[str(len(dates) - 1)]


def _duplicate_id(features: list[dict]) -> None:
    features[3]["properties"]["ID_PATCH"] = features[2]["properties"]["ID_PATCH"]


def _full_disk(case: Case) -> None:
    case.monkeypatch.setattr(
        shutil, "disk_usage", lambda path: SimpleNamespace(total=10**6, used=10**6, free=1000)
    )


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _disk_full_while_writing(case: Case) -> tuple[Path, str]:
    """The disk is full from the third patch written into the store on."""
    setitem, calls = zarr.Array.__setitem__, []

    def failing(array: zarr.Array, key: object, value: object) -> None:
        if str(array.store_path).endswith("reflectance"):
            calls.append(key)
            if len(calls) >= 3:  # full from the third patch on
                raise _enospc(array.store_path)
        setitem(array, key, value)

    case.monkeypatch.setattr(zarr.Array, "__setitem__", failing)
    return case.root, f"disk full while writing {partial_path(case.tmp / 's2.zarr')}: "


def _before_converting_disk_full(case: Case) -> tuple[Path, str]:
    _full_disk(case)
    return case.root, "bytes needed"


def _several_pastis_folders(case: Case) -> tuple[Path, str]:
    parent = case.tmp / "several"
    for name in ("PASTIS-a", "PASTIS-b"):
        shutil.copytree(case.root, parent / name)
    return parent, f"2 PASTIS folders (with metadata.geojson) below it: {parent / 'PASTIS-a'}, "


def _archive(case: Case, name: str, content: bytes) -> tuple[Path, str]:
    archive = case.tmp / name
    archive.write_bytes(content)
    return archive, str(archive)


def _zip_bad_crc(case: Case) -> tuple[Path, str]:
    archive = make_archive(case.root, case.tmp / "PASTIS.zip")
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(f"PASTIS/{pastis.METADATA_FILE}")
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10] ^= 0xFF  # a stored member's byte: only its CRC-32 can tell
    archive.write_bytes(bytes(data))
    return archive, str(archive)


def _truncated_tgz(case: Case) -> tuple[Path, str]:
    archive = make_archive(case.root, case.tmp / "PASTIS.tgz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return archive, str(archive)


def _disk_full_extracting(case: Case) -> tuple[Path, str]:
    archive = make_archive(case.root, case.tmp / "PASTIS.tar")
    copy, calls = shutil.copyfileobj, []

    def failing(src: object, dst: object, length: int = 0) -> None:
        calls.append(dst)
        if len(calls) >= 5:
            raise _enospc(getattr(dst, "name", dst))
        copy(src, dst, length)

    case.monkeypatch.setattr(shutil, "copyfileobj", failing)
    return archive, f"disk full while writing {case.tmp / 'dest'}: "


def _missing(path: Path, root: Path) -> str:
    path.unlink()
    return path.relative_to(root).as_posix()


DOWNLOAD_FAULTS: dict[str, Fault] = {
    "missing S2 file": lambda c: (c.root, _missing(c.s2(), c.root)),
    "missing target": lambda c: (c.root, _missing(c.target(), c.root)),
    "missing metadata": lambda c: (c.root, _missing(c.root / pastis.METADATA_FILE, c.root)),
    "missing normalisation file": lambda c: (c.root, _missing(c.root / pastis.NORM_FILE, c.root)),
    "metadata not JSON": lambda c: (c.root, _written(c.root / pastis.METADATA_FILE, b"{oops")),
    "duplicate ids": lambda c: (c.root, f"{c.edit_metadata(_duplicate_id)}: duplicated ID_PATCH"),
    "several PASTIS folders under data.root": _several_pastis_folders,
    "zip slip": lambda c: _archive(c, "evil.zip", _zip_with("../evil.txt")),
    "tar absolute member": lambda c: _archive(c, "evil.tar", _tar_with(_tar_member("/evil"))),
    "tar symlink": lambda c: _archive(
        c, "evil.tar", _tar_with(_tar_member("PASTIS/x", tarfile.SYMTYPE, "/etc/passwd"))
    ),
    "zip with bad CRC": _zip_bad_crc,
    "truncated tar.gz": _truncated_tgz,
    "disk full extracting an archive": _disk_full_extracting,
}

CONVERT_FAULTS: dict[str, Fault] = {
    "corrupt npy": lambda c: (c.root, _written(c.s2(), b"\x93NUMPY garbage" * 20)),
    "truncated npy": lambda c: (c.root, _written(c.s2(), c.s2().read_bytes()[:500])),
    "pickled npy": lambda c: (c.root, _saved(c.s2(), np.array([{}]), allow_pickle=True)),
    "wrong dtype": lambda c: (c.root, _saved(c.s2(), np.zeros((5, 10, 16, 16), np.float32))),
    "wrong band count": lambda c: (c.root, _saved(c.s2(), np.zeros((5, 9, 16, 16), np.int16))),
    "wrong size": lambda c: (c.root, _saved(c.s2(), np.zeros((5, 10, 8, 8), np.int16))),
    "too few frames": lambda c: (c.root, _saved(c.s2(), np.zeros((4, 10, 16, 16), np.int16))),
    "too few dates": lambda c: (c.edit_metadata(_drop_last_date).parent, "metadata lists"),
    "dates out of order": lambda c: (c.root, f"{c.edit_metadata(_swap_dates)} (ID_PATCH"),
    "labels out of range": lambda c: (
        c.root,
        _saved(c.target(), np.full((3, 16, 16), 25, np.uint8)),
    ),
    "target not (3, H, W)": lambda c: (c.root, _saved(c.target(), np.zeros((16, 16), np.uint8))),
    "disk full before converting": _before_converting_disk_full,
    "disk full while converting": _disk_full_while_writing,
}


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.fixture
def case(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    return Case(shutil.copytree(tiny_root, tmp_path / "PASTIS"), tmp_path, monkeypatch)


@pytest.mark.parametrize("fault", DOWNLOAD_FAULTS.values(), ids=DOWNLOAD_FAULTS.keys())
def test_download_fault(case: Case, fault: Fault, caplog: pytest.LogCaptureFixture) -> None:
    source, named = fault(case)
    inventory, dest = case.tmp / "inventory.json", case.tmp / "dest"
    argv = ["download", "--source", "local", "--root", str(source), "--dest", str(dest)]
    with caplog.at_level(logging.ERROR):
        assert main([*argv, "--inventory", str(inventory)]) == 1
    assert named in _messages(caplog)
    assert not inventory.exists()
    assert not dest.exists() or [p.name for p in dest.iterdir()] == []


def _convert(root: Path, tmp: Path, threads: int = 2) -> tuple[int, Path]:
    """Run ``gfmtune store`` on an inventory of ``root``; return its exit code and store."""
    inventory, store = tmp / "inventory.json", tmp / "s2.zarr"
    write_inventory(inventory, "local", root)
    argv = ["store", "--inventory", str(inventory), "--out", str(store), "--no-progress"]
    return main([*argv, "--threads", str(threads)]), store


@pytest.mark.parametrize("fault", CONVERT_FAULTS.values(), ids=CONVERT_FAULTS.keys())
def test_convert_fault(case: Case, fault: Fault, caplog: pytest.LogCaptureFixture) -> None:
    root, named = fault(case)
    with caplog.at_level(logging.ERROR):
        code, store = _convert(root, case.tmp)
    assert code == 1
    assert named in _messages(caplog)
    assert not store.exists()


def test_disk_full_message_names_partial_store_and_space(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    _full_disk(case)
    with caplog.at_level(logging.ERROR):
        code, store = _convert(case.root, case.tmp)
    assert code == 1
    assert f"not enough free disk space in {partial_path(store)}: " in _messages(caplog)
    assert "1000 free" in _messages(caplog)
    assert not partial_path(store).exists() and not progress_path(store).exists()


def test_disk_full_while_converting_resumes_once_space_is_free(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    _disk_full_while_writing(case)
    with caplog.at_level(logging.ERROR):
        code, store = _convert(case.root, case.tmp, threads=1)
    assert code == 1 and "bytes needed" in _messages(caplog)
    case.monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        code, store = _convert(case.root, case.tmp)
    assert code == 0 and _report(caplog)["resumed_patches"] == 2
    assert_store_equals_source(store, case.root)


MANIFEST_FAULTS: dict[str, tuple[list[str], str]] = {
    "t > 35 with paper": (["--timesteps", "1", "40"], "t=40 with strategy 'paper'"),
    "t > a series' frames, paper": (["--timesteps", "7"], "exceeds the 5 frames of patch"),
    "t > a series' frames, uniform": (
        ["--timesteps", "6", "--strategy", "uniform"],
        "t=6 with strategy 'uniform' exceeds the 5 frames of patch",
    ),
    "t > a series' frames, random": (
        ["--timesteps", "6", "--strategy", "random"],
        "t=6 with strategy 'random' exceeds the 5 frames of patch",
    ),
    "t = 0": (["--timesteps", "0"], "timesteps must be >= 1"),
    "unknown strategy": (["--strategy", "linear"], "unknown timestep strategy 'linear'"),
}


@pytest.mark.parametrize(("args", "named"), MANIFEST_FAULTS.values(), ids=MANIFEST_FAULTS.keys())
def test_timestep_manifest_fault(
    tiny_store: Path,
    tmp_path: Path,
    args: list[str],
    named: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "timesteps"
    with caplog.at_level(logging.ERROR):
        code = main(
            ["manifests", "timesteps", "--store", str(tiny_store), "--out", str(out), *args]
        )
    assert code == 1
    assert named in _messages(caplog)
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_store_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, out = tmp_path / "s2.zarr", tmp_path / "label_split"
    with caplog.at_level(logging.ERROR):
        assert main(["manifests", "labels", "--store", str(store), "--out", str(out)]) == 1
    assert f"{store}: Zarr store not found" in _messages(caplog)
    assert not out.exists()


def test_disk_full_writing_manifests(
    tiny_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Half a CSV is written when the disk fills: the error names the CSV, nothing is left."""

    def half_then_full(path: Path, data: bytes) -> int:
        with open(path, "wb") as out:
            out.write(data[: len(data) // 2])
        raise _enospc(path)

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    _full_disk(Case(tmp_path, tmp_path, monkeypatch))
    out = tmp_path / "label_split"
    with caplog.at_level(logging.ERROR):
        code = main(["manifests", "labels", "--store", str(tiny_store), "--out", str(out)])
    assert code == 1
    message = _messages(caplog)
    assert f"disk full while writing {out / '1.csv'}: " in message
    assert "bytes needed" in message and "1000 bytes free" in message
    assert list(out.iterdir()) == []  # neither the CSV nor its temporary file


# ---- resumed conversions ---------------------------------------------------------------------


def _fail_after_six(case: Case, caplog: pytest.LogCaptureFixture) -> tuple[Path, Path]:
    """Convert with the 7th patch corrupt (one thread): fails after writing 6 patches.
    Return the corrupt S2 file and the store."""
    bad = pastis.s2_path(case.root, int(pastis.read_metadata(case.root).frame.patch_id[6]))
    good = bad.read_bytes()
    bad.write_bytes(b"not a npy")
    with caplog.at_level(logging.ERROR):
        code, store = _convert(case.root, case.tmp, threads=1)
    assert code == 1 and str(bad) in _messages(caplog)
    assert not store.exists() and partial_path(store).exists()
    assert len(progress_path(store).read_text().splitlines()) - 1 >= 6
    bad.write_bytes(good)
    caplog.clear()
    return bad, store


def _report(caplog: pytest.LogCaptureFixture) -> dict:
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("store "))
    return json.loads(line.split(": ", 1)[1])


def test_failed_conversion_resumes_once_fixed(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    _fail_after_six(case, caplog)
    with caplog.at_level(logging.INFO):
        code, store = _convert(case.root, case.tmp)
    assert code == 0
    assert _report(caplog)["resumed_patches"] >= 6
    assert_store_equals_source(store, case.root)


def _other_dataset(case: Case) -> Path:
    """Dataset B: A with its bands reversed (same ids, metadata and file sizes)."""
    other = shutil.copytree(case.root, case.tmp / "B")
    _reverse_bands(other)
    return other


def _norm_changed(case: Case) -> Path:
    norm = json.loads((case.root / pastis.NORM_FILE).read_text())
    norm["Fold_1"]["mean"][0] += 1
    (case.root / pastis.NORM_FILE).write_text(json.dumps(norm))
    return case.root


def _target_changed(case: Case) -> Path:
    path = pastis.target_path(case.root, int(pastis.read_metadata(case.root).frame.patch_id[0]))
    np.save(path, np.load(path)[:, ::-1])
    return case.root


CHANGED_SOURCES: dict[str, tuple[Callable[[Case], Path], str]] = {
    "data.root switched to other data": (_other_dataset, "DATA_S2/S2_"),
    "normalisation file changed": (_norm_changed, pastis.NORM_FILE),
    "a written patch's target changed": (_target_changed, "ANNOTATIONS/TARGET_"),
}


@pytest.mark.parametrize(("change", "named"), CHANGED_SOURCES.values(), ids=CHANGED_SOURCES.keys())
def test_changed_source_during_resume_starts_over(
    case: Case,
    change: Callable[[Case], Path],
    named: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 9's repro: A fails after 6 patches, then the source changes; the rerun must not
    mix A's patches into the new store."""
    _fail_after_six(case, caplog)
    root = change(case)
    with caplog.at_level(logging.INFO):
        code, store = _convert(root, case.tmp)
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{root}/{named}" in warnings[0], warnings
    assert "starting the conversion over" in warnings[0]
    assert _report(caplog)["resumed_patches"] == 0
    assert_store_equals_source(store, root)
    assert xr.open_zarr(store).attrs["norm_published"] == pastis.read_norm(root)
