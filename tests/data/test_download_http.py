"""Resumable verified downloads: resume, restart, retries, 404, digests, disk check, skipping."""

from __future__ import annotations

import errno
import hashlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gfmtune.data.download import http
from gfmtune.data.download.http import (
    ChecksumError,
    DownloadError,
    RemoteFile,
    RemoteNotFoundError,
    download_all,
    download_file,
    remaining_bytes,
)
from gfmtune.fileio import DiskFullError, InsufficientSpaceError
from gfmtune.verify import parse_digest
from tests.data.fake_servers import FileServer, guard_localhost

DATA = np.random.default_rng(0).bytes(300_000)
SHA256 = hashlib.sha256(DATA).hexdigest()
FAST = {"retries": 3, "backoff": 0.001, "progress": False}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    guard_localhost(monkeypatch)
    with FileServer({"/f.bin": DATA}) as srv:
        yield srv


def remote(server: FileServer, tmp_path: Path, **changes: object) -> RemoteFile:
    fields = {
        "url": server.url + "/f.bin",
        "dest": tmp_path / "f.bin",
        "size": len(DATA),
        "digest": f"sha256:{SHA256}",
    }
    return RemoteFile(**(fields | changes))  # type: ignore[arg-type]


def ranges(server: FileServer) -> list[str | None]:
    return [s.headers.get("range") for s in server.requests("GET", "/f.bin")]


def test_download_verifies_and_renames(server: FileServer, tmp_path: Path) -> None:
    path = download_file(remote(server, tmp_path), **FAST)
    assert path.read_bytes() == DATA
    assert not (tmp_path / "f.bin.part").exists()
    assert ranges(server) == [None]


