"""Read frames of the ``s2.zarr`` store (see :mod:`gfmtune.data.store`) for training.

:class:`FrameReader` loads the small per-patch arrays (patch ids, folds, frame counts, dates,
labels) once into numpy and reads reflectance frames through a backend:

- ``shard`` (default): reads the patch's shard file directly: its index, then only the chunks of
  the wanted frames (adjacent chunks in one read, the kernel told to prefetch them all first),
  each decoded with Blosc. Only for the store's own layout (one shard per patch, one chunk per
  frame, ``bytes`` + ``blosc`` codecs); anything else falls back to ``tensorstore``.
- ``tensorstore``: the general zarr v3 reader.

``shard`` splits a patch's frames over :data:`DEFAULT_THREADS` decoding threads in the process
that built the reader and uses one thread in processes it is sent to (DataLoader workers, which
are parallel already); ``threads=`` overrides both.

Measured on 2 cores (``gfmtune bench-data``), ``shard`` beat tensorstore at every t, and
zarr-python is far slower than both (docs/data.md, "Stage 2: the Zarr store"), so it is not
offered. The choice lives in
:data:`DEFAULT_BACKEND`. A reader holds no open file or handle when pickled, and each process
opens its own backend lazily, so it is safe in DataLoader workers (fork or spawn). One caveat for
``tensorstore``: a forked child of a process that has used it cannot use it (tensorstore aborts
the child; the reader raises a clear error instead), so with that backend read nothing in the
main process before forking workers, or use spawn. ``shard`` has no such limit.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import google_crc32c
import numpy as np
import xarray as xr
from numcodecs import blosc

from gfmtune import pastis

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "shard"
#: Decoding threads of the ``shard`` backend in the process that built the reader; processes it
#: is sent to (DataLoader workers, already parallel) use one unless told otherwise.
DEFAULT_THREADS = min(2, os.cpu_count() or 1)
BACKENDS = ("shard", "tensorstore")
_MISSING = np.iinfo(np.uint64).max  # shard index entry of a chunk never written
_REQUIRED_ATTRS = ("store_version", "norm_paper", "norm_train_folds", "nodata")


class StoreFormatError(ValueError):
    """The store is missing, unfinished or not a gfmtune store; the message names it."""


class UnsupportedLayout(StoreFormatError):
    """The ``shard`` backend cannot read this array layout."""


class FrameTransform(Protocol):
    def __call__(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Map int16 frames (..., band, y, x) to float32 of the same shape (into ``out``)."""
        ...


class _Backend(Protocol):
    def read(
        self, index: int, frames: np.ndarray, transform: FrameTransform | None = None
    ) -> np.ndarray:
        """(len(frames), band, y, x) for sorted, unique, in-range frame indices: int16, or
        float32 from ``transform`` applied to each frame."""
        ...


# ---- backends -------------------------------------------------------------------------------


def _is_bytes_le(codec: dict) -> bool:
    endian = codec.get("configuration", {}).get("endian", "little")
    return codec.get("name") == "bytes" and endian == "little"


