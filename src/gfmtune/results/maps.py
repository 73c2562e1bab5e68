"""``gfmtune predict-maps``: test-fold prediction maps of each model family's best cell.

For every family of ``tables/miou.csv`` (CROMA, DINO, U-TAE, ...), the cell with the highest
``miou_paper`` whose folder kept ``best.pt`` is rebuilt and predicts every test-fold (fold 5)
patch with its model's evaluation policy (the same logits as the cell's test metrics). Writes
under ``--run`` (``results/<run>``)::

    maps/<family>/<patch_id>.tif    predicted class ids (uint8), one GeoTIFF per test patch
    maps/labels/<patch_id>.tif      the ground-truth classes, same grid and colours
    maps/cells.csv                  which cell each family's maps come from
    figures/predictions.{png,pdf}   a few test patches: RGB, ground truth, each family

The GeoTIFFs are single-band, LZW-compressed, with no nodata value, the store's CRS (attribute
``crs``), the patch extent (``bounds``) as geotransform and a colour table with one colour per
class 0..19 (19 = void), so a GIS shows predictions and labels side by side in the same colours.
``<family>`` is the family name in lower case, other characters than letters, digits and ``-``
replaced by ``_`` (``croma``, ``dino``, ``u-tae``, ``croma_128_px``).

Rebuilding a cell: ``best.pt`` holds the trained tensors; a frozen encoder is not in it and is
rebuilt as training built it: from the pretrained checkpoint (``--weights-dir``) or, for the tiny
models without one, from the cell's seed. Normalisation, nodata handling, temporal head and
precision come from the cell's ``provenance.json`` settings (defaults: the paper's); with
``frame_draw: authors`` the maps see the frames the cell's test pass drew.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rasterio.transform import from_bounds
from torch.utils.data import DataLoader
from tqdm import tqdm

from gfmtune.data.dataset import PastisZarrDataset, frame_draw, model_frames
from gfmtune.data.reader import open_store
from gfmtune.fileio import atomic_path
from gfmtune.models.registry import ModelSpec, build_model, get_spec
from gfmtune.pastis import BANDS, CLASS_NAMES, N_CLASSES, NODATA, TEST_FOLD, VOID_CLASS
from gfmtune.tensorio import CorruptFileError, load_tensors
from gfmtune.train.cell_state import BEST, invalidate_cell, seed_everything
from gfmtune.train.devices import amp_dtype, claimed_device, device_name
from gfmtune.train.loop import autocast, forward_fn
from gfmtune.train.settings import TrainSettings

log = logging.getLogger(__name__)
LABELS = "labels"
RGB_BANDS = ("B4", "B3", "B2")


def class_colours() -> dict[int, tuple[int, int, int, int]]:
    """Class id -> RGBA: background black, void white, the crops in tab20's colours."""
    tab20 = colormaps["tab20"].colors
    colours = {0: (0, 0, 0, 255), VOID_CLASS: (255, 255, 255, 255)}
    for c in range(1, VOID_CLASS):
        r, g, b = (round(255 * v) for v in tab20[c - 1])
        colours[c] = (r, g, b, 255)
    return dict(sorted(colours.items()))


def family_slug(family: str) -> str:
    """Folder name of a family: ``U-TAE`` -> ``u-tae``, ``CROMA (128 px)`` -> ``croma_128_px``."""
    return re.sub(r"[^a-z0-9-]+", "_", family.lower()).strip("_")


@dataclass(frozen=True)
class Choice:
    """The cell whose maps stand for a family."""

    family: str
    model_name: str
    ft_rate: float | None
    label_percent: str
    timesteps: int
    seed: int
    miou_paper: float
    folder: Path

    @property
    def slug(self) -> str:
        return family_slug(self.family)

    @property
    def frozen(self) -> bool:
        return get_spec(self.model_name).has_encoder and not self.ft_rate


