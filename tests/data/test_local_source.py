"""Local data: a folder or an archive, extracted safely, with the layout checked."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gfmtune import pastis
from gfmtune.cli import main
from gfmtune.data.download.local import (
    ArchiveError,
    MissingFilesError,
    prepare_local,
    validate_layout,
)
from tests.data.fake_servers import SMALL, make_archive, write_small_dataset
from tests.workflow_helpers import job_counts, run_snakemake


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small PASTIS folder (read-only for the tests)."""
    return write_small_dataset(tmp_path_factory.mktemp("src") / "PASTIS")


def relative_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_folder_is_used_in_place(source: Path) -> None:
    assert prepare_local(source.parent) == source  # metadata.geojson found one level down
    assert validate_layout(source) == SMALL.n_patches


@pytest.mark.parametrize("name", ["PASTIS.zip", "PASTIS.tar", "PASTIS.tar.gz", "PASTIS.tgz"])
def test_archive_is_extracted_and_validated(source: Path, tmp_path: Path, name: str) -> None:
    archive = make_archive(source, tmp_path / name)
    dest = tmp_path / "dest"
    root = prepare_local(archive, dest)
    assert root == dest / "PASTIS"
    assert relative_files(root) == relative_files(source)
    assert sorted(p.name for p in dest.iterdir()) == [f".{name}.extracted", "PASTIS"]
    stamp = (root / pastis.METADATA_FILE).stat().st_mtime_ns
    assert prepare_local(archive, dest) == root  # second run: marker found, not extracted again
    assert (root / pastis.METADATA_FILE).stat().st_mtime_ns == stamp


def test_missing_target_is_named(source: Path, tmp_path: Path) -> None:
    copy = make_archive(source, tmp_path / "PASTIS.zip")
    root = prepare_local(copy, tmp_path / "dest")
    patch_id = int(pastis.read_metadata(root).frame.patch_id.iloc[3])
    pastis.target_path(root, patch_id).unlink()
    with pytest.raises(MissingFilesError) as err:
        prepare_local(root)
    assert (
        f"1 file(s) listed in metadata.geojson are missing: ANNOTATIONS/TARGET_{patch_id}.npy"
        in str(err.value)
    )


def test_many_missing_files_are_counted(source: Path, tmp_path: Path) -> None:
    root = prepare_local(make_archive(source, tmp_path / "P.tar"), tmp_path / "dest")
    for path in (root / "DATA_S2").iterdir():
        path.unlink()
    with pytest.raises(MissingFilesError) as err:
        validate_layout(root)
    message = str(err.value)
    assert f"{SMALL.n_patches} file(s)" in message and "DATA_S2/S2_" in message
    assert f"and {SMALL.n_patches - 5} more" in message


