"""One file from the Hugging Face hub at a revision, through ``huggingface_hub``, verified here.

A URL of the form ``https://huggingface.co/<owner>/<name>/resolve/<revision>/<path>`` (or
``hf.co``, or ``.../datasets/<owner>/<name>/...``) is fetched with ``hf_hub_download``, so the
user's hub cache is used and filled (``HF_HOME`` / ``HF_HUB_CACHE``), a token is sent where one is
configured, and ``HF_ENDPOINT`` (a mirror of the hub) and ``HF_HUB_OFFLINE`` (cache only) apply.
``huggingface_hub`` does not check a file against a digest of ours, so the copy placed at ``dest``
is checked for size and sha256 before it takes the final name: it is linked (or, across file
systems, copied) from the cache to a temporary sibling, verified, then renamed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from huggingface_hub import constants, hf_hub_download

from gfmtune.data.download.http import (
    CHUNK_SIZE,
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    ChecksumError,
    DownloadError,
)
from gfmtune.data.download.huggingface import hub_call
from gfmtune.fileio import atomic_path, check_free_space
from gfmtune.verify import parse_digest

log = logging.getLogger(__name__)

HUB_HOSTS = ("huggingface.co", "hf.co")
_RESOLVE = re.compile(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "ON", "YES", "TRUE"}  # the values huggingface_hub reads as true


@dataclass(frozen=True)
class HubFile:
    """A file of a hub repository at a revision (a commit, or a branch or tag name)."""

    repo_id: str
    revision: str
    filename: str
    repo_type: str = "model"

    def __str__(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}/"
        return f"{kind}{self.repo_id}@{self.revision}:{self.filename}"


def parse_hub_url(url: str) -> HubFile | None:
    """The hub file a ``resolve`` URL of huggingface.co (or hf.co) names; None for other URLs."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname not in HUB_HOSTS:
        return None
    match = _RESOLVE.fullmatch(parts.path)
    if match is None:
        return None
    kind, repo_id, revision, filename = match.groups()
    repo_type = {"datasets": "dataset", "spaces": "space"}.get(kind or "", "model")
    return HubFile(repo_id, unquote(revision), unquote(filename), repo_type)


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` as the environment has it now (None: huggingface_hub's default).

    huggingface_hub reads it once, when imported; reading it at each call gives the same answer
    in a fresh process and follows a change made after the import (tests, notebooks)."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``): use the hub cache only."""
    if constants.HF_HUB_OFFLINE:
        return True
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def _sha256_and_size(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _drop_corrupt_blob(cached: Path, actual_sha256: str) -> str:
    """Delete the cache's copy when its own name (an LFS blob is named by its sha256) shows it
    corrupt, so that the next call downloads it anew; a well-formed copy of other bytes is the
    hub's file at that revision and stays. Returns what was done, for the message."""
    blob = cached.resolve()
    if not _SHA256.fullmatch(blob.name) or blob.name == actual_sha256:
        return f"the hub cache's copy {blob} is the file at that revision; kept"
    blob.unlink(missing_ok=True)
    if cached != blob:  # the snapshot's link to it
        cached.unlink(missing_ok=True)
    return f"the hub cache's copy {blob} is not the blob its name says; deleted"


def _place(cached: Path, dest: Path, size: int, sha256: str, what: str) -> str:
    """Link (or copy) ``cached`` to a temporary sibling of ``dest``, verify it, rename it to
    ``dest``; on a mismatch nothing is left at ``dest`` and :class:`ChecksumError` names why."""
    source = cached.resolve()
    with atomic_path(dest, needed=size) as tmp:
        tmp.unlink(missing_ok=True)  # left by a killed run
        try:
            os.link(source, tmp)
            how = "linked"
        except OSError:  # another file system, or no hard links there
            check_free_space(dest.parent, size)
            shutil.copyfile(source, tmp)
            how = "copied"
        actual, actual_size = _sha256_and_size(tmp)
        problems = []
        if actual_size != size:
            problems.append(f"size mismatch, expected {size} bytes, got {actual_size}")
        if actual != sha256:
            problems.append(f"sha256 mismatch, expected {sha256}, got {actual}")
        if problems:
            tmp.unlink()
            kept = _drop_corrupt_blob(cached, actual)
            raise ChecksumError(f"{what}: {'; '.join(problems)}; {kept}")
    return how


def fetch_hub_file(
    file: HubFile,
    dest: Path,
    size: int,
    digest: str,
    cache_dir: Path | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF_S,
    what: str | None = None,
) -> Path:
    """``file`` from the hub (or the hub cache) verified at ``dest``; ``digest`` is
    ``"sha256:<hex>"``. ``cache_dir``: the hub cache (default: huggingface_hub's). Errors:
    :class:`DownloadError` (the hub, or the cache when offline), :class:`ChecksumError`."""
    algo, sha256 = parse_digest(digest)
    if algo != "sha256":
        raise ValueError(f"{digest}: hub files are checked by sha256")
    what = what or str(file)
    endpoint, offline = hub_endpoint(), hub_offline()

    def download() -> str:
        return hf_hub_download(
            file.repo_id,
            file.filename,
            repo_type=file.repo_type,
            revision=file.revision,
            cache_dir=cache_dir,
            endpoint=endpoint,
            local_files_only=offline,
        )

    try:
        cached = Path(hub_call(download, what, 0 if offline else retries, backoff))
    except DownloadError as err:
        if not offline:
            raise
        cache = cache_dir or constants.HF_HUB_CACHE
        raise DownloadError(
            f"{what}: HF_HUB_OFFLINE is set and the hub cache {cache} has no copy of {file}"
        ) from err
    dest.parent.mkdir(parents=True, exist_ok=True)
    how = _place(cached, dest, size, sha256, what)
    log.info("%s: %s from the hub cache (%s) and verified", dest, how, cached)
    return dest
