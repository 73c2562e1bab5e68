"""Zenodo source end to end against a fake record: download, md5, resume, extraction, errors."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfmtune.cli import main
from gfmtune.data.download.http import ChecksumError, DownloadError, RemoteNotFoundError
from gfmtune.data.download.local import ArchiveError
from gfmtune.data.download.zenodo import download_record
from tests.data.fake_servers import (
    SMALL,
    ZenodoServer,
    guard_localhost,
    make_archive,
    md5,
    write_small_dataset,
)

RECORD = "10908628"
FAST = {"workers": 2, "retries": 3, "backoff": 0.001, "progress": False}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_dataset(tmp_path_factory.mktemp("src") / "PASTIS")


@pytest.fixture(scope="module")
def archives(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("archives")
    names = ("PASTIS.zip", "PASTIS.tar.gz")
    return {name: make_archive(source, out / name).read_bytes() for name in names}


@pytest.fixture(autouse=True)
def _only_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_localhost(monkeypatch)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def serve(files: dict[str, bytes], **options: object) -> ZenodoServer:
    return ZenodoServer(RECORD, files, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "link"), [("PASTIS.zip", "self"), ("PASTIS.tar.gz", "content")])
def test_record_downloaded_verified_extracted(
    source: Path, archives: dict[str, bytes], tmp_path: Path, name: str, link: str
) -> None:
    data = archives[name]
    with serve({name: data}, link=link) as server:
        result = download_record(tmp_path, RECORD, server.api, **FAST)
        assert result.root == tmp_path / "PASTIS"
        assert result.files == [{"path": name, "size": len(data), "md5": md5(data)}]
        assert files_of(result.root) == files_of(source)
        assert server.count("GET", f"/api/records/{RECORD}/files/") == 1
        again = download_record(tmp_path, RECORD, server.api, **FAST)  # verified, not fetched
        assert again.files == result.files
        assert server.count("GET", f"/api/records/{RECORD}/files/") == 1
        assert server.count("GET", f"/api/records/{RECORD}") == 3  # record x2, file x1


def test_cut_transfer_is_resumed_with_range(archives: dict[str, bytes], tmp_path: Path) -> None:
    data = archives["PASTIS.zip"]
    with serve({"PASTIS.zip": data}) as server:
        path = server.file_path(RECORD, "PASTIS.zip")
        server.fault(path, f"cut:{len(data) // 3}")
        result = download_record(tmp_path, RECORD, server.api, **FAST)
        ranges = [s.headers.get("range") for s in server.requests("GET", path)]
    assert ranges[0] is None and len(ranges) == 2
    start = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= len(data) // 3
    assert (tmp_path / "PASTIS.zip").read_bytes() == data
    assert result.root == tmp_path / "PASTIS"


def test_checksum_mismatch_names_file_and_digests(
    archives: dict[str, bytes], tmp_path: Path
) -> None:
    data, wrong = archives["PASTIS.zip"], "0123456789abcdef" * 2
    with (
        serve({"PASTIS.zip": data}, checksums={"PASTIS.zip": wrong}) as server,
        pytest.raises(ChecksumError) as err,
    ):
        download_record(tmp_path, RECORD, server.api, **FAST)
    message = str(err.value)
    assert "PASTIS.zip" in message and wrong in message and md5(data) in message
    assert list(tmp_path.iterdir()) == []


def test_missing_file_404_fails_without_retries(archives: dict[str, bytes], tmp_path: Path) -> None:
    with serve({"PASTIS.zip": archives["PASTIS.zip"]}) as server:
        path = server.file_path(RECORD, "PASTIS.zip")
        del server.files[path]
        with pytest.raises(RemoteNotFoundError, match=f"{server.url}{path}: not found"):
            download_record(tmp_path, RECORD, server.api, **FAST)
        assert server.count("GET", path) == 1
        with pytest.raises(RemoteNotFoundError, match="/api/records/999: not found"):
            download_record(tmp_path, "999", server.api, **FAST)
        assert server.count("GET", "/api/records/999") == 1


def test_record_5xx_is_retried(archives: dict[str, bytes], tmp_path: Path) -> None:
    with serve({"PASTIS.zip": archives["PASTIS.zip"]}) as server:
        server.fault(f"/api/records/{RECORD}", "status:503")
        assert download_record(tmp_path, RECORD, server.api, **FAST).root.is_dir()
        assert server.count("GET", f"/api/records/{RECORD}") == 3  # record x2, file x1


def test_truncated_archive_with_matching_md5(archives: dict[str, bytes], tmp_path: Path) -> None:
    truncated = archives["PASTIS.tar.gz"][: len(archives["PASTIS.tar.gz"]) * 2 // 3]
    with serve({"PASTIS.tar.gz": truncated}) as server, pytest.raises(ArchiveError) as err:
        download_record(tmp_path, RECORD, server.api, **FAST)
    assert str(tmp_path / "PASTIS.tar.gz") in str(err.value)
    assert "corrupt or truncated" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PASTIS.tar.gz"]  # no tree, no marker


def test_several_archives_merge_into_one_root(source: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    shutil.copytree(source, parts / "a", ignore=shutil.ignore_patterns("ANNOTATIONS"))
    shutil.copytree(source / "ANNOTATIONS", parts / "b" / "ANNOTATIONS")
    files = {
        "S2.zip": make_archive(parts / "a", parts / "S2.zip").read_bytes(),
        "LABELS.tar.gz": make_archive(parts / "b", parts / "LABELS.tar.gz").read_bytes(),
        "README.md": b"not wanted",
    }
    dest = tmp_path / "dest"
    with serve(files) as server:
        result = download_record(dest, RECORD, server.api, patterns=["*.zip", "*.tar.gz"], **FAST)
        assert server.count("GET", server.file_path(RECORD, "README.md")) == 0
    assert files_of(result.root) == files_of(source)
    assert sorted(f["path"] for f in result.files) == ["LABELS.tar.gz", "S2.zip"]


def test_unknown_glob_and_unsafe_names_are_refused(tmp_path: Path) -> None:
    with serve({"PASTIS.zip": b"x"}) as server:
        with pytest.raises(ValueError, match=r"no file of the record matches \['\*\.rar'\]"):
            download_record(tmp_path, RECORD, server.api, patterns=["*.rar"], **FAST)
        server.keys = {"../evil.zip": b"x"}
        with pytest.raises(DownloadError, match="not a plain file name"):
            download_record(tmp_path, RECORD, server.api, **FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def zenodo_server(archives: dict[str, bytes]) -> Iterator[ZenodoServer]:
    with serve({"PASTIS.zip": archives["PASTIS.zip"]}) as server:
        yield server


def cli(server: ZenodoServer, dest: Path, inventory: Path) -> int:
    argv = ["download", "--source", "zenodo", "--dest", str(dest), "--inventory", str(inventory)]
    argv += ["--record", RECORD, "--zenodo-api", server.api, "--workers", "2", "--retries", "0"]
    return main(argv)


def test_cli_zenodo_writes_inventory(
    zenodo_server: ZenodoServer, archives: dict[str, bytes], tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.json"
    assert cli(zenodo_server, tmp_path / "raw", inventory) == 0
    data = json.loads(inventory.read_text())
    assert data["source"] == "zenodo" and data["record"] == RECORD
    assert data["root"] == str((tmp_path / "raw" / "PASTIS").resolve())
    assert data["download_dir"] == str((tmp_path / "raw").resolve())
    zipped = archives["PASTIS.zip"]
    assert data["files"] == [{"path": "PASTIS.zip", "size": len(zipped), "md5": md5(zipped)}]
    assert len(json.loads((tmp_path / "raw/PASTIS/metadata.geojson").read_text())["features"]) == (
        SMALL.n_patches
    )


def test_cli_zenodo_error_is_one_line_and_exit_1(
    zenodo_server: ZenodoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    zenodo_server.files.clear()
    inventory = tmp_path / "inventory.json"
    with caplog.at_level(logging.ERROR):
        assert cli(zenodo_server, tmp_path / "raw", inventory) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "PASTIS.zip/content: not found (HTTP 404)" in errors[0]
    assert "\n" not in errors[0]
    assert not inventory.exists()
