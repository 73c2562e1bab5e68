"""Atomic file writes: outputs appear complete under their final name or not at all.

A write that fails for lack of disk space (``ENOSPC``) is reported as :class:`DiskFullError`,
naming the path being written, the bytes it needed (when known) and the bytes free.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


class DiskFullError(OSError):
    """A write failed for lack of disk space; the message names the path and the space."""


class InsufficientSpaceError(OSError):
    """Not enough free disk space for the planned downloads or extraction."""


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def space_message(path: Path, needed: int | None) -> str:
    """``N bytes needed (x GB), M free (y GB)`` for the file system of ``path``."""
    free = free_bytes(path)
    need = f"{needed} bytes needed ({needed / 1e9:.2f} GB), " if needed is not None else ""
    return f"{need}{free} bytes free ({free / 1e9:.2f} GB)"


def check_free_space(folder: Path, needed: int) -> None:
    """Raise :class:`InsufficientSpaceError` (naming ``folder``) if under ``needed`` bytes free."""
    free = free_bytes(folder)
    if needed > free:
        raise InsufficientSpaceError(
            f"not enough free disk space in {folder}: {needed} bytes needed "
            f"({needed / 1e9:.2f} GB), {free} free ({free / 1e9:.2f} GB)"
        )


def disk_full(path: Path, needed: int | None = None) -> DiskFullError:
    """The error for a write of ``path`` that lacks space (``needed`` bytes, when known)."""
    return DiskFullError(f"disk full while writing {path}: {space_message(path, needed)}")


def require_space(path: Path, needed: int) -> None:
    """Raise :class:`DiskFullError` naming ``path`` before writing it if under ``needed`` bytes
    are free."""
    if needed > free_bytes(path):
        raise disk_full(path, needed)


@contextmanager
def disk_full_reported(path: Path, needed: int | None = None) -> Iterator[None]:
    """Re-raise ``ENOSPC`` raised inside as :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise disk_full(path, needed) from err


@contextmanager
def atomic_path(path: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it to ``path`` on success.

    ``needed``: the bytes the write takes, for the message when the disk is full.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with disk_full_reported(path, needed):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    data = text.encode()
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def set_aside(path: Path, why: str = "corrupt") -> Path:
    """Rename ``path`` to ``<name>.<why>-<UTC time>``: kept for inspection, never trusted, never
    deleted (it may be a hand-copied file)."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.{why}-{datetime.now(UTC):%Y%m%dT%H%M%S.%f}")
    os.replace(path, aside)
    return aside
