"""``gfmtune results``: every results file from the finished cells of a run.

Writes under ``--out`` (``results/<run>``)::

    tables/miou.csv                      one row per cell and seed (percent, with intervals)
    tables/miou_<fractions>.{md,tex,csv} the paper's layout, value [95 % interval], best marked
    tables/comparison.{csv,md}           ours [interval], the paper's, the difference, inside?
    tables/cost.csv                      GPU-hours and wall time per model and in total
    tables/split_spread.{csv,md}         how much cells move between label splits and seeds
    figures/miou_vs_frames.{png,pdf}     per fraction, published curves dashed
    figures/heatmaps.{png,pdf}           mIoU over (FT-Rate, frames) per model and fraction
    claims.{json,md}                     the paper's conclusions decided on these results
                                         (and, as point estimates, on the published numbers)

Every value in the paper-layout tables, the comparison and the claims is the paper's
convention (``miou_paper``: mean over 20 classes with void as 0, percent), from the run's own
label split (``main``); the cost table counts every cell, label-split variants included.
Intervals and claim verdicts come from the bootstrap over the cells' per-patch test counts
(:mod:`gfmtune.results.uncertainty`, ``test_patches.npz``); cells without them have no interval
and claims fall back to point verdicts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from gfmtune.fileio import atomic_path, atomic_write_text
from gfmtune.results import claims, figures, spread, tables, uncertainty
from gfmtune.results.aggregate import collect
from gfmtune.results.published import CITATION, published

VALUE = "miou_paper"


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |\n" + "|---" * len(frame.columns) + "|\n"
    body = "".join(
        "| " + " | ".join("–" if pd.isna(v) else str(v) for v in row) + " |\n"
        for row in frame.itertuples(index=False)
    )
    return head + body


def cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """GPU-hours, CPU-hours (wall time of the cells that ran without a GPU), wall seconds and
    cells, per model and in total."""
    table = table.assign(cpu_hours=table.wall_seconds.where(~(table.gpu_hours > 0), 0) / 3600)
    sums = ["gpu_hours", "cpu_hours", "wall_seconds"]
    per_model = table.groupby("model")[sums].sum().reset_index()
    per_model["cells"] = table.groupby("model").size().to_numpy()
    total = pd.DataFrame([{"model": "total", **table[sums].sum(), "cells": len(table)}])
    return pd.concat([per_model, total], ignore_index=True).round(4)


def caveat(table: pd.DataFrame, synthetic: bool) -> str:
    """What the numbers cannot say when the data are synthetic or the models tiny ("" if
    neither)."""
    tiny = table.model_name.str.endswith("_tiny").any()
    if not (synthetic or tiny):
        return ""
    what = " and ".join(
        part
        for part, on in (("synthetic data", synthetic), ("tiny randomly initialised models", tiny))
        if on
    )
    return f"On {what}: these numbers test the workflow, not the paper's findings."


def write_results(
    cells: list[Path],
    out: Path,
    resamples: int = uncertainty.RESAMPLES,
    seed: int = 0,
    synthetic: bool = False,
) -> dict:
    """All tables, figures and the claims check, intervals from ``resamples`` bootstrap
    replicates drawn with ``seed``; ``synthetic``: the cells trained on synthetic data, said
    (with tiny models) at the top of every Markdown file and figure. Returns the paths written,
    by kind."""
    out = Path(out)
    table = collect(cells)
    note = caveat(table, synthetic)
    head = f"**{note}**\n\n" if note else ""
    reps = uncertainty.bootstrap(cells, table, resamples, seed)
    _csv(uncertainty.run_intervals(table, reps), out / "tables" / "miou.csv")
    ours = uncertainty.cell_intervals(
        tables.summarize(table[table.split == spread.MAIN], VALUE), reps, VALUE
    )
    paper = tables.summarize(published().rename(columns={"miou": VALUE}), VALUE)
    written = {"tables": [out / "tables" / "miou.csv"]}
    for group in tables.fraction_groups(list(ours.label_percent.unique())):
        grid = tables.layout(ours, group)
        base = out / "tables" / ("miou_" + "_".join(f"{f:g}" for f in group))
        for suffix, render in (
            (".md", tables.to_markdown),
            (".tex", tables.to_latex),
            (".csv", tables.to_csv),
        ):
            text = render(grid)
            if note and suffix != ".csv":
                text = (f"**{note}**\n\n" if suffix == ".md" else f"% {note}\n") + text
            atomic_write_text(base.with_suffix(suffix), text)
            written["tables"].append(base.with_suffix(suffix))
    comparison = tables.comparison(ours, paper).round(2)
    _csv(comparison, out / "tables" / "comparison.csv")
    atomic_write_text(
        out / "tables" / "comparison.md",
        f"{head}Published values: {CITATION}. low, high: our 95 % bootstrap interval (empty "
        "without per-patch test counts); paper_inside: whether the published value lies inside "
        "it.\n\n" + _markdown(comparison),
    )
    _csv(cost_table(table), out / "tables" / "cost.csv")
    moves = spread.split_spread(table, VALUE)
    _csv(moves, out / "tables" / "split_spread.csv")
    atomic_write_text(
        out / "tables" / "split_spread.md", head + spread.to_markdown(moves, _markdown)
    )
    written["tables"] += [
        out / "tables" / n
        for n in (
            "comparison.csv",
            "comparison.md",
            "cost.csv",
            "split_spread.csv",
            "split_spread.md",
        )
    ]
    fractions = sorted(ours.label_percent.unique(), reverse=True)
    panels = [fractions[0], fractions[-1]] if len(fractions) > 1 else fractions
    written["figures"] = figures.miou_vs_frames(
        ours, paper, panels, out / "figures" / "miou_vs_frames", note
    )
    written["figures"] += figures.heatmaps(ours, out / "figures" / "heatmaps", note)
    checked = claims.with_published(
        claims.check_claims(ours, reps.cell_matrix(ours, VALUE)), claims.check_claims(paper)
    )
    atomic_write_text(out / "claims.json", json.dumps(checked, indent=1, default=str) + "\n")
    atomic_write_text(out / "claims.md", head + claims.to_markdown(checked))
    written["claims"] = [out / "claims.json", out / "claims.md"]
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", type=Path, nargs="+", required=True, help="metrics.json files")
    parser.add_argument("--out", type=Path, required=True, help="run folder (results/<run>)")
    parser.add_argument(
        "--resamples",
        type=int,
        default=uncertainty.RESAMPLES,
        help="bootstrap replicates over test patches (default %(default)s)",
    )
    parser.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)"
    )
    parser.add_argument(
        "--synthetic-data",
        action="store_true",
        help="the cells trained on synthetic data: say so on every table, figure and claim",
    )


def run(args: argparse.Namespace) -> int:
    write_results(args.cells, args.out, args.resamples, args.bootstrap_seed, args.synthetic_data)
    return 0
