"""95 % confidence intervals from per-patch test counts (``test_patches.npz`` beside a cell's
``metrics.json``).

The file (numpy ``savez_compressed``) holds ``patch_id`` (n,) and ``tp``, ``fp``, ``fn``
(n, 20): per test patch and class, counted as the cell's confusion matrix (pixels whose
target is void are dropped), so their sums over patches give the cell's test metrics.

Bootstrap over test patches: each of ``resamples`` replicates draws the n test
patches with replacement once, and the same draw serves every cell (all cells are tested on
the same patches, so differences between cells are paired). A replicate's mIoU is computed
from its summed counts, as the test metrics are (not a mean of per-patch IoUs). A cell with
several seeds is resampled hierarchically: a replicate's value is the mean, over its seeds
drawn with replacement, of each seed's value on the replicate's patches. The interval is the
bias-corrected percentile interval (:func:`interval`; Efron 1981). Runs without the file have
no replicates (intervals missing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from gfmtune.results.aggregate import cell_row
from gfmtune.results.tables import KEYS
from gfmtune.train.metrics import miou_from_counts
from gfmtune.train.patch_counts import PATCH_FILE, load_patch_counts

RESAMPLES = 1000  # default number of bootstrap replicates (results.bootstrap.resamples)
MIN_RESAMPLES = 100  # fewer leave the 2.5 % and 97.5 % percentiles to two or three replicates
LEVEL = 95.0  # percent
METRICS = ("miou", "miou_paper")
RUN_KEYS = [*KEYS, "split", "seed"]
AGREEMENT = 0.006  # points between counts and metrics.json (rounded to 2 decimals in miou.csv)
CHUNK = 64  # runs per matrix product (memory: resamples x CHUNK x 60 floats)


def run_key(row: dict | pd.Series) -> tuple:
    """(model, ft_rate, label_percent, timesteps, split, seed); ft_rate -1 for none."""
    ft = row["ft_rate"]
    return (row["model"], -1.0 if pd.isna(ft) else float(ft), *(row[k] for k in RUN_KEYS[2:]))


def _read_runs(paths: Iterable[Path]) -> dict[tuple, np.ndarray]:
    """Per run with a count file: its (n, 3, C) counts, in ascending patch_id order; checked
    against the run's metrics.json and the other runs' test patches."""
    runs: dict[tuple, np.ndarray] = {}
    patches = None
    for path in map(Path, paths):
        file = path.parent / PATCH_FILE
        if not file.exists():
            continue
        row, counts = cell_row(path), load_patch_counts(file)
        order = np.argsort(counts.patch_id)
        if patches is None:
            patches = counts.patch_id[order]
        elif not np.array_equal(counts.patch_id[order], patches):
            raise ValueError(f"{file}: its test patches differ from the other cells'")
        stacked = counts.stacked()[order]
        for name, value in zip(METRICS, miou_from_counts(*stacked.sum(0)), strict=True):
            if row[name] is not None and not abs(100 * value - row[name]) <= AGREEMENT:  # NaN
                raise ValueError(
                    f"{file}: its counts give {name} {100 * value:.4f} %, metrics.json "
                    f"{row[name]} %"
                )
        runs[run_key(row)] = stacked
    return runs


@dataclass(frozen=True)
class Replicates:
    """Per run and per cell of the main split, arrays (len(METRICS), 1 + resamples) in
    percent: column 0 the value on the test set itself, then the bootstrap replicates."""

    runs: dict[tuple, np.ndarray]
    cells: dict[tuple, np.ndarray]

    def cell_matrix(self, summary: pd.DataFrame, metric: str) -> np.ndarray | None:
        """(len(summary), resamples) replicates of ``metric`` in ``summary``'s row order; None
        when a cell has none."""
        keys = [tuple(r) for r in summary[KEYS].itertuples(index=False)]
        if not keys or any(k not in self.cells for k in keys):
            return None
        return np.stack([self.cells[k][METRICS.index(metric), 1:] for k in keys])


def interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected percentile interval at LEVEL of ``values`` (..., 1 + B): column 0 the
    estimate, then its B replicates. The percentiles move by z0 = Phi^-1(share of replicates
    below the estimate, ties half), which undoes the replicates' median bias: resampled
    patches lower a class's IoU when its false positives are spread over more patches than
    its pixels. With z0 = 0 it is the plain 2.5 and 97.5 percentile interval."""
    values = np.asarray(values, dtype=np.float64)
    point, reps = values[..., :1], np.sort(values[..., 1:], axis=-1)
    b = reps.shape[-1]
    share = (reps < point).mean(-1) + 0.5 * (reps == point).mean(-1)
    z0 = _normal(np.clip(share, 0.5 / b, 1 - 0.5 / b), inverse=True)
    z = NormalDist().inv_cdf(0.5 + LEVEL / 200)
    bounds = []
    for side in (-z, z):
        position = _normal(2 * z0 + side) * (b - 1)  # as np.percentile's linear interpolation
        lower = np.floor(position).astype(int)
        upper = np.minimum(lower + 1, b - 1)
        at = [np.take_along_axis(reps, k[..., None], -1)[..., 0] for k in (lower, upper)]
        bounds.append(at[0] + (position - lower) * (at[1] - at[0]))
    return bounds[0], bounds[1]


