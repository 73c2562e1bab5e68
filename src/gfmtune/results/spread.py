"""How much a cell moves between label-split variants and seeds (``tables/split_spread.*``).

The paper trained one run per cell; at 1 % of the labels (14 patches) which patches are drawn
may decide a cell's number (its split even depends on numpy's sort: docs/reproduce.md, "The
authors' run"). For every cell trained more than once (several seeds, or
``manifests.split_variants``) this table gives the runs' mean, min, max and range, the range
between the splits' means and the largest range between seeds of one split, each in mIoU points
(paper convention).
"""

from __future__ import annotations

import pandas as pd

from gfmtune.results.tables import KEYS

MAIN = "main"  # the run's own label split (manifests.label_strategy / argsort / seed)
COLUMNS = [*KEYS, "runs", "splits", "seeds", "mean", "min", "max", "range", "std",
           "split_range", "seed_range"]  # fmt: skip


def _range(values: pd.Series) -> float:
    return float(values.max() - values.min()) if len(values) > 1 else float("nan")


def split_spread(table: pd.DataFrame, value: str = "miou_paper") -> pd.DataFrame:
    """One row per cell with more than one run (``table``: ``miou.csv`` with a ``split``
    column); U-TAE's ft_rate is -1 as in :func:`gfmtune.results.tables.summarize`."""
    keyed = table.assign(ft_rate=table.ft_rate.fillna(-1.0))
    rows = []
    for key, runs in keyed.groupby(KEYS):
        if len(runs) < 2:
            continue
        per_split = runs.groupby("split")[value]
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "runs": len(runs),
                "splits": ", ".join(sorted(runs.split.unique(), key=lambda s: (s != MAIN, s))),
                "seeds": runs.seed.nunique(),
                "mean": runs[value].mean(),
                "min": runs[value].min(),
                "max": runs[value].max(),
                "range": _range(runs[value]),
                "std": runs[value].std(),
                "split_range": _range(per_split.mean()),
                "seed_range": per_split.agg(_range).max(),
            }
        )
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["ft_rate"] = out.ft_rate.where(out.ft_rate >= 0)
    return out.sort_values(KEYS, ascending=[True, True, True, True], ignore_index=True).round(2)


def summary_lines(spread: pd.DataFrame) -> list[str]:
    """Per label fraction: the median and the largest range, and where the largest is."""
    lines = []
    for percent, rows in spread.groupby("label_percent"):
        worst = rows.loc[rows["range"].idxmax()]
        ft = "" if pd.isna(worst.ft_rate) else f" FT-Rate {worst.ft_rate:g}"
        lines.append(
            f"- {percent:g} % of the labels: {len(rows)} cell{'s' * (len(rows) != 1)}, "
            f"median range {rows['range'].median():.2f} points, largest {worst['range']:.2f} "
            f"({worst.model}{ft}, t = {int(worst.timesteps)})"
        )
    return lines


def to_markdown(spread: pd.DataFrame, render) -> str:
    """The table with a heading and per-fraction summary; ``render``: frame -> Markdown."""
    head = (
        "# How much cells move between label splits and seeds (mIoU points, paper convention)\n\n"
    )
    if spread.empty:
        return head + (
            "Every cell ran once: nothing to compare. Add seeds (train.seeds) or label-split "
            "variants (manifests.split_variants) to see how much the scarce-label cells move.\n"
        )
    return head + "\n".join(summary_lines(spread)) + "\n\n" + render(spread)
