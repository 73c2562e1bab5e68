"""Exclusive locks on lock files (``fcntl.flock``) that name the process holding them.

While held, a lock file holds its holder's ``pid host``; it is emptied on release and never
deleted (deleting a lock file others may have open would let two processes hold "the" lock).
The kernel releases a flock when its process dies, so a free lock whose file still names a
holder was left by a process that died (SIGKILL, a node failure): it is taken over with a
warning. A flock is seen by every process of one machine; on NFS, Linux takes it as a lock
on the server (NFSv4, or v3 with lockd), but a mount with ``local_lock=flock``,
``local_lock=all`` or ``nolock`` keeps it on each client, so jobs on two hosts do not see each
other's locks there; a file system without flock (Lustre mounted without ``flock``) fails with
an :class:`OSError` naming the lock file (docs/training.md, docs/troubleshooting.md).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class LockedError(RuntimeError):
    """Another process holds the lock."""


def _holder(fd: int) -> str:
    """The ``pid host`` written in the lock file (empty when none)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def _described(holder: str) -> str:
    """``pid N on host H`` of a lock file's ``pid host`` (``an unknown process`` if empty)."""
    pid, _, host = holder.partition(" ")
    return f"pid {pid} on host {host}" if holder else "an unknown process"


def _alive(pid: int) -> bool:
    """Whether the process ``pid`` of this host is running (or a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _left_by(holder: str) -> str:
    """Who left a free lock file naming ``holder``: ``dead pid N`` when that is so."""
    pid, _, host = holder.partition(" ")
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return f"dead pid {pid}"
    return f"{_described(holder)}, which no longer holds it"


def _acquire(fd: int, path: Path, what: str, wait: bool) -> None:
    """Lock ``fd``; when it is held by another process, wait (``wait``, saying so) or raise
    :class:`LockedError` naming ``what`` and the holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(
                err.errno,
                f"{path}: cannot lock {what} ({err.strerror}); its file system may not "
                "support flock (docs/training.md)",
            ) from err
    holder = _described(_holder(fd))
    if not wait:
        raise LockedError(
            f"{what} is in use by {holder} (lock {path}); wait for it to finish, or stop it "
            "and rerun"
        )
    log.info("%s is in use by %s (lock %s); waiting", what, holder, path)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _open(path: Path, what: str) -> int:
    """The lock file ``path`` opened for writing (created, with its folder, if missing); an
    :class:`OSError` naming it and ``what`` when that fails (a read-only file system)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OSError(
            err.errno,
            f"{path}: cannot write the lock of {what} ({err.strerror}); make its folder "
            "writable, or move it to a writable file system",
        ) from err


@contextmanager
def held(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of the file ``path`` (created if missing) inside the block;
    ``what``: what it guards, for messages. Held by another process: wait (``wait``) or raise
    :class:`LockedError`; left by a dead process: taken over with a warning."""
    fd = _open(Path(path), what)
    try:
        _acquire(fd, path, what, wait)
        if left := _holder(fd):
            log.warning("%s: lock of %s taken over from %s", path, what, _left_by(left))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released in order: no holder left named
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for forked children (DataLoader workers)
    finally:
        os.close(fd)
