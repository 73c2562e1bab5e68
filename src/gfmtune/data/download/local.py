"""Local data (a folder or an archive), safe archive extraction and the layout check.

Archives (.zip, .tar, .tar.gz, .tgz) are extracted into a hidden temporary folder, member by member
(any member that would land outside the folder, and any link or device, is refused), and only then
moved into the destination. Members of PASTIS-R's radar and instance parts (:data:`NOT_EXTRACTED`;
torchgeo's PASTIS download is that archive) are checked like any other but not written: only the S2
part is read. A marker file records which archive version was extracted, so a rerun skips it, and
the files it moved (size and mtime), so a rerun or a new version of the archive may replace them
while they are unchanged. Nothing else in the destination is removed or overwritten: a member that
would replace a folder, a file, or a file of other content that no extraction of this archive wrote
raises :class:`ExtractionConflictError` naming both paths, before anything is moved. A corrupt or
truncated archive raises :class:`ArchiveError` and leaves nothing. :func:`source_fingerprint` is
what the workflow's ``download`` rule watches to rerun when local data change in place.
"""

from __future__ import annotations

import filecmp
import gzip
import hashlib
import json
import logging
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from gfmtune import pastis
from gfmtune.data.download.http import CHUNK_SIZE
from gfmtune.fileio import atomic_write_text, check_free_space, disk_full_reported

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
#: What reading a damaged archive raises, depending on its format and where it breaks.
CORRUPT_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
)
MAX_MISSING_SHOWN = 5
#: Archive members not extracted: PASTIS-R's Sentinel-1 series, their statistics and the instance
#: annotations (a path with one of these folder or file names); only the S2 part is read.
NOT_EXTRACTED = frozenset(
    {"DATA_S1A", "DATA_S1D", "INSTANCE_ANNOTATIONS", "NORM_S1A_patch.json", "NORM_S1D_patch.json"}
)


class ArchiveError(ValueError):
    """An archive is corrupt, truncated or unsafe; the message names it."""


class ExtractionConflictError(ArchiveError):
    """Extracting would replace a folder or file the extraction did not create; names both."""


class MissingFilesError(pastis.PastisFormatError):
    """Files listed by ``metadata.geojson`` are absent; the message names a few and the count."""


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    open: Callable[[], IO[bytes]]


def is_archive(path: Path | str) -> bool:
    """Whether ``path`` names a supported archive (by its suffix)."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def member_target(root: Path, name: str, archive: Path) -> Path:
    """Where member ``name`` goes under ``root``; refuse absolute paths and ``..`` components."""
    pure = PurePosixPath(name.replace("\\", "/"))
    first = pure.parts[0] if pure.parts else ""
    if pure.is_absolute() or ".." in pure.parts or ":" in first:
        raise ArchiveError(
            f"{archive}: member {name!r} would escape the destination folder; refusing to extract"
        )
    return root.joinpath(*[p for p in pure.parts if p != "."])


def not_extracted(name: str) -> bool:
    """Whether member ``name`` lies in a part that is not extracted (:data:`NOT_EXTRACTED`)."""
    return not NOT_EXTRACTED.isdisjoint(PurePosixPath(name.replace("\\", "/")).parts)


def _zip_members(zf: zipfile.ZipFile, archive: Path) -> Iterator[_Member]:
    for info in zf.infolist():
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveError(
                f"{archive}: member {info.filename!r} is a link; refusing to extract"
            )
        yield _Member(info.filename, info.is_dir(), partial(zf.open, info))


def _tar_members(tf: tarfile.TarFile, archive: Path) -> Iterator[_Member]:
    for member in tf:
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(
                f"{archive}: member {member.name!r} is a link or device; refusing to extract"
            )
        yield _Member(member.name, member.isdir(), partial(tf.extractfile, member))  # type: ignore[arg-type]


@contextmanager
def _members(archive: Path, dest: Path) -> Iterator[Iterator[_Member]]:
    """Open ``archive`` and yield an iterator over its members, after a free-space check."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            needed = sum(i.file_size for i in zf.infolist() if not not_extracted(i.filename))
            check_free_space(dest, needed)
            yield _zip_members(zf, archive)
    else:
        check_free_space(dest, archive.stat().st_size)  # a lower bound when compressed
        with tarfile.open(archive, "r:*") as tf:
            yield _tar_members(tf, archive)


