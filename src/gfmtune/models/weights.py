"""``gfmtune weights``: fetch (resumable) and verify a pretrained checkpoint, write a stamp.

The checkpoint lives in ``--dir`` (config ``weights.dir``: a folder of pre-downloaded files, or
where downloads go). A file already there is verified and kept; a wrong one is renamed
``<file>.rejected-<UTC time>`` (never deleted: it may be a hand-copied file) and the checkpoint
is downloaded from its published URL and verified against its published size and sha256. The
stamp JSON (the Snakemake output) is written only after verification. ``--offline`` (config
``weights.offline``: nodes without internet) verifies and never downloads: a missing or wrong file
is an error naming it and what to put there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gfmtune.data.download.http import (
    ChecksumError,
    DownloadError,
    RemoteFile,
    download_all,
    set_aside_unless_verified,
)
from gfmtune.fileio import atomic_write_text
from gfmtune.models.catalog import CHECKPOINTS, Checkpoint
from gfmtune.models.checkpoints import CheckpointError


def fetch_checkpoint(
    ckpt: Checkpoint,
    folder: Path,
    retries: int = 5,
    progress: bool = True,
    offline: bool = False,
) -> Path:
    """The verified checkpoint in ``folder``, downloaded first when absent or wrong (a wrong file
    is set aside first; the error, if the download fails, says where it went). ``offline``: never
    download; a missing or wrong file is a CheckpointError."""
    remote = RemoteFile(ckpt.url, Path(folder) / ckpt.filename, ckpt.size, f"sha256:{ckpt.sha256}")
    rejected = ""
    if remote.dest.is_file():
        note = set_aside_unless_verified(remote)
        if note is None:
            return remote.dest
        rejected = f"{note}; "
    if offline:
        raise CheckpointError(
            f"{rejected}{remote.dest}: weights.offline is set, so it is not downloaded: fetch "
            f"{ckpt.url} on a machine with internet (sha256 {ckpt.sha256}, {ckpt.size:,} bytes) "
            "and put it there"
        )
    try:
        download_all([remote], workers=1, retries=retries, progress=progress)
    except (DownloadError, ChecksumError, OSError) as err:
        raise CheckpointError(
            f"{rejected}{remote.dest}: could not fetch {ckpt.url} ({err}); download it by hand "
            f"(sha256 {ckpt.sha256}, {ckpt.size:,} bytes) and put it there"
        ) from err
    return remote.dest


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
