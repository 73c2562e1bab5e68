"""Fault matrix of two contracts (issue 19): extracting an archive never removes or overwrites
what the extraction did not create (§5), and a plug-in encoder is checked once, on a dummy
batch, when its model is built (§8).

Each failing case checks the exit code (or the exception), a message naming the paths (or the
model, encoder and level), and that nothing a rerun would trust is left: no inventory and no
extraction marker after a conflict, the user's files byte for byte as they were.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gfmtune.cli import main
from gfmtune.data.download import local
from tests.data.fake_servers import write_small_dataset

# --------------------------------------------------------------------------------------------
# §5: nothing of the user's is ever deleted

ARCHIVES = ("data.zip", "data.tar.gz")


@pytest.fixture(scope="module")
def pastis_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a small PASTIS folder ``PASTIS/`` (read-only for the tests)."""
    tree = tmp_path_factory.mktemp("tree")
    write_small_dataset(tree / "PASTIS")
    return tree


def archive_of(tree: Path, out: Path, extra: dict[str, str] | None = None) -> Path:
    """Archive ``tree``'s entries at the top of ``out`` (.zip or .tar.gz), plus ``extra``
    members (name -> text)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f"{out.name}.staged"
    shutil.copytree(tree, staged)
    for name, text in (extra or {}).items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_text(text)
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w") as zf:
            for path in sorted(staged.rglob("*")):
                zf.write(path, path.relative_to(staged).as_posix())
    else:
        with tarfile.open(out, "w:gz") as tf:
            for entry in sorted(staged.iterdir()):
                tf.add(entry, arcname=entry.name)
    shutil.rmtree(staged)
    return out


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and link (its target) under ``root``, by relative path."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[rel] = path.read_bytes()
    return found


def visible(root: Path) -> dict[str, bytes | str]:
    """:func:`snapshot` without the hidden extraction markers."""
    return {rel: data for rel, data in snapshot(root).items() if not rel.startswith(".")}


def download(archive: Path, dest: Path) -> int:
    """``gfmtune download --source local`` of ``archive`` into ``dest``; its exit code."""
    inventory = dest.parent / "inventory.json"
    argv = ["download", "--source", "local", "--root", str(archive), "--dest", str(dest)]
    return main([*argv, "--inventory", str(inventory)])


def marker_of(archive: Path, dest: Path) -> dict:
    """What the extraction marker of ``archive`` in ``dest`` records (empty when none)."""
    marker = dest / f".{archive.name}.extracted"
    return json.loads(marker.read_text()) if marker.is_file() else {}


def error_of(caplog: pytest.LogCaptureFixture) -> str:
    """The error the command logged (exactly one)."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


def _user_folder(dest: Path) -> None:
    (dest / "notes" / "sub").mkdir(parents=True)
    (dest / "notes" / "todo.txt").write_text("my todo")
    (dest / "notes" / "sub" / "draft.txt").write_text("my draft")


def _user_file(dest: Path) -> None:
    (dest / "notes").write_text("my own notes")


def _user_link(dest: Path) -> None:
    (dest / "elsewhere.txt").write_text("linked")
    (dest / "notes").symlink_to("elsewhere.txt")


def _user_edited_dataset_file(dest: Path) -> None:
    """A PASTIS copy of the user's (no extraction wrote it) with its metadata edited."""
    (dest / "PASTIS").mkdir()
    (dest / "PASTIS" / "metadata.geojson").write_text('{"edited": "by hand"}')


@dataclass(frozen=True)
class Conflict:
    """What the user has in ``download_dir``, the archive member that would replace it, the
    path the error must name and why."""

    existing: Callable[[Path], None]
    member: str
    path: str
    reason: str


CONFLICTS = {
    "file member over user folder": Conflict(
        _user_folder, "notes", "notes", "a file member would replace the existing folder"
    ),
    "file member over user file of other content": Conflict(
        _user_file, "notes", "notes", "the existing file differs"
    ),
    "folder member over user file": Conflict(
        _user_file, "notes/todo.txt", "notes", "a folder member would replace the existing file"
    ),
    "file member over user link": Conflict(
        _user_link, "notes", "notes", "a file member would replace the existing link"
    ),
    "dataset file over user's edited copy": Conflict(
        _user_edited_dataset_file,
        "README.txt",
        "PASTIS/metadata.geojson",
        "the existing file differs",
    ),
}


@pytest.mark.parametrize("name", ARCHIVES)
@pytest.mark.parametrize("conflict", CONFLICTS.values(), ids=CONFLICTS)
def test_extraction_never_replaces_what_it_did_not_create(
    pastis_tree: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    conflict: Conflict,
    name: str,
) -> None:
    archive = archive_of(pastis_tree, tmp_path / "in" / name, {conflict.member: "archived"})
    dest = tmp_path / "raw"
    dest.mkdir()
    conflict.existing(dest)
    before = snapshot(dest)
    with caplog.at_level(logging.ERROR):
        assert download(archive, dest) == 1
    message = error_of(caplog)
    assert f"{archive}: extracting into {dest} would replace" in message
    assert f"-> {dest / conflict.path}: {conflict.reason}" in message
    assert repr(conflict.path) in message  # the member is named as in the archive
    assert snapshot(dest) == before  # the user's files as they were, nothing moved in
    assert not (tmp_path / "inventory.json").exists()
    assert not list(dest.glob(".*"))  # no marker, no temporary folder left


