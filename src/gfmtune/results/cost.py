"""What the cells cost: ``tables/cost.csv``, and the points of the cost-aware figure (mIoU
against compute hours and against trainable parameters, per (model, FT-Rate) and fraction).

A run's compute is its GPU-hours when it had a GPU, else its wall time as CPU-hours
(:func:`with_cpu_hours`). Trainable parameters come from ``tables/params.csv``
(``gfmtune params`` for the run's models: ``trainable_ft0`` at FT-Rate 0, ``trainable_ft_pos``
above; U-TAE trains everything at both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PARAMS_COLUMNS = {"name", "trainable_ft0", "trainable_ft_pos"}


def with_cpu_hours(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (miou.csv rows) with ``cpu_hours``: the wall time of runs without a GPU."""
    return table.assign(cpu_hours=table.wall_seconds.where(~(table.gpu_hours > 0), 0) / 3600)


def cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """GPU-hours, CPU-hours (wall time of the cells that ran without a GPU), wall seconds and
    cells, per model and in total."""
    table = with_cpu_hours(table)
    sums = ["gpu_hours", "cpu_hours", "wall_seconds"]
    per_model = table.groupby("model")[sums].sum().reset_index()
    per_model["cells"] = table.groupby("model").size().to_numpy()
    total = pd.DataFrame([{"model": "total", **table[sums].sum(), "cells": len(table)}])
    return pd.concat([per_model, total], ignore_index=True).round(4)


def read_params(path: Path) -> pd.DataFrame:
    """``tables/params.csv`` indexed by registry name; a clear error when it is not one."""
    try:
        params = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: cannot read the parameter table ({err})") from err
    missing = PARAMS_COLUMNS - set(params.columns)
    if missing:
        raise ValueError(f"{path}: not a `gfmtune params` table (no {sorted(missing)})")
    return params.set_index("name")


def _trainable(row: pd.Series, params: pd.DataFrame | None) -> float:
    if params is None or row.model_name not in params.index:
        return np.nan
    column = "trainable_ft_pos" if row.ft_rate > 0 else "trainable_ft0"
    return float(params.loc[row.model_name, column])


def cost_points(
    table: pd.DataFrame, value: str, params: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, str]:
    """Per (model, ft_rate, label_percent) of the main split (U-TAE: ft_rate -1): ``miou``, the
    mean over frames of the cells' mean ``value`` over seeds; ``hours``, the same mean of one
    run's compute; ``trainable`` parameters (NaN without ``params``). Also the hours' unit:
    GPU-hours, CPU-hours, or both when only some runs had a GPU."""
    main = with_cpu_hours(table[table.split == "main"])
    main = main.assign(ft_rate=main.ft_rate.fillna(-1.0), hours=main.gpu_hours + main.cpu_hours)
    main["trainable"] = main.apply(_trainable, axis=1, params=params)
    keys = ["model", "ft_rate", "label_percent"]
    cells = main.groupby([*keys, "timesteps"])[[value, "hours", "trainable"]].mean()
    points = cells.groupby(level=keys).mean().reset_index().rename(columns={value: "miou"})
    gpu = main.gpu_hours > 0
    unit = "GPU-hours" if gpu.all() else "CPU-hours" if not gpu.any() else "GPU- or CPU-hours"
    return points, unit


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower or equal cost and higher value, or
    lower cost and equal value), by ascending cost."""
    order = np.lexsort((-value, cost))
    front, best = [], -np.inf
    for i in order:
        if value[i] > best:
            front.append(i)
            best = value[i]
    return np.array(front, dtype=int)