def cell_folder(cells: Path, model_name: str, ft_rate, label_percent, timesteps, seed) -> Path:
    """``cells/model~M/ft_rate~F/label_percent~P/timesteps~T/seed~S`` of a ``miou.csv`` row."""
    ft = "none" if ft_rate is None or pd.isna(ft_rate) else f"{float(ft_rate):g}"
    return (
        Path(cells)
        / f"model~{model_name}"
        / f"ft_rate~{ft}"
        / f"label_percent~{float(label_percent):g}"
        / f"timesteps~{int(timesteps)}"
        / f"seed~{int(seed)}"
    )


def best_cells(table: pd.DataFrame, cells: Path) -> list[Choice]:
    """Per family, the highest-``miou_paper`` cell that kept its ``best.pt``."""
    chosen = []
    for family, rows in table.groupby("model", sort=True):
        ranked = rows.sort_values("miou_paper", ascending=False, kind="stable")
        for row in ranked.itertuples(index=False):
            folder = cell_folder(
                cells, row.model_name, row.ft_rate, row.label_percent, row.timesteps, row.seed
            )
            if (folder / BEST).is_file():
                ft = None if pd.isna(row.ft_rate) else float(row.ft_rate)
                chosen.append(
                    Choice(str(family), row.model_name, ft, f"{float(row.label_percent):g}",
                           int(row.timesteps), int(row.seed), float(row.miou_paper), folder)
                )  # fmt: skip
                break
            log.warning("%s: no %s (keep_checkpoint none?); trying the next cell", folder, BEST)
        else:
            log.warning("family %s: no cell kept %s; no maps for it", family, BEST)
    return chosen


def cell_settings(folder: Path) -> TrainSettings:
    """The cell's training settings from ``provenance.json`` (defaults when absent)."""
    path = Path(folder) / "provenance.json"
    if not path.is_file():
        return TrainSettings()
    settings = json.loads(path.read_text()).get("settings") or {}
    known = set(TrainSettings.__dataclass_fields__)
    return TrainSettings.from_mapping({k: v for k, v in settings.items() if k in known})


def load_cell_model(
    choice: Choice, settings: TrainSettings, weights_dir: Path | None
) -> torch.nn.Module:
    """The cell's trained model (CPU, eval mode); an unreadable ``best.pt`` invalidates the cell
    (:func:`~gfmtune.train.cell_state.invalidate_cell`) so that the workflow retrains it."""
    spec = get_spec(choice.model_name, eval_resize=settings.dino_eval_resize)
    pretrained = choice.frozen and spec.checkpoint is not None
    if pretrained and weights_dir is None:
        raise ValueError(
            f"{choice.folder}: its frozen encoder is {spec.checkpoint.filename}, not saved in "
            f"{BEST}: pass the checkpoints' folder (--weights-dir)"
        )
    seed_everything(choice.seed)  # a frozen encoder without checkpoint: the same random init
    model = build_model(
        choice.model_name,
        weights_dir=weights_dir if pretrained else None,
        encoder_trainable=False,
        temporal=settings.temporal,
        n_frames=choice.timesteps,
    )
    try:
        state = load_tensors(choice.folder / BEST, "cpu")
    except CorruptFileError as err:
        raise invalidate_cell(choice.folder, err) from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise RuntimeError(f"{choice.folder / BEST}: does not fit model {choice.model_name}")
    if missing and not choice.frozen:
        raise RuntimeError(f"{choice.folder / BEST}: a fine-tuned cell lacks encoder tensors")
    return model.eval()


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    spec: ModelSpec,
    dataset: PastisZarrDataset,
    device: torch.device,
    amp: torch.dtype | None,
    batch_size: int = 1,
    progress: bool = False,
    desc: str = "",
):
    """Yield ``(patch_id, classes uint8 (H, W))`` for every patch of ``dataset``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        x = model_frames(batch["image"], dataset.normalise, device)
        days = batch["days"].to(device)
        with autocast(device, amp):
            logits = spec.policy.predict(forward_fn(model, spec, days), x)
        classes = logits.float().argmax(1).to(torch.uint8).cpu().numpy()
        yield from zip(batch["patch_id"].tolist(), classes, strict=True)


def _transform(bounds, width: int, height: int) -> rasterio.Affine:
    """The patch's geotransform from its (xmin, ymin, xmax, ymax) extent."""
    with warnings.catch_warnings():  # rasterio's own use of affine's deprecated ``*``
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return from_bounds(*(float(b) for b in bounds), width, height)


