"""Resumable, verified single-file HTTP downloads, run in parallel, with retries and a disk check.

A file is written to ``<dest>.part``, resumed with a ``Range`` request after an interruption, and
renamed to ``<dest>`` only once its size and digest (``"md5:..."`` or ``"sha256:..."``) match;
a ``.part`` that does not match is deleted (it is ours). An existing ``<dest>`` is verified, never
trusted for its presence alone, and one that does not match is renamed
``<dest>.rejected-<UTC time>`` (it may be the user's: it is never deleted) before the download.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests
from tqdm import tqdm

from gfmtune.fileio import check_free_space, disk_full_reported, set_aside
from gfmtune.verify import mismatch

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 1.0
MAX_DELAY_S = 60.0
CHUNK_SIZE = 1 << 20  # disk reads and copies
#: Network reads. urllib3 fills a whole chunk before yielding it and drops it when the connection
#: breaks meanwhile, so a small chunk keeps more of a cut transfer for the resume.
STREAM_CHUNK = 1 << 16
TIMEOUT_S = 60.0


class DownloadError(RuntimeError):
    """A download failed; the message names the URL or file."""


class TransientError(DownloadError):
    """A failure worth retrying (cut, 5xx, 429, short body); :func:`with_retries` names the URL."""


class RemoteNotFoundError(DownloadError):
    """The server answered 404 for this URL (never retried)."""


class ChecksumError(ValueError):
    """A downloaded file's size or digest differs from the published one; it was deleted."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: URL, local destination, expected size and ``"algo:hex"`` digest."""

    url: str
    dest: Path
    size: int | None = None
    digest: str | None = None

    @property
    def part(self) -> Path:
        return part_path(self.dest)


def part_path(dest: Path) -> Path:
    """The partial file a download of ``dest`` writes before its verification."""
    return dest.with_name(dest.name + ".part")


def verify_file(path: Path, size: int | None, digest: str | None, name: str | None = None) -> None:
    """Check a file we downloaded; on a mismatch delete it and raise :class:`ChecksumError`."""
    problem = mismatch(path, size, digest)
    if problem is not None:
        path.unlink(missing_ok=True)
        raise ChecksumError(f"{name or path.name}: {problem}; file deleted")


def set_aside_unless_verified(file: RemoteFile) -> str | None:
    """Verify the existing ``file.dest``: None when it matches; else it is renamed aside (see
    :func:`set_aside`) and the returned message names it, what differs and where it went."""
    problem = mismatch(file.dest, file.size, file.digest)
    if problem is None:
        return None
    note = f"{file.dest}: {problem}; moved aside to {set_aside(file.dest, 'rejected')}"
    log.warning("%s", note)
    return note


def with_retries(
    fn: Callable[[], T],
    what: str,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF_S,
    transient: tuple[type[BaseException], ...] = (TransientError,),
) -> T:
    """Call ``fn``; on a ``transient`` error wait ``backoff * 2**attempt`` s and retry."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except transient as err:
            if attempt >= retries:
                raise DownloadError(
                    f"{what}: failed after {attempt + 1} attempt(s): {err}"
                ) from err
            delay = min(backoff * 2**attempt, MAX_DELAY_S)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, err, attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


#: requests failures that a retry can cure (a cut connection, a stalled read).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def raise_for_status(response: requests.Response, url: str) -> None:
    """404: :class:`RemoteNotFoundError`; 429, 5xx: :class:`TransientError`; other 4xx fail."""
    code = response.status_code
    if code == 404:
        raise RemoteNotFoundError(f"{url}: not found (HTTP 404)")
    if code == 429 or code >= 500:
        raise TransientError(f"HTTP {code} {response.reason}")
    if code >= 400:
        raise DownloadError(f"{url}: HTTP {code} {response.reason}")


def get_json(
    url: str, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF_S
) -> object:
    """GET a JSON document with retries."""

    def once() -> object:
        try:
            with requests.get(url, headers={"Accept": "application/json"}, timeout=TIMEOUT_S) as r:
                raise_for_status(r, url)
                return r.json()
        except NETWORK_ERRORS as err:
            raise TransientError(str(err)) from err
        except ValueError as err:  # requests' JSONDecodeError
            raise DownloadError(f"{url}: answer is not JSON ({err})") from err

    return with_retries(once, url, retries, backoff)


def _resume_offset(file: RemoteFile) -> int:
    """Bytes already in the .part file; a .part longer than the file is discarded."""
    offset = file.part.stat().st_size if file.part.is_file() else 0
    if file.size is not None and offset > file.size:
        log.warning("%s: partial file is longer than %d bytes; restarting", file.part, file.size)
        file.part.unlink()
        return 0
    return offset


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """First byte and total size of a 206 answer (``Content-Range: bytes START-END/TOTAL``)."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if match is None:
        return None, None
    total = match.group(2)
    return int(match.group(1)), None if total == "*" else int(total)


