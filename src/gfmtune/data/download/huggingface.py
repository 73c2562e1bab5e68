"""PASTIS-HD (S2 part) from the Hugging Face Hub at a pinned commit, every file verified here.

The revision is ``revision`` when given, else the lock file's, else the default branch resolved
once and written to the lock file with each needed file's path, size and sha256. Files come
through ``huggingface_hub.snapshot_download``, which does not check what it receives, so each file
is checked afterwards: Git-LFS files (the ``.npy`` series and labels) against the sha256 and size
of the tree listing, small plain-git files (``metadata.geojson``, ``NORM_S2_patch.json``) against
their git blob id (sha1 of ``b"blob <size>\\0" + content``) and size.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import filter_repo_objects

from gfmtune import pastis
from gfmtune.data.download.http import (
    CHUNK_SIZE,
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    ChecksumError,
    DownloadError,
    TransientError,
    with_retries,
)
from gfmtune.data.download.local import validate_layout
from gfmtune.fileio import atomic_write_text, check_free_space

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_REPO = "IGNF/PASTIS-HD"
REPO_TYPE = "dataset"
DEFAULT_BRANCH = "main"
ALLOW_PATTERNS = [
    pastis.METADATA_FILE,
    pastis.NORM_FILE,
    "DATA_S2/S2_*.npy",
    "ANNOTATIONS/TARGET_*.npy",
]
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network errors of whichever HTTP client this huggingface_hub version uses."""
    errors: list[type[BaseException]] = [OSError]  # requests' errors are OSErrors
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


@dataclass(frozen=True)
class HubFile:
    """A needed file at the pinned commit: size, and sha256 (LFS) or git blob id (plain git)."""

    path: str
    size: int
    sha256: str | None
    blob_id: str | None = None

    def to_json(self) -> dict:
        entry: dict = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.sha256 is None:
            entry["git_blob"] = self.blob_id
        return entry

    @classmethod
    def from_json(cls, entry: dict, where: Path) -> HubFile:
        try:
            return cls(
                str(entry["path"]), int(entry["size"]), entry.get("sha256"), entry.get("git_blob")
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: unreadable file entry {entry!r} ({err})") from err


@dataclass(frozen=True)
class HubResult:
    """A verified download: data root, commit, and the files verified (path, size, sha256)."""

    root: Path
    revision: str
    files: list[dict]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:400]


def hub_call(fn: Callable[[], T], what: str, retries: int, backoff: float) -> T:
    """Call the hub with retries on network errors, 429 and 5xx; 'not found' fails at once."""

    def once() -> T:
        try:
            return fn()
        except LocalEntryNotFoundError as err:  # the hub client's wrapper of a network failure
            raise TransientError(_one_line(err)) from err
        except (PermissionError, IsADirectoryError, NotADirectoryError):
            raise  # local problems: retrying cannot help
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
            raise DownloadError(f"{what}: {_one_line(err)}") from err
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status is not None and status < 500 and status != 429:
                raise DownloadError(f"{what}: {_one_line(err)}") from err
            raise TransientError(_one_line(err)) from err
        except TRANSPORT_ERRORS as err:
            raise TransientError(_one_line(err)) from err

    return with_retries(once, what, retries, backoff)


def read_lock(path: Path, repo_id: str) -> tuple[str, list[HubFile]]:
    """The pinned commit and file list of a lock file written by :func:`write_lock`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable lock file ({err})") from err
    if not isinstance(data, dict) or data.get("repo_id") != repo_id:
        found = data.get("repo_id") if isinstance(data, dict) else None
        raise ValueError(f"{path}: lock file is for repository {found!r}, not {repo_id!r}")
    revision = str(data.get("revision"))
    if not COMMIT_RE.fullmatch(revision):
        raise ValueError(f"{path}: revision {revision!r} is not a 40-hex commit hash")
    return revision, [HubFile.from_json(e, path) for e in data.get("files") or []]


def write_lock(path: Path, repo_id: str, revision: str, files: list[HubFile]) -> None:
    lock = {
        "repo_id": repo_id,
        "revision": revision,
        "resolved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [f.to_json() for f in files],
    }
    atomic_write_text(Path(path), json.dumps(lock, indent=1) + "\n")
    log.info("%s: pinned %s at %s (%d files)", path, repo_id, revision, len(files))


def pin_revision(
    resolve: Callable[[str], str], repo_id: str, revision: str | None, lock_file: Path | None
) -> tuple[str, list[HubFile]]:
    """Commit to use and, when the lock file pins that commit, its file list."""
    locked = read_lock(lock_file, repo_id) if lock_file and lock_file.is_file() else None
    if revision:
        commit = revision if COMMIT_RE.fullmatch(revision) else resolve(revision)
        if locked and locked[0] != commit:
            log.warning("%s pins %s; using the requested %s", lock_file, locked[0], commit)
        return (commit, locked[1]) if locked and locked[0] == commit else (commit, [])
    if locked:
        return locked
    commit = resolve(DEFAULT_BRANCH)
    log.info("%s: branch %s resolved to %s", repo_id, DEFAULT_BRANCH, commit)
    return commit, []


def _hub_file(entry: RepoFile) -> HubFile:
    """LFS: sha256 and size; plain git: blob id and size; Xet without LFS info: size only."""
    if entry.lfs is not None:
        return HubFile(entry.path, entry.lfs.size, entry.lfs.sha256, entry.blob_id)
    if getattr(entry, "xet_hash", None):  # oid would be the pointer's blob, not the content's
        log.warning("%s: no sha256 published; its size only will be checked", entry.path)
        return HubFile(entry.path, entry.size, None, None)
    return HubFile(entry.path, entry.size, None, entry.blob_id)


def needed_files(api: HfApi, repo_id: str, commit: str) -> list[HubFile]:
    """The files matching :data:`ALLOW_PATTERNS` at ``commit``, from the recursive tree listing."""
    entries = [
        e
        for e in api.list_repo_tree(repo_id, recursive=True, revision=commit, repo_type=REPO_TYPE)
        if isinstance(e, RepoFile)
    ]
    wanted = set(filter_repo_objects([e.path for e in entries], allow_patterns=ALLOW_PATTERNS))
    files = [_hub_file(e) for e in entries if e.path in wanted]
    present = {f.path for f in files}
    for required in (pastis.METADATA_FILE, pastis.NORM_FILE):
        if required not in present:
            raise DownloadError(f"{repo_id}@{commit}: {required} is not in the repository")
    return sorted(files, key=lambda f: f.path)


def _remaining_bytes(root: Path, files: list[HubFile]) -> int:
    return sum(
        f.size
        for f in files
        if not ((root / f.path).is_file() and (root / f.path).stat().st_size == f.size)
    )


def _digests(path: Path, size: int) -> tuple[str, str]:
    """sha256 and git blob sha1 of a file, in one read."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()


