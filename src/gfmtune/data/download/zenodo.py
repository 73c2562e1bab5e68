"""PASTIS(-HD) from a Zenodo record: list its files, download and md5-verify them, extract.

The record's JSON (``GET {api}/records/{id}``) lists each file's ``key``, ``size``,
``checksum`` (``"md5:..."``) and download link (``links.content`` or ``links.self``).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path

from gfmtune import pastis
from gfmtune.data.download.http import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    DownloadError,
    RemoteFile,
    download_all,
    get_json,
)
from gfmtune.data.download.local import extract_archive, is_archive, validate_layout
from gfmtune.verify import parse_digest

log = logging.getLogger(__name__)

DEFAULT_API = "https://zenodo.org/api"
DEFAULT_RECORD = "10908628"  # PASTIS-HD


@dataclass(frozen=True)
class ZenodoFile:
    """One file of a record: name, size, ``"md5:..."`` checksum and download URL."""

    key: str
    size: int
    checksum: str
    url: str


@dataclass(frozen=True)
class ZenodoResult:
    """A verified download: data root, record, and the files verified (path in ``download_dir``)."""

    root: Path
    record: str
    download_dir: Path
    files: list[dict]


def record_url(api: str, record: str) -> str:
    return f"{api.rstrip('/')}/records/{record}"


def _safe_key(key: object, where: str) -> str:
    """A record's file name must be a plain name: it becomes a local path."""
    if not isinstance(key, str) or key in ("", ".", "..") or "/" in key or "\\" in key:
        raise DownloadError(f"{where}: file name {key!r} is not a plain file name")
    return key


def parse_files(record_json: object, where: str) -> list[ZenodoFile]:
    """The ``files`` entries of a record's JSON (a list, or InvenioRDM's ``entries``)."""
    files = record_json.get("files") if isinstance(record_json, dict) else None
    if isinstance(files, dict):
        files = files.get("entries")
        files = list(files.values()) if isinstance(files, dict) else files
    if not isinstance(files, list) or not files:
        raise DownloadError(f"{where}: the record lists no files")
    parsed = []
    for entry in files:
        try:
            links = entry.get("links", {})
            url = links.get("content") or links["self"]
            key = _safe_key(entry["key"], where)
            checksum = str(entry["checksum"])
            parse_digest(checksum)
            parsed.append(ZenodoFile(key, int(entry["size"]), checksum, str(url)))
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise DownloadError(f"{where}: unreadable file entry {entry!r} ({err})") from err
    return parsed


def select_files(files: list[ZenodoFile], patterns: list[str] | None) -> list[ZenodoFile]:
    """Keep the files whose name matches one of the glob ``patterns`` (all when none given)."""
    if not patterns:
        return files
    chosen = [f for f in files if any(fnmatch.fnmatchcase(f.key, p) for p in patterns)]
    if not chosen:
        names = ", ".join(f.key for f in files)
        raise ValueError(f"no file of the record matches {patterns}; it holds: {names}")
    return chosen


def download_record(
    dest: Path,
    record: str = DEFAULT_RECORD,
    api: str = DEFAULT_API,
    patterns: list[str] | None = None,
    workers: int = 8,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF_S,
    progress: bool = True,
) -> ZenodoResult:
    """Download, verify and extract a record's files into ``dest``; validate the PASTIS layout."""
    dest = Path(dest)
    url = record_url(api, str(record))
    files = select_files(parse_files(get_json(url, retries, backoff), url), patterns)
    log.info(
        "Zenodo record %s: %d file(s), %d bytes", record, len(files), sum(f.size for f in files)
    )
    dest.mkdir(parents=True, exist_ok=True)
    remote = [RemoteFile(f.url, dest / f.key, f.size, f.checksum) for f in files]
    download_all(remote, workers, retries, backoff, progress)
    for f in files:
        if is_archive(f.key):
            extract_archive(dest / f.key, dest, fingerprint=f.checksum)
    root = pastis.find_dataset_root(dest)
    n = validate_layout(root)
    log.info("%s: PASTIS layout complete (%d patches)", root, n)
    verified = [{"path": f.key, "size": f.size, **dict([parse_digest(f.checksum)])} for f in files]
    return ZenodoResult(root=root, record=str(record), download_dir=dest, files=verified)
