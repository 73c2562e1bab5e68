"""Synthetic PASTIS: the real on-disk layout filled with data that carries crop-type signal.

Each patch is a mosaic of parcels (Voronoi cells). A parcel's class sets its seasonal vegetation
curve (a Gaussian bump in time with class-specific peak day, width and amplitude, jittered per
parcel); band values mix a soil spectrum and the class's own vegetation spectrum by that curve,
plus sensor noise, clouds and nodata strips. Classes are separable through timing and, more weakly,
through their spectra (visible to a model that ignores acquisition order), so more frames help a
model, and the class prior is skewed, so more labels help too. Everything is seeded and
deterministic.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gfmtune.pastis import METADATA_FILE, NODATA, NORM_FILE, REFERENCE_DATE, VOID_CLASS

#: Real PASTIS tile names; each tile has its own acquisition calendar (and frame count).
TILES: tuple[str, ...] = ("T30UXV", "T31TFJ", "T31TFM", "T32ULU")
#: Soil and mean green-vegetation reflectance (x 10000) for B2..B12.
SOIL = np.array([900, 1200, 1500, 1800, 2100, 2300, 2500, 2600, 3200, 2700], dtype=np.float32)
GREEN = np.array([300, 600, 300, 1200, 3200, 4000, 4500, 4600, 2200, 1100], dtype=np.float32)
PIXEL_M = 10.0


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: patch count, size, frames per tile and the seed."""

    n_patches: int = 60
    size: int = 32
    frames_per_tile: tuple[int, ...] = (38, 61)
    seed: int = 0


