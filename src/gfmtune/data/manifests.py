"""Manifests that pin what each training job sees: label splits and timestep subsets.

Label splits (``label_split/{percent}.csv``: ``patch_id``, ``fold``) choose training patches:

- ``paper``: the ShapingFT sampler's effective rule. Its divergence is a float64 +inf for every
  patch, so it keeps ``np.argsort(divergences)[:int(N * f)]``: the first ``int(N * f)`` training
  positions of an argsort order that depends on the numpy build and CPU (``argsort`` variants:
  ``identity`` = fold order, numpy >= 2.3; the others are shipped under
  ``resources/argsort_orders/`` by ``gfmtune argsort-orders``). Then, for each class no kept
  patch covers above 1/3 of its (non-void) pixels, the first remaining patch in fold order that
  does (their ``min`` over equal infinite divergences returns the lowest position).
- ``stratified``: one seeded ordering by iterative stratification (rarest, least-covered class
  first) that keeps class coverage as even as possible; splits are its prefixes, so
  1 % ⊂ 10 % ⊂ 50 % ⊂ 100 %.
- ``random``: prefixes of one seeded permutation (nested too).

Timestep subsets (``timesteps/{t}.csv``: ``patch_id``, ``frames``, ``days``) choose frames:

- ``paper``: t = 1 is the last frame; t > 1 takes ``int(linspace(0, N-1, 35))`` and nests
  25 ⊂ 35, 15 ⊂ 25, 6 ⊂ 15 by the same rule. A series shorter than 35 frames (none in PASTIS:
  38 to 61) uses all its frames as the base grid and skips the nesting steps larger than it,
  where the paper's grid would repeat frames. The authors' random 50-frame pre-draw for series
  longer than 50 happens at load time, not in a manifest: training setting ``frame_draw``.
- ``uniform``: the centres of t equal bins over the whole series.
- ``random``: the first t of a seeded permutation per patch, sorted (nested across t).

No strategy repeats a frame: t above 35 with ``paper`` (its base grid), or above a series' frame
count with any strategy, is an error naming t, the strategy and the limit (and the patch).
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from gfmtune import pastis
from gfmtune.data.reader import open_store
from gfmtune.fileio import atomic_write_text

log = logging.getLogger(__name__)

LABEL_STRATEGIES = ("paper", "stratified", "random")
TIMESTEP_STRATEGIES = ("paper", "uniform", "random")
PAPER_BASE_FRAMES = 35
PAPER_COVER_THRESHOLD = 1 / 3
N_REAL_CLASSES = pastis.VOID_CLASS  # classes 0..18

#: argsort variant -> the numpy builds and CPUs whose argsort of equal keys gives that order
ARGSORT_VARIANTS: dict[str, str] = {
    "identity": "fold order: numpy >= 2.3 on CPUs with AVX2 or AVX-512",
    "avx512": "x86-simd-sort's AVX-512 argsort: numpy 1.25-2.2 on CPUs with AVX-512",
    "avx2": "x86-simd-sort's AVX2 argsort: numpy 2.0-2.2 on CPUs with AVX2 but no AVX-512",
    "baseline": "numpy's generic introsort: numpy 1.25-1.26 without AVX-512, "
    "or numpy 1.25-2.4 without AVX2",
}
ARGSORT_DIR = Path(str(resources.files("gfmtune.resources").joinpath("argsort_orders")))
ARGSORT_COMMAND = "gfmtune argsort-orders"
AVX512_CPU = "a CPU with AVX-512 (avx512f, avx512dq, avx512bw and avx512vl in /proc/cpuinfo)"
#: the training-set size (folds 1-3) the shipped argsort orders are for
PAPER_N_TRAIN = 1455


# ---- timesteps ------------------------------------------------------------------------------


def _nest(positions: np.ndarray, t: int) -> np.ndarray:
    return positions[np.linspace(0, len(positions) - 1, t).astype(int)]


def paper_frames(n_frames: int, t: int) -> np.ndarray:
    """The paper's frame indices for a series of ``n_frames >= t`` frames (docs/protocol.md,
    "Frames")."""
    if t == 1:
        return np.array([n_frames - 1])
    base = min(n_frames, PAPER_BASE_FRAMES)  # shorter series: all frames, never repeats
    chosen = np.linspace(0, n_frames - 1, base).astype(int)
    for size in (25, 15, 6):  # 6 ⊂ 15 ⊂ 25 ⊂ 35
        if t > size:
            break
        if len(chosen) > size:
            chosen = _nest(chosen, size)
    return chosen if len(chosen) == t else _nest(chosen, t)


def uniform_frames(n_frames: int, t: int) -> np.ndarray:
    """Centres of ``t`` equal bins over a series of ``n_frames >= t`` frames."""
    return np.floor((np.arange(t) + 0.5) * n_frames / t).astype(int)


def random_frames(n_frames: int, t: int, seed: int, patch_id: int) -> np.ndarray:
    """A seeded, per-patch random subset of ``t <= n_frames`` frames, sorted; nested across
    ``t`` for the same seed."""
    order = np.random.default_rng([seed, patch_id]).permutation(n_frames)
    return np.sort(order[:t])


def check_timesteps(strategy: str, t: int, n_frames: int, patch_id: int) -> None:
    """Refuse a ``t`` the strategy could only meet by repeating frames."""
    if strategy not in TIMESTEP_STRATEGIES:
        raise ValueError(
            f"unknown timestep strategy {strategy!r}; choose from {TIMESTEP_STRATEGIES}"
        )
    if t < 1:
        raise ValueError(f"timesteps must be >= 1, got {t}")
    if strategy == "paper" and t > PAPER_BASE_FRAMES:
        raise ValueError(
            f"timesteps t={t} with strategy 'paper' exceeds its base grid of "
            f"{PAPER_BASE_FRAMES} frames (frames would repeat); use t <= {PAPER_BASE_FRAMES}, "
            "or strategy 'uniform' or 'random'"
        )
    if t > n_frames:
        raise ValueError(
            f"timesteps t={t} with strategy {strategy!r} exceeds the {n_frames} frames of "
            f"patch {patch_id} (frames would repeat); use t <= {n_frames}"
        )


def frames_for(strategy: str, n_frames: int, t: int, seed: int, patch_id: int) -> np.ndarray:
    """``t`` distinct frame indices of a series; see :func:`check_timesteps` for the limits."""
    check_timesteps(strategy, t, n_frames, patch_id)
    if strategy == "paper":
        return paper_frames(n_frames, t)
    if strategy == "uniform":
        return uniform_frames(n_frames, t)
    return random_frames(n_frames, t, seed, patch_id)


def timestep_manifest(store: xr.Dataset, t: int, strategy: str, seed: int = 0) -> pd.DataFrame:
    """One row per patch of the store: its ``t`` frame indices and their day offsets."""
    ref = np.datetime64(pastis.REFERENCE_DATE.isoformat(), "D")
    rows = []
    for pid, n, dates in zip(
        store.patch_id.values, store.n_frames.values, store.dates.values, strict=True
    ):
        frames = frames_for(strategy, int(n), t, seed, int(pid))
        days = (dates[frames].astype("datetime64[D]") - ref).astype(int)
        rows.append((int(pid), " ".join(map(str, frames)), " ".join(map(str, days))))
    return pd.DataFrame(rows, columns=["patch_id", "frames", "days"])


# ---- label splits ---------------------------------------------------------------------------


def class_pixels(labels: np.ndarray) -> np.ndarray:
    """(patch, class) pixel counts of classes 0..18 (void excluded)."""
    flat = labels.reshape(len(labels), -1).astype(np.int64)
    counts = np.stack([np.bincount(row, minlength=pastis.N_CLASSES) for row in flat])
    return counts[:, :N_REAL_CLASSES]


def paper_size(n: int, percent: float) -> int:
    """The authors' subset size: ``int(n * f)``, no minimum."""
    return int(n * percent / 100)


