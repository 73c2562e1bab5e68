"""The data path of ``gfmtune bench-train``: what ``gfmtune train``'s DataLoaders cost and
deliver, on a synthetic Zarr store of PASTIS's shapes (:func:`gfmtune.bench.reader.prepare`).

- :func:`loader_start`: seconds to start, drain and stop one loader's workers, for a
  :class:`~gfmtune.bench.measure.BenchPath` (kept across epochs or started for each);
- :func:`worker_rate`: samples/s one worker delivers, int16 frames against float32 frames
  normalised in the worker;
- :func:`worker_reuse`: epoch seconds with workers kept alive against restarted;
- :func:`cache_read`: the feature cache's read rate against the store's.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from gfmtune.bench.measure import DEFAULT, BenchPath
from gfmtune.bench.reader import FRAMES_PER_TILE, prepare
from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.data.synthetic import SyntheticSpec
from gfmtune.train.feature_cache import ALL_FOLDS, CachedFeatures, FeatureCache
from gfmtune.train.loader import build_loader, loader_workers
from gfmtune.train.settings import TrainSettings


def _epoch_seconds(loader: DataLoader, epochs: int) -> list[float]:
    """Seconds of each of ``epochs`` passes over ``loader`` (start-up included)."""
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _ in loader:
            pass
        seconds.append(time.perf_counter() - start)
    return seconds


class _Items(Dataset):
    """``n`` one-number items: a loader over it costs its workers' start and stop only."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(1)


def loader_start(path: BenchPath, reps: int) -> dict[str, Any]:
    """Seconds to start, drain and stop one of ``gfmtune train``'s DataLoaders (its workers),
    median of ``reps`` fresh loaders; and whether its workers persist across epochs."""
    s, seconds = path.settings, []
    for _ in range(reps):
        loader = build_loader(
            _Items(s.batch_size), s.batch_size, s, False, persistent=path.persistent_workers
        )
        seconds.append(_epoch_seconds(loader, 1)[0])
        del loader
    return {"workers": loader_workers(s.workers), "seconds": statistics.median(seconds),
            "persistent": path.persistent_workers and loader_workers(s.workers) > 0}  # fmt: skip


class _WorkerNormalised(Dataset):
    """A dataset's items normalised in the worker: float32 frames sent (``gfmtune train`` sends
    int16 and normalises on the device)."""

    def __init__(self, base: PastisZarrDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, k: int) -> dict[str, Any]:
        item = self.base[k]
        return item | {"image": torch.from_numpy(self.base.normalise(item["image"].numpy()))}


def loader_store(work: Path, size: int, timesteps: list[int], batch: int) -> Path:
    """A synthetic store of ``2 x batch`` patches (at least 5, one per fold) of ``size`` px and
    its paper timestep manifests under ``work`` (reused when it matches)."""
    spec = SyntheticSpec(max(5, 2 * batch), size, FRAMES_PER_TILE, seed=0)
    return prepare(work, spec, tuple(timesteps), threads=min(8, os.cpu_count() or 1))


def _store_dataset(store: Path, t: int) -> PastisZarrDataset:
    return PastisZarrDataset(store, store.parent / "timesteps" / f"{t}.csv", ALL_FOLDS)


def worker_rate(store: Path, t: int, batch: int, epochs: int) -> dict[str, Any]:
    """Samples/s one DataLoader worker delivers at ``t``: int16 frames (as ``gfmtune train``'s
    loader sends them) and float32 frames normalised in the worker, over the epochs after the
    first (no start-up)."""
    ds = _store_dataset(store, t)
    one = replace(TrainSettings(), workers=1)
    rates = {}
    for name, data in (("int16", ds), ("float32", _WorkerNormalised(ds))):
        seconds = _epoch_seconds(build_loader(data, batch, one, False), epochs)
        rates[name] = len(ds) * (epochs - 1) / sum(seconds[1:])
    return {"t": t, "samples_per_s": rates["int16"], "float32_samples_per_s": rates["float32"]}


def worker_reuse(store: Path, t: int, batch: int, epochs: int, workers: int) -> dict[str, Any]:
    """Seconds per epoch at 2 steps per epoch (``batch``, last incomplete batch dropped) with
    ``workers`` kept alive across epochs and started anew every epoch."""
    ds = _store_dataset(store, t)
    settings = replace(TrainSettings(), workers=workers)
    out: dict[str, Any] = {"t": t, "workers": workers, "steps_per_epoch": len(ds) // batch}
    for name, persistent in (("kept", True), ("restarted", False)):
        loader = build_loader(ds, batch, settings, False, drop_last=True, persistent=persistent)
        out[name] = _epoch_seconds(loader, epochs)
        del loader
    return out


#: frozen SSL4EO-DINO ViT-S/16 + UPerNet at paper size: 4 levels of 384 x 14 x 14 per frame,
#: in bf16, as the cache stores levels an encoder returns in bf16 (DINO's own stay fp32 under
#: CUDA autocast, docs/performance.md, so its cache reads twice these bytes)
DINO_LEVELS, DINO_LEVEL, DINO_DTYPE = 4, (384, 14, 14), torch.bfloat16


def _dino_features(batch: dict) -> list[torch.Tensor]:
    """Random levels of frozen DINO's paper shapes for a batch of the store (only read back)."""
    n, t = batch["image"].shape[:2]
    return [torch.randn(n, t, *DINO_LEVEL).to(DINO_DTYPE) for _ in range(DINO_LEVELS)]


def cache_read(store: Path, t: int, batch: int, epochs: int, workers: int) -> dict[str, Any]:
    """Samples/s that ``gfmtune train``'s loader (``workers``) delivers reading the feature
    cache (frozen DINO's paper-size levels, bf16) and reading the Zarr store, in this run,
    epochs after the first (both files just written: the page cache holds them)."""
    ds = _store_dataset(store, t)
    cache = FeatureCache(store.parent / "feature_cache", f"dino-t{t}-n{len(ds)}")
    cache.fill(ds, _dino_features, progress=False)
    settings = replace(TrainSettings(), workers=workers)
    out: dict[str, Any] = {"t": t, "workers": workers, "patches": len(ds)}
    for name, data in (("cache", CachedFeatures(ds, cache)), ("store", ds)):
        item = data[0]
        tensors = item["features"] if name == "cache" else [item["image"]]
        seconds = _epoch_seconds(build_loader(data, batch, settings, False), epochs)
        out[name] = {"samples_per_s": len(ds) * (epochs - 1) / sum(seconds[1:]),
                     "bytes_per_sample": sum(x.nbytes for x in tensors)}  # fmt: skip
    out["ratio"] = out["cache"]["samples_per_s"] / out["store"]["samples_per_s"]
    return out


def data_path(
    work: Path, size: int, timesteps: list[int], batch: int, epochs: int = 4, cache: bool = False
) -> dict[str, Any]:
    """Loader delivery per worker at each t and worker reuse at the largest t (>= 2 epochs);
    with ``cache`` also the feature cache's read rate against the store's at the largest t."""
    store = loader_store(work, size, timesteps, batch)
    workers = max(1, loader_workers(DEFAULT.settings.workers))
    out = {
        "size": size, "batch": batch, "epochs": epochs,
        "rates": [worker_rate(store, t, batch, epochs) for t in timesteps],
        "reuse": worker_reuse(store, max(timesteps), batch, epochs, workers),
    }  # fmt: skip
    if cache:
        out["cache_read"] = cache_read(store, max(timesteps), batch, epochs, workers)
    return out
