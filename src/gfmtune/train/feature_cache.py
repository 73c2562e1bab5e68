"""Frozen-encoder feature cache: encoder features computed once, reused across label fractions
and epochs.

Applies when the encoder is frozen (FT-Rate 0). With a fixed input (DINO's resize, CROMA at
native size) the cache holds, for every patch of the store, the encoder's output levels for the
frames of one timestep manifest, and training, validation and test read them. CROMA's random
training crops cannot be cached, but its evaluation windows are fixed: an evaluation cache holds,
for every validation and test patch, the levels of its sliding windows (one more axis, the
windows, before the frames), so validation and test decode them while training encodes its crops.
Features are what the model's ``encode`` returns, which the uncached path decodes alike: fp32
without autocast, bf16 under bf16 autocast (``encode`` rounds every encoder's levels to
autocast's dtype, DINO's fp32 ones too), so training from them gives the uncached result. Its
key (:mod:`gfmtune.train.feature_key`) covers everything the features depend on, the store's
content digest included (not its path: another dataset converted to the same path gets its own
cache). Jobs that share a key build it once, under a file lock (``root/key.lock``,
:mod:`gfmtune.lockfile`); a complete cache is read without it, so a cache on a read-only file
system is used as it is. :func:`cached_datasets` gives a training job its datasets with the
cached features where a cache applies.

Layout of ``root/key``: one memory-mapped ``.npy`` array per level, ``level{i}.npy`` of shape
(patches, [windows,] frames, C, h, w), one row per patch in the order of ``index.json`` (which
also records each level's shape and torch dtype; bf16 is stored as its raw 16 bits, numpy having
no bf16, and viewed back without a copy); ``done.bin``, one byte per row, set once the row's
features are flushed to disk; ``complete.json`` last. A build writes into ``root/key.partial``
and renames it to ``root/key`` when every row is done; an interrupted build resumes there, at the
rows not marked done. A cache is used only while each array file has the size its header implies
and every row is marked done; otherwise the folder is set aside, with a warning naming the file,
and rebuilt.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from gfmtune.data.dataset import PastisZarrDataset, model_frames
from gfmtune.fileio import atomic_write_text, disk_full, require_space, set_aside
from gfmtune.lockfile import held
from gfmtune.models.policies import window_corners
from gfmtune.models.registry import ModelSpec
from gfmtune.pastis import TEST_FOLD, VAL_FOLD
from gfmtune.tensorio import CorruptFileError
from gfmtune.train.feature_key import FORMAT, cache_key, store_content_digest
from gfmtune.train.loop import HalvingParts, autocast
from gfmtune.train.settings import TrainSettings

log = logging.getLogger(__name__)
ALL_FOLDS = (1, 2, 3, 4, 5)
COMPLETE, INDEX, DONE = "complete.json", "index.json", "done.bin"
#: torch dtype -> numpy dtype its bits are stored as
STORED = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}
BUILD_BATCH = 4
#: npy format version -> its header reader
HEADER = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

#: a batch of the cached dataset -> its levels, (B, ...) each
Encode = Callable[[dict], list[torch.Tensor]]


def to_stored(level: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as stored: its own numpy dtype, bf16 as its int16 bits."""
    if level.dtype == torch.bfloat16:
        level = level.view(torch.int16)
    return level.numpy()


