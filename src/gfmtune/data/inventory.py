"""The download stage's inventory: what was fetched, from where, verified how.

``inventory.json`` is the download rule's output and the conversion's input::

    {"source": "huggingface" | "zenodo" | "local" | "synthetic",
     "root": "/abs/path/to/folder/with/metadata.geojson",
     "revision": "<hub commit>" or null, "record": "<zenodo record id>" or null,
     "files": [{"path": "DATA_S2/S2_10000.npy", "size": 123, "sha256": "..."}, ...],
     "created": "2026-11-26T18:00:00+00:00"}

``files`` lists what was verified (per-file sha256 for the hub, the archives' md5 for Zenodo,
nothing for local and synthetic data). It is written atomically, only once everything verified.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from gfmtune.fileio import atomic_write_text

SOURCES = ("huggingface", "zenodo", "local", "synthetic")


def write_inventory(
    path: Path, source: str, root: Path, files: list[dict] | None = None, **extra: object
) -> dict:
    """Write the inventory for a verified dataset at ``root`` and return it."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose from {', '.join(SOURCES)}")
    inventory = {
        "source": source,
        "root": str(Path(root).resolve()),
        "revision": extra.pop("revision", None),
        "record": extra.pop("record", None),
        **extra,
        "files": files or [],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(path, json.dumps(inventory, indent=1) + "\n")
    return inventory


def read_inventory(path: Path) -> dict:
    """Read an inventory, failing with the file name when it is not one."""
    try:
        inventory = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable inventory ({err})") from err
    if inventory.get("source") not in SOURCES or "root" not in inventory:
        raise ValueError(f"{path}: inventory lacks a valid 'source' and 'root'")
    return inventory


def provenance(inventory: dict) -> dict:
    """Summary for the store's attributes: the inventory without the file list, plus its digest."""
    files = json.dumps(inventory.get("files", []), sort_keys=True).encode()
    summary = {k: v for k, v in inventory.items() if k != "files" and v is not None}
    summary["files_verified"] = len(inventory.get("files", []))
    summary["files_sha256"] = hashlib.sha256(files).hexdigest()
    return summary