def argsort_path(variant: str, directory: Path = ARGSORT_DIR) -> Path:
    """The order file of ``variant``; raises if the variant is unknown or its file was never
    generated (``identity`` is ``arange`` and needs none: its file is evidence only)."""
    if variant not in ARGSORT_VARIANTS:
        raise ValueError(
            f"unknown argsort variant {variant!r}; choose from {list(ARGSORT_VARIANTS)}"
        )
    path = Path(directory) / f"{variant}.csv"
    if variant != "identity" and not path.is_file():
        cpu = f" on {AVX512_CPU}" if variant == "avx512" else ""
        raise FileNotFoundError(
            f"{path}: argsort variant {variant!r} ({ARGSORT_VARIANTS[variant]}) has not been "
            f"generated; run `{ARGSORT_COMMAND}`{cpu} and commit the files it writes"
        )
    return path


def argsort_order(variant: str, n: int, directory: Path = ARGSORT_DIR) -> np.ndarray:
    """The order in which the authors' ``np.argsort`` lists ``n`` equal divergences."""
    path = argsort_path(variant, directory)
    if variant == "identity":
        return np.arange(n)
    order = pd.read_csv(path)["position"].to_numpy()
    if len(order) != n:
        raise ValueError(
            f"{path}: argsort variant {variant!r} orders {len(order)} training patches, this "
            f"store has {n}; use argsort 'identity' for stores other than PASTIS"
        )
    if not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"{path}: not a permutation of 0..{n - 1}; regenerate it")
    return order


