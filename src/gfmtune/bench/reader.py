"""``gfmtune bench-data``: samples/s of the Zarr dataset path against the peers' raw .npy reads.

On a synthetic PASTIS at real size (generated once in ``--work``, then reused) it times full
passes over every patch, in the same order and with the same frames (the paper's rule) for:

- ``zarr``: :class:`~gfmtune.data.dataset.PastisZarrDataset` items (read the chosen frames,
  int16, and the label), as DataLoader workers serve them (training normalises on the device);
- ``raw``: ``np.load`` of the whole ``S2_*.npy`` series, index the frames (int16 too).

Each t is measured with the page cache warm (after one untimed pass) and dropped before every
pass (``sync; echo 3 > /proc/sys/vm/drop_caches``, needs root; otherwise reported as not
measured). Rates are the best of ``--repeats`` passes. Prints a Markdown table; ``--json``
saves all numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from gfmtune import pastis
from gfmtune.data import store as zstore
from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.data.manifests import write_timesteps
from gfmtune.data.reader import BACKENDS, DEFAULT_BACKEND, DEFAULT_THREADS
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
from gfmtune.fileio import atomic_write_text

log = logging.getLogger(__name__)

TIMESTEPS = (1, 6, 35)
FRAMES_PER_TILE = (43, 52, 61)  # synthetic series lengths (PASTIS: 38 to 61 frames)
CACHES = ("warm", "cold")
#: (cache, t) -> minimum Zarr / raw samples/s ratio asked for by the issue.
TARGETS: dict[tuple[str, int], float] = {("cold", 6): 3.0, ("cold", 35): 1.5, ("warm", 6): 2.0}
BYTES_TARGET = 0.8
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


# ---- data -----------------------------------------------------------------------------------


def _source(spec: SyntheticSpec) -> dict[str, Any]:
    return {"kind": "synthetic-bench", "spec": asdict(spec), "codec": zstore.CODEC}


def prepare(work: Path, spec: SyntheticSpec, timesteps: tuple[int, ...], threads: int) -> Path:
    """Synthetic PASTIS, its store and paper timestep manifests under ``work``; reuse if same."""
    work = Path(work)
    raw, store, stamp = work / "raw", work / "s2.zarr", work / "raw.spec.json"
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(raw, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        log.info("writing synthetic PASTIS (%d patches) to %s", spec.n_patches, raw)
        write_synthetic_pastis(raw, spec)
        atomic_write_text(stamp, wanted)
    if not _store_matches(store, _source(spec)):
        log.info("converting %s to %s", raw, store)
        zstore.convert(raw, store, threads=threads, source=_source(spec), progress=False)
    write_timesteps(store, work / "timesteps", list(timesteps), "paper")
    return store


def _store_matches(store: Path, source: dict[str, Any]) -> bool:
    try:
        attrs = zarr.open_group(store, mode="r").attrs
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return json.loads(json.dumps(source)) == attrs.get("source") and "size_report" in attrs


def byte_report(work: Path) -> dict[str, Any]:
    """Raw S2 bytes against the store's reflectance bytes (and the whole store)."""
    store = work / "s2.zarr"
    size = zarr.open_group(store, mode="r").attrs["size_report"]
    total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return {
        "raw_s2_bytes": size["raw_s2_bytes"],
        "stored_reflectance_bytes": size["stored_reflectance_bytes"],
        "store_total_bytes": total,
        "ratio": round(size["stored_reflectance_bytes"] / size["raw_s2_bytes"], 4),
        "codec": zstore.CODEC,
    }


# ---- timing ---------------------------------------------------------------------------------


def drop_caches() -> None:
    """Flush dirty pages and drop the page cache (root only)."""
    subprocess.run(["sync"], check=True)
    DROP_CACHES.write_text("3\n")


def cold_status() -> str | None:
    """None when the page cache can be dropped, else why not."""
    try:
        drop_caches()
    except (OSError, subprocess.CalledProcessError) as err:
        return f"not measured ({type(err).__name__}: {err})"
    return None


def zarr_pass(dataset: PastisZarrDataset) -> Callable[[], None]:
    def run() -> None:
        for k in range(len(dataset)):
            dataset[k]

    return run


def raw_pass(raw: Path, dataset: PastisZarrDataset) -> Callable[[], None]:
    paths = [pastis.s2_path(raw, int(p)) for p in dataset.patch_ids]

    def run() -> None:
        for path, frames in zip(paths, dataset.frames, strict=True):
            np.load(path)[frames]

    return run


def time_passes(
    passes: dict[str, Callable[[], None]], n: int, cache: str, repeats: int
) -> dict[str, list[float]]:
    """samples/s of each pass, ``repeats`` times, interleaved; cold drops the cache first."""
    if cache == "warm":
        for run in passes.values():
            run()
    rates: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            if cache == "cold":
                drop_caches()
            start = time.perf_counter()
            run()
            rates[name].append(n / (time.perf_counter() - start))
    return rates


