"""``gfmtune training-curves``: every cell's training history in one figure.

One row of panels per model and curve (training loss, validation mIoU in the paper's convention),
one column per label fraction; a line per (FT-Rate, frames, seed) of the run's own label split:
colour by frames, line style by FT-Rate. Read from ``history.csv`` beside each ``metrics.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from gfmtune.results.aggregate import cell_row
from gfmtune.results.command import caveat
from gfmtune.results.figures import save_figure
from gfmtune.results.tables import ft_text

HISTORY = "history.csv"
#: (history column, axis label) of the curves drawn per model.
CURVES = (("train_loss", "training loss"), ("val_miou_paper", "validation mIoU (%)"))
LINE_STYLES = ("-", "--", "-.", ":")


def histories(cells: list[Path]) -> pd.DataFrame:
    """One row per (cell, epoch) of the main split: the cell's keys and its history columns."""
    frames = []
    for cell in cells:
        row = cell_row(cell)
        if row["split"] != "main":
            continue
        path = Path(cell).parent / HISTORY
        try:
            history = pd.read_csv(path)
        except (OSError, pd.errors.ParserError) as err:
            raise ValueError(f"{path}: cannot read the cell's training history ({err})") from err
        missing = {"epoch", *(c for c, _ in CURVES)} - set(history.columns)
        if missing:
            raise ValueError(f"{path}: no column {', '.join(sorted(missing))}")
        frames.append(
            history.assign(
                model_name=row["model_name"],
                ft_rate=float("nan") if row["ft_rate"] is None else float(row["ft_rate"]),
                **{k: row[k] for k in ("label_percent", "timesteps", "seed")},
            )
        )
    if not frames:
        raise ValueError("no cell of the run's own label split (main) to draw")
    return pd.concat(frames, ignore_index=True)


def curves_figure(history: pd.DataFrame, base: Path, note: str = "") -> list[Path]:
    """The figure (PNG and PDF at ``base``): rows model x curve, columns label fractions."""
    models = list(dict.fromkeys(history.model_name))
    fractions = sorted(history.label_percent.unique(), reverse=True)
    frames = sorted(history.timesteps.unique())
    rates = sorted(history.ft_rate.dropna().unique())
    palette = colormaps["viridis"].resampled(max(len(frames), 2)).colors
    color = {t: palette[i] for i, t in enumerate(frames)}
    style = {ft: LINE_STYLES[i % len(LINE_STYLES)] for i, ft in enumerate(rates)}
    rows = [(m, c) for m in models for c in CURVES]
    fig = Figure(figsize=(3.4 * len(fractions), 2.4 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(fractions), squeeze=False, sharex=True)
    for (model, (column, label)), row_axes in zip(rows, axes, strict=True):
        for fraction, ax in zip(fractions, row_axes, strict=True):
            part = history[(history.model_name == model) & (history.label_percent == fraction)]
            for _, run in part.groupby(["ft_rate", "timesteps", "seed"], dropna=False):
                points = run[["epoch", column]].dropna()
                ft = run.ft_rate.iloc[0]
                scale = 100 if column.startswith("val_") else 1
                ax.plot(
                    points.epoch,
                    scale * points[column],
                    color=color[run.timesteps.iloc[0]],
                    ls="-" if pd.isna(ft) else style[ft],
                    lw=1,
                )
            ax.set_title(f"{model}, {fraction:g} % labels", fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=color[t], label=f"t = {t}") for t in frames]
    handles += [
        Line2D([], [], color="k", ls=style[ft], label=f"FT-Rate {ft_text(ft)}") for ft in rates
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=8)
    return save_figure(fig, base, note)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", type=Path, nargs="+", required=True, help="metrics.json files")
    parser.add_argument(
        "--out", type=Path, required=True, help="figure path without suffix (.png and .pdf)"
    )
    parser.add_argument(
        "--synthetic-data",
        action="store_true",
        help="the cells trained on synthetic data: say so above the figure",
    )


def run(args: argparse.Namespace) -> int:
    history = histories(args.cells)
    curves_figure(history, args.out, caveat(history, args.synthetic_data))
    return 0