class ShardFileBackend:
    """Direct reader for arrays sharded one patch per file, chunked one frame per chunk;
    ``threads`` share the decoding (the calling thread and ``threads - 1`` helpers)."""

    def __init__(self, array_dir: Path, threads: int = 1) -> None:
        self.array_dir = Path(array_dir)
        meta = json.loads((self.array_dir / "zarr.json").read_text())
        shape = meta["shape"]
        self.frame_shape = tuple(shape[2:])
        self.n_time = shape[1]
        self.fill = np.int16(meta["fill_value"])
        self._check(meta)
        config = meta["codecs"][0]["configuration"]
        self._crc = [c["name"] for c in config["index_codecs"]] == ["bytes", "crc32c"]
        self._index_at_end = config.get("index_location", "end") == "end"
        self._sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def _check(self, meta: dict) -> None:
        where = self.array_dir / "zarr.json"
        shape = meta.get("shape", [])
        codecs = meta.get("codecs", [])
        shard = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        ok = (
            meta.get("data_type") == "int16"
            and len(shape) == 5
            and shard == [1, *shape[1:]]
            and meta.get("chunk_key_encoding", {}).get("name") == "default"
            and len(codecs) == 1
            and codecs[0].get("name") == "sharding_indexed"
        )
        if ok:
            config = codecs[0]["configuration"]
            inner = config.get("codecs", [])
            index_codecs = [c["name"] for c in config.get("index_codecs", [])]
            ok = (
                config.get("chunk_shape") == [1, 1, *shape[2:]]
                and len(inner) == 2
                and _is_bytes_le(inner[0])
                and inner[1].get("name") == "blosc"
                and index_codecs in (["bytes"], ["bytes", "crc32c"])
            )
        if not ok:
            raise UnsupportedLayout(f"{where}: not one blosc shard per patch, one chunk per frame")

    def _shard_path(self, index: int) -> Path:
        key = self._sep.join(["c", str(index), "0", "0", "0", "0"])
        return self.array_dir / key

    def _index(self, fd: int, path: Path) -> np.ndarray:
        n_index = self.n_time * 16 + (4 if self._crc else 0)
        size = os.fstat(fd).st_size
        raw = os.pread(fd, n_index, size - n_index if self._index_at_end else 0)
        if len(raw) != n_index:
            raise StoreFormatError(f"{path}: shard shorter than its index")
        if self._crc and google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise StoreFormatError(f"{path}: shard index checksum mismatch (corrupt file)")
        index = np.frombuffer(raw[: self.n_time * 16], "<u8").reshape(self.n_time, 2)
        written = index[:, 0] != _MISSING
        if np.any(index[written].sum(1) > size):
            raise StoreFormatError(f"{path}: shard index points past the end of the file")
        return index

    def read(
        self, index: int, frames: np.ndarray, transform: FrameTransform | None = None
    ) -> np.ndarray:
        out = np.empty((len(frames), *self.frame_shape), np.int16 if transform is None else "f4")
        chunks = list(self._chunks(index, frames))
        parts = [chunks[k :: self.threads] for k in range(min(self.threads, len(chunks)))]
        helpers = [self._pool.submit(self._decode_all, p, out, transform) for p in parts[1:]]
        if parts:
            self._decode_all(parts[0], out, transform)
        for done in helpers:
            done.result()
        missing = np.setdiff1d(np.arange(len(frames)), [row for row, _, _ in chunks])
        for row in missing:  # chunks never written: fill value
            fill = np.full(self.frame_shape, self.fill, np.int16)
            out[row] = fill if transform is None else transform(fill)
        return out

    def _decode_all(
        self,
        chunks: list[tuple[int, memoryview, Path]],
        out: np.ndarray,
        transform: FrameTransform | None,
    ) -> None:
        """Decode chunks into their rows of ``out`` (transformed right away, while in cache)."""
        scratch = np.empty(self.frame_shape, np.int16) if transform is not None else None
        for row, chunk, path in chunks:
            self._decode(chunk, out[row] if scratch is None else scratch, path)
            if transform is not None:
                transform(scratch, out=out[row])

    def _chunks(self, index: int, frames: np.ndarray) -> Iterator[tuple[int, memoryview, Path]]:
        """(row, encoded chunk, shard path) of each written wanted frame, in file order."""
        path = self._shard_path(index)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # shard never written
            return
        try:
            runs = _runs(self._index(fd, path)[frames])
            if len(runs) > 1 and hasattr(os, "posix_fadvise"):  # queue all reads at once
                for start, stop, _ in runs:
                    os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_WILLNEED)
            for start, stop, members in runs:
                buf = memoryview(os.pread(fd, stop - start, start))
                for row, offset, nbytes in members:
                    yield row, buf[offset - start : offset - start + nbytes], path
        finally:
            os.close(fd)

    @staticmethod
    def _decode(chunk: memoryview, dest: np.ndarray, path: Path) -> None:
        # Blosc header bytes 4..8: uncompressed size; decompress() accepts a too large dest.
        if len(chunk) < 16 or int.from_bytes(chunk[4:8], "little") != dest.nbytes:
            raise StoreFormatError(f"{path}: chunk is not a Blosc frame of {dest.nbytes} bytes")
        blosc.decompress(chunk, dest)