def _extract_into(archive: Path, folder: Path) -> None:
    with _members(archive, folder) as members:
        for member in members:
            target = member_target(folder, member.name, archive)
            if not_extracted(member.name):
                continue
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with member.open() as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_SIZE)


#: a file's (size, mtime_ns), by its path relative to the destination (the marker's "files")
Stamps = dict[str, list[int]]


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_marker(marker: Path) -> tuple[str | None, Stamps]:
    """The fingerprint the marker records as extracted (None: none or unfinished) and the files
    extractions of this archive moved; an older plain-text marker holds a fingerprint only."""
    if not marker.is_file():
        return None, {}
    text = marker.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text, {}
    if not isinstance(data, dict):
        return text, {}
    return data.get("fingerprint"), dict(data.get("files") or {})


def _write_marker(marker: Path, fingerprint: str | None, files: Stamps) -> None:
    atomic_write_text(marker, json.dumps({"fingerprint": fingerprint, "files": files}))


#: what :func:`_verdict` returns for an extracted file to move into the destination
MOVE = "move"


def _verdict(entry: Path, target: Path, owned: list[int] | None) -> str | None:
    """:data:`MOVE` when the extracted file ``entry`` is to be moved onto ``target``, None when
    ``target`` stays as it is (a folder, or a file of the same content), else why moving
    ``entry`` there would destroy what the extraction did not create."""
    if not os.path.lexists(target):
        return None if entry.is_dir() else MOVE
    if entry.is_dir():
        return None if target.is_dir() else "a folder member would replace the existing file"
    if target.is_symlink() or not target.is_file():
        kind = "link" if target.is_symlink() else "folder" if target.is_dir() else "special file"
        return f"a file member would replace the existing {kind}"
    if owned == _stamp(target):  # an earlier extraction of this archive wrote it, unchanged
        return MOVE
    if filecmp.cmp(entry, target, shallow=False):
        return None
    return "the existing file differs and no extraction of this archive wrote it"


def _files_to_move(tmp: Path, dest: Path, archive: Path, owned: Stamps) -> list[str]:
    """The extracted files to move into ``dest``; an :class:`ExtractionConflictError` listing
    each entry that would replace a path the extraction did not create (both paths named)."""
    moves, lines = [], []
    for entry in sorted(tmp.rglob("*")):
        rel = entry.relative_to(tmp).as_posix()
        problem = _verdict(entry, dest / rel, owned.get(rel))
        if problem == MOVE:
            moves.append(rel)
        elif problem is not None:
            lines.append(f"member {rel!r} of {archive} -> {dest / rel}: {problem}")
    if lines:
        shown = lines[:MAX_MISSING_SHOWN]
        if len(lines) > MAX_MISSING_SHOWN:
            shown.append(f"and {len(lines) - MAX_MISSING_SHOWN} more")
        raise ExtractionConflictError(
            f"{archive}: extracting into {dest} would replace {len(lines)} path(s) it did not "
            "create; nothing was moved (move them aside or choose another folder):\n  "
            + "\n  ".join(shown)
        )
    return moves


def _merge_into(tmp: Path, dest: Path, moves: list[str]) -> None:
    """Create the extracted folders in ``dest`` and move the files ``moves`` there."""
    for entry in sorted(tmp.rglob("*")):
        if entry.is_dir():
            (dest / entry.relative_to(tmp)).mkdir(parents=True, exist_ok=True)
    for rel in moves:
        os.replace(tmp / rel, dest / rel)