def from_stored(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Stored values as a tensor of ``dtype`` (bf16: a view of the int16 bits, no copy)."""
    tensor = torch.from_numpy(values)
    return tensor.view(dtype) if dtype == torch.bfloat16 else tensor


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def array_problem(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
    """Why the ``.npy`` array at ``path`` is not ``shape`` of ``dtype``'s storage with the size
    its header implies (None when it is)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in HEADER:
                return f"npy format version {version}, not one numpy writes for open_memmap"
            found, fortran, stored = HEADER[version](f)
            offset = f.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as err:
        return f"unreadable header ({err})"
    if found != shape or fortran or stored != np.dtype(STORED[dtype]):
        return f"holds {found} {stored}, {shape} {STORED[dtype].__name__} expected"
    expected = offset + stored.itemsize * int(np.prod(shape))
    if size != expected:
        return f"{size} bytes, {expected} expected from its header"
    return None


class FeatureCache:
    """Encoder features of a store's patches under ``root/key`` (see the module's docstring)."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key
        self.partial = self.dir.with_name(f"{key}.partial")

    def index(self, folder: Path | None = None) -> dict:
        """``index.json``: patch ids in row order and each level's file, shape and dtype."""
        return json.loads(((folder or self.dir) / INDEX).read_text())

    def problem(self, folder: Path, complete: bool) -> tuple[Path, str] | None:
        """The first bad file of ``folder`` and what is wrong (None when all are good): the
        index, each array's size against its header, and (``complete``) every row done."""
        index_path = folder / INDEX
        try:
            index = self.index(folder)
            levels = [
                (folder / lv["file"], tuple(lv["shape"]), _dtype(lv["dtype"]))
                for lv in index["levels"]
            ]
            rows = len(index["patch_ids"])
        except FileNotFoundError:
            return (index_path, "missing") if complete else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return index_path, f"unreadable ({err})"
        if index.get("format") != FORMAT:
            return index_path, f"format {index.get('format')}, {FORMAT} expected"
        for path, shape, dtype in levels:
            if (why := array_problem(path, shape, dtype)) is not None:
                return path, why
        if complete:
            done = _read_done(folder / DONE)
            if done.size != rows or not done.all():
                return folder / DONE, f"{int(done.sum())} of {rows} rows done"
            if not (folder / COMPLETE).exists():
                return folder / COMPLETE, "missing"
        return None

    @property
    def complete(self) -> bool:
        """Built, every array of its header's size and every row done (a few small reads)."""
        return self.dir.is_dir() and self.problem(self.dir, complete=True) is None

    def discard(self, folder: Path, path: Path, reason: str) -> None:
        """Set ``folder`` (a cache or a partial build) aside for its bad file ``path``."""
        try:
            aside = set_aside(folder)
        except FileNotFoundError:  # already set aside, by another job or worker
            return
        log.warning("%s: %s; cache moved to %s, to be rebuilt", path, reason, aside.name)

    def build(
        self,
        model: nn.Module,
        spec: ModelSpec,
        dataset: PastisZarrDataset,
        device: torch.device,
        amp: torch.dtype | None,
        progress: bool = True,
    ) -> None:
        """Compute the features of ``dataset``'s patches (whoever asks first); after a CUDA
        out-of-memory error in fewer patches per encoder call (:class:`HalvingParts`), to the
        same features."""
        model.eval()
        halving = HalvingParts("encoding")

        def encode(batch: dict) -> list[torch.Tensor]:
            frames = model_frames(batch["image"], dataset.normalise, device)
            run = functools.partial(_levels_of, model, spec, frames, device, amp)
            parts = [levels for _, levels in halving.parts(len(frames), run)]
            return [torch.cat(level) for level in zip(*parts, strict=True)]

        self.fill(dataset, encode, progress)

    def fill(self, dataset: Dataset, encode: Encode, progress: bool = True) -> None:
        """Build the cache of ``dataset``'s patches with ``encode`` unless it is complete:
        resume a partial build at its rows not done, then publish it by renaming. A complete
        cache is read without its lock (it may be on a read-only file system)."""
        if self.complete:
            return
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        # another job may be building the same cache: wait for it
        with held(self.dir.with_suffix(".lock"), f"feature cache {self.dir}", wait=True):
            if self.dir.exists():
                if (bad := self.problem(self.dir, complete=True)) is None:
                    return
                self.discard(self.dir, *bad)
            ids = [int(p) for p in dataset.patch_ids]
            done = self._resume(ids)
            todo = np.flatnonzero(done == 0)
            row_of = {p: r for r, p in enumerate(ids)}
            bar = tqdm(
                total=len(ids),
                initial=len(ids) - len(todo),
                desc="feature cache",
                unit="patch",
                disable=not progress,
            )
            # own generator: building must not advance the global RNG (dropout draws)
            subset = Subset(dataset, todo.tolist())
            loader = DataLoader(subset, BUILD_BATCH, shuffle=False, generator=torch.Generator())
            arrays = None
            with open(self.partial / DONE, "r+b") as marks:
                for batch in loader:
                    levels = [level.cpu() for level in encode(batch)]
                    arrays = arrays or self._arrays(ids, levels)
                    rows = np.array([row_of[int(p)] for p in batch["patch_id"]])
                    self._write(arrays, rows, levels, marks)
                    bar.update(len(levels[0]))
            bar.close()
            atomic_write_text(self.partial / COMPLETE, json.dumps({"format": FORMAT}))
            if (bad := self.problem(self.partial, complete=True)) is not None:
                raise CorruptFileError(f"{bad[0]}: {bad[1]} after building the cache")
            os.replace(self.partial, self.dir)
            total = sum(p.stat().st_size for p in self.dir.iterdir())
            log.info("feature cache %s: %d patches, %.1f MB", self.dir, len(ids), total / 1e6)

    def _resume(self, ids: list[int]) -> np.ndarray:
        """The done mark of every row of the partial build, started anew (empty) unless it is
        a sound build of the same patches."""
        if self.partial.exists():
            bad = self.problem(self.partial, complete=False)
            indexed = bad is None and (self.partial / INDEX).exists()
            if indexed and self.index(self.partial)["patch_ids"] != ids:
                bad = (self.partial / INDEX, "other patches")
            done = _read_done(self.partial / DONE)
            if bad is None and done.size != len(ids):
                bad = (self.partial / DONE, f"{done.size} rows, {len(ids)} expected")
            if bad is None:
                n = int(done.sum())
                log.info(
                    "feature cache %s: resuming, %d of %d rows done", self.partial, n, len(ids)
                )
                return done
            self.discard(self.partial, *bad)
        self.partial.mkdir()
        (self.partial / DONE).write_bytes(bytes(len(ids)))
        return np.zeros(len(ids), np.uint8)

    def _arrays(self, ids: list[int], levels: list[torch.Tensor]) -> list[np.memmap]:
        """The partial build's arrays, opened, or created for ``levels``' shapes and dtypes
        (then ``index.json`` is written, after them)."""
        if (self.partial / INDEX).exists():
            paths = [self.partial / e["file"] for e in self.index(self.partial)["levels"]]
            for path in paths:
                preallocate(path)  # also a build begun before files were preallocated
            return [np.load(path, mmap_mode="r+") for path in paths]
        entries, arrays = [], []
        for i, level in enumerate(levels):
            shape = (len(ids), *level.shape[1:])
            name = f"level{i}.npy"
            path, dtype = self.partial / name, STORED[level.dtype]
            arrays.append(np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape))
            preallocate(path)
            entries.append({"file": name, "shape": list(shape), "dtype": str(level.dtype)})
        index = {"format": FORMAT, "patch_ids": ids, "levels": entries}
        atomic_write_text(self.partial / INDEX, json.dumps(index))
        return arrays

    @staticmethod
    def _write(arrays: list[np.memmap], rows: np.ndarray, levels: list, marks) -> None:
        """Rows' features flushed to disk, then their done marks (a kill in between leaves
        them not done)."""
        for array, level in zip(arrays, levels, strict=True):
            array[rows] = to_stored(level)
            array.flush()
        for row in rows:
            marks.seek(int(row))
            marks.write(b"\x01")
        marks.flush()
        os.fsync(marks.fileno())