def paper_split(pixels: np.ndarray, percent: float, order: np.ndarray) -> np.ndarray:
    """Positions (into the fold-ordered training patches) the paper's sampler keeps, given the
    argsort ``order`` of its (all equal) divergences."""
    share = pixels / np.maximum(pixels.sum(1, keepdims=True), 1)
    covers = share > PAPER_COVER_THRESHOLD
    kept = [int(i) for i in order[: paper_size(len(pixels), percent)]]
    for c in range(N_REAL_CLASSES):
        if covers[kept, c].any():
            continue
        taken = set(kept)
        candidates = [i for i in np.flatnonzero(covers[:, c]) if i not in taken]
        if candidates:  # fold order, not argsort order (see the module docstring)
            kept.append(int(candidates[0]))
    return np.array(kept, dtype=int)


def stratified_order(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Seeded iterative stratification: each next patch is drawn among those holding the class
    whose share of its patches is so far the lowest (rarest class first on ties)."""
    rng = np.random.default_rng(seed)
    present = pixels > 0
    total = present.sum(0)
    seen = np.zeros(present.shape[1])
    remaining = np.ones(len(pixels), dtype=bool)
    order = []
    while remaining.any():
        available = present[remaining].any(0)
        if available.any():
            share = np.where(available, seen / np.maximum(total, 1), np.inf)
            lowest = np.flatnonzero(share == share.min())
            target = lowest[np.argmin(total[lowest])]
            candidates = np.flatnonzero(remaining & present[:, target])
        else:  # only patches without any class left (all void)
            candidates = np.flatnonzero(remaining)
        pick = int(rng.choice(candidates))
        order.append(pick)
        seen += present[pick]
        remaining[pick] = False
    return np.array(order, dtype=int)


def split_size(n: int, percent: float) -> int:
    return max(1, int(n * percent / 100))


def label_splits(
    fold: np.ndarray,
    labels: np.ndarray,
    percents: list[float],
    strategy: str,
    seed: int = 0,
    argsort: str = "identity",
) -> dict[float, np.ndarray]:
    """Store indices of the training patches kept at each percent (``argsort``: the ``paper``
    strategy's variant, see :data:`ARGSORT_VARIANTS`)."""
    train = np.concatenate([np.flatnonzero(fold == f) for f in pastis.TRAIN_FOLDS])
    if len(train) == 0:
        raise ValueError(f"no patches in the training folds {pastis.TRAIN_FOLDS}")
    pixels = class_pixels(labels[train])
    if strategy == "paper":
        order = argsort_order(argsort, len(train))
        return {p: train[paper_split(pixels, p, order)] for p in percents}
    if strategy == "stratified":
        order = stratified_order(pixels, seed)
    elif strategy == "random":
        order = np.random.default_rng(seed).permutation(len(train))
    else:
        raise ValueError(f"unknown label strategy {strategy!r}; choose from {LABEL_STRATEGIES}")
    return {p: train[order[: split_size(len(train), p)]] for p in percents}


def coverage_summary(splits: dict[float, np.ndarray], labels: np.ndarray) -> pd.DataFrame:
    """Per split and class: patches containing it, its pixels and share of the split's pixels."""
    rows = []
    for percent, idx in splits.items():
        pixels = class_pixels(labels[idx])
        total = max(int(pixels.sum()), 1)
        for c in range(N_REAL_CLASSES):
            rows.append(
                {
                    "percent": percent,
                    "n_patches": len(idx),
                    "class_id": c,
                    "class_name": pastis.CLASS_NAMES[c],
                    "patches": int((pixels[:, c] > 0).sum()),
                    "pixels": int(pixels[:, c].sum()),
                    "pixel_share": round(pixels[:, c].sum() / total, 6),
                }
            )
    return pd.DataFrame(rows)


# ---- files ----------------------------------------------------------------------------------


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def _percent_name(percent: float) -> str:
    return f"{percent:g}"


def write_label_splits(
    store_path: Path,
    out: Path,
    percents: list[float],
    strategy: str,
    seed: int = 0,
    argsort: str = "identity",
) -> dict[float, np.ndarray]:
    """Write ``{percent}.csv`` and ``summary.csv`` under ``out``."""
    store = open_store(store_path)
    fold, labels = store.fold.values, store.label.values
    splits = label_splits(fold, labels, percents, strategy, seed, argsort)
    for percent, idx in splits.items():
        frame = pd.DataFrame({"patch_id": store.patch_id.values[idx], "fold": fold[idx]})
        _write_csv(frame, Path(out) / f"{_percent_name(percent)}.csv")
        log.info("label split %s%%: %d patches", _percent_name(percent), len(idx))
    _write_csv(coverage_summary(splits, labels), Path(out) / "summary.csv")
    return splits


def write_timesteps(
    store_path: Path, out: Path, timesteps: list[int], strategy: str, seed: int = 0
) -> None:
    """Write ``{t}.csv`` under ``out`` for every t (none unless every t is valid)."""
    store = open_store(store_path)
    frames = {t: timestep_manifest(store, t, strategy, seed) for t in timesteps}
    for t, frame in frames.items():
        _write_csv(frame, Path(out) / f"{t}.csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("labels", "timesteps"), help="which manifests to write")
    parser.add_argument("--store", type=Path, required=True, help="s2.zarr store")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--strategy",
        default="paper",
        help="labels: paper|stratified|random; timesteps: paper|uniform|random",
    )
    parser.add_argument(
        "--percents",
        type=float,
        nargs="+",
        default=[1, 10, 50, 100],
        help="labels: label fractions (percent of the training folds)",
    )
    parser.add_argument(
        "--timesteps",
        type=int,
        nargs="+",
        default=[1, 6, 15, 25, 35],
        help="timesteps: frames per series",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategies")
    parser.add_argument(
        "--argsort",
        choices=list(ARGSORT_VARIANTS),
        default="identity",
        help="labels with strategy paper: whose argsort order of equal keys to use",
    )


def run(args: argparse.Namespace) -> int:
    if args.kind == "labels":
        write_label_splits(
            args.store, args.out, args.percents, args.strategy, args.seed, args.argsort
        )
    else:
        write_timesteps(args.store, args.out, args.timesteps, args.strategy, args.seed)
    return 0
