"""The paper grid's device time for each path, from the measured rows of ``gfmtune bench-train``.

A cell costs, per run (FT-Rates 0.1 and 1.0 are two runs of the same cost)::

    epochs x steps_per_epoch x step_s                  training
  + (epochs x val_patches + test_patches) x val_patch_s  validation every epoch, test once
  + loader_starts x loader_s                           DataLoader workers started

and a frozen encoder whose features the default path caches adds, once per (model, t) for all
label fractions, ``all_patches x cache_patch_s``. Series lengths that were not measured take
the measured values linearly interpolated in t, or scaled in proportion to t beyond them.
"""

from __future__ import annotations

from typing import Any

#: Training steps per epoch at 100/50/10/1 % of the 1,455 training patches (batch 8, last
#: incomplete batch dropped).
STEPS_PER_EPOCH: dict[str, int] = {"100": 181, "50": 90, "10": 18, "1": 2}
EPOCHS = 80
GRID_T: tuple[int, ...] = (1, 6, 15, 25, 35)
#: PASTIS: 2,433 patches, 1,455 in folds 1-3; folds 4 (validation) and 5 (test) share the
#: other 978, taken as 489 each (the study does not publish the per-fold counts).
VAL_PATCHES = TEST_PATCHES = 489
ALL_PATCHES = 2433
#: Paper runs per regime: FT-Rate 0 | FT-Rates 0.1 and 1.0 | U-TAE without FT-Rate.
RUNS: dict[str, int] = {"frozen": 1, "finetune": 2, "scratch": 1}
#: Loaders per epoch (training, validation) and per run (test) when workers are not kept.
LOADERS_PER_EPOCH, LOADERS_PER_RUN = 2, 1


def at_t(measured: dict[int, float], t: int) -> float:
    """A per-step quantity at ``t`` from its values at the measured lengths."""
    if t in measured:
        return measured[t]
    ts = sorted(measured)
    below, above = [m for m in ts if m < t], [m for m in ts if m > t]
    if below and above:
        lo, hi = below[-1], above[0]
        return measured[lo] + (measured[hi] - measured[lo]) * (t - lo) / (hi - lo)
    nearest = below[-1] if below else above[0]
    return measured[nearest] * t / nearest


def loader_starts(path: str, persistent: bool) -> int:
    """DataLoader starts of one run: every epoch for the reference, once per loader when the
    default path keeps its workers."""
    if path == "default" and persistent:
        return LOADERS_PER_EPOCH + LOADERS_PER_RUN
    return EPOCHS * LOADERS_PER_EPOCH + LOADERS_PER_RUN


def grid(rows: list[dict[str, Any]], loaders: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Cells, feature-cache builds and hours per path (None where a row ran out of memory)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["path"], row["model"], row["regime"]), []).append(row)
    cells, builds, incomplete = [], [], []
    for (path, model, regime), group in groups.items():
        if any(r["status"] != "measured" for r in group):
            incomplete.append(f"{model} {regime} ({path})")
            continue
        measured_t = {r["t"] for r in group}
        per_t = {key: {r["t"]: r[key] for r in group} for key in ("step_s", "val_patch_s")}
        loader = loaders[path]
        starts = loader_starts(path, loader["persistent"])
        for t in GRID_T:
            step_s, val_s = at_t(per_t["step_s"], t), at_t(per_t["val_patch_s"], t)
            for percent, steps in STEPS_PER_EPOCH.items():
                cell = {
                    "path": path, "model": model, "regime": regime, "runs": RUNS[regime],
                    "label_percent": percent, "t": t, "measured_t": t in measured_t,
                    "train_steps": EPOCHS * steps, "step_s": step_s,
                    "eval_patches": EPOCHS * VAL_PATCHES + TEST_PATCHES, "val_patch_s": val_s,
                    "loader_starts": starts, "loader_s": loader["seconds"],
                }  # fmt: skip
                cell["seconds"] = cell_seconds(cell)
                cells.append(cell)
            if all(r["feature_cache"] for r in group):
                cache_s = at_t({r["t"]: r["cache_patch_s"] for r in group}, t)
                builds.append({
                    "path": path, "model": model, "t": t, "measured_t": t in measured_t,
                    "patches": ALL_PATCHES, "cache_patch_s": cache_s,
                    "seconds": ALL_PATCHES * cache_s,
                })  # fmt: skip
    paths = sorted({row["path"] for row in rows})
    return {
        "cells": cells,
        "cache_builds": builds,
        "incomplete": incomplete,
        "hours": {p: _hours(cells, builds, incomplete, p, measured_only=False) for p in paths},
        "hours_measured_t": {
            p: _hours(cells, builds, incomplete, p, measured_only=True) for p in paths
        },
        "assumptions": {
            "epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH, "grid_t": GRID_T,
            "val_patches": VAL_PATCHES, "test_patches": TEST_PATCHES,
            "all_patches": ALL_PATCHES, "runs": RUNS,
        },
    }  # fmt: skip


def cell_seconds(cell: dict[str, Any]) -> float:
    """Device seconds of a cell (all its runs): training, evaluation and loader starts."""
    per_run = (
        cell["train_steps"] * cell["step_s"]
        + cell["eval_patches"] * cell["val_patch_s"]
        + cell["loader_starts"] * cell["loader_s"]
    )
    return cell["runs"] * per_run


def _hours(
    cells: list[dict[str, Any]], builds: list[dict[str, Any]], incomplete: list[str], path: str,
    measured_only: bool,
) -> float | None:  # fmt: skip
    if any(item.endswith(f"({path})") for item in incomplete):
        return None
    items = [
        c for c in cells + builds if c["path"] == path and (c["measured_t"] or not measured_only)
    ]
    return sum(c["seconds"] for c in items) / 3600 if items else None
