"""FT-Rate as a hyperparameter: a "tuned" row per foundation model, and mIoU against FT-Rate.

Selection rule (never on test): for each (model, label fraction, frames) of the main split,
the FT-Rate whose cells have the best validation score, i.e. ``val_best[select_metric]`` of
``metrics.json`` (the metric that also picked each cell's epoch; miou.csv column
``val_<select_metric>``), averaged over the cell's seeds; equal means go to the smaller
FT-Rate. A (model, fraction, frames) where some FT-Rate has no validation score gets no pick.
The tuned row reports the chosen cell's test mIoU and interval; the FT-Rate best on test is
listed beside it for reference only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gfmtune.results.tables import KEYS, TUNED
from gfmtune.results.uncertainty import METRICS, Replicates, interval

#: The paper's FT-Rates: its tables show the tuned rows only for runs with more than these.
PAPER_FT_RATES = (0.0, 0.1, 1.0)
GROUP = ["model", "label_percent", "timesteps"]
SUMMARY = ["mean", "std", "n", "low", "high"]


def ft_rates(summary: pd.DataFrame) -> list[float]:
    """The foundation models' FT-Rates in ``summary`` (U-TAE's -1 left out), ascending."""
    return sorted(float(f) for f in summary.ft_rate.unique() if 0 <= f < TUNED)


def validation_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Per GFM cell of the main split (KEYS): ``select_metric`` and ``val_score``, the mean over
    seeds of ``val_<select_metric>`` (percent; NaN when a seed has none)."""
    gfm = table[(table.split == "main") & table.ft_rate.notna()]
    metrics = gfm.groupby(GROUP).select_metric.unique()
    mixed = metrics[metrics.map(len) > 1]
    if len(mixed):
        raise ValueError(
            f"cells of {mixed.index[0]} selected their epoch on different validation metrics "
            f"{list(mixed.iloc[0])}: no common score to tune on"
        )
    score = pd.Series(np.nan, index=gfm.index)
    for metric in gfm.select_metric.unique():
        score = score.mask(gfm.select_metric == metric, gfm[f"val_{metric}"])
    cells = gfm.assign(val_score=score).groupby(KEYS)
    return pd.concat(
        [cells.select_metric.first(), cells.val_score.mean(skipna=False)], axis=1
    ).reset_index()


def _pick(group: pd.DataFrame) -> pd.Series | None:
    """The row with the best ``val_score`` (equal: the smaller FT-Rate); None if any has none."""
    if group.val_score.isna().any():
        return None
    return group.sort_values(["val_score", "ft_rate"], ascending=[False, True]).iloc[0]


def tuned(table: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Per (model, label_percent, timesteps) with a pick: ``ft_rate`` chosen on validation,
    ``select_metric``, ``val_score``, the chosen cell's test ``mean``, ``std``, ``n``, ``low``,
    ``high`` (``ours``: the summary with intervals), ``candidates`` (FT-Rates compared) and, for
    reference, ``best_test_ft_rate`` and ``best_test_mean`` (the FT-Rate best on test)."""
    merged = validation_scores(table).merge(ours.reindex(columns=[*KEYS, *SUMMARY]), on=KEYS)
    rows = []
    for _, group in merged.groupby(GROUP):
        chosen = _pick(group)
        if chosen is None:
            continue
        oracle = group.sort_values(["mean", "ft_rate"], ascending=[False, True]).iloc[0]
        reference = {"best_test_ft_rate": oracle.ft_rate, "best_test_mean": oracle["mean"]}
        rows.append({**chosen.to_dict(), "candidates": len(group), **reference})
    columns = [*KEYS, "select_metric", "val_score", *SUMMARY, "candidates", "best_test_ft_rate",
               "best_test_mean"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def tuned_rows(picks: pd.DataFrame) -> pd.DataFrame:
    """The picks as summary rows of ``model tuned`` (ft_rate :data:`TUNED`) for the layout."""
    return picks[[*KEYS, *SUMMARY]].assign(ft_rate=TUNED)


def ft_table(picks: pd.DataFrame) -> pd.DataFrame:
    """``tables/ft_tuned.csv``: one row per (model, fraction, frames), percent."""
    out = picks.rename(columns={"ft_rate": "chosen_ft_rate", "mean": "test_miou_paper",
                                "low": "test_low", "high": "test_high", "n": "seeds",
                                "best_test_mean": "best_test_miou_paper"})  # fmt: skip
    columns = ["model", "label_percent", "timesteps", "chosen_ft_rate", "select_metric",
               "val_score", "test_miou_paper", "test_low", "test_high", "seeds", "candidates",
               "best_test_ft_rate", "best_test_miou_paper"]  # fmt: skip
    return out[columns].round(2)


def curves(ours: pd.DataFrame, reps: Replicates, metric: str) -> pd.DataFrame:
    """Per (model, label_percent, ft_rate): ``mean`` over frames of the cells' means, with the
    95 % interval of that mean (``low``, ``high``) from the cells' paired replicates when every
    cell has them (NaN otherwise). U-TAE keeps ft_rate -1."""
    rows = []
    for (model, percent, ft), part in ours.groupby(["model", "label_percent", "ft_rate"]):
        keys = [tuple(r) for r in part[KEYS].itertuples(index=False)]
        low = high = np.nan
        if all(k in reps.cells for k in keys):
            values = np.mean([reps.cells[k][METRICS.index(metric)] for k in keys], axis=0)
            low, high = (float(b) for b in interval(values))
        rows.append({"model": model, "label_percent": percent, "ft_rate": ft,
                     "mean": part["mean"].mean(), "low": low, "high": high})  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "label_percent", "ft_rate", "mean", "low", "high"])