def write_geotiff(
    path: Path, classes: np.ndarray, bounds, crs: str | None, colours: dict | None = None
) -> None:
    """One uint8 class map as an LZW GeoTIFF with a colour table, written atomically."""
    height, width = classes.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "crs": crs or None,
        "transform": _transform(bounds, width, height),
        "compress": "lzw",
        "nodata": None,
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.asarray(classes, dtype=np.uint8), 1)
        dst.write_colormap(1, colours or class_colours())
        dst.set_band_description(1, "class")
        dst.update_tags(1, **{f"CLASS_{c}": name for c, name in enumerate(CLASS_NAMES)})


def rgb_composite(reflectance: np.ndarray) -> np.ndarray:
    """(band, H, W) int16 of the 10 PASTIS bands -> float (H, W, 3) in 0..1, B4 B3 B2 stretched
    between their joint 2nd and 98th percentiles (nodata excluded)."""
    rgb = reflectance[[BANDS.index(b) for b in RGB_BANDS]].astype(np.float64)
    valid = np.all(reflectance[[BANDS.index(b) for b in RGB_BANDS]] != NODATA, axis=0)
    values = rgb[:, valid] if valid.any() else rgb.reshape(3, -1)
    low, high = np.percentile(values, [2, 98])
    out = np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)
    out[:, ~valid] = 0
    return out.transpose(1, 2, 0)


def figure_patches(patch_ids: np.ndarray, count: int) -> list[int]:
    """``count`` test patches evenly spread over the fold (in store order)."""
    if count <= 0 or len(patch_ids) == 0:
        return []
    picks = np.unique(np.linspace(0, len(patch_ids) - 1, min(count, len(patch_ids))).round())
    return [int(patch_ids[int(i)]) for i in picks]


def predictions_figure(
    rows: list[dict], columns: list[str], base: Path, colours: dict | None = None
) -> list[Path]:
    """``rows``: per patch ``{"patch_id", "rgb", "label", column: classes}``; PNG and PDF."""
    colours = colours or class_colours()
    cmap = ListedColormap([np.array(colours[c][:3]) / 255 for c in range(N_CLASSES)])
    titles = ["RGB (B4 B3 B2)", "ground truth", *columns]
    fig = Figure(figsize=(2.3 * len(titles), 2.3 * len(rows) + 1.2), layout="constrained")
    axes = fig.subplots(len(rows), len(titles), squeeze=False)
    present: set[int] = set()
    for r, row in enumerate(rows):
        for c, title in enumerate(titles):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(row["rgb"], interpolation="nearest")
            else:
                classes = row["label"] if c == 1 else row[title]
                present |= set(np.unique(classes).tolist())
                ax.imshow(classes, cmap=cmap, vmin=-0.5, vmax=N_CLASSES - 0.5,
                          interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"patch {row['patch_id']}", fontsize=8)
    handles = [
        Patch(facecolor=np.array(colours[c][:3]) / 255, edgecolor="0.5", label=CLASS_NAMES[c])
        for c in sorted(present)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(5, len(handles)),
               fontsize=7, frameon=False)  # fmt: skip
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, format=path.suffix[1:])
    return paths


def _column(choice: Choice) -> str:
    ft = "" if choice.ft_rate is None else f" FT {choice.ft_rate:g}"
    return (
        f"{choice.family}\n{choice.model_name}{ft}, {choice.label_percent} %, "
        f"t={choice.timesteps}\nmIoU {choice.miou_paper:.1f} %"
    )