def _class_curves(n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(class, [peak_day, width, amplitude, base]) for classes 1..n-2; 0 is background."""
    peaks = np.linspace(120, 400, n_classes - 2)
    rng.shuffle(peaks)
    params = np.zeros((n_classes, 4), dtype=np.float32)
    params[1:-1, 0] = peaks
    params[1:-1, 1] = rng.uniform(25, 60, n_classes - 2)
    params[1:-1, 2] = rng.uniform(0.55, 0.9, n_classes - 2)
    params[1:-1, 3] = rng.uniform(0.05, 0.15, n_classes - 2)
    params[0] = (250, 1e6, 0.0, 0.35)  # background: flat, mid vegetation
    return params


def _class_spectra(n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(class, band) vegetation reflectance: GREEN times exp(N(0, 0.12)) per class and band."""
    scale = np.exp(rng.normal(0.0, 0.12, (n_classes, len(GREEN))))
    return (GREEN[None] * scale).astype(np.float32)


def _tile_dates(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing acquisition days between mid-Sep 2018 and mid-Nov 2019."""
    days = np.sort(rng.choice(np.arange(14, 440), size=n_frames, replace=False))
    return np.datetime64(REFERENCE_DATE.isoformat(), "D") + days.astype("timedelta64[D]")


def _parcels(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi parcel map (H, W) of ids 0..n-1 and a boundary mask."""
    n = int(rng.integers(6, 14)) * max(1, (size // 32) ** 2)
    n = min(n, 250)
    seeds = rng.uniform(0, size, size=(n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    grid = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)
    ids = np.empty(grid.shape[0], dtype=np.int64)
    for start in range(0, grid.shape[0], 4096):  # bounded memory for 128 px patches
        block = grid[start : start + 4096]
        ids[start : start + 4096] = ((block[:, None, :] - seeds[None]) ** 2).sum(-1).argmin(1)
    parcel = ids.reshape(size, size)
    edge = np.zeros_like(parcel, dtype=bool)
    edge[:-1] |= parcel[:-1] != parcel[1:]
    edge[:, :-1] |= parcel[:, :-1] != parcel[:, 1:]
    return parcel, edge


def _patch(
    dates: np.ndarray,
    size: int,
    curves: np.ndarray,
    spectra: np.ndarray,
    prior: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One patch: S2 series int16 (T, 10, H, W) and TARGET (3, H, W)."""
    parcel, edge = _parcels(size, rng)
    n_parcels = int(parcel.max()) + 1
    classes = rng.choice(len(prior), size=n_parcels, p=prior)
    semantic = classes[parcel].astype(np.int64)
    semantic[edge & (rng.random(edge.shape) < 0.4)] = VOID_CLASS

    days = (dates - np.datetime64(REFERENCE_DATE.isoformat(), "D")).astype(np.float32)
    c = np.where(classes == VOID_CLASS, 0, classes)
    peak = curves[c, 0][:, None] + rng.normal(0, 10, (n_parcels, 1))
    width, amp, base = curves[c, 1][:, None], curves[c, 2][:, None], curves[c, 3][:, None]
    amp = amp * rng.uniform(0.85, 1.15, (n_parcels, 1))
    veg = base + amp * np.exp(-0.5 * ((days[None] - peak) / width) ** 2)  # (parcel, T)
    veg = np.clip(veg, 0, 1).astype(np.float32)
    brightness = rng.normal(1.0, 0.06, n_parcels).astype(np.float32)
    refl = SOIL[None, None] * (1 - veg[..., None]) + spectra[c][:, None] * veg[..., None]
    refl *= brightness[:, None, None]  # (parcel, T, band)
    series = refl[parcel].transpose(2, 3, 0, 1)  # (T, band, H, W)
    series += 120 * rng.standard_normal(series.shape, dtype=np.float32)

    n_frames = len(dates)
    yy, xx = np.mgrid[0:size, 0:size]
    for t in np.flatnonzero(rng.random(n_frames) < 0.08):  # clouds: bright soft blobs
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 8, size / 3)
        cover = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)).astype(np.float32)
        series[t] = series[t] * (1 - cover) + rng.uniform(5000, 9000) * cover
    for t in np.flatnonzero(rng.random(n_frames) < 0.03):  # swath edge: nodata strip
        series[t, :, :, : int(rng.integers(1, size // 3 + 1))] = NODATA
    series = np.clip(np.rint(series), NODATA, 32767).astype(np.int16)

    target = np.stack([semantic, parcel, semantic]).astype(np.int64)
    return series, target


def _feature(
    patch_id: int,
    fold: int,
    tile: str,
    dates: np.ndarray,
    size: int,
    ox: float,
    oy: float,
    n_parcel: int,
) -> dict:
    x0, y0, side = ox, oy, size * PIXEL_M
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    date_map = {str(i): int(str(d).replace("-", "")) for i, d in enumerate(dates)}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "ID_PATCH": patch_id,
            "Fold": fold,
            "TILE": tile,
            "N_Parcel": n_parcel,
            "Parcel_Cover": 0.9,
            "dates-S2": date_map,
            "dates-S1A": {},
            "dates-S1D": {},
        },
    }


def write_synthetic_pastis(root: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write a synthetic PASTIS dataset under ``root`` and return ``root``."""
    root = Path(root)
    (root / "DATA_S2").mkdir(parents=True, exist_ok=True)
    (root / "ANNOTATIONS").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    n_classes = VOID_CLASS + 1
    curves = _class_curves(n_classes, rng)
    spectra = _class_spectra(n_classes, rng)
    prior = 1.0 / np.arange(1, n_classes) ** 0.8  # Zipf-like over classes 0..18
    prior = np.append(prior / prior.sum() * 0.97, 0.03)  # some void parcels too
    rng.shuffle(prior[1:-1])
    tiles = TILES[: len(spec.frames_per_tile)]
    tile_dates = {t: _tile_dates(n, rng) for t, n in zip(tiles, spec.frames_per_tile, strict=True)}

    folds = np.tile(np.arange(1, 6), spec.n_patches // 5 + 1)[: spec.n_patches]
    rng.shuffle(folds)
    features, stats = [], {f: [] for f in range(1, 6)}
    for i in range(spec.n_patches):
        tile = tiles[i % len(tiles)]
        block = 10000 * (1 + i % 4)
        patch_id = block + 3 * (i // 4) + (i // 4) % 2  # gaps: ids are not contiguous
        series, target = _patch(tile_dates[tile], spec.size, curves, spectra, prior, rng)
        np.save(root / "DATA_S2" / f"S2_{patch_id}.npy", series)
        dtype = np.uint16 if i % 7 == 3 else np.uint8  # some TARGET files are 2-byte, as in PASTIS
        np.save(root / "ANNOTATIONS" / f"TARGET_{patch_id}.npy", target.astype(dtype))
        valid = series != NODATA
        stats[int(folds[i])].append(
            (
                np.where(valid, series, 0).sum((0, 2, 3)),
                (np.where(valid, series, 0).astype(np.float64) ** 2).sum((0, 2, 3)),
                valid.sum((0, 2, 3)),
            )
        )
        ox, oy = 600000.0 + 2000.0 * (i % 25), 6800000.0 + 2000.0 * (i // 25)
        features.append(
            _feature(
                patch_id,
                int(folds[i]),
                tile,
                tile_dates[tile],
                spec.size,
                ox,
                oy,
                int(target[1].max()) + 1,
            )
        )

    norm = {}
    for fold, parts in stats.items():
        s, s2, n = (np.sum([p[k] for p in parts], axis=0) for k in range(3))
        mean = s / np.maximum(n, 1)
        std = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 0))
        norm[f"Fold_{fold}"] = {"mean": mean.round(4).tolist(), "std": std.round(4).tolist()}
    (root / NORM_FILE).write_text(json.dumps(norm))
    collection = {
        "type": "FeatureCollection",
        "name": "metadata",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2154"}},
        "features": features,
    }
    (root / METADATA_FILE).write_text(json.dumps(collection))
    return root


def add_spec_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Options of a :class:`SyntheticSpec` (shared with ``gfmtune download``)."""
    parser.add_argument(
        "--patches", type=int, default=SyntheticSpec.n_patches, help="number of patches"
    )
    parser.add_argument("--size", type=int, default=SyntheticSpec.size, help="patch side (px)")
    parser.add_argument(
        "--frames",
        type=int,
        nargs="+",
        default=list(SyntheticSpec.frames_per_tile),
        help="frames per series, one value per tile",
    )
    parser.add_argument("--seed", type=int, default=SyntheticSpec.seed, help="generator seed")


def spec_from_args(args: argparse.Namespace) -> SyntheticSpec:
    return SyntheticSpec(args.patches, args.size, tuple(args.frames), args.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    add_spec_arguments(parser)


def run(args: argparse.Namespace) -> int:
    write_synthetic_pastis(args.out, spec_from_args(args))
    return 0