def check_file(root: Path, file: HubFile) -> dict:
    """Verify one downloaded file; on a mismatch delete it and raise :class:`ChecksumError`."""
    path = root / file.path
    size = path.stat().st_size
    sha256, blob = _digests(path, size) if size == file.size else ("", "")
    if size != file.size:
        problem = f"size mismatch, expected {file.size} bytes, got {size}"
    elif file.sha256 is not None and sha256 != file.sha256:
        problem = f"sha256 mismatch, expected {file.sha256}, got {sha256}"
    elif file.sha256 is None and file.blob_id is not None and blob != file.blob_id:
        problem = f"git blob sha1 mismatch, expected {file.blob_id}, got {blob}"
    else:
        return {"path": file.path, "size": size, "sha256": sha256}
    path.unlink(missing_ok=True)
    raise ChecksumError(f"{path}: {problem}; file deleted")


def verify_files(root: Path, files: list[HubFile], workers: int = 8) -> list[dict]:
    """Verify every file (in parallel); all bad files are deleted, the first one is reported."""

    def attempt(file: HubFile) -> dict | ChecksumError:
        try:
            return check_file(root, file)
        except ChecksumError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(attempt, files))
    errors = [r for r in results if isinstance(r, ChecksumError)]
    if errors:
        others = f" ({len(errors) - 1} other file(s) failed too)" if len(errors) > 1 else ""
        raise ChecksumError(f"{errors[0]}{others}; run again to fetch them anew")
    return results  # type: ignore[return-value]


def _snapshot(
    repo_id: str, commit: str, dest: Path, files: list[HubFile], **options: object
) -> None:
    """One ``snapshot_download`` pass; files still missing afterwards count as a transient error."""
    snapshot_download(
        repo_id,
        repo_type=REPO_TYPE,
        revision=commit,
        allow_patterns=ALLOW_PATTERNS,
        local_dir=dest,
        **options,
    )
    missing = [f.path for f in files if not (dest / f.path).is_file()]
    if missing:
        raise TransientError(
            f"{len(missing)} file(s) missing after the download, e.g. {missing[0]}"
        )


def download_pastis_hd(
    dest: Path,
    repo_id: str = DEFAULT_REPO,
    revision: str | None = None,
    lock_file: Path | None = None,
    endpoint: str | None = None,
    workers: int = 8,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF_S,
    cache_dir: Path | None = None,
) -> HubResult:
    """Download the S2 part of PASTIS-HD into ``dest`` at a pinned commit and verify every file."""
    dest, lock_file = Path(dest), Path(lock_file) if lock_file else None
    api = HfApi(endpoint=endpoint)
    where = f"{repo_id} ({api.endpoint})"

    def resolve(rev: str) -> str:
        return hub_call(
            lambda: str(api.dataset_info(repo_id, revision=rev).sha), where, retries, backoff
        )

    commit, files = pin_revision(resolve, repo_id, revision, lock_file)
    if not files:
        files = hub_call(lambda: needed_files(api, repo_id, commit), where, retries, backoff)
        if lock_file and not lock_file.exists():
            write_lock(lock_file, repo_id, commit, files)
    n_lfs = sum(f.sha256 is not None for f in files)
    log.info("%s@%s: %d files (%d LFS, sha256-checked)", repo_id, commit, len(files), n_lfs)
    check_free_space(dest, _remaining_bytes(dest, files))
    options = {"max_workers": workers, "endpoint": endpoint, "cache_dir": cache_dir}
    hub_call(lambda: _snapshot(repo_id, commit, dest, files, **options), where, retries, backoff)
    verified = verify_files(dest, files, workers)
    n = validate_layout(dest)
    log.info("%s: %d files verified, %d patches", dest, len(verified), n)
    return HubResult(root=dest, revision=commit, files=verified)
