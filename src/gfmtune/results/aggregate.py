"""Collect every finished cell (``metrics.json``) into one table, ``tables/miou.csv``.

One row per cell and seed: model (CROMA / DINO / U-TAE), registry name, ft_rate (empty for
U-TAE), label_percent, timesteps, seed, split (``main``: the run's label split, else the name of
a ``manifests.split_variants`` entry), miou and miou_paper and oa (percent, test set), the same
three on the validation set at the selected epoch (val_miou, val_miou_paper, val_oa; empty
for cells whose metrics.json has no ``val_best``), per-class IoU (percent), select_metric (the
validation metric that selected the epoch), best_epoch, wall_seconds, gpu_hours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from gfmtune.models.catalog import family_of
from gfmtune.pastis import CLASS_NAMES, VOID_CLASS
from gfmtune.train.settings import TrainSettings

SELECT_METRIC = TrainSettings().select_metric  # of cells whose metrics.json does not say
TEST_METRICS = ("miou", "miou_paper", "oa")  # every cell has them


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def cell_row(path: Path) -> dict:
    """The table row of one ``metrics.json`` (:func:`check_finite`)."""
    try:
        metrics = json.loads(Path(path).read_text())
        cell, test = metrics["cell"], metrics["test"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: not a finished cell's metrics.json ({err})") from err
    row = {
        "model": family_of(cell["model"]),
        "model_name": cell["model"],
        "ft_rate": cell["ft_rate"],
        "label_percent": float(cell["label_percent"]),
        "timesteps": int(cell["timesteps"]),
        "seed": int(cell["seed"]),
        "split": cell.get("split", "main"),
    } | {name: _pct(test[name]) for name in TEST_METRICS}
    val = metrics.get("val_best") or {}
    row |= {f"val_{name}": _pct(val.get(name)) for name in ("miou", "miou_paper", "oa")}
    for c, name in enumerate(CLASS_NAMES):
        if c != VOID_CLASS:
            row[f"iou_{name}"] = _pct(test["per_class"][name]["iou"])
    row |= {
        "select_metric": metrics.get("select_metric", SELECT_METRIC),
        "best_epoch": metrics["best_epoch"],
        "wall_seconds": metrics["wall_seconds"],
        "gpu_hours": metrics["gpu_hours"],
    }
    check_finite(row, path)
    return row


def check_finite(row: dict, path: Path) -> None:
    """A :class:`ValueError` naming ``path`` and the keys whose value is NaN or infinite, or
    missing for a test metric (an older gfmtune wrote ``NaN`` for a test fold without a
    labelled pixel), so that no table, figure or claim renders one as a number."""
    bad = [
        k
        for k, v in row.items()
        if (isinstance(v, float) and not math.isfinite(v)) or (k in TEST_METRICS and v is None)
    ]
    if bad:
        raise ValueError(
            f"{path}: {', '.join(bad)} not a finite number ({row[bad[0]]}), so the cell has no "
            "result to show: retrain it (delete this metrics.json and rerun snakemake)"
        )


def collect(paths: Iterable[Path]) -> pd.DataFrame:
    rows = [cell_row(p) for p in paths]
    if not rows:
        raise ValueError("no finished cell to aggregate")
    table = pd.DataFrame(rows)
    table["main"] = table.split == "main"
    order = ["model", "ft_rate", "label_percent", "timesteps", "main", "split", "seed"]
    table = table.sort_values(
        order, na_position="last", ascending=[True, True, False, True, False, True, True]
    )
    return table.drop(columns="main").reset_index(drop=True)