def measure_row(
    dataset: PastisZarrDataset, raw: Path, t: int, cache: str, repeats: int, cold: str | None
) -> dict[str, Any]:
    row: dict[str, Any] = {"t": t, "cache": cache, "target": TARGETS.get((cache, t))}
    if cache == "cold" and cold is not None:
        return {**row, "status": cold}
    passes = {"zarr": zarr_pass(dataset), "raw": raw_pass(raw, dataset)}
    rates = time_passes(passes, len(dataset), cache, repeats)
    zarr_rate, raw_rate = max(rates["zarr"]), max(rates["raw"])
    row.update(
        status="measured",
        zarr_samples_per_s=round(zarr_rate, 1),
        raw_samples_per_s=round(raw_rate, 1),
        ratio=round(zarr_rate / raw_rate, 2),
        zarr_all=[round(r, 1) for r in rates["zarr"]],
        raw_all=[round(r, 1) for r in rates["raw"]],
    )
    if row["target"] is not None:
        row["met"] = row["ratio"] >= row["target"]
    log.info("t=%d %s: zarr %.0f/s, raw %.0f/s", t, cache, zarr_rate, raw_rate)
    return row


# ---- report ---------------------------------------------------------------------------------


def _target_cell(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return ""
    verdict = "met" if row.get("met") else "NOT met" if "met" in row else "not measured"
    return f">= {row['target']:g}x: {verdict}"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _title(result: dict[str, Any]) -> str:
    cfg = result["config"]
    backend = cfg["backend"]
    if backend == "shard":
        backend += f" (decoding threads: {cfg['read_threads']})"
    frames = "/".join(map(str, cfg["frames"]))
    return (
        f"gfmtune bench-data: {cfg['patches']} patches, {cfg['size']} px, frames per tile "
        f"{frames}, backend {backend}, {result['machine']['cpus']} CPUs; "
        f"best of {cfg['repeats']} passes"
    )


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table plus the byte ratio line."""
    lines = [
        _title(result),
        "",
        "| t | page cache | Zarr samples/s | raw .npy samples/s | Zarr / raw | target |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        if row["status"] == "measured":
            cells = [
                f"{row['zarr_samples_per_s']:.0f}",
                f"{row['raw_samples_per_s']:.0f}",
                f"{row['ratio']:.2f}x",
            ]
        else:
            cells = [row["status"], "", ""]
        lines.append(f"| {row['t']} | {row['cache']} | {' | '.join(cells)} | {_target_cell(row)} |")
    b = result["bytes"]
    verdict = "met" if b["ratio"] <= BYTES_TARGET else "NOT met"
    lines += [
        "",
        f"Store / raw bytes (reflectance, {b['codec']['cname']}): {b['ratio']:.2f} "
        f"(target <= {BYTES_TARGET:g}: {verdict}); whole store {_mb(b['store_total_bytes'])}, "
        f"raw S2 {_mb(b['raw_s2_bytes'])}",
    ]
    return "\n".join(lines)


# ---- command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, required=True, help="folder for data and store")
    parser.add_argument("--patches", type=int, default=300, help="synthetic patches")
    parser.add_argument("--size", type=int, default=128, help="patch side (px)")
    parser.add_argument(
        "--frames", type=int, nargs="+", default=list(FRAMES_PER_TILE), help="frames per tile"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="frames per series"
    )
    parser.add_argument(
        "--cache",
        nargs="+",
        choices=CACHES,
        default=list(CACHES),
        help="warm: after an untimed pass; cold: page cache dropped before each pass",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per cell")
    parser.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="Zarr reading backend"
    )
    parser.add_argument(
        "--read-threads", type=int, default=DEFAULT_THREADS, help="decoding threads (shard)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for convert")
    parser.add_argument("--json", type=Path, help="also save the numbers here")


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.patches < 5:
        raise ValueError("--repeats must be >= 1 and --patches >= 5 (one per fold)")
    spec = SyntheticSpec(args.patches, args.size, tuple(args.frames), args.seed)
    store = prepare(args.work, spec, tuple(args.timesteps), args.threads)
    cold = cold_status() if "cold" in args.cache else None
    rows = []
    for t in args.timesteps:
        manifest = Path(args.work) / "timesteps" / f"{t}.csv"
        dataset = PastisZarrDataset(
            store, manifest, (1, 2, 3, 4, 5), backend=args.backend, threads=args.read_threads
        )
        for cache in args.cache:
            rows.append(measure_row(dataset, args.work / "raw", t, cache, args.repeats, cold))
    result = {
        "config": {**{k: v for k, v in vars(args).items() if k != "json"}, "work": str(args.work)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
        "bytes": byte_report(Path(args.work)),
    }
    print(markdown(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2, default=str) + "\n")
    return 0
