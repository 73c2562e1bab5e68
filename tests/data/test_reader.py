"""FrameReader returns exactly the source frames and labels, in any process, or fails clearly."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gfmtune import pastis
from gfmtune.data.reader import (
    DEFAULT_THREADS,
    FrameReader,
    ShardFileBackend,
    StoreFormatError,
    TensorstoreBackend,
)


def _frame_sets(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [
        np.arange(n),
        np.array([n - 1]),
        np.array([n - 1, 0, 2, 2, 0]),
        rng.integers(0, n, size=12),
        np.array([], dtype=np.int64),
    ]


def _scale(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.multiply(frames, np.float32(0.5), out=out, dtype=np.float32)


@pytest.mark.parametrize("backend, threads", [("shard", 1), ("shard", 3), ("tensorstore", None)])
def test_frames_equal_source(
    tiny_store: Path, tiny_root: Path, backend: str, threads: int | None
) -> None:
    reader = FrameReader(tiny_store, backend=backend, threads=threads)
    for i, pid in enumerate(reader.patch_ids):
        source = np.load(pastis.s2_path(tiny_root, int(pid)))
        assert reader.n_frames(i) == len(source)
        for frames in _frame_sets(len(source)):
            got = reader.read_frames(i, frames)
            assert got.dtype == np.int16 and got.shape == (len(frames), 10, 16, 16)
            assert np.array_equal(got, source[frames])
            scaled = reader.read_frames(i, frames, _scale)  # transformed as decoded
            assert scaled.dtype == np.float32 and np.array_equal(scaled, _scale(source[frames]))


def test_default_backend_is_the_direct_shard_reader(tiny_store: Path) -> None:
    backend = FrameReader(tiny_store).backend
    assert isinstance(backend, ShardFileBackend) and backend.threads == DEFAULT_THREADS
    assert isinstance(FrameReader(tiny_store, "tensorstore").backend, TensorstoreBackend)
    with pytest.raises(ValueError, match="unknown reader backend"):
        FrameReader(tiny_store, "zarr-python")


def test_labels_dates_and_lookup(tiny_store: Path, tiny_root: Path) -> None:
    reader = FrameReader(tiny_store)
    table = pastis.read_metadata(tiny_root).frame
    assert reader.patch_ids.tolist() == table.patch_id.tolist()
    assert reader.folds.tolist() == table.fold.tolist()
    for i, (pid, dates) in enumerate(zip(table.patch_id, table.dates, strict=True)):
        assert reader.index_of(pid) == i
        target = np.load(pastis.target_path(tiny_root, pid))[0]
        assert reader.label(i).dtype == np.uint8
        assert np.array_equal(reader.label(i), target.astype(np.uint8))
        assert np.array_equal(reader.dates(i), dates)
        assert np.array_equal(reader.days(i), pastis.days_since_reference(dates))
    with pytest.raises(KeyError, match="no patch with ID_PATCH 7"):
        reader.index_of(7)


def test_bad_indices_name_store_and_patch(tiny_store: Path) -> None:
    reader = FrameReader(tiny_store)
    n = reader.n_frames(0)
    with pytest.raises(IndexError, match=rf"frame {n} out of range for patch \d+ with {n}"):
        reader.read_frames(0, np.array([0, n]))
    with pytest.raises(IndexError, match="frame -1"):
        reader.read_frames(0, np.array([-1]))
    with pytest.raises(IndexError, match=re.escape(str(tiny_store))):
        reader.label(len(reader))
    with pytest.raises(ValueError, match="integer"):
        reader.read_frames(0, np.array([0.5]))


def test_missing_partial_and_foreign_stores(tiny_store: Path, tmp_path: Path) -> None:
    missing = tmp_path / "s2.zarr"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: Zarr store not found")):
        FrameReader(missing)
    partial = tmp_path / "s2.zarr.partial"
    shutil.copytree(tiny_store, partial)
    with pytest.raises(FileNotFoundError, match=r"unfinished \.partial store exists"):
        FrameReader(missing)
    with pytest.raises(StoreFormatError, match=r"unfinished conversion \(a .partial store\)"):
        FrameReader(partial)
    foreign = tmp_path / "other.zarr"
    foreign.mkdir()
    with pytest.raises(StoreFormatError, match=re.escape(f"{foreign}: not a Zarr v3 store")):
        FrameReader(foreign)
    meta = json.loads((tiny_store / "zarr.json").read_text())
    del meta["attributes"]["norm_train_folds"]  # as in a store whose conversion did not finish
    (foreign / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match=r"not a finished gfmtune store.*norm_train_folds"):
        FrameReader(foreign)


def test_corrupt_shard_index_is_detected(tiny_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "s2.zarr"
    shutil.copytree(tiny_store, store)
    shard = store / "reflectance" / "c" / "0" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreFormatError, match="checksum mismatch"):
        FrameReader(store).read_frames(0, np.array([0]))


def test_other_layouts_fall_back_to_tensorstore(tiny_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "s2.zarr"
    shutil.copytree(tiny_store, store)
    meta_path = store / "reflectance" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"][0]["configuration"]["codecs"].append({"name": "crc32c"})  # not written so
    meta_path.write_text(json.dumps(meta))
    assert isinstance(FrameReader(store).backend, TensorstoreBackend)
    with pytest.raises(StoreFormatError, match="not one blosc shard per patch"):
        _ = FrameReader(store, backend="shard").backend


def test_pickle_carries_no_handle(tiny_store: Path) -> None:
    reader = FrameReader(tiny_store, backend="tensorstore")
    first = reader.read_frames(3, np.array([1, 0]))
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._backend is None
    assert np.array_equal(copy.read_frames(3, np.array([1, 0])), first)


class _Frames(Dataset):
    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict:
        frames = np.array([self.reader.n_frames(i) - 1, 0, 0])
        return {
            "x": torch.from_numpy(self.reader.read_frames(i, frames)),
            "pid": os.getpid(),
            "opened_in": self.reader._pid,
            "threads": getattr(self.reader.backend, "threads", None),
        }


def _check_loader(reader: FrameReader, root: Path, context: str) -> None:
    loader = DataLoader(
        _Frames(reader), batch_size=None, num_workers=2, multiprocessing_context=context
    )
    seen = 0
    for i, item in enumerate(loader):
        source = np.load(pastis.s2_path(root, int(reader.patch_ids[i])))
        assert np.array_equal(item["x"].numpy(), source[[len(source) - 1, 0, 0]])
        assert item["pid"] != os.getpid() and item["opened_in"] == item["pid"]
        assert item["threads"] in (1, None)  # workers decode in one thread each
        seen += 1
    assert seen == len(reader)


@pytest.mark.parametrize("backend, context", [("shard", "fork"), ("tensorstore", "spawn")])
def test_dataloader_workers(tiny_store: Path, tiny_root: Path, backend: str, context: str) -> None:
    reader = FrameReader(tiny_store, backend=backend)
    reader.read_frames(0, np.array([0]))  # opened in the parent before the workers start
    _check_loader(reader, tiny_root, context)


def test_forked_tensorstore(tiny_store: Path, tiny_root: Path) -> None:
    """Forked workers can use tensorstore only if the parent never did; else a clear error."""
    script = (
        "import sys; from pathlib import Path; from gfmtune.data.reader import FrameReader; "
        "from tests.data.test_reader import _check_loader; "
        "_check_loader(FrameReader(Path(sys.argv[1]), 'tensorstore'), Path(sys.argv[2]), 'fork')"
    )
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_store), str(tiny_root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reader = FrameReader(tiny_store, backend="tensorstore")
    reader.read_frames(0, np.array([0]))
    with pytest.raises(RuntimeError, match="tensorstore was used before this process was forked"):
        _check_loader(reader, tiny_root, "fork")