def test_cut_connection_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    server.fault("/f.bin", "cut:100000")
    path = download_file(remote(server, tmp_path), chunk_size=16384, **FAST)
    assert path.read_bytes() == DATA
    first, second = ranges(server)
    assert first is None
    start = int(second.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= 100_000


def test_existing_part_is_resumed(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(DATA[:1000])
    path = download_file(remote(server, tmp_path), **FAST)
    assert path.read_bytes() == DATA
    assert ranges(server) == ["bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(b"\0" * 1000)  # wrong bytes: appending would corrupt
    server.fault("/f.bin", "ignore-range")
    path = download_file(remote(server, tmp_path), **FAST)
    assert path.read_bytes() == DATA
    assert ranges(server) == ["bytes=1000-"]


def test_416_on_complete_part_of_unknown_size(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(DATA)
    path = download_file(remote(server, tmp_path, size=None), **FAST)
    assert path.read_bytes() == DATA
    assert ranges(server) == [f"bytes={len(DATA)}-"]


def test_part_longer_than_file_is_discarded(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(DATA + b"junk")
    assert download_file(remote(server, tmp_path), **FAST).read_bytes() == DATA
    assert ranges(server) == [None]


def test_5xx_is_retried(server: FileServer, tmp_path: Path) -> None:
    server.fault("/f.bin", "status:500", "status:503")
    assert download_file(remote(server, tmp_path), **FAST).read_bytes() == DATA
    assert server.count("GET", "/f.bin") == 3


def test_retries_exhausted_names_url(server: FileServer, tmp_path: Path) -> None:
    server.fault("/f.bin", *["status:502"] * 4)
    with pytest.raises(DownloadError, match=r"/f\.bin: failed after 4 attempt"):
        download_file(remote(server, tmp_path), **FAST)
    assert server.count("GET", "/f.bin") == 4
    assert not (tmp_path / "f.bin").exists()


def test_404_fails_at_once(server: FileServer, tmp_path: Path) -> None:
    file = remote(server, tmp_path, url=server.url + "/missing.bin")
    with pytest.raises(RemoteNotFoundError, match=r"/missing\.bin: not found \(HTTP 404\)"):
        download_file(file, **FAST)
    assert server.count() == 1


def test_digest_mismatch_deletes_and_names_file(server: FileServer, tmp_path: Path) -> None:
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as err:
        download_file(remote(server, tmp_path, digest=f"md5:{wrong}"), **FAST)
    message = str(err.value)
    assert "f.bin" in message and wrong in message
    assert hashlib.md5(DATA).hexdigest() in message
    assert list(tmp_path.iterdir()) == []


def test_size_disagreement_with_server_fails_without_retries(
    server: FileServer, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError, match=f"has {len(DATA)} bytes, expected {len(DATA) + 1}"):
        download_file(remote(server, tmp_path, size=len(DATA) + 1, digest=None), **FAST)
    assert server.count() == 1


def test_verified_file_is_skipped_without_request(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(DATA)
    assert download_file(remote(server, tmp_path), **FAST).read_bytes() == DATA
    assert server.count() == 0


def test_present_but_wrong_file_is_set_aside_and_fetched_again(
    server: FileServer, tmp_path: Path
) -> None:
    """A wrong file we did not download (the user's) is renamed, never deleted."""
    (tmp_path / "f.bin").write_bytes(bytes(len(DATA)))  # right size, wrong content
    earlier = tmp_path / "f.bin.rejected-20260101T000000.000000"
    earlier.write_bytes(b"an earlier reject")
    assert download_file(remote(server, tmp_path), **FAST).read_bytes() == DATA
    assert server.count("GET") == 1
    assert earlier.read_bytes() == b"an earlier reject"
    [aside] = set(tmp_path.glob("f.bin.rejected-*")) - {earlier}
    assert aside.read_bytes() == bytes(len(DATA))


def test_disk_full_mid_download_names_path_and_space(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC after the free-space check passed (another writer filled the disk meanwhile)."""
    capacity = 100_000

    class SmallDisk(io.FileIO):
        def write(self, chunk: bytes) -> int:
            if self.tell() + len(chunk) > capacity:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(chunk)

    file = remote(server, tmp_path)
    with monkeypatch.context() as patch, pytest.raises(DiskFullError) as err:
        patch.setattr(http, "open", SmallDisk, raising=False)
        download_all([file], **FAST)
    written = file.part.stat().st_size
    assert 0 < written <= capacity, "the partial file is kept for the resume"
    text = str(err.value)
    assert f"disk full while writing {file.part}: {len(DATA)} bytes needed" in text
    assert server.count("GET") == 1, "a full disk is not retried"
    assert download_file(file, **FAST).read_bytes() == DATA
    assert ranges(server)[-1] == f"bytes={written}-"


def test_free_disk_check_before_any_request(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f.bin.part").write_bytes(DATA[:1000])
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=5000))
    needed = len(DATA) - 1000
    assert remaining_bytes([remote(server, tmp_path)]) == needed
    with pytest.raises(InsufficientSpaceError) as err:
        download_all([remote(server, tmp_path)], **FAST)
    assert str(tmp_path) in str(err.value)
    assert f"{needed} bytes needed" in str(err.value) and "5000 free" in str(err.value)
    assert server.count() == 0


def test_download_all_in_parallel_and_first_error(server: FileServer, tmp_path: Path) -> None:
    for i in range(5):
        server.files[f"/part{i}.bin"] = DATA[i * 1000 : (i + 1) * 1000]
    files = [
        RemoteFile(f"{server.url}/part{i}.bin", tmp_path / f"part{i}.bin", 1000, None)
        for i in range(5)
    ]
    paths = download_all(files, workers=3, **FAST)
    assert [p.read_bytes() for p in paths] == [DATA[i * 1000 : (i + 1) * 1000] for i in range(5)]
    missing = RemoteFile(f"{server.url}/nope.bin", tmp_path / "nope.bin", 10, None)
    with pytest.raises(RemoteNotFoundError, match=r"nope\.bin"):
        download_all([*files, missing], workers=3, **FAST)
    assert server.count("GET", "/nope.bin") == 1
    assert server.count("GET", "/part") == 5  # verified files were not fetched again


def test_parse_digest() -> None:
    assert parse_digest("MD5:ABC") == ("md5", "abc")
    with pytest.raises(ValueError, match="sha1"):
        parse_digest("sha1:abc")
