"""Per-patch test counts of a cell, ``test_patches.npz`` beside its ``metrics.json``: for
every test patch and class, true positives, false positives and false negatives, counted as the
cell's confusion matrix (pixels whose target is void dropped), so they can be resampled
(:mod:`gfmtune.results.uncertainty`) without rerunning anything.

The file (numpy ``savez_compressed``) holds ``patch_id`` (n,) and ``tp``, ``fp``, ``fn``
(n, 20), all int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gfmtune.fileio import atomic_path
from gfmtune.pastis import N_CLASSES, VOID_CLASS

PATCH_FILE = "test_patches.npz"


@dataclass(frozen=True)
class PatchCounts:
    """Per test patch and class: true positives, false positives, false negatives."""

    patch_id: np.ndarray  # (n,) int64
    tp: np.ndarray  # (n, classes) int64
    fp: np.ndarray
    fn: np.ndarray

    def stacked(self) -> np.ndarray:
        """(n, 3, classes): tp, fp, fn per patch."""
        return np.stack([self.tp, self.fp, self.fn], axis=1)


def counts_from_confusions(
    patch_id: np.ndarray, confusions: np.ndarray, void_class: int = VOID_CLASS
) -> PatchCounts:
    """Counts from per-patch confusions (n, C, C), rows target and columns prediction; rows of
    void targets are dropped as the cell's confusion matrix drops them."""
    m = np.array(confusions, dtype=np.int64)
    m[:, void_class, :] = 0
    tp = np.diagonal(m, axis1=1, axis2=2).copy()
    return PatchCounts(
        np.asarray(patch_id, dtype=np.int64), tp, m.sum(axis=1) - tp, m.sum(axis=2) - tp
    )


def save_patch_counts(counts: PatchCounts, path: Path) -> None:
    """Write ``counts`` to ``path`` (``test_patches.npz``) atomically."""
    arrays = {"patch_id": counts.patch_id, "tp": counts.tp, "fp": counts.fp, "fn": counts.fn}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v, dtype=np.int64) for k, v in arrays.items()})


def load_patch_counts(path: Path) -> PatchCounts:
    """Read and check a ``test_patches.npz``; a ValueError names the file and the problem."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in ("patch_id", "tp", "fp", "fn")}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a readable per-patch count file ({err})") from err
    n = len(arrays["patch_id"])
    for name in ("tp", "fp", "fn"):
        a = arrays[name]
        if a.shape != (n, N_CLASSES) or not np.issubdtype(a.dtype, np.integer) or (a < 0).any():
            raise ValueError(
                f"{path}: {name} must be non-negative integers of shape ({n}, {N_CLASSES}), "
                f"got {a.dtype} {a.shape}"
            )
    if n == 0 or len(np.unique(arrays["patch_id"])) != n:
        raise ValueError(f"{path}: patch_id must hold distinct test patches, got {n} entries")
    return PatchCounts(**{k: v.astype(np.int64) for k, v in arrays.items()})
