"""``gfmtune weights`` fetches a checkpoint resumably, verifies it and stops on a wrong file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from gfmtune.cli import main
from gfmtune.models import catalog
from gfmtune.models.checkpoints import CheckpointError, read_checkpoint
from gfmtune.models.weights import fetch_checkpoint
from tests.data.fake_servers import FileServer


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
