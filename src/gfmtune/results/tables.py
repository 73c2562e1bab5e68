"""The paper's table layout: rows CROMA 0.0/0.1/1.0, DINO 0.0/0.1/1.0, U-TAE (one row per
FT-Rate of the run, labelled exactly, as ``CROMA 0.01``; a model's ``tuned`` row after them when
given, :mod:`gfmtune.results.ftrate`); five timestep columns per label fraction, two fractions
per table ((100, 50) and (10, 1) in the paper); the best value of each column marked. Values
are means over seeds with their 95 % bootstrap interval ``[low, high]`` when the summary has
``low`` and ``high`` (:mod:`gfmtune.results.uncertainty`), else ± std when several seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gfmtune.results import html

KEYS = ["model", "ft_rate", "label_percent", "timesteps"]
FAMILIES = ("CROMA", "DINO", "U-TAE")
MISSING = "–"
#: The ft_rate of a model's "tuned" row (:mod:`gfmtune.results.ftrate`): after its FT-Rates.
TUNED = math.inf


def summarize(table: pd.DataFrame, value: str = "miou_paper") -> pd.DataFrame:
    """Mean, std and seed count of ``value`` per cell (ft_rate -1 stands for none)."""
    keyed = table.assign(ft_rate=table.ft_rate.fillna(-1.0))
    out = keyed.groupby(KEYS)[value].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"})


def ft_text(ft_rate: float) -> str:
    """An FT-Rate exactly as given, with one decimal at least: 0.0, 0.01, 0.03, 0.1, 1.0."""
    return str(float(ft_rate))


def row_label(model: str, ft_rate: float) -> str:
    """``CROMA 0.01``; ``U-TAE`` (ft_rate -1); ``CROMA tuned`` (:data:`TUNED`)."""
    if ft_rate < 0:
        return model
    return f"{model} tuned" if ft_rate == TUNED else f"{model} {ft_text(ft_rate)}"


def row_order(summary: pd.DataFrame) -> list[tuple[str, float]]:
    rows = summary[["model", "ft_rate"]].drop_duplicates()
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(map(tuple, rows.to_numpy()), key=lambda r: (rank.get(r[0], 99), r[1]))


def fraction_groups(fractions: list[float], per_table: int = 2) -> list[list[float]]:
    """Fractions from most to fewest labels, ``per_table`` per table: [[100, 50], [10, 1]]."""
    ordered = sorted(set(fractions), reverse=True)
    return [ordered[i : i + per_table] for i in range(0, len(ordered), per_table)]


def layout(summary: pd.DataFrame, fractions: list[float]) -> pd.DataFrame:
    """Means as a grid: index row labels, columns (label_percent, timesteps)."""
    steps = sorted(summary.timesteps.unique())
    columns = pd.MultiIndex.from_product([fractions, steps], names=["label_percent", "timesteps"])
    index = [row_label(m, f) for m, f in row_order(summary)]
    grid = pd.DataFrame(np.nan, index=index, columns=columns)
    extra = {name: grid.copy() for name in ("std", "low", "high")}
    for r in summary.to_dict("records"):
        if r["label_percent"] in fractions:
            at = (row_label(r["model"], r["ft_rate"]), (r["label_percent"], r["timesteps"]))
            grid.loc[at] = r["mean"]
            extra["std"].loc[at] = r["std"] if r["n"] > 1 else np.nan
            for name in ("low", "high"):
                extra[name].loc[at] = r.get(name, np.nan)
    grid.attrs |= extra
    return grid


def _best(grid: pd.DataFrame) -> pd.DataFrame:
    return grid.eq(grid.max(axis=0), axis=1) & grid.notna()


def _text(mean: float, std: float, bounds: tuple[float, float] | None) -> str:
    """``mean [low, high]`` with an interval (``bounds``), else ``mean ± std`` or ``mean``; a
    value that is not finite is not shown (:data:`MISSING`, or no interval or std)."""
    if not math.isfinite(mean):
        return MISSING
    if bounds is not None and all(map(math.isfinite, bounds)):
        return f"{mean:.2f} [{bounds[0]:.2f}, {bounds[1]:.2f}]"
    return f"{mean:.2f}" if not math.isfinite(std) else f"{mean:.2f} ± {std:.2f}"


def _cells(grid: pd.DataFrame, mark: tuple[str, str], bounds: bool = True) -> pd.DataFrame:
    """Text of each value, the best of each column marked; intervals unless ``bounds`` is
    False."""
    best, a = _best(grid), grid.attrs
    out = grid.astype(object).copy()
    for i in grid.index:
        for c in grid.columns:
            interval = (a["low"].loc[i, c], a["high"].loc[i, c]) if bounds else None
            text = _text(grid.loc[i, c], a["std"].loc[i, c], interval)
            out.loc[i, c] = f"{mark[0]}{text}{mark[1]}" if best.loc[i, c] else text
    return out


def _header(grid: pd.DataFrame) -> tuple[list[str], list[str]]:
    top = [f"{p:g} %" for p, _ in grid.columns]
    return top, [f"t={t}" for _, t in grid.columns]


def to_markdown(grid: pd.DataFrame) -> str:
    """GitHub Markdown; the best value of each column in bold."""
    cells = _cells(grid, ("**", "**"))
    top, sub = _header(grid)
    head = "| model | " + " | ".join(f"{a} {b}" for a, b in zip(top, sub, strict=True)) + " |"
    lines = [head, "|---" * (len(top) + 1) + "|"]
    lines += ["| " + " | ".join([i, *cells.loc[i].tolist()]) + " |" for i in cells.index]
    return "\n".join(lines) + "\n"


def to_html(grid: pd.DataFrame, note: str = "") -> str:
    """An HTML page (:mod:`gfmtune.results.html`): the run's caveat ``note``, what the values
    are, and the table, the best value of each column in bold."""
    cells, best = _cells(grid, ("", "")), _best(grid)
    fractions = list(dict.fromkeys(p for p, _ in grid.columns))
    n_t = len(grid.columns) // len(fractions)
    head = [
        [("", 1), *((f"{p:g} % of the labels", n_t) for p in fractions)],
        [("model", 1), *((f"t={t}", 1) for _, t in grid.columns)],
    ]
    rows = [
        [(html.text(i), "")]
        + [
            (f"<strong>{html.text(v)}</strong>" if best.loc[i, c] else html.text(v), "num")
            for c, v in cells.loc[i].items()
        ]
        for i in cells.index
    ]
    shown = " and ".join(f"{p:g} %" for p in fractions)
    about = (
        "<p>Test mIoU (paper convention: mean over 20 classes, void as 0, percent) per model and "
        "FT-Rate (rows) and frames per series (t), mean over seeds with its 95 % bootstrap "
        "interval [low, high] over test patches (mean ± std over seeds for a cell without "
        "per-patch test counts); the best of each column in bold. A <em>tuned</em> row takes "
        "each column's FT-Rate picked on validation.</p>\n"
    )
    title = f"Paper-layout table: {shown} of the labels"
    return html.page(title, about + html.table(head, rows), note)


def to_latex(grid: pd.DataFrame) -> str:
    """A LaTeX tabular (booktabs); the best value of each column in bold."""
    cells = _cells(grid, ("\\textbf{", "}")).map(lambda s: s.replace("±", "$\\pm$"))
    fractions = list(dict.fromkeys(p for p, _ in grid.columns))
    n_t = len(grid.columns) // len(fractions)
    lines = ["\\begin{tabular}{l" + "r" * len(grid.columns) + "}", "\\toprule"]
    lines.append(
        " & "
        + " & ".join(f"\\multicolumn{{{n_t}}}{{c}}{{{p:g}\\,\\%}}" for p in fractions)
        + " \\\\"
    )
    lines.append("model & " + " & ".join(str(t) for _, t in grid.columns) + " \\\\")
    lines.append("\\midrule")
    lines += [" & ".join([i, *cells.loc[i].tolist()]) + " \\\\" for i in cells.index]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(grid: pd.DataFrame) -> str:
    """CSV with one column per (fraction, t), the best of each marked with '*' (± std when
    several seeds), each followed by its interval's ``_low`` and ``_high`` (empty without)."""
    cells = _cells(grid, ("", "*"), bounds=False)
    columns = {}
    for p, t in grid.columns:
        name = f"{p:g}%_t{t}"
        columns[name] = cells[(p, t)]
        for bound in ("low", "high"):
            columns[f"{name}_{bound}"] = grid.attrs[bound][(p, t)].round(2)
    return pd.DataFrame(columns).rename_axis("model").to_csv()


def comparison(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Per cell of ours: our mean and its interval (``low``, ``high``; empty without), the
    paper's value, ours - paper and whether the paper's value is inside our interval
    (``paper_inside``: yes, no, or empty without an interval or a published value)."""
    theirs = paper.rename(columns={"mean": "paper"})[[*KEYS, "paper"]]
    mine = ours.rename(columns={"mean": "ours"}).reindex(
        columns=[*KEYS, "ours", "low", "high", "std", "n"]
    )
    merged = mine.merge(theirs, on=KEYS, how="left")
    merged["diff"] = merged.ours - merged.paper
    known = merged.low.notna() & merged.paper.notna()
    inside = (merged.low <= merged.paper) & (merged.paper <= merged.high)
    merged["paper_inside"] = np.where(known, np.where(inside, "yes", "no"), None)
    merged["ft_rate"] = merged.ft_rate.where(merged.ft_rate >= 0)
    return merged.sort_values(KEYS, ascending=[True, True, False, True], ignore_index=True)