def test_missing_file_through_cli_is_one_error_line(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = prepare_local(make_archive(source, tmp_path / "P.zip"), tmp_path / "dest")
    (root / pastis.NORM_FILE).unlink()
    inventory = tmp_path / "inventory.json"
    with caplog.at_level(logging.ERROR):
        code = main(
            ["download", "--source", "local", "--root", str(root), "--inventory", str(inventory)]
        )
    assert code == 1
    assert any(pastis.NORM_FILE in r.getMessage() for r in caplog.records)
    assert not inventory.exists()


def test_cli_local_writes_inventory(source: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    assert (
        main(
            ["download", "--source", "local", "--root", str(source), "--inventory", str(inventory)]
        )
        == 0
    )
    data = json.loads(inventory.read_text())
    assert data["source"] == "local" and data["root"] == str(source.resolve())
    assert data["files"] == []


def _zip_with(member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("PASTIS/metadata.geojson", "{}")
        zf.writestr(member, "owned")
    return buffer.getvalue()


def _tar_with(member: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        ok = tarfile.TarInfo("PASTIS/metadata.geojson")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"{}"))
        tf.addfile(member, io.BytesIO(b"owned"[: member.size]))
    return buffer.getvalue()


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 5 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("evil.zip", _zip_with("../evil.txt"), "escape"),
        ("evil.zip", _zip_with("/tmp/evil.txt"), "escape"),
        ("evil.tar", _tar_with(_tar_member("PASTIS/../../evil.txt")), "escape"),
        ("evil.tar", _tar_with(_tar_member("/evil.txt")), "escape"),
        ("evil.tar", _tar_with(_tar_member("PASTIS/x", tarfile.SYMTYPE, "/etc/passwd")), "link"),
    ],
)
def test_unsafe_member_is_refused(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    archive = tmp_path / "in" / name
    archive.parent.mkdir()
    archive.write_bytes(content)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(ArchiveError, match=reason) as err:
        prepare_local(archive, dest)
    assert str(archive) in str(err.value)
    assert list(dest.iterdir()) == []  # nothing extracted, no temporary folder left
    assert not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_truncated_zip_is_reported(source: Path, tmp_path: Path) -> None:
    archive = make_archive(source, tmp_path / "PASTIS.zip")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match="corrupt or truncated") as err:
        prepare_local(archive, dest)
    assert str(archive) in str(err.value)
    assert list(dest.iterdir()) == []


def test_neither_folder_nor_archive(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ArchiveError, match="neither a folder nor a supported archive"):
        prepare_local(tmp_path / "data.txt", tmp_path / "dest")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_local(tmp_path / "nowhere", tmp_path / "dest")


def test_cli_synthetic_writes_inventory(tmp_path: Path) -> None:
    inventory, dest = tmp_path / "inventory.json", tmp_path / "synthetic"
    argv = ["download", "--source", "synthetic", "--dest", str(dest), "--inventory", str(inventory)]
    assert main([*argv, "--patches", "5", "--size", "8", "--frames", "3", "4", "--seed", "2"]) == 0
    data = json.loads(inventory.read_text())
    assert data["source"] == "synthetic" and data["root"] == str(dest.resolve())
    table = pastis.read_metadata(dest).frame
    assert len(table) == 5 and sorted({len(d) for d in table.dates}) == [3, 4]


def test_cli_without_dest_fails_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["download", "--source", "synthetic"]) == 1
    assert [r.getMessage() for r in caplog.records] == ["--dest is required for --source synthetic"]


def test_workflow_reruns_after_local_data_change(source: Path, tmp_path: Path) -> None:
    """A change of the local data in place, or of data.root, reruns download and downstream."""
    root = tmp_path / "data" / "PASTIS"
    shutil.copytree(source, root)
    work = tmp_path / "work"
    work.mkdir()
    config = {"run": "loc", "data": {"source": "local", "root": str(root)}}
    targets = ["results/loc/data/s2.zarr", "results/loc/manifests/timesteps/1.csv"]
    result = run_snakemake(work, "--cores", "1", *targets, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = run_snakemake(work, "-n", "--cores", "1", *targets, config=config)
    assert "Nothing to be done" in planned.stdout + planned.stderr

    patch_id = int(pastis.read_metadata(root).frame.patch_id.iloc[2])
    series = np.load(pastis.s2_path(root, patch_id))
    np.save(pastis.s2_path(root, patch_id), series[:, ::-1])  # same size, other content
    planned = run_snakemake(work, "-n", "--cores", "1", *targets, config=config)
    assert planned.returncode == 0, planned.stderr[-3000:]
    expected = {"download": 1, "store": 1, "timestep_manifest": 1}
    assert expected.items() <= job_counts(planned.stdout).items()

    moved = shutil.copytree(root, tmp_path / "elsewhere" / "PASTIS", copy_function=shutil.copy2)
    config["data"]["root"] = str(moved)
    planned = run_snakemake(work, "-n", "--cores", "1", *targets, config=config)
    assert expected.items() <= job_counts(planned.stdout).items()