def _runs(entries: np.ndarray) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Group written chunks into byte-contiguous runs: (start, stop, [(row, offset, nbytes)])."""
    runs: list[tuple[int, int, list[tuple[int, int, int]]]] = []
    for row in np.argsort(entries[:, 0], kind="stable"):
        offset, nbytes = int(entries[row, 0]), int(entries[row, 1])
        if offset == _MISSING:
            continue
        if runs and runs[-1][1] == offset:
            runs[-1][2].append((int(row), offset, nbytes))
            runs[-1] = (runs[-1][0], offset + nbytes, runs[-1][2])
        else:
            runs.append((offset, offset + nbytes, [(int(row), offset, nbytes)]))
    return runs


_TENSORSTORE_PID: int | None = None  # the process that started tensorstore's threads


class TensorstoreBackend:
    """The general zarr v3 reader (tensorstore), one handle per process."""

    def __init__(self, array_dir: Path) -> None:
        global _TENSORSTORE_PID
        if _TENSORSTORE_PID not in (None, os.getpid()):  # it would abort this forked process
            raise RuntimeError(
                "tensorstore was used before this process was forked and cannot run here: "
                "use the 'shard' backend, or a 'spawn' DataLoader multiprocessing context"
            )
        import tensorstore as ts

        _TENSORSTORE_PID = os.getpid()
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir)}}
        self._array = ts.open(spec, read=True).result()

    def read(
        self, index: int, frames: np.ndarray, transform: FrameTransform | None = None
    ) -> np.ndarray:
        data = self._array[index].oindex[frames].read().result()
        return data if transform is None else transform(data)


def _open_backend(name: str, array_dir: Path, explicit: bool, threads: int) -> _Backend:
    if name == "shard":
        try:
            return ShardFileBackend(array_dir, threads)
        except UnsupportedLayout as err:
            if explicit:
                raise
            log.info("%s; reading it with tensorstore instead", err)
    return TensorstoreBackend(array_dir)


# ---- store metadata -------------------------------------------------------------------------


def check_store(path: Path) -> None:
    """Raise a clear error when ``path`` is not a finished gfmtune store."""
    path = Path(path)
    if path.name.endswith(".partial"):
        raise StoreFormatError(f"{path}: unfinished conversion (a .partial store); rerun convert")
    if not path.is_dir():
        hint = " (an unfinished .partial store exists)" if Path(f"{path}.partial").exists() else ""
        raise FileNotFoundError(f"{path}: Zarr store not found{hint}; run the conversion stage")
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, json.JSONDecodeError) as err:
        raise StoreFormatError(f"{path}: not a Zarr v3 store ({err})") from err
    missing = [k for k in _REQUIRED_ATTRS if k not in attrs]
    if missing or not (path / "reflectance" / "zarr.json").is_file():
        what = f"attributes {missing}" if missing else "the reflectance array"
        raise StoreFormatError(f"{path}: not a finished gfmtune store (missing {what})")


def open_store(path: Path) -> xr.Dataset:
    """The store as an xarray Dataset (``xr.open_zarr``, consolidated), without xarray's
    warning that ``reflectance`` declares two fill values: both become NaN, which is what they
    mean (:data:`gfmtune.data.store.REFLECTANCE_ATTRS`)."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: Zarr store not found (run the conversion stage first)")
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "variable 'reflectance' has multiple fill values", xr.SerializationWarning
        )
        return xr.open_zarr(path, consolidated=True)


