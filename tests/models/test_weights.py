"""``gfmtune weights`` fetches a checkpoint resumably, verifies it and stops on a wrong file; hub
files come by revision through the hub cache, and a failed source passes to the next."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from gfmtune.cli import main
from gfmtune.data.download.hub_file import HubFile, parse_hub_url
from gfmtune.models import catalog
from gfmtune.models.checkpoints import CheckpointError, read_checkpoint
from gfmtune.models.weights import fetch_checkpoint
from tests.data.fake_servers import FileServer, ModelHub, guard_localhost


@pytest.fixture
def blob(tmp_path: Path) -> bytes:
    path = tmp_path / "src.pt"
    torch.save(
        {"s2_encoder": {"linear_input.bias": torch.arange(5.0), "pad": torch.randn(99_000)}}, path
    )
    return path.read_bytes()


def _ckpt(server: FileServer, data: bytes, sha: str | None = None) -> catalog.Checkpoint:
    return catalog.Checkpoint(
        "toy",
        f"{server.url}/toy/CROMA_toy.pt",
        "CROMA_toy.pt",
        sha or hashlib.sha256(data).hexdigest(),
        len(data),
        "croma",
    )


def test_download_resumes_and_verifies(tmp_path: Path, blob: bytes) -> None:
    with FileServer({"/toy/CROMA_toy.pt": blob}) as server:
        server.fault("/toy/CROMA_toy.pt", f"cut:{len(blob) // 2}")
        ckpt = _ckpt(server, blob)
        path = fetch_checkpoint(ckpt, tmp_path / "w", retries=2, progress=False)
        assert path.read_bytes() == blob
        ranges = [s.headers.get("range") for s in server.requests("GET")]
        assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=")
        n = server.count()
        assert fetch_checkpoint(ckpt, tmp_path / "w", progress=False) == path
        assert server.count() == n, "a verified file must be reused without any request"
    state = read_checkpoint(path, "croma")
    assert torch.equal(state["linear_input.bias"], torch.arange(5.0))


def test_wrong_digest_and_missing_file_are_clear_errors(tmp_path: Path, blob: bytes) -> None:
    with FileServer({"/toy/CROMA_toy.pt": blob}) as server:
        bad = _ckpt(server, blob, sha="ab" * 32)
        with pytest.raises(CheckpointError) as err:
            fetch_checkpoint(bad, tmp_path, retries=0, progress=False)
        assert bad.url in str(err.value) and "ab" * 32 in str(err.value)
        assert not (tmp_path / "CROMA_toy.pt").exists()
        gone = catalog.Checkpoint("toy", f"{server.url}/nope.pt", "nope.pt", "00" * 32, 3, "croma")
        with pytest.raises(CheckpointError, match="download it by hand"):
            fetch_checkpoint(gone, tmp_path, retries=0, progress=False)


def test_wrong_file_in_weights_dir_is_set_aside_and_replaced(tmp_path: Path, blob: bytes) -> None:
    wrong = bytes(len(blob))  # right size, wrong content: a bad hand copy
    (tmp_path / "CROMA_toy.pt").write_bytes(wrong)
    with FileServer({"/toy/CROMA_toy.pt": blob}) as server:
        path = fetch_checkpoint(_ckpt(server, blob), tmp_path, retries=0, progress=False)
    assert path.read_bytes() == blob
    [aside] = tmp_path.glob("CROMA_toy.pt.rejected-*")
    assert aside.read_bytes() == wrong


def test_wrong_file_without_network_is_kept_and_named(tmp_path: Path, blob: bytes) -> None:
    wrong = b"not a checkpoint"
    (tmp_path / "CROMA_toy.pt").write_bytes(wrong)
    with FileServer({}) as server:  # the URL answers 404: like a machine without network
        ckpt = _ckpt(server, blob)
        with pytest.raises(CheckpointError) as err:
            fetch_checkpoint(ckpt, tmp_path, retries=0, progress=False)
    text = str(err.value)
    [aside] = tmp_path.glob("CROMA_toy.pt.rejected-*")
    assert aside.read_bytes() == wrong, "a wrong file must be moved aside, never deleted"
    assert str(tmp_path / "CROMA_toy.pt") in text and f"moved aside to {aside}" in text
    assert ckpt.sha256 in text and hashlib.sha256(wrong).hexdigest() in text
    assert f"expected {len(blob)} bytes, got {len(wrong)}" in text


def test_offline_verifies_and_never_downloads(tmp_path: Path, blob: bytes) -> None:
    with FileServer({"/toy/CROMA_toy.pt": blob}) as server:  # it would answer: must not be asked
        ckpt = _ckpt(server, blob)
        with pytest.raises(CheckpointError, match=r"weights\.offline is set") as err:
            fetch_checkpoint(ckpt, tmp_path, retries=0, progress=False, offline=True)
        assert str(tmp_path / "CROMA_toy.pt") in str(err.value) and ckpt.url in str(err.value)
        assert not (tmp_path / "CROMA_toy.pt").exists() and server.requests() == []
        (tmp_path / "CROMA_toy.pt").write_bytes(b"x" * len(blob))  # right size, wrong content
        with pytest.raises(CheckpointError, match="moved aside"):
            fetch_checkpoint(ckpt, tmp_path, retries=0, progress=False, offline=True)
        (tmp_path / "CROMA_toy.pt").write_bytes(blob)
        assert fetch_checkpoint(ckpt, tmp_path, progress=False, offline=True).read_bytes() == blob
        assert server.requests() == []


def test_cli_writes_stamp(tmp_path: Path, blob: bytes, monkeypatch) -> None:
    with FileServer({"/toy/CROMA_toy.pt": blob}) as server:
        ckpt = _ckpt(server, blob)
        monkeypatch.setitem(catalog.CHECKPOINTS, "toy", ckpt)
        stamp = tmp_path / "stamp.json"
        assert main(["weights", "--checkpoint", "toy", "--dir", str(tmp_path / "w"),
                     "--stamp", str(stamp), "--retries", "0"]) == 0  # fmt: skip
    record = json.loads(stamp.read_text())
    assert record["sha256"] == ckpt.sha256 and Path(record["path"]).read_bytes() == blob


# Sources: the hub by revision (through huggingface_hub and its cache), mirrors, HF_HUB_OFFLINE.

REV = "0123456789abcdef0123456789abcdef01234567"
MIRROR_REV = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def data() -> bytes:
    return random.Random(7).randbytes(50_000)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelHub]:
    """A hub on 127.0.0.1 as HF_ENDPOINT, online; any other connection fails the test."""
    guard_localhost(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with ModelHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _toy(data: bytes, *sources: str) -> catalog.Checkpoint:
    sha = hashlib.sha256(data).hexdigest()
    return catalog.Checkpoint(
        "toy", sources[0], "CROMA_toy.pt", sha, len(data), "croma", mirrors=sources[1:]
    )


def _gets(server: ModelHub | FileServer, path: str) -> int:
    return len([s for s in server.requests("GET") if s.path == path])


def test_hub_file_lands_by_revision_and_the_cache_serves_it_again(
    tmp_path: Path, data: bytes, hub: ModelHub
) -> None:
    ckpt = _toy(data, hub.add("owner/CROMA", REV, "CROMA_toy.pt", data))
    cache = tmp_path / "hub-cache"
    path = fetch_checkpoint(ckpt, tmp_path / "w1", retries=0, progress=False, hub_cache=cache)
    assert path.read_bytes() == data and not path.is_symlink()
    assert sorted(p.name for p in (tmp_path / "w1").iterdir()) == ["CROMA_toy.pt"]  # no temp
    assert _gets(hub, hub.path("owner/CROMA", REV, "CROMA_toy.pt")) == 1
    assert hub.seen and all(f"/resolve/{REV}/" in s.path for s in hub.seen)
    [snapshot] = cache.glob(f"models--owner--CROMA/snapshots/{REV}/CROMA_toy.pt")
    assert snapshot.resolve().name == ckpt.sha256  # the LFS blob, named by its sha256
    n = hub.count()
    again = fetch_checkpoint(ckpt, tmp_path / "w2", retries=0, progress=False, hub_cache=cache)
    assert again.read_bytes() == data
    assert hub.count() == n, "a pinned file in the hub cache must be reused without a request"


def test_cli_fetches_croma_from_its_mirror_when_the_authors_repo_is_gone(
    tmp_path: Path, data: bytes, hub: ModelHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog's own CROMA URLs, with a toy file's sha256 and size: the authors' repository
    answers 404 (it is not published here), torchgeo's copy at its revision is taken."""
    mirror = catalog.CROMA_BASE.mirrors[0]
    repo, rev, name = re.fullmatch(r".*\.co/(.+/.+)/resolve/(\w+)/(.+)", mirror).groups()
    hub.add(repo, rev, name, data)
    ckpt = replace(catalog.CROMA_BASE, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(catalog.CHECKPOINTS, "croma_base", ckpt)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    stamp = tmp_path / "stamp.json"
    assert main(["weights", "--checkpoint", "croma_base", "--dir", str(tmp_path / "w"),
                 "--stamp", str(stamp), "--retries", "0"]) == 0  # fmt: skip
    assert Path(json.loads(stamp.read_text())["path"]).read_bytes() == data
    asked = [s.path for s in hub.seen]
    assert f"/antofuller/CROMA/resolve/{catalog.CROMA_REVISION}/CROMA_base.pt" in asked
    assert _gets(hub, f"/{repo}/resolve/{rev}/{name}") == 1


@pytest.mark.parametrize("fault", ["other file", "corrupt transfer"])
def test_wrong_bytes_from_the_hub_fall_back_to_a_mirror(
    tmp_path: Path, data: bytes, hub: ModelHub, fault: str
) -> None:
    """The hub's file differs from the catalog's (its cache copy is the hub's file: kept), or
    its transfer went wrong under the right headers (its cache copy is corrupt: deleted)."""
    wrong = bytes(len(data)) if fault == "other file" else data[:-1] + bytes([data[-1] ^ 1])
    cache = tmp_path / "hub-cache"
    with FileServer({"/mirror/CROMA_toy.pt": data}) as mirror:
        if fault == "other file":
            first = hub.add("owner/CROMA", REV, "CROMA_toy.pt", wrong)
        else:
            first = hub.add("owner/CROMA", REV, "CROMA_toy.pt", data, served=wrong)
        ckpt = _toy(data, first, f"{mirror.url}/mirror/CROMA_toy.pt")
        path = fetch_checkpoint(ckpt, tmp_path / "w", retries=0, progress=False, hub_cache=cache)
        assert _gets(mirror, "/mirror/CROMA_toy.pt") == 1
    assert path.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["CROMA_toy.pt"]
    blobs = list(cache.glob("models--owner--CROMA/blobs/*"))
    if fault == "other file":
        assert [b.read_bytes() for b in blobs] == [wrong]
    else:
        assert blobs == [], "a cache blob whose bytes are not its name must be deleted"


def test_every_source_failing_names_each_url_and_why(
    tmp_path: Path, data: bytes, hub: ModelHub
) -> None:
    with FileServer({}) as plain:
        sources = (
            "https://huggingface.co/gone/CROMA/resolve/main/CROMA_toy.pt",
            hub.add("owner/CROMA", REV, "CROMA_toy.pt", bytes(len(data))),
            f"{plain.url}/nope/CROMA_toy.pt",
        )
        ckpt = _toy(data, *sources)
        with pytest.raises(CheckpointError) as err:
            fetch_checkpoint(ckpt, tmp_path, retries=0, progress=False, hub_cache=tmp_path / "c")
    text = str(err.value)
    for url in sources:
        assert f"{url} (" in text, text
    assert "Repository Not Found" in text and "not found (HTTP 404)" in text
    assert f"sha256 mismatch, expected {ckpt.sha256}" in text
    assert text.endswith(f"download it by hand (sha256 {ckpt.sha256}, {len(data):,} bytes) "
                         "and put it there")  # fmt: skip
    assert not (tmp_path / "CROMA_toy.pt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "c"] == []


def test_hf_hub_offline_uses_a_warm_cache_and_names_a_cold_one(
    tmp_path: Path, data: bytes, hub: ModelHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = _toy(data, hub.add("owner/CROMA", REV, "CROMA_toy.pt", data))
    cache = tmp_path / "hub-cache"
    fetch_checkpoint(ckpt, tmp_path / "w1", retries=0, progress=False, hub_cache=cache)
    n = hub.count()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = fetch_checkpoint(ckpt, tmp_path / "w2", retries=3, progress=False, hub_cache=cache)
    assert path.read_bytes() == data
    with pytest.raises(CheckpointError) as err:
        fetch_checkpoint(ckpt, tmp_path / "w3", retries=3, progress=False, hub_cache=tmp_path / "c")
    assert hub.count() == n, "HF_HUB_OFFLINE: no request to the hub"
    assert ckpt.url in str(err.value) and "HF_HUB_OFFLINE is set" in str(err.value)
    assert str(tmp_path / "c") in str(err.value)


def test_hub_urls_are_recognised() -> None:
    url = "https://hf.co/datasets/a/b/resolve/refs%2Fpr%2F1/dir/f.pt"
    assert parse_hub_url(url) == HubFile("a/b", "refs/pr/1", "dir/f.pt", "dataset")
    assert parse_hub_url(f"https://huggingface.co/a/b/resolve/{REV}/f.pt") == HubFile(
        "a/b", REV, "f.pt"
    )
    assert parse_hub_url("https://example.org/a/b/resolve/main/f.pt") is None
    assert parse_hub_url("https://huggingface.co/a/b/blob/main/f.pt") is None


def test_catalog_hub_urls_name_commits_and_mirrors_carry_the_sha256() -> None:
    """Every hub URL pins a 40-hex commit; torchgeo names its copies ``<stem>-<sha256[:8]>``."""
    for ckpt in catalog.CHECKPOINTS.values():
        for url in ckpt.sources:
            file = parse_hub_url(url)
            assert file is not None and re.fullmatch(r"[0-9a-f]{40}", file.revision), url
    for ckpt in (catalog.CROMA_BASE, catalog.CROMA_LARGE):
        [mirror] = ckpt.mirrors
        assert mirror.rsplit("/", 1)[1] == f"{Path(ckpt.filename).stem}-{ckpt.sha256[:8]}.pt"
        assert f"/antofuller/CROMA/resolve/{catalog.CROMA_REVISION}/" in ckpt.url
