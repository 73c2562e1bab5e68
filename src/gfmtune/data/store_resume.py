"""Resuming a killed conversion (:mod:`gfmtune.data.store`): the identity of each source file
(size, mtime and sha256) and the progress log of the patches written, so that a partial store is
continued only from the very files it was begun from; and the store's ``content_digest``."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from gfmtune import pastis

log = logging.getLogger(__name__)


def _stat_identity(path: Path) -> dict | None:
    """Size and mtime of ``path``, or None when it is gone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_source(path: Path, what: str) -> tuple[bytes, dict]:
    """Read a source file; return its bytes and identity (size, mtime_ns, sha256)."""
    try:
        st = path.stat()  # before reading: a change while reading shows in the next resume
        content = path.read_bytes()
    except OSError as err:
        raise pastis.PastisFormatError(f"{path}: cannot read {what} ({err})") from err
    identity = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    return content, identity


def _changed_files(root: Path, recorded: dict[str, dict], fresh: dict[str, dict]) -> list[str]:
    """Recorded files that changed: by sha256 when ``fresh`` has one, else by size and mtime."""
    changed = []
    for rel, identity in recorded.items():
        keys = ("sha256",) if rel in fresh else ("size", "mtime_ns")
        now = fresh.get(rel) or _stat_identity(root / rel)
        if now is None or any(now[k] != identity.get(k) for k in keys):
            changed.append(rel)
    return changed


def resume(
    root: Path, partial: Path, log_path: Path, header: dict
) -> tuple[dict[str, dict], dict[int, dict]] | None:
    """The recorded source files and the patch records of a partial store begun from these very
    files, or None to start over (with a warning naming the changed file, when one changed)."""
    if not partial.exists() or not log_path.exists():
        return None
    lines = log_path.read_text().splitlines()
    try:
        old = json.loads(lines[0])
    except (IndexError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict) or old.get("layout") != header["layout"]:
        log.warning("%s: progress log is for another store layout; starting over", partial)
        return None
    done: dict[int, dict] = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: that patch is redone
            continue
        done[int(record["index"])] = record
    files = old.get("files", {})
    changed = _changed_files(root, {**files, **patch_files(done)}, header["files"])
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        log.warning(
            "%s changed%s since %s was begun from it: starting the conversion over",
            root / changed[0],
            more,
            partial,
        )
        return None
    return files, done


def patch_files(done: dict[int, dict]) -> dict[str, dict]:
    """The S2 files of the written patches, by relative path."""
    return {record["file"]: record for record in done.values()}


def content_digest(files: dict[str, dict]) -> str:
    """sha256 over the sorted (path, sha256) list of the source files."""
    listing = sorted((rel, identity["sha256"]) for rel, identity in files.items())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