def write_maps(
    run: Path,
    *,
    weights_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 1,
    n_figure: int = 4,
    progress: bool = False,
) -> dict:
    """Maps and figure of the run folder ``run``; returns what was written."""
    run = Path(run)
    table = pd.read_csv(run / "tables" / "miou.csv")
    if "split" in table:  # maps from the run's own label split (variants live elsewhere)
        table = table[table.split == "main"]
    choices = best_cells(table, run / "cells")
    if not choices:
        raise ValueError(f"{run / 'cells'}: no cell of {run / 'tables' / 'miou.csv'} kept {BEST}")
    store = run / "data" / "s2.zarr"
    with open_store(store) as ds:
        crs = str(ds.attrs.get("crs") or "") or None
        bounds = dict(zip(ds.patch_id.values.tolist(), ds.bounds.values, strict=True))
    out, colours = run / "maps", class_colours()
    summary, figure_rows, columns = [], {}, []
    with claimed_device(device) as dev:
        for choice in choices:
            settings = cell_settings(choice.folder)
            spec = get_spec(choice.model_name, eval_resize=settings.dino_eval_resize)
            timesteps = run / "manifests" / "timesteps" / f"{choice.timesteps}.csv"
            dataset = PastisZarrDataset.evaluation(
                store,
                timesteps,
                TEST_FOLD,
                norm=settings.norm,
                nodata=settings.nodata,
                scale=spec.policy.scale,
                draw=frame_draw(settings.frame_draw, choice.seed, "test"),  # the test pass's
            )
            if not figure_rows:  # the labels and the figure's RGB, once
                figure_rows = _figure_base(dataset, n_figure)
                for i, pid in zip(dataset.positions, dataset.patch_ids, strict=True):
                    label = dataset.reader.label(int(i))
                    write_geotiff(out / LABELS / f"{pid}.tif", label, bounds[int(pid)], crs,
                                  colours)  # fmt: skip
            model = load_cell_model(choice, settings, weights_dir).to(dev)
            amp = amp_dtype(dev, settings.precision)
            column = _column(choice)
            columns.append(column)
            count = 0
            for pid, classes in predict(model, spec, dataset, dev, amp, batch_size, progress,
                                        choice.slug):  # fmt: skip
                write_geotiff(out / choice.slug / f"{pid}.tif", classes, bounds[pid], crs, colours)
                if pid in figure_rows:
                    figure_rows[pid][column] = classes
                count += 1
            log.info("%s: %d test maps from %s", choice.family, count, choice.folder)
            summary.append(
                {"family": choice.family, "folder": choice.slug, "model_name": choice.model_name,
                 "ft_rate": choice.ft_rate, "label_percent": choice.label_percent,
                 "timesteps": choice.timesteps, "seed": choice.seed,
                 "miou_paper": choice.miou_paper, "patches": count,
                 "cell": str(choice.folder)}
            )  # fmt: skip
            del model
    with atomic_path(out / "cells.csv") as tmp:
        pd.DataFrame(summary).to_csv(tmp, index=False)
    figures = predictions_figure(
        list(figure_rows.values()), columns, run / "figures" / "predictions", colours
    )
    return {"maps": out, "cells": summary, "figures": figures}


def _figure_base(dataset: PastisZarrDataset, count: int) -> dict[int, dict]:
    """Per figure patch: its id, RGB composite (last chosen frame) and label."""
    rows = {}
    for pid in figure_patches(dataset.patch_ids, count):
        k = int(np.flatnonzero(dataset.patch_ids == pid)[0])
        i = int(dataset.positions[k])
        frame = dataset.reader.read_frames(i, dataset.frames[k][-1:])[0]
        rows[pid] = {"patch_id": pid, "rgb": rgb_composite(frame), "label": dataset.reader.label(i)}
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder (results/<run>)")
    parser.add_argument("--weights-dir", type=Path, help="folder of pretrained checkpoints")
    parser.add_argument(
        "--device", default="auto", type=device_name, help="auto | cpu | cuda | cuda:N"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="patches per forward pass")
    parser.add_argument("--figure-patches", type=int, default=4, help="test patches in the figure")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    written = write_maps(
        args.run,
        weights_dir=args.weights_dir,
        device=args.device,
        batch_size=args.batch_size,
        n_figure=args.figure_patches,
        progress=not args.no_progress,
    )
    for cell in written["cells"]:
        log.info("maps/%s: %d patches (%s)", cell["folder"], cell["patches"], cell["cell"])
    return 0
