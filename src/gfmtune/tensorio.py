"""Safe torch files: loading tensors and plain containers only, saving atomically with the
space checked, failures named by file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from gfmtune.fileio import DiskFullError, atomic_path, disk_full, require_space

#: Bytes a torch file takes besides its tensors' (pickled structure, zip records, alignment).
SAVE_MARGIN = 1 << 20


class CorruptFileError(RuntimeError):
    """A file that does not load (truncated, garbage, or pickling more than tensors)."""

    def __str__(self) -> str:
        # re-raised from a DataLoader worker, the message ends with the worker's traceback,
        # whose last line is the original error: keep that one line
        last = super().__str__().strip().splitlines()[-1]
        return last.split(f"{type(self).__name__}: ", 1)[-1]


def load_tensors(path: Path, map_location: str | torch.device | None = None) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, never code.

    Any failure (missing, truncated, garbage, or a pickle of other objects, which is refused
    without running) raises :class:`CorruptFileError` naming ``path``.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for bad files
        if isinstance(err, pickle.UnpicklingError):
            detail = "weights_only refused it: garbage, or pickled objects other than tensors"
        else:
            detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise CorruptFileError(f"{path}: unreadable torch file ({detail})") from err


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors' storages in ``obj`` (nested dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(item) for item in obj)
    return 0


def save_tensors(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` through a temporary file and a rename.

    Free space for the tensors plus :data:`SAVE_MARGIN` is checked first; a write that fails
    for lack of it (torch's zip writer says ``[enforce fail at inline_container.cc...]``) raises
    :class:`~gfmtune.fileio.DiskFullError` naming ``path``, the bytes needed and free. Nothing
    is left at ``path`` nor at its temporary file then.
    """
    needed = tensor_bytes(obj) + SAVE_MARGIN
    require_space(path, needed)
    with atomic_path(path, needed) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            if "inline_container" not in str(err):
                raise
            detail = str(err).strip().splitlines()[0]
            raise DiskFullError(f"{disk_full(path, needed)} (torch.save: {detail})") from err
