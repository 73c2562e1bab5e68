"""``gfmtune download``: fetch or generate PASTIS data, verify it, then write the inventory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gfmtune.data.inventory import SOURCES, write_inventory
from gfmtune.data.synthetic import add_spec_arguments, spec_from_args

log = logging.getLogger(__name__)

#: (data root, verified files, extra inventory fields) of one source.
Fetched = tuple[Path, list[dict], dict]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=SOURCES, required=True, help="where the data come from")
    parser.add_argument("--dest", type=Path, help="download/extract folder")
    parser.add_argument(
        "--inventory", type=Path, help="inventory JSON, written after full verification"
    )
    local = parser.add_argument_group("local")
    local.add_argument("--root", type=Path, help="PASTIS folder or archive (.zip/.tar[.gz]/.tgz)")
    hub = parser.add_argument_group("huggingface")
    hub.add_argument("--repo-id", default="IGNF/PASTIS-HD", help="dataset repository on the hub")
    hub.add_argument("--revision", help="commit (or branch) to download; default: the lock's")
    hub.add_argument("--lock-file", type=Path, help="JSON pinning the commit and file digests")
    hub.add_argument("--hf-endpoint", help="hub URL (default: $HF_ENDPOINT or huggingface.co)")
    zen = parser.add_argument_group("zenodo")
    zen.add_argument("--record", default="10908628", help="Zenodo record id (PASTIS-HD)")
    zen.add_argument("--zenodo-api", default="https://zenodo.org/api", help="Zenodo API URL")
    zen.add_argument("--files", nargs="+", metavar="GLOB", help="only files matching these")
    net = parser.add_argument_group("network (huggingface, zenodo)")
    net.add_argument("--workers", type=int, default=8, help="parallel downloads")
    net.add_argument(
        "--retries", type=int, default=5, help="retries per file, backoff 1, 2, 4 s..."
    )
    add_spec_arguments(parser.add_argument_group("synthetic"))


def _dest(args: argparse.Namespace) -> Path:
    if args.dest is None:
        raise ValueError(f"--dest is required for --source {args.source}")
    return args.dest


def _huggingface(args: argparse.Namespace) -> Fetched:
    from gfmtune.data.download.huggingface import download_pastis_hd

    result = download_pastis_hd(
        _dest(args),
        repo_id=args.repo_id,
        revision=args.revision,
        lock_file=args.lock_file,
        endpoint=args.hf_endpoint,
        workers=args.workers,
        retries=args.retries,
    )
    return result.root, result.files, {"revision": result.revision, "repo_id": args.repo_id}


def _zenodo(args: argparse.Namespace) -> Fetched:
    from gfmtune.data.download.zenodo import download_record

    result = download_record(
        _dest(args),
        record=args.record,
        api=args.zenodo_api,
        patterns=args.files,
        workers=args.workers,
        retries=args.retries,
    )
    return (
        result.root,
        result.files,
        {"record": result.record, "download_dir": str(result.download_dir.resolve())},
    )


def _local(args: argparse.Namespace) -> Fetched:
    from gfmtune.data.download.local import prepare_local

    if args.root is None:
        raise ValueError("--root is required for --source local")
    return prepare_local(args.root, args.dest), [], {}


def _synthetic(args: argparse.Namespace) -> Fetched:
    from gfmtune.data.download.local import validate_layout
    from gfmtune.data.synthetic import write_synthetic_pastis

    spec = spec_from_args(args)
    root = write_synthetic_pastis(_dest(args), spec)
    validate_layout(root)
    return root, [], {}


FETCHERS = {
    "huggingface": _huggingface,
    "zenodo": _zenodo,
    "local": _local,
    "synthetic": _synthetic,
}


def run(args: argparse.Namespace) -> int:
    root, files, extra = FETCHERS[args.source](args)
    log.info("%s data verified at %s (%d files with digests)", args.source, root, len(files))
    if args.inventory:
        write_inventory(args.inventory, args.source, root, files, **extra)
        log.info("inventory written to %s", args.inventory)
    return 0
