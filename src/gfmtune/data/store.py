"""Convert PASTIS S2 series and labels into one chunked, sharded Zarr (v3) store.

Layout of ``s2.zarr`` (dimensions patch, time, band, y, x)::

    reflectance (patch, time, band, y, x) int16   padded with PAD_VALUE after n_frames
    n_frames    (patch) int32
    dates       (patch, time) datetime64[ns]      NaT in padding
    label       (patch, y, x) uint8               semantic class 0..19
    bounds      (patch, corner) float64           xmin, ymin, xmax, ymax in attrs['crs']
    coords      patch_id, fold, tile, band

``reflectance`` has one chunk per frame (all bands) and one shard per patch, so reading k frames
of a patch reads about k frames' bytes from one file. The store is built in ``s2.zarr.partial``
and renamed when complete; a killed conversion resumes from its progress log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec

from gfmtune import pastis
from gfmtune.data.inventory import provenance, read_inventory

log = logging.getLogger(__name__)

PAD_VALUE = -32768
STORE_VERSION = 1
#: Blosc settings. lz4hc + byte shuffle decodes about twice as fast as zstd + bitshuffle at the
#: same size (0.68-0.71 of raw on synthetic data), which the training reader needs to beat raw
#: .npy reads with a warm page cache (``gfmtune bench-data``); it is slower to write.
CODEC = {"cname": "lz4hc", "clevel": 5, "shuffle": "shuffle"}
LABEL_SHARD = 256


def partial_path(store: Path) -> Path:
    """Where the store is built until it is complete."""
    return Path(str(store) + ".partial")


def progress_path(store: Path) -> Path:
    """Log of the patches already written into the partial store (first line: fingerprint)."""
    return Path(str(store) + ".progress.jsonl")


def _fingerprint(root: Path, table: pastis.PatchTable, size: int) -> str:
    digest = hashlib.sha256((root / pastis.METADATA_FILE).read_bytes())
    digest.update(json.dumps([STORE_VERSION, size, CODEC, len(table)]).encode())
    return digest.hexdigest()


def _frame_size(root: Path, patch_id: int) -> int:
    path = pastis.s2_path(root, patch_id)
    try:
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError) as err:
        raise pastis.PastisFormatError(f"{path}: cannot read S2 series ({err})") from err
    if len(shape) != 4 or shape[2] != shape[3]:
        raise pastis.PastisFormatError(f"{path}: shape {shape} is not (T, 10, H, H)")
    return int(shape[2])


def _template(
    root: Path, table: pastis.PatchTable, size: int, labels: np.ndarray, source: dict
) -> xr.Dataset:
    frame = table.frame
    n_patch, t_max = len(frame), int(frame.dates.map(len).max())
    dates = np.full((n_patch, t_max), np.datetime64("NaT"), dtype="datetime64[ns]")
    for i, d in enumerate(frame.dates):
        dates[i, : len(d)] = d
    refl = da.full(
        (n_patch, t_max, len(pastis.BANDS), size, size),
        PAD_VALUE,
        dtype=np.int16,
        chunks=(1, t_max, len(pastis.BANDS), size, size),
    )
    attrs = {
        "title": "PASTIS-HD Sentinel-2 series and semantic labels",
        "class_names": list(pastis.CLASS_NAMES),
        "void_class": pastis.VOID_CLASS,
        "nodata": pastis.NODATA,
        "pad_value": PAD_VALUE,
        "reflectance_scale": "L2A surface reflectance x 10000",
        "reference_date": pastis.REFERENCE_DATE.isoformat(),
        "crs": table.crs or "",
        "source": source,
        "norm_paper": {"mean": list(pastis.PAPER_MEAN), "std": list(pastis.PAPER_STD)},
        "norm_published": pastis.read_norm(root),
        "store_version": STORE_VERSION,
    }
    return xr.Dataset(
        {
            "reflectance": (("patch", "time", "band", "y", "x"), refl),
            "n_frames": ("patch", frame.dates.map(len).to_numpy(np.int32)),
            "dates": (("patch", "time"), dates),
            "label": (("patch", "y", "x"), labels),
            "bounds": (("patch", "corner"), np.array(frame.bounds.tolist(), dtype=np.float64)),
        },
        coords={
            "patch_id": ("patch", frame.patch_id.to_numpy(np.int64)),
            "fold": ("patch", frame.fold.to_numpy(np.int8)),
            "tile": ("patch", np.array(frame.tile.tolist(), dtype=object)),
            "band": ("band", np.array(pastis.BANDS, dtype=object)),
            "corner": ("corner", np.array(["xmin", "ymin", "xmax", "ymax"], dtype=object)),
        },
        attrs=attrs,
    )


def _encoding(ds: xr.Dataset) -> dict:
    _, t_max, n_band, size, _ = ds.reflectance.shape
    blosc = (BloscCodec(typesize=2, **CODEC),)
    shard = min(LABEL_SHARD, ds.sizes["patch"])
    return {
        "reflectance": {
            "chunks": (1, 1, n_band, size, size),
            "shards": (1, t_max, n_band, size, size),
            "compressors": blosc,
            "fill_value": PAD_VALUE,
        },
        "label": {
            "chunks": (1, size, size),
            "shards": (shard, size, size),
            "compressors": (BloscCodec(typesize=1, **CODEC),),
        },
        "dates": {"units": "days since 2018-09-01", "dtype": "int32", "_FillValue": -(2**31)},
    }


def _load_labels(root: Path, table: pastis.PatchTable, size: int, threads: int) -> np.ndarray:
    ids = table.frame.patch_id.tolist()
    with ThreadPoolExecutor(threads) as pool:
        maps = list(
            pool.map(lambda pid: pastis.load_target(pastis.target_path(root, pid), size), ids)
        )
    return np.stack(maps)


def _stats(series: np.ndarray) -> dict[str, list]:
    valid = series != pastis.NODATA
    values = np.where(valid, series, 0).astype(np.float64)
    return {
        "sum": values.sum((0, 2, 3)).tolist(),
        "sumsq": (values**2).sum((0, 2, 3)).tolist(),
        "count": valid.sum((0, 2, 3)).tolist(),
    }


def _read_progress(path: Path, fingerprint: str) -> dict[int, dict] | None:
    """Patches recorded as written, or None when the log is missing or is for other input."""
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    if not lines or lines[0] != json.dumps({"fingerprint": fingerprint}):
        return None
    done: dict[int, dict] = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: that patch is redone
            continue
        done[int(record["index"])] = record
    return done


def _stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def convert(
    raw_root: Path,
    store: Path,
    *,
    threads: int = 1,
    source: dict | None = None,
    progress: bool = True,
) -> dict:
    """Build (or resume building) ``store`` from the PASTIS folder ``raw_root``; return a report."""
    root = pastis.find_dataset_root(raw_root)
    store, partial = Path(store), partial_path(Path(store))
    table = pastis.read_metadata(root)
    for pid, dates in zip(table.frame.patch_id, table.frame.dates, strict=True):
        pastis.check_dates(dates, f"{root / pastis.METADATA_FILE} (ID_PATCH {pid})")
    size = _frame_size(root, int(table.frame.patch_id.iloc[0]))
    fingerprint = _fingerprint(root, table, size)
    log_path = progress_path(store)
    done = _read_progress(log_path, fingerprint) if partial.exists() else None
    if done is None:  # nothing to resume, or a partial store from other input: start over
        shutil.rmtree(partial, ignore_errors=True)
        labels = _load_labels(root, table, size, threads)
        ds = _template(root, table, size, labels, source or {"kind": "unknown"})
        tmp = Path(str(partial) + ".init")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.to_zarr(
            tmp, mode="w", zarr_format=3, encoding=_encoding(ds), compute=False, consolidated=False
        )
        log_path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
        os.replace(tmp, partial)
        done = {}
    todo = [i for i in range(len(table)) if i not in done]
    resumed = len(table) - len(todo)
    if resumed:
        log.info("resuming %s: %d of %d patches already written", partial, resumed, len(table))
    refl = zarr.open_array(partial / "reflectance", mode="r+")
    lock = threading.Lock()

    def write_patch(i: int) -> None:
        pid, dates = int(table.frame.patch_id.iloc[i]), table.frame.dates.iloc[i]
        path = pastis.s2_path(root, pid)
        series = pastis.load_s2(path, len(dates), size)
        refl[i, : len(dates)] = series
        record = {"index": i, "raw_bytes": path.stat().st_size, **_stats(series)}
        with lock, log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
            log.flush()
            os.fsync(log.fileno())
        done[i] = record

    bar = tqdm(
        total=len(table),
        initial=resumed,
        desc="zarr store",
        unit="patch",
        disable=not progress,
    )
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in pool.map(write_patch, todo):
            bar.update()
    bar.close()
    report = {**_finish(partial, table, done), "resumed_patches": resumed}
    if store.exists():
        shutil.rmtree(store)
    os.replace(partial, store)
    log_path.unlink()
    return report


def _finish(partial: Path, table: pastis.PatchTable, done: dict[int, dict]) -> dict:
    """Write the recomputed statistics and the size report, consolidate, drop the progress log."""
    train = [i for i, f in enumerate(table.frame.fold) if f in pastis.TRAIN_FOLDS]
    s, s2, n = (np.sum([done[i][k] for i in train], axis=0) for k in ("sum", "sumsq", "count"))
    mean = s / np.maximum(n, 1)
    std = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 0.0))
    raw = int(sum(r["raw_bytes"] for r in done.values()))
    stored = _stored_bytes(partial / "reflectance")
    report = {
        "patches": len(table),
        "raw_s2_bytes": raw,
        "stored_reflectance_bytes": stored,
        "compression_ratio": round(stored / raw, 4) if raw else None,
    }
    group = zarr.open_group(partial, mode="r+")
    group.attrs.update(
        {
            "norm_train_folds": {
                "folds": list(pastis.TRAIN_FOLDS),
                "mean": mean.round(4).tolist(),
                "std": std.round(4).tolist(),
                "nodata_excluded": True,
            },
            "size_report": report,
        }
    )
    with warnings.catch_warnings():  # consolidated metadata is not (yet) in the v3 spec
        warnings.filterwarnings("ignore", "Consolidated metadata", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(partial)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inventory", type=Path, required=True, help="download inventory.json")
    parser.add_argument("--out", type=Path, required=True, help="store to write (s2.zarr)")
    parser.add_argument("--threads", type=int, default=1, help="parallel patch writers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    inv = read_inventory(args.inventory)
    report = convert(
        Path(inv["root"]),
        args.out,
        threads=args.threads,
        source=provenance(inv),
        progress=not args.no_progress,
    )
    log.info("store %s: %s", args.out, json.dumps(report))
    return 0
