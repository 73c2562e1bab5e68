"""Hugging Face source against a fake hub: file selection, pinning, our own sha256 checks."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gfmtune import pastis
from gfmtune.cli import main
from gfmtune.data.download.http import ChecksumError, DownloadError
from gfmtune.data.download.huggingface import download_pastis_hd
from gfmtune.fileio import InsufficientSpaceError
from tests.data.fake_servers import (
    SMALL,
    FakeHub,
    FileServer,
    git_blob_id,
    guard_localhost,
    write_small_dataset,
)

REPO = "IGNF/PASTIS-HD"
NEEDED_PREFIXES = ("DATA_S2/S2_", "ANNOTATIONS/TARGET_")
N_NEEDED = 2 * SMALL.n_patches + 2


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's content: the S2 part plus S1, SPOT and README files not to fetch."""
    return write_small_dataset(tmp_path_factory.mktemp("hub") / "repo", extras=True)


@pytest.fixture(params=["cdn-redirect", "direct"])
def hub(
    request: pytest.FixtureRequest, source: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    guard_localhost(monkeypatch)
    with ExitStack() as stack:
        cdn = stack.enter_context(FileServer()) if request.param == "cdn-redirect" else None
        yield stack.enter_context(FakeHub(source, REPO, cdn=cdn))


def fetch(hub: FakeHub, tmp_path: Path, dest: str = "raw", **options: object):
    if hub.cdn is not None:
        hub.publish_cdn()
    kwargs = {
        "lock_file": tmp_path / "lock.json",
        "endpoint": hub.url,
        "workers": 2,
        "retries": 2,
        "backoff": 0.001,
        "cache_dir": tmp_path / "hf-cache",
    } | options
    return download_pastis_hd(tmp_path / dest, repo_id=REPO, **kwargs)  # type: ignore[arg-type]


def data_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def needed(source: Path) -> dict[str, bytes]:
    return {
        path: data
        for path, data in data_files(source).items()
        if path in (pastis.METADATA_FILE, pastis.NORM_FILE) or path.startswith(NEEDED_PREFIXES)
    }


def all_paths(hub: FakeHub, since: tuple[int, int] = (0, 0)) -> list[str]:
    """Paths the hub and its CDN saw, after the request counts ``since`` (see :func:`counts`)."""
    cdn = hub.cdn.seen if hub.cdn else []
    return [s.path for s in hub.seen[since[0] :] + cdn[since[1] :]]


def counts(hub: FakeHub) -> tuple[int, int]:
    return len(hub.seen), len(hub.cdn.seen) if hub.cdn else 0


def test_only_needed_files_arrive_verified(hub: FakeHub, source: Path, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path)
    assert result.root == tmp_path / "raw" and result.revision == hub.commit
    expected = needed(source)
    assert len(expected) == N_NEEDED
    assert data_files(result.root) == expected  # no S1, SPOT or README
    assert not [p for p in all_paths(hub) if "S1A" in p or "SPOT" in p or "README" in p]
    assert result.files == [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in sorted(expected.items())
    ]
    assert hub.count("GET", f"/api/datasets/{REPO}/revision/main") == 1
    cursors = [s.query.get("cursor") for s in hub.requests("GET", f"/api/datasets/{REPO}/tree/")]
    assert None in cursors and ["8"] in cursors  # the listing is paginated and followed
    if hub.cdn is not None:
        assert hub.cdn.count("GET") == 2 * SMALL.n_patches  # LFS bodies came from the "CDN"


def test_lock_written_then_reused(hub: FakeHub, source: Path, tmp_path: Path) -> None:
    fetch(hub, tmp_path)
    lock = json.loads((tmp_path / "lock.json").read_text())
    assert lock["repo_id"] == REPO and lock["revision"] == hub.commit and lock["resolved_at"]
    by_path = {f["path"]: f for f in lock["files"]}
    s2 = next(p for p in by_path if p.startswith("DATA_S2/"))
    assert by_path[s2]["sha256"] == hashlib.sha256((source / s2).read_bytes()).hexdigest()
    meta = by_path[pastis.METADATA_FILE]
    assert meta["sha256"] is None
    assert meta["git_blob"] == git_blob_id((source / pastis.METADATA_FILE).read_bytes())

    before = len(hub.seen)
    again = fetch(hub, tmp_path)  # complete and pinned: verified locally, nothing asked
    assert again.revision == hub.commit and len(hub.seen) == before

    fresh = fetch(hub, tmp_path, dest="fresh")  # new folder, same lock: no branch resolution
    assert data_files(fresh.root) == needed(source)
    assert hub.count("GET", f"/api/datasets/{REPO}/revision/") == 1


@pytest.mark.parametrize("kind", ["lfs", "plain"])
def test_corrupted_body_is_detected_then_refetched(
    hub: FakeHub, source: Path, tmp_path: Path, kind: str
) -> None:
    data = needed(source)
    path = (
        next(p for p in data if p.startswith("DATA_S2/")) if kind == "lfs" else "metadata.geojson"
    )
    hub.corrupt.add(path)
    with pytest.raises(ChecksumError) as err:
        fetch(hub, tmp_path)
    message, body = str(err.value), hub.body(path)
    assert path in message and "file deleted" in message
    if kind == "lfs":
        assert f"sha256 mismatch, expected {hashlib.sha256(data[path]).hexdigest()}" in message
        assert f"got {hashlib.sha256(body).hexdigest()}" in message
    else:
        assert f"git blob sha1 mismatch, expected {git_blob_id(data[path])}" in message
        assert f"got {git_blob_id(body)}" in message
    assert not (tmp_path / "raw" / path).exists()

    hub.corrupt.clear()
    since = counts(hub)
    result = fetch(hub, tmp_path)
    assert data_files(result.root) == data
    resolved = [p for p in all_paths(hub, since) if "/resolve/" in p]
    assert resolved and all(p.endswith(path) for p in resolved)  # the deleted file, only it


def test_cut_lfs_body_is_fetched_again(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub client retries a cut body itself (after a 1 s pause); the result still verifies."""
    guard_localhost(monkeypatch)
    with FileServer() as cdn, FakeHub(source, REPO, cdn=cdn) as hub:
        path = next(p for p in needed(source) if p.startswith("ANNOTATIONS/"))
        sha = hashlib.sha256(hub.files[path]).hexdigest()
        cdn.fault(f"/{sha}", f"cut:{len(hub.files[path]) // 2}")
        result = fetch(hub, tmp_path)
        assert cdn.count("GET", f"/{sha}") == 2
    assert (result.root / path).read_bytes() == hub.files[path]


def test_explicit_revision_needs_no_resolution(hub: FakeHub, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path, revision=hub.commit)
    assert result.revision == hub.commit
    assert hub.count("GET", f"/api/datasets/{REPO}/revision/") == 0
    assert json.loads((tmp_path / "lock.json").read_text())["revision"] == hub.commit


def test_unknown_revision_fails_at_once(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="Invalid rev id: v9"):
        fetch(hub, tmp_path, revision="v9")
    assert hub.count() == 1
    assert not (tmp_path / "lock.json").exists()


def test_lock_of_another_repo_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps({"repo_id": "someone/else", "revision": hub.commit, "files": []}))
    with pytest.raises(ValueError, match=f"{lock}: lock file is for repository 'someone/else'"):
        fetch(hub, tmp_path)
    assert hub.count() == 0


def test_free_disk_checked_before_downloading(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100))
    with pytest.raises(InsufficientSpaceError, match=r"bytes needed .* 100 free"):
        fetch(hub, tmp_path)
    assert not [p for p in all_paths(hub) if "/resolve/" in p or p.count("/") == 1]


def test_unreachable_hub_is_retried_then_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard_localhost(monkeypatch)
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(DownloadError, match=rf"{REPO} \({endpoint}\): failed after 3 attempt"):
        download_pastis_hd(tmp_path / "raw", REPO, endpoint=endpoint, retries=2, backoff=0.001)


def test_cli_huggingface_writes_inventory(hub: FakeHub, source: Path, tmp_path: Path) -> None:
    if hub.cdn is not None:
        hub.publish_cdn()
    inventory, lock = tmp_path / "inventory.json", tmp_path / "lock.json"
    argv = ["download", "--source", "huggingface", "--dest", str(tmp_path / "raw")]
    argv += ["--lock-file", str(lock), "--hf-endpoint", hub.url, "--inventory", str(inventory)]
    assert main([*argv, "--workers", "2"]) == 0
    data = json.loads(inventory.read_text())
    assert data["source"] == "huggingface" and data["revision"] == hub.commit
    assert data["root"] == str((tmp_path / "raw").resolve())
    assert len(data["files"]) == N_NEEDED
    assert all(len(f["sha256"]) == 64 for f in data["files"])