def preallocate(path: Path) -> None:
    """Allocate the blocks of the file ``path`` (created sparse by ``open_memmap``): a full disk
    then raises :class:`~gfmtune.fileio.DiskFullError` naming it, not a SIGBUS at a write into
    the memory map. A file system without ``fallocate`` gets a free-space check instead."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise disk_full(path, size) from err
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        require_space(path, size - os.fstat(fd).st_blocks * 512)
    finally:
        os.close(fd)


def _read_done(path: Path) -> np.ndarray:
    """The done marks of ``path`` (empty when missing)."""
    try:
        return np.frombuffer(path.read_bytes(), np.uint8)
    except FileNotFoundError:
        return np.zeros(0, np.uint8)


def cached_levels(
    model: nn.Module,
    spec: ModelSpec,
    images: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None,
) -> list[torch.Tensor]:
    """A frozen encoder's levels of ``images`` (B, T, 10, H, W) through the policy's evaluation
    input, batched per sample as the cache stores them: (B, T, C, h, w), with sliding windows
    (B, windows, T, C, h, w)."""
    with torch.no_grad(), autocast(device, amp):
        levels = model.encode(spec.policy.eval_input(images.to(device)))
    if spec.policy.windowed:
        levels = [level.unflatten(0, (len(images), -1)) for level in levels]
    return levels


def _levels_of(
    model: nn.Module,
    spec: ModelSpec,
    frames: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None,
    part: slice,
) -> list[torch.Tensor]:
    """:func:`cached_levels` of the samples ``part`` of ``frames``."""
    return cached_levels(model, spec, frames[part], device, amp)


class CachedFeatures(Dataset):
    """A :class:`PastisZarrDataset`'s items with cached encoder features instead of images.
    The arrays are opened in the process that reads (each DataLoader worker), never pickled."""

    def __init__(self, base: PastisZarrDataset, cache: FeatureCache) -> None:
        if not cache.complete:
            raise RuntimeError(f"{cache.dir}: feature cache is not complete")
        index = cache.index()
        self.base, self.cache = base, cache
        self.row = {int(p): r for r, p in enumerate(index["patch_ids"])}
        self.levels = [(cache.dir / lv["file"], _dtype(lv["dtype"])) for lv in index["levels"]]
        self._arrays: list[np.memmap] | None = None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_arrays": None}

    def _open(self) -> list[np.memmap]:
        if self._arrays is None:
            arrays = []
            for path, _ in self.levels:
                try:
                    arrays.append(np.load(path, mmap_mode="r"))
                except (OSError, ValueError) as err:
                    self.cache.discard(self.cache.dir, path, "unreadable")
                    raise CorruptFileError(
                        f"{path}: {err}; cache moved aside: rerun the job, it rebuilds the cache"
                    ) from err
            self._arrays = arrays
        return self._arrays

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        position = int(self.base.positions[i])
        patch_id = int(self.base.reader.patch_ids[position])
        row = self.row[patch_id]
        features = [
            from_stored(np.array(array[row]), dtype)
            for array, (_, dtype) in zip(self._open(), self.levels, strict=True)
        ]
        return {
            "features": features,
            "days": torch.as_tensor(self.base.days[i], dtype=torch.int64),
            "label": torch.as_tensor(self.base.reader.label(position), dtype=torch.int64),
            "patch_id": patch_id,
        }


def cached_datasets(
    datasets: list, model: nn.Module, spec: ModelSpec, store: Path, timesteps: Path,
    root: Path, settings: TrainSettings, device: torch.device, amp: torch.dtype | None,
    progress: bool,
) -> list:  # fmt: skip
    """A frozen encoder's training, validation and test ``datasets``, read from the cache under
    ``root`` where one applies (built first if need be): all three with a fixed input
    (``feature_cache``); validation and test when only the training crops are random (CROMA's
    windows, ``eval_cache``). Never with a frame draw, nor from a store without a content
    digest."""
    fixed = spec.policy.deterministic_train_input
    if not (settings.feature_cache if fixed else settings.eval_cache):
        return datasets
    if settings.frame_draw != "none":
        log.info("no feature cache: frame_draw %s draws frames at every load", settings.frame_draw)
        return datasets
    digest = store_content_digest(store)
    if digest is None:
        log.warning(
            "%s: the store predates content digests, so a feature cache cannot tell its data from "
            "another's; training without the cache: rebuild the store (gfmtune store) to use it",
            store,
        )
        return datasets
    folds = ALL_FOLDS if fixed else (VAL_FOLD, TEST_FOLD)
    every = PastisZarrDataset(
        store, timesteps, folds, norm=settings.norm, nodata=settings.nodata,
        scale=spec.policy.scale,
    )  # fmt: skip
    patch = every.reader.label(int(every.positions[0])).shape  # the store's patch size
    windows = None if fixed else window_corners(patch, spec.policy.size)
    key = cache_key(
        spec,
        model,
        digest,
        timesteps,
        settings.norm,
        settings.nodata,
        amp,
        windows,
        settings.cpu_numerics,
    )
    cache = FeatureCache(root, key)
    cache.build(model, spec, every, device, amp, progress)
    live = 0 if fixed else 1  # the datasets that keep their images: CROMA's training crops
    log.info(
        "%s from cached encoder features in %s", "training" if fixed else "evaluation", cache.dir
    )
    return datasets[:live] + [CachedFeatures(ds, cache) for ds in datasets[live:]]
