"""Safe torch file loading: tensors and plain containers only, failures named by file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


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