def _remote_size(response: requests.Response) -> int | None:
    """The whole file's size as the server states it, if it does (and sends it unencoded)."""
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    if response.status_code == 206:
        return _content_range(response)[1]
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _fetch_once(file: RemoteFile, chunk_size: int, progress: bool) -> None:
    """One GET into the .part file, resuming from its size; raise on any incomplete transfer."""
    offset = _resume_offset(file)
    if file.size is not None and offset == file.size:
        return  # complete .part from an earlier run: verified by the caller
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with requests.get(file.url, headers=headers, stream=True, timeout=TIMEOUT_S) as r:
        if r.status_code == 416 and offset:
            if file.size is None:
                return  # the server has nothing past our bytes: verify what we have
            file.part.unlink()
            raise TransientError(f"range {offset}- refused (HTTP 416); restarting")
        raise_for_status(r, file.url)
        if offset and r.status_code == 206 and _content_range(r)[0] != offset:
            file.part.unlink()
            raise TransientError(f"answer to range {offset}- starts elsewhere")
        if offset and r.status_code != 206:
            log.info("%s: server ignored the range request; restarting from 0", file.url)
            offset = 0
        remote_size = _remote_size(r)
        if file.size is not None and remote_size is not None and remote_size != file.size:
            raise DownloadError(
                f"{file.url}: the server has {remote_size} bytes, expected {file.size}"
            )
        _stream(r, file, offset, chunk_size, progress)


def _stream(
    response: requests.Response, file: RemoteFile, offset: int, chunk_size: int, progress: bool
) -> None:
    mode = "ab" if offset else "wb"
    bar = tqdm(
        total=file.size,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=file.dest.name,
        leave=False,
        disable=None if progress else True,
    )
    written = offset
    needed = None if file.size is None else file.size - offset
    with disk_full_reported(file.part, needed), bar, open(file.part, mode) as out:
        for chunk in response.iter_content(chunk_size=chunk_size):
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    if file.size is not None and written < file.size:
        raise TransientError(f"body ended after {written} of {file.size} bytes")


def download_file(
    file: RemoteFile,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF_S,
    chunk_size: int = STREAM_CHUNK,
    progress: bool = True,
) -> Path:
    """Fetch ``file`` (resuming its .part), verify it, rename it into place and return its path.

    An existing verified destination is kept without any request, a wrong one is set aside
    (:func:`set_aside_unless_verified`); 404 is raised at once.
    """
    if file.dest.is_file() and set_aside_unless_verified(file) is None:
        log.info("%s: already present and verified", file.dest)
        return file.dest
    file.dest.parent.mkdir(parents=True, exist_ok=True)

    def once() -> None:
        try:
            _fetch_once(file, chunk_size, progress)
        except NETWORK_ERRORS as err:
            raise TransientError(str(err)) from err

    with_retries(once, file.url, retries, backoff)
    verify_file(file.part, file.size, file.digest, name=str(file.dest))
    os.replace(file.part, file.dest)
    log.info("%s: downloaded and verified", file.dest)
    return file.dest


def remaining_bytes(files: Iterable[RemoteFile]) -> int:
    """Bytes still to write for ``files`` (sizes minus complete files and partial progress)."""
    total = 0
    for file in files:
        if file.size is None or (file.dest.is_file() and file.dest.stat().st_size == file.size):
            continue
        done = file.part.stat().st_size if file.part.is_file() else 0
        total += max(file.size - done, 0)
    return total


def download_all(
    files: list[RemoteFile],
    workers: int = 8,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF_S,
    progress: bool = True,
) -> list[Path]:
    """Check free space, then download ``files`` in parallel; the first failure is raised."""
    needed: dict[Path, int] = defaultdict(int)
    for file in files:
        needed[file.dest.parent] += remaining_bytes([file])
    for folder, n_bytes in needed.items():
        check_free_space(folder, n_bytes)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [
            pool.submit(download_file, f, retries, backoff, progress=progress) for f in files
        ]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
    for future in futures:  # in submission order: a deterministic first error
        if future.done() and not future.cancelled() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
    return [f.dest for f in files]
