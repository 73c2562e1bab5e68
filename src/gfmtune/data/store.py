"""Convert PASTIS S2 series and labels into one chunked, sharded Zarr (v3) store.

Layout of ``s2.zarr`` (dimensions patch, time, band, y, x)::

    reflectance (patch, time, band, y, x) int16   nodata NODATA, PAD_VALUE after n_frames
    n_frames    (patch) int32
    dates       (patch, time) datetime64[ns]      NaT in padding
    label       (patch, y, x) uint8               semantic class 0..19
    bounds      (patch, corner) float64           xmin, ymin, xmax, ymax in attrs['crs']
    coords      patch_id, fold, tile, band, spatial_ref (the CRS as a CF grid mapping)

``reflectance`` has one chunk per frame (all bands) and one shard per patch, so reading k frames
of a patch reads about k frames' bytes from one file. The store is built in ``s2.zarr.partial``
and renamed when complete, under the lock ``s2.zarr.lock`` (:func:`lock_path`); a killed
conversion resumes from its progress log, which records each source file's size, mtime and
sha256: a partial store whose source files changed since is started over
(:mod:`gfmtune.data.store_resume`). The group attribute
``content_digest`` (sha256 over every source file's sha256) changes whenever the source content
does; the store's attributes do not enter it.

The store opens as CF data in xarray and rioxarray (:data:`REFLECTANCE_ATTRS`): ``reflectance``
declares its two sentinels, so ``xarray.open_zarr`` gives NaN for both (``_FillValue``: the
padding, which is also the Zarr fill value of chunks never written; ``missing_value``: PASTIS's
nodata), and ``reflectance`` and ``label`` name the grid-mapping coordinate ``spatial_ref``,
whose ``crs_wkt`` and ``spatial_ref`` attributes hold the CRS as WKT2, as rioxarray writes it.
None of this touches the values: training reads the raw int16 (:mod:`gfmtune.data.reader`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec

from gfmtune import pastis
from gfmtune.data.inventory import provenance, read_inventory
from gfmtune.data.store_resume import content_digest, patch_files, read_source, resume
from gfmtune.fileio import check_free_space, disk_full_reported
from gfmtune.lockfile import held

log = logging.getLogger(__name__)

PAD_VALUE = -32768
#: 2: the content_digest attribute; 3: CF fill values and the ``spatial_ref`` grid mapping
STORE_VERSION = 3
#: Blosc settings. lz4hc + byte shuffle decodes about twice as fast as zstd + bitshuffle at the
#: same size (0.68-0.71 of raw on synthetic data), which the training reader needs to beat raw
#: .npy reads with a warm page cache (``gfmtune bench-data``); it is slower to write.
CODEC = {"cname": "lz4hc", "clevel": 5, "shuffle": "shuffle"}
LABEL_SHARD = 256
#: Store bytes per raw S2 byte assumed by the free-space check (0.68-0.71 measured, plus margin).
ESTIMATED_RATIO = 0.8
DIMS = ("patch", "time", "band", "y", "x")
#: The CF grid-mapping variable: a scalar coordinate holding the CRS, named as rioxarray names it.
GRID_MAPPING = "spatial_ref"
#: CF attributes of ``reflectance``: xarray masks both sentinels with its default
#: ``mask_and_scale`` (and warns that there are two, which is what they are).
REFLECTANCE_ATTRS = {
    "long_name": "Sentinel-2 L2A surface reflectance x 10000",
    "_FillValue": PAD_VALUE,  # no acquisition: padding after n_frames, chunks never written
    "missing_value": pastis.NODATA,  # acquired, but no data (PASTIS's nodata)
}


def partial_path(store: Path) -> Path:
    """Where the store is built until it is complete."""
    return Path(str(store) + ".partial")


def lock_path(store: Path) -> Path:
    """The lock a conversion into ``store`` holds: beside the store, not in it nor in its
    partial store, so that deleting either (as Snakemake does with a failed job's output)
    leaves the lock of a conversion under way."""
    return Path(str(store) + ".lock")


def progress_path(store: Path) -> Path:
    """Log of the patches already written into the partial store (first line: the layout and
    the identity of the metadata, normalisation and TARGET files)."""
    return Path(str(store) + ".progress.jsonl")


def _layout(size: int) -> list:
    """What a partial store's layout depends on besides its source files."""
    return [STORE_VERSION, size, CODEC]


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _frame_size(root: Path, patch_id: int) -> int:
    path = pastis.s2_path(root, patch_id)
    shape = pastis.open_npy(path, "S2 series").shape
    if len(shape) != 4 or shape[2] != shape[3]:
        raise pastis.PastisFormatError(f"{path}: shape {shape} is not (T, 10, H, H)")
    return int(shape[2])


def _needed_bytes(root: Path, table: pastis.PatchTable, todo: list[int]) -> int:
    """Estimated store bytes of the patches ``todo`` (raw S2 bytes x ``ESTIMATED_RATIO``)."""
    paths = [pastis.s2_path(root, int(table.frame.patch_id.iloc[i])) for i in todo]
    return int(sum(p.stat().st_size for p in paths if p.is_file()) * ESTIMATED_RATIO)


def grid_mapping(crs: str | None) -> dict[str, str] | None:
    """The attributes of the CF grid-mapping variable for ``crs`` (``crs_wkt`` and, as GDAL and
    rioxarray read it, ``spatial_ref``: the CRS as WKT2), or None when the metadata names no
    CRS or one rasterio cannot read (the store then has no grid mapping, as before)."""
    if not crs:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        wkt = CRS.from_user_input(crs).to_wkt(version="WKT2_2019")
    except CRSError as err:
        log.warning("CRS %r is not one rasterio reads (%s): no grid mapping written", crs, err)
        return None
    return {"crs_wkt": wkt, "spatial_ref": wkt}


def _template(root: Path, table: pastis.PatchTable, labels: np.ndarray, source: dict) -> xr.Dataset:
    """Everything but ``reflectance`` (created empty by :func:`_create_reflectance`)."""
    frame = table.frame
    n_patch, t_max = len(frame), int(frame.dates.map(len).max())
    dates = np.full((n_patch, t_max), np.datetime64("NaT"), dtype="datetime64[ns]")
    for i, d in enumerate(frame.dates):
        dates[i, : len(d)] = d
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
    coords = {
        "patch_id": ("patch", frame.patch_id.to_numpy(np.int64)),
        "fold": ("patch", frame.fold.to_numpy(np.int8)),
        "tile": ("patch", np.array(frame.tile.tolist(), dtype=object)),
        "band": ("band", np.array(pastis.BANDS, dtype=object)),
        "corner": ("corner", np.array(["xmin", "ymin", "xmax", "ymax"], dtype=object)),
    }
    label_attrs = {"long_name": "semantic class (19: void)"}
    mapping = grid_mapping(table.crs)
    if mapping is not None:
        coords[GRID_MAPPING] = ((), np.int64(0), mapping)
        label_attrs["grid_mapping"] = GRID_MAPPING
    return xr.Dataset(
        {
            "n_frames": ("patch", frame.dates.map(len).to_numpy(np.int32)),
            "dates": (("patch", "time"), dates),
            "label": (("patch", "y", "x"), labels, label_attrs),
            "bounds": (("patch", "corner"), np.array(frame.bounds.tolist(), dtype=np.float64)),
        },
        coords=coords,
        attrs=attrs,
    )


def _encoding(ds: xr.Dataset) -> dict:
    shard = min(LABEL_SHARD, ds.sizes["patch"])
    size = ds.sizes["y"]
    return {
        "label": {
            "chunks": (1, size, size),
            "shards": (shard, size, size),
            "compressors": (BloscCodec(typesize=1, **CODEC),),
        },
        "dates": {"units": "days since 2018-09-01", "dtype": "int32", "_FillValue": -(2**31)},
    }


def _reflectance_attrs(ds: xr.Dataset) -> dict:
    """``reflectance``'s attributes: :data:`REFLECTANCE_ATTRS`, the grid mapping when the store
    has one, and the coordinates xarray would list (the non-dimension ones it spans)."""
    coords = sorted(
        name for name, c in ds.coords.items() if name not in c.dims and set(c.dims) <= set(DIMS)
    )
    attrs = {**REFLECTANCE_ATTRS, "coordinates": " ".join(coords)}
    if GRID_MAPPING in ds.coords:
        attrs["grid_mapping"] = GRID_MAPPING
    return attrs


def _create_reflectance(group: Path, ds: xr.Dataset) -> None:
    """Create the empty (all ``PAD_VALUE``) reflectance array: one shard per patch."""
    n_patch, t_max = ds.sizes["patch"], ds.sizes["time"]
    n_band, size = ds.sizes["band"], ds.sizes["y"]
    zarr.create_array(
        store=group,
        name="reflectance",
        shape=(n_patch, t_max, n_band, size, size),
        dtype=np.int16,
        chunks=(1, 1, n_band, size, size),
        shards=(1, t_max, n_band, size, size),
        compressors=BloscCodec(typesize=2, **CODEC),
        fill_value=PAD_VALUE,
        dimension_names=DIMS,
        attributes=_reflectance_attrs(ds),
    )


def _load_labels(
    root: Path, table: pastis.PatchTable, size: int, threads: int
) -> tuple[np.ndarray, dict[str, dict]]:
    """Every patch's label map, and each TARGET file's identity."""

    def load(patch_id: int) -> tuple[np.ndarray, dict]:
        path = pastis.target_path(root, patch_id)
        content, identity = read_source(path, "target")
        return pastis.load_target(path, size, content), identity

    ids = table.frame.patch_id.tolist()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        loaded = list(pool.map(load, ids))
    files = {
        _relative(root, pastis.target_path(root, pid)): identity
        for pid, (_, identity) in zip(ids, loaded, strict=True)
    }
    return np.stack([labels for labels, _ in loaded]), files


def _stats(series: np.ndarray) -> dict[str, list]:
    valid = series != pastis.NODATA
    values = np.where(valid, series, 0).astype(np.float64)
    return {
        "sum": values.sum((0, 2, 3)).tolist(),
        "sumsq": (values**2).sum((0, 2, 3)).tolist(),
        "count": valid.sum((0, 2, 3)).tolist(),
    }


def _stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass(frozen=True)
class _Conversion:
    """One conversion of the PASTIS folder ``root`` into the partial store ``partial``."""

    root: Path
    table: pastis.PatchTable
    size: int
    partial: Path
    log_path: Path
    threads: int

    def start(self, header: dict, source: dict) -> dict[str, dict]:
        """Create the empty partial store and the progress log; return the TARGET files."""
        labels, targets = _load_labels(self.root, self.table, self.size, self.threads)
        ds = _template(self.root, self.table, labels, source)
        tmp = Path(str(self.partial) + ".init")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.to_zarr(tmp, mode="w", zarr_format=3, encoding=_encoding(ds), consolidated=False)
        _create_reflectance(tmp, ds)
        header = {**header, "files": {**header["files"], **targets}}
        self.log_path.write_text(json.dumps(header) + "\n")
        os.replace(tmp, self.partial)
        return targets

    def write(self, todo: list[int], done: dict[int, dict], progress: bool) -> None:
        """Write the patches ``todo``, logging each one's record (file identity, statistics)."""
        refl = zarr.open_array(self.partial / "reflectance", mode="r+")
        frame, lock = self.table.frame, threading.Lock()

        def write_patch(i: int) -> None:
            pid, dates = int(frame.patch_id.iloc[i]), frame.dates.iloc[i]
            path = pastis.s2_path(self.root, pid)
            content, identity = read_source(path, "S2 series")
            series = pastis.load_s2(path, len(dates), self.size, content)
            refl[i, : len(dates)] = series
            record = {"index": i, "file": _relative(self.root, path), **identity}
            record.update(_stats(series))
            with lock, self.log_path.open("a") as out:
                out.write(json.dumps(record) + "\n")
                out.flush()
                os.fsync(out.fileno())
            done[i] = record

        n = len(self.table)
        bar = tqdm(
            total=n, initial=n - len(todo), desc="zarr store", unit="patch", disable=not progress
        )
        pool = ThreadPoolExecutor(self.threads)
        try:
            for _ in pool.map(write_patch, todo):
                bar.update()
        finally:  # after a failure, write no further patch
            pool.shutdown(cancel_futures=True)
            bar.close()

    def finish(self, done: dict[int, dict], digest: str) -> dict:
        """Write the recomputed statistics, the size report and the content digest;
        consolidate the metadata; return the size report."""
        folds = self.table.frame.fold
        train = [i for i, f in enumerate(folds) if f in pastis.TRAIN_FOLDS]
        s, s2, n = (np.sum([done[i][k] for i in train], axis=0) for k in ("sum", "sumsq", "count"))
        mean = s / np.maximum(n, 1)
        std = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 0.0))
        raw = int(sum(r["size"] for r in done.values()))
        stored = _stored_bytes(self.partial / "reflectance")
        report = {
            "patches": len(self.table),
            "raw_s2_bytes": raw,
            "stored_reflectance_bytes": stored,
            "compression_ratio": round(stored / raw, 4) if raw else None,
        }
        group = zarr.open_group(self.partial, mode="r+")
        group.attrs.update(
            {
                "norm_train_folds": {
                    "folds": list(pastis.TRAIN_FOLDS),
                    "mean": mean.round(4).tolist(),
                    "std": std.round(4).tolist(),
                    "nodata_excluded": True,
                },
                "size_report": report,
                "content_digest": digest,
            }
        )
        with warnings.catch_warnings():  # consolidated metadata is not (yet) in the v3 spec
            warnings.filterwarnings("ignore", "Consolidated metadata", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(self.partial)
        return report


def convert(
    raw_root: Path,
    store: Path,
    *,
    threads: int = 1,
    source: dict | None = None,
    progress: bool = True,
) -> dict:
    """Build (or resume building) ``store`` from the PASTIS folder ``raw_root``; return a report.

    The conversion holds the store's lock (:func:`lock_path`) throughout: a second conversion
    into the same store stops at once with :class:`~gfmtune.lockfile.LockedError`, naming the
    process converting, and leaves its partial store alone. Free space is checked first (raw S2
    bytes x ``ESTIMATED_RATIO``); a write that fails for lack of space raises
    :class:`~gfmtune.fileio.DiskFullError` naming the partial store.
    """
    with held(lock_path(Path(store)), f"store {store}"):
        return _convert(raw_root, Path(store), threads, source, progress)


def _convert(
    raw_root: Path, store: Path, threads: int, source: dict | None, progress: bool
) -> dict:
    """:func:`convert` under the store's lock."""
    root = pastis.find_dataset_root(raw_root)
    partial = partial_path(store)
    table = pastis.read_metadata(root)
    for pid, dates in zip(table.frame.patch_id, table.frame.dates, strict=True):
        pastis.check_dates(dates, f"{root / pastis.METADATA_FILE} (ID_PATCH {pid})")
    size = _frame_size(root, int(table.frame.patch_id.iloc[0]))
    sources = (pastis.METADATA_FILE, pastis.NORM_FILE)
    header = {
        "layout": _layout(size),
        "files": {name: read_source(root / name, name)[1] for name in sources},
    }
    job = _Conversion(root, table, size, partial, progress_path(store), max(1, threads))
    resumed = resume(root, partial, job.log_path, header)
    if resumed is None:
        shutil.rmtree(partial, ignore_errors=True)
        files, done = dict(header["files"]), {}
    else:
        files, done = resumed
    todo = [i for i in range(len(table)) if i not in done]
    needed = _needed_bytes(root, table, todo) + (len(table) * size**2 if resumed is None else 0)
    check_free_space(partial, needed)
    with disk_full_reported(partial, needed):
        if resumed is None:
            files.update(job.start(header, source or {"kind": "unknown"}))
        else:
            log.info(
                "resuming %s: %d of %d patches already written", partial, len(done), len(table)
            )
        n_resumed = len(done)
        job.write(todo, done, progress)
        digest = content_digest({**files, **patch_files(done)})
        report = {**job.finish(done, digest), "resumed_patches": n_resumed}
    if store.exists():
        shutil.rmtree(store)
    os.replace(partial, store)
    job.log_path.unlink()
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