def _load_metadata(path: Path) -> dict[str, Any]:
    with open_store(path) as ds:
        return {
            "patch_ids": ds.patch_id.values.astype(np.int64),
            "folds": ds.fold.values.astype(np.int64),
            "n_frames": ds.n_frames.values.astype(np.int64),
            "dates": ds.dates.values.astype("datetime64[D]"),
            "labels": ds.label.values.astype(np.uint8),
            "attrs": dict(ds.attrs),
            "frame_shape": tuple(ds.reflectance.shape[2:]),
        }


# ---- reader ---------------------------------------------------------------------------------


class FrameReader:
    """Frames, labels and dates of the patches in a gfmtune ``s2.zarr`` store."""

    def __init__(self, store: Path, backend: str | None = None, threads: int | None = None) -> None:
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown reader backend {backend!r}; choose from {BACKENDS}")
        self.store = Path(store)
        check_store(self.store)
        meta = _load_metadata(self.store)
        self.patch_ids: np.ndarray = meta["patch_ids"]
        self.folds: np.ndarray = meta["folds"]
        self.frame_shape: tuple[int, int, int] = meta["frame_shape"]
        self.attrs: dict[str, Any] = meta["attrs"]
        self._n_frames: np.ndarray = meta["n_frames"]
        self._dates: np.ndarray = meta["dates"]
        self._labels: np.ndarray = meta["labels"]
        self._positions = {int(p): i for i, p in enumerate(self.patch_ids)}
        self.backend_name = backend or DEFAULT_BACKEND
        self._explicit = backend is not None
        self.threads = threads
        self._home_pid = os.getpid()
        self._backend: _Backend | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.patch_ids)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_backend"], state["_pid"] = None, -1  # reopened in the receiving process
        return state

    @property
    def backend(self) -> _Backend:
        """This process's reflectance backend (opened on first use, again after a fork)."""
        if self._backend is None or self._pid != os.getpid():
            threads = self.threads or (DEFAULT_THREADS if os.getpid() == self._home_pid else 1)
            self._backend = _open_backend(
                self.backend_name, self.store / "reflectance", self._explicit, threads
            )
            self._pid = os.getpid()
        return self._backend

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.store}: patch index {index} outside 0..{len(self) - 1}")
        return int(index)

    def index_of(self, patch_id: int) -> int:
        """Position of ``patch_id`` in the store."""
        try:
            return self._positions[int(patch_id)]
        except KeyError:
            raise KeyError(f"{self.store}: no patch with ID_PATCH {patch_id}") from None

    def n_frames(self, index: int) -> int:
        return int(self._n_frames[self._check_index(index)])

    def dates(self, index: int) -> np.ndarray:
        """Acquisition dates (datetime64[D]) of the patch's frames."""
        i = self._check_index(index)
        return self._dates[i, : self._n_frames[i]]

    def days(self, index: int) -> np.ndarray:
        """Days since 2018-09-01 (int64) of the patch's frames."""
        return pastis.days_since_reference(self.dates(index))

    def label(self, index: int) -> np.ndarray:
        """Semantic classes (uint8, H x W) of the patch."""
        return self._labels[self._check_index(index)]

    def read_frames(
        self, index: int, frames: np.ndarray, transform: FrameTransform | None = None
    ) -> np.ndarray:
        """int16 (k, band, H, W) for 0-based frame indices (any order, repeats allowed); with
        ``transform`` (e.g. a normaliser), float32 ``transform(frame)``, applied once per
        distinct frame as it is decoded."""
        n = self.n_frames(index)
        frames = np.asarray(frames)
        if frames.ndim != 1 or (frames.size and not np.issubdtype(frames.dtype, np.integer)):
            raise ValueError(f"frame indices must be a 1-D integer array, got {frames!r}")
        bad = frames[(frames < 0) | (frames >= n)]
        if bad.size:
            raise IndexError(
                f"{self.store}: frame {int(bad[0])} out of range for patch "
                f"{self.patch_ids[index]} with {n} frames"
            )
        unique, inverse = np.unique(frames, return_inverse=True)
        data = self.backend.read(index, unique.astype(np.int64), transform)
        if len(unique) == len(frames) and np.array_equal(unique, frames):
            return data
        return data[inverse]