def _normal(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The standard normal CDF (or its inverse) elementwise."""
    dist = NormalDist()
    return np.vectorize(dist.inv_cdf if inverse else dist.cdf, otypes=[float])(x)


def patch_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(1 + resamples, n): row 0 all ones (the test set itself), then how often each of the n
    patches is drawn in each replicate (rows sum to n)."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    drawn = np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)
    return np.vstack([np.ones(n), drawn]).astype(np.float64)


def replicate_metrics(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(..., len(METRICS), len(weights)) percent: the metrics of counts (n, ..., 3, C), any
    runs in the middle axes, on each row of patch multiplicities ``weights`` (B, n)."""
    sums = (weights @ counts.reshape(len(counts), -1)).reshape(len(weights), *counts.shape[1:])
    metrics = np.stack(miou_from_counts(sums[..., 0, :], sums[..., 1, :], sums[..., 2, :]))
    return 100 * np.moveaxis(metrics, (0, 1), (-2, -1))


def _seed_resample(seeds: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A cell's (metrics, 1 + B) from its seeds' (same shape): column 0 the mean over seeds,
    replicate b the mean over seeds drawn with replacement of their replicate b."""
    stacked = np.stack(seeds)  # (S, metrics, 1 + B)
    n_seeds, b = len(seeds), stacked.shape[-1] - 1
    draw = rng.integers(0, n_seeds, size=(b, n_seeds))
    reps = stacked[draw, :, np.arange(1, b + 1)[:, None]].mean(1).T  # (metrics, B)
    return np.hstack([stacked[:, :, :1].mean(0), reps])


def bootstrap(
    paths: Iterable[Path], table: pd.DataFrame, resamples: int = RESAMPLES, seed: int = 0
) -> Replicates:
    """Replicates of every run with a count file, and of every main-split cell of ``table``
    (``miou.csv`` rows) whose runs all have one."""
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"bootstrap resamples must be >= {MIN_RESAMPLES}, got {resamples}")
    counts = _read_runs(paths)
    rng = np.random.default_rng(seed)
    runs: dict[tuple, np.ndarray] = {}
    keys = list(counts)
    if keys:
        weights = patch_weights(len(counts[keys[0]]), resamples, rng)
        for start in range(0, len(keys), CHUNK):  # one matrix product per chunk of runs
            chunk = keys[start : start + CHUNK]
            stacked = np.stack([counts[k] for k in chunk], axis=1)
            runs |= zip(chunk, replicate_metrics(weights, stacked), strict=True)
    members: dict[tuple, list[tuple]] = {}  # main-split cell -> its runs
    for row in table[table.split == "main"].to_dict("records"):
        key = run_key(row)
        members.setdefault(key[: len(KEYS)], []).append(key)
    cells = {
        cell: _seed_resample([runs[k] for k in of_cell], rng)
        for cell, of_cell in members.items()
        if all(k in runs for k in of_cell)
    }
    return Replicates(runs, cells)


def run_intervals(table: pd.DataFrame, reps: Replicates) -> pd.DataFrame:
    """``table`` (``miou.csv`` rows) with ``<metric>_low`` and ``<metric>_high`` per run."""
    out = table.copy()
    for i, name in enumerate(METRICS):
        bounds = [
            interval(reps.runs[k][i]) if k in reps.runs else (np.nan, np.nan)
            for k in map(run_key, table.to_dict("records"))
        ]
        for side in (1, 0):  # low right after the value, then high
            column = [round(float(b[side]), 2) for b in bounds]
            out.insert(out.columns.get_loc(name) + 1, f"{name}_{('low', 'high')[side]}", column)
    return out


def cell_intervals(summary: pd.DataFrame, reps: Replicates, metric: str) -> pd.DataFrame:
    """``summary`` (:func:`gfmtune.results.tables.summarize`) with ``low`` and ``high``."""
    bounds = [
        interval(reps.cells[k][METRICS.index(metric)]) if k in reps.cells else (np.nan, np.nan)
        for k in (tuple(r) for r in summary[KEYS].itertuples(index=False))
    ]
    return summary.assign(low=[float(b[0]) for b in bounds], high=[float(b[1]) for b in bounds])