def extract_archive(archive: Path, dest: Path, fingerprint: str) -> None:
    """Safely extract ``archive`` into ``dest``, unless this ``fingerprint`` was extracted;
    an :class:`ExtractionConflictError` (nothing moved) if it would replace what is not ours."""
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".{archive.name}.extracted"
    extracted, owned = _read_marker(marker)
    if extracted == fingerprint:
        log.info("%s: already extracted into %s", archive, dest)
        return
    tmp = dest / f".{archive.name}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log.info("%s: extracting into %s", archive, dest)
        try:
            with disk_full_reported(dest):
                _extract_into(archive, tmp)
        except CORRUPT_ARCHIVE_ERRORS as err:
            raise ArchiveError(
                f"{archive}: corrupt or truncated archive ({err}); nothing was extracted"
            ) from err
        moves = _files_to_move(tmp, dest, archive, owned)
        owned |= {rel: _stamp(tmp / rel) for rel in moves}  # a rename keeps size and mtime
        _write_marker(marker, None, owned)  # claimed before moving: an interrupted merge resumes
        _merge_into(tmp, dest, moves)
        _write_marker(marker, fingerprint, owned)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def validate_layout(root: Path) -> int:
    """Check metadata, normalisation file and every patch's S2 and TARGET file; return #patches."""
    root = Path(root)
    table = pastis.read_metadata(root)
    pastis.read_norm(root)
    missing = [
        path.relative_to(root)
        for patch_id in table.frame.patch_id
        for path in (pastis.s2_path(root, patch_id), pastis.target_path(root, patch_id))
        if not path.is_file()
    ]
    if missing:
        shown = ", ".join(str(p) for p in missing[:MAX_MISSING_SHOWN])
        hidden = len(missing) - MAX_MISSING_SHOWN
        more = f" and {hidden} more" if hidden > 0 else ""
        raise MissingFilesError(
            f"{root}: {len(missing)} file(s) listed in {pastis.METADATA_FILE} are missing: "
            f"{shown}{more}"
        )
    return len(table)


def prepare_local(source: Path, dest: Path | None = None) -> Path:
    """Use a PASTIS folder, or extract an archive into ``dest``; validate; return the data root."""
    source = Path(source)
    if source.is_dir():
        root = pastis.find_dataset_root(source)
    elif source.is_file() and is_archive(source):
        if dest is None:
            raise ValueError(f"{source}: an archive needs a destination folder (--dest)")
        st = source.stat()
        fingerprint = f"{source.resolve()} {st.st_size} {st.st_mtime_ns}"
        extract_archive(source, dest, fingerprint)
        root = pastis.find_dataset_root(dest)
    elif source.exists():
        raise ArchiveError(
            f"{source}: neither a folder nor a supported archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )
    else:
        raise FileNotFoundError(f"{source}: local PASTIS data (data.root) does not exist")
    n = validate_layout(root)
    log.info("%s: PASTIS layout complete (%d patches)", root, n)
    return root


def _stat_listing(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file: one stat each."""
    listing = []
    for path in paths:
        st = path.stat()
        listing.append((str(path), st.st_size, st.st_mtime_ns))
    return listing


def source_problem(source: Path | str) -> str | None:
    """Why ``source`` (``data.root``) cannot be PASTIS, or None: a missing path, or a folder
    that does not resolve to one PASTIS folder (an archive is checked when unpacked)."""
    source = Path(source)
    if source.is_file():
        return None
    if not source.is_dir():
        return f"{source} does not exist"
    try:
        pastis.find_dataset_root(source)
    except pastis.PastisFormatError as err:
        return str(err)
    return None


def source_fingerprint(source: Path | str) -> str:
    """A cheap digest of local data: path, size and mtime of the archive, or of the metadata,
    normalisation, S2 and TARGET files (one stat each), so a change in place shows.

    A source that does not resolve to one PASTIS folder gets a digest of the reason; the
    download itself then fails with it.
    """
    source = Path(source)
    listing: list | str
    problem = source_problem(source)
    if problem is not None:
        listing = problem
    elif source.is_file():
        listing = _stat_listing([source])
    else:
        root = pastis.find_dataset_root(source)
        files = [root / name for name in (pastis.METADATA_FILE, pastis.NORM_FILE)]
        files = [f for f in files if f.is_file()]
        for folder in ("DATA_S2", "ANNOTATIONS"):
            if (root / folder).is_dir():
                files += sorted((root / folder).iterdir())
        listing = _stat_listing(files)
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
