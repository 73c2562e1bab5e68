"""``gfmtune weights``: fetch (resumable) and verify a pretrained checkpoint, write a stamp.

The checkpoint lives in ``--dir`` (config ``weights.dir``: a folder of pre-downloaded files, or
where downloads go). A file already there is verified and kept; a wrong one is renamed
``<file>.rejected-<UTC time>`` (never deleted: it may be a hand-copied file) and the checkpoint
is downloaded from its published URL and verified against its published size and sha256. The
stamp JSON (the Snakemake output) is written only after verification.
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
    ckpt: Checkpoint, folder: Path, retries: int = 5, progress: bool = True
) -> Path:
    """The verified checkpoint in ``folder``, downloaded first when absent or wrong (a wrong file
    is set aside first; the error, if the download fails, says where it went)."""
    remote = RemoteFile(ckpt.url, Path(folder) / ckpt.filename, ckpt.size, f"sha256:{ckpt.sha256}")
    rejected = ""
    if remote.dest.is_file():
        note = set_aside_unless_verified(remote)
        if note is None:
            return remote.dest
        rejected = f"{note}; "
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


def run(args: argparse.Namespace) -> int:
    ckpt = CHECKPOINTS[args.checkpoint]
    path = fetch_checkpoint(ckpt, args.dir, args.retries)
    stamp = {
        "checkpoint": ckpt.name,
        "path": str(path.resolve()),
        "url": ckpt.url,
        "sha256": ckpt.sha256,
        "size": ckpt.size,
    }
    atomic_write_text(args.stamp, json.dumps(stamp, indent=1) + "\n")
    return 0
