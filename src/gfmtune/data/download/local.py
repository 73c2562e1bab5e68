"""Local data (a folder or an archive), safe archive extraction and the layout check.

Archives (.zip, .tar, .tar.gz, .tgz) are extracted into a hidden temporary folder, member by member
(any member that would land outside the folder, and any link or device, is refused), and only
then moved into the destination; a marker file records which archive version was extracted, so
a rerun skips it. A corrupt or truncated archive raises :class:`ArchiveError` and leaves nothing.
:func:`source_fingerprint` is what the workflow's ``download`` rule watches to rerun when local
data change in place.
"""

from __future__ import annotations

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


class ArchiveError(ValueError):
    """An archive is corrupt, truncated or unsafe; the message names it."""


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
            check_free_space(dest, sum(i.file_size for i in zf.infolist()))
            yield _zip_members(zf, archive)
    else:
        check_free_space(dest, archive.stat().st_size)  # a lower bound when compressed
        with tarfile.open(archive, "r:*") as tf:
            yield _tar_members(tf, archive)


def _extract_into(archive: Path, folder: Path) -> None:
    with _members(archive, folder) as members:
        for member in members:
            target = member_target(folder, member.name, archive)
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with member.open() as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_SIZE)


def _merge_into(src: Path, dest: Path) -> None:
    """Move the entries of ``src`` into ``dest``, merging folders that exist in both."""
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and target.is_dir():
            _merge_into(entry, target)
            continue
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


def extract_archive(archive: Path, dest: Path, fingerprint: str) -> None:
    """Safely extract ``archive`` into ``dest``, unless this ``fingerprint`` was extracted."""
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".{archive.name}.extracted"
    if marker.is_file() and marker.read_text() == fingerprint:
        log.info("%s: already extracted into %s", archive, dest)
        return
    marker.unlink(missing_ok=True)
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
        _merge_into(tmp, dest)
        atomic_write_text(marker, fingerprint)
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
