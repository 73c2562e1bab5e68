"""``gfmtune weights``: fetch (resumable) and verify a pretrained checkpoint, write a stamp.

The checkpoint lives in ``--dir`` (config ``weights.dir``: a folder of pre-downloaded files, or
where downloads go). A file already there is verified and kept; a wrong one is renamed
``<file>.rejected-<UTC time>`` (never deleted: it may be a hand-copied file) and the checkpoint
is fetched from its sources (the catalog's URL, then its mirrors, in order) until one gives a
file of the published size and sha256: a failed source (an HTTP error, a wrong file) passes to
the next, and the error once all failed names each URL and why. A file on the Hugging Face hub
comes through ``huggingface_hub`` at the revision its URL names, via the hub cache
(:mod:`gfmtune.data.download.hub_file`: ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``); any other URL is a
resumable HTTP download (:mod:`gfmtune.data.download.http`). The stamp JSON (the Snakemake
output) is written only after verification. ``--offline`` (config ``weights.offline``: nodes
without internet) verifies and never downloads: a missing or wrong file is an error naming it and
what to put there.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gfmtune.data.download.http import (
    DownloadError,
    RemoteFile,
    download_all,
    set_aside_unless_verified,
)
from gfmtune.data.download.hub_file import fetch_hub_file, parse_hub_url
from gfmtune.fileio import DiskFullError, InsufficientSpaceError, atomic_write_text
from gfmtune.models.catalog import CHECKPOINTS, Checkpoint
from gfmtune.models.checkpoints import CheckpointError

log = logging.getLogger(__name__)

#: Failures no other source can cure: the loop over the sources stops at them.
LOCAL_ERRORS = (DiskFullError, InsufficientSpaceError, PermissionError)


def sources_text(ckpt: Checkpoint) -> str:
    """The checkpoint's URL, and its mirrors in parentheses if it has any."""
    if not ckpt.mirrors:
        return ckpt.url
    return f"{ckpt.url} (or a mirror: {', '.join(ckpt.mirrors)})"


def fetch_source(
    url: str,
    ckpt: Checkpoint,
    dest: Path,
    retries: int = 5,
    progress: bool = True,
    hub_cache: Path | None = None,
) -> Path:
    """One source: the hub through its cache, any other URL over HTTP; verified at ``dest``."""
    digest = f"sha256:{ckpt.sha256}"
    hub_file = parse_hub_url(url)
    if hub_file is not None:
        return fetch_hub_file(hub_file, dest, ckpt.size, digest, hub_cache, retries, what=url)
    remote = RemoteFile(url, dest, ckpt.size, digest)
    download_all([remote], workers=1, retries=retries, progress=progress)
    return dest


def fetch_checkpoint(
    ckpt: Checkpoint,
    folder: Path,
    retries: int = 5,
    progress: bool = True,
    offline: bool = False,
    hub_cache: Path | None = None,
) -> Path:
    """The verified checkpoint in ``folder``, fetched first when absent or wrong (a wrong file
    is set aside first; the error, if every source fails, says where it went). ``offline``: never
    download; a missing or wrong file is a CheckpointError. ``hub_cache``: huggingface_hub's cache
    folder (default: its own, ``HF_HUB_CACHE``)."""
    dest = Path(folder) / ckpt.filename
    rejected = ""
    if dest.is_file():
        note = set_aside_unless_verified(
            RemoteFile(ckpt.url, dest, ckpt.size, f"sha256:{ckpt.sha256}")
        )
        if note is None:
            return dest
        rejected = f"{note}; "
    if offline:
        raise CheckpointError(
            f"{rejected}{dest}: weights.offline is set, so it is not downloaded: fetch "
            f"{sources_text(ckpt)} on a machine with internet (sha256 {ckpt.sha256}, "
            f"{ckpt.size:,} bytes) and put it there"
        )
    failures: list[str] = []
    for url in ckpt.sources:
        try:
            fetch_source(url, ckpt, dest, retries, progress, hub_cache)
        except LOCAL_ERRORS as err:
            failures.append(f"{url} ({err})")
            break
        except (DownloadError, ValueError, OSError) as err:  # ValueError: ChecksumError too
            failures.append(f"{url} ({err})")
            if len(failures) < len(ckpt.sources):
                log.warning("%s: %s; trying the next source", url, err)
            continue
        if failures:
            log.info("%s: fetched from %s after %d failed source(s)", dest, url, len(failures))
        return dest
    raise CheckpointError(
        f"{rejected}{dest}: could not fetch {', nor '.join(failures)}; download it by hand "
        f"(sha256 {ckpt.sha256}, {ckpt.size:,} bytes) and put it there"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, choices=sorted(CHECKPOINTS), help="which checkpoint"
    )
    parser.add_argument("--dir", type=Path, required=True, help="folder holding checkpoints")
    parser.add_argument("--stamp", type=Path, required=True, help="JSON written once verified")
    parser.add_argument("--retries", type=int, default=5, help="download retries")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="verify the file in --dir, never download (nodes without internet)",
    )


def run(args: argparse.Namespace) -> int:
    ckpt = CHECKPOINTS[args.checkpoint]
    path = fetch_checkpoint(ckpt, args.dir, args.retries, offline=args.offline)
    stamp = {
        "checkpoint": ckpt.name,
        "path": str(path.resolve()),
        "url": ckpt.url,
        "sha256": ckpt.sha256,
        "size": ckpt.size,
    }
    atomic_write_text(args.stamp, json.dumps(stamp, indent=1) + "\n")
    return 0