def test_conflict_lists_every_path_and_then_the_remedy_works(
    pastis_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two conflicts in one message; once the user moves them aside, extraction succeeds."""
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "a", "log": "b"})
    dest = tmp_path / "raw"
    dest.mkdir()
    _user_folder(dest)
    (dest / "log").write_text("my log")
    with caplog.at_level(logging.ERROR):
        assert download(archive, dest) == 1
    message = error_of(caplog)
    assert "would replace 2 path(s) it did not create" in message
    assert f"{dest / 'notes'}:" in message and f"{dest / 'log'}:" in message
    assert len(message.splitlines()) == 3  # the summary, then one line per conflict
    aside = tmp_path / "aside"
    aside.mkdir()
    for entry in ("notes", "log"):
        (dest / entry).rename(aside / entry)
    assert download(archive, dest) == 0
    assert (dest / "notes").read_text() == "a" and (aside / "notes" / "todo.txt").is_file()
    assert (tmp_path / "inventory.json").is_file()


def test_identical_user_file_is_kept_and_not_claimed(pastis_tree: Path, tmp_path: Path) -> None:
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "same"})
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "notes").write_text("same")
    stamp = (dest / "notes").stat().st_mtime_ns
    assert download(archive, dest) == 0
    assert (dest / "notes").stat().st_mtime_ns == stamp  # left as it was, not replaced
    recorded = marker_of(archive, dest)
    assert recorded["fingerprint"] and "notes" not in recorded["files"]
    assert "PASTIS/metadata.geojson" in recorded["files"]


@pytest.mark.parametrize("name", ARCHIVES)
def test_same_archive_rerun_skips_then_replaces_only_its_own(
    pastis_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """A rerun of the same archive skips it; once the archive is touched (a new fingerprint,
    same content) it is extracted again over its own files, the user's left alone."""
    archive = archive_of(pastis_tree, tmp_path / "in" / name, {"notes": "archived"})
    dest = tmp_path / "raw"
    assert download(archive, dest) == 0
    (dest / "PASTIS" / "mine.txt").write_text("the user's")
    extracted = visible(dest)
    with caplog.at_level(logging.INFO):
        assert download(archive, dest) == 0
    assert any("already extracted" in r.getMessage() for r in caplog.records)
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert download(archive, dest) == 0
    assert visible(dest) == extracted
    assert str(archive.stat().st_mtime_ns) in marker_of(archive, dest)["fingerprint"]


class Interrupted(BaseException):
    """Stands for a kill in the middle of moving extracted files into place."""


@pytest.mark.parametrize("moved", [0, 1, 7])
def test_interrupted_merge_resumes(
    pastis_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved: int
) -> None:
    """Killed after ``moved`` files were moved in, a rerun finishes the extraction: the files
    already moved are its own, the user's untouched."""
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "archived"})
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "mine.txt").write_text("the user's")
    replace, calls = os.replace, []

    def dying(src: str | Path, dst: str | Path) -> None:
        if ".extracting" in str(src):
            if len(calls) == moved:
                raise Interrupted
            calls.append(src)
        replace(src, dst)

    monkeypatch.setattr(local.os, "replace", dying)
    with pytest.raises(Interrupted):
        local.prepare_local(archive, dest)
    monkeypatch.undo()
    assert marker_of(archive, dest)["fingerprint"] is None  # not trusted as extracted
    assert download(archive, dest) == 0
    reference = tmp_path / "reference"
    assert download(archive, reference) == 0
    assert visible(dest) == visible(reference) | {"mine.txt": b"the user's"}
    assert not list(dest.glob(".*.extracting"))


def test_newer_archive_replaces_only_its_own_files(
    pastis_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new version of the archive replaces the files the old one wrote, unchanged; a file
    the user edited since is theirs: a conflict naming it, the edit kept."""
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "v1", "a": "v1"})
    dest = tmp_path / "raw"
    assert download(archive, dest) == 0
    (dest / "PASTIS" / "mine.txt").write_text("the user's")
    archive.unlink()
    archive_of(pastis_tree, archive, {"notes": "v2", "a": "v1", "b": "new"})
    assert download(archive, dest) == 0
    assert (dest / "notes").read_text() == "v2" and (dest / "b").read_text() == "new"
    assert (dest / "PASTIS" / "mine.txt").read_text() == "the user's"

    (dest / "notes").write_text("edited by the user")
    archive.unlink()
    archive_of(pastis_tree, archive, {"notes": "v3"})
    before = snapshot(dest)
    with caplog.at_level(logging.ERROR):
        assert download(archive, dest) == 1
    assert f"-> {dest / 'notes'}: the existing file differs" in error_of(caplog)
    assert snapshot(dest) == before
