"""``gfmtune results``: every results file from the finished cells of a run.

Writes under ``--out`` (``results/<run>``)::

    tables/miou.csv                      one row per cell and seed (percent, with intervals;
                                         validation scores at the selected epoch)
    tables/miou_<fractions>.{md,tex,csv,html}
                                         the paper's layout, value [95 % interval], best marked;
                                         with a "<model> tuned" row when the run has more
                                         FT-Rates than the paper's three (HTML: for the report)
    tables/ft_tuned.{csv,md}             per model, fraction and t: the FT-Rate picked on
                                         validation and its test mIoU [interval]
    tables/comparison.{csv,md}           ours [interval], the paper's, the difference, inside?
    tables/cost.csv                      GPU-hours and wall time per model and in total
    tables/split_spread.{csv,md}         how much cells move between label splits and seeds
    figures/miou_vs_frames.{png,pdf}     per fraction, published curves dashed
    figures/heatmaps.{png,pdf}           mIoU over (FT-Rate, frames) per GFM and fraction, the
                                         colours spanning the values shown
    figures/miou_vs_ftrate.{png,pdf}     mIoU (mean over frames) against FT-Rate, symlog axis
    figures/cost_pareto.{png,pdf}        mIoU against compute hours and trainable parameters
                                         (``--params``), Pareto front drawn on both
    claims.{json,md,html}                the paper's conclusions decided on these results, each
                                         with the cells it was decided on (and, as point
                                         estimates, on the published numbers)

Every value in the paper-layout tables, the comparison and the claims is the paper's
convention (``miou_paper``: mean over 20 classes with void as 0, percent), from the run's own
label split (``main``); the cost table counts every cell, label-split variants included.
Intervals and claim verdicts come from the bootstrap over the cells' per-patch test counts
(:mod:`gfmtune.results.uncertainty`, ``test_patches.npz``); cells without them have no interval
and claims fall back to point verdicts. The tuned rows pick each FT-Rate on validation only
(:mod:`gfmtune.results.ftrate`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from gfmtune.fileio import atomic_path, atomic_write_text
from gfmtune.results import claims, claims_table, figures, ftrate, spread, tables, uncertainty
from gfmtune.results.aggregate import collect
from gfmtune.results.cost import cost_points, cost_table, read_params
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


def caveat(table: pd.DataFrame, synthetic: bool) -> str:
    """What the numbers cannot say when the data are synthetic or the models tiny ("" if
    neither); ``table``: any rows with a ``model_name`` column (cells, or their histories)."""
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
    params: Path | None = None,
) -> dict:
    """All tables, figures and the claims check, intervals from ``resamples`` bootstrap
    replicates drawn with ``seed``; ``synthetic``: the cells trained on synthetic data, said
    (with tiny models) at the top of every Markdown file and figure; ``params``: the run's
    ``tables/params.csv``, for the cost figure's trainable parameters. Returns the paths
    written, by kind."""
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
    picks = ftrate.tuned(table, ours)
    rows = ours
    if len(ftrate.ft_rates(ours)) > len(ftrate.PAPER_FT_RATES):
        rows = pd.concat([ours, ftrate.tuned_rows(picks)], ignore_index=True)
    for group in tables.fraction_groups(list(ours.label_percent.unique())):
        grid = tables.layout(rows, group)
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
        atomic_write_text(base.with_suffix(".html"), tables.to_html(grid, note))
        written["tables"].append(base.with_suffix(".html"))
    comparison = tables.comparison(ours, paper).round(2)
    _csv(comparison, out / "tables" / "comparison.csv")
    atomic_write_text(
        out / "tables" / "comparison.md",
        f"{head}Published values: {CITATION}. low, high: our 95 % bootstrap interval (empty "
        "without per-patch test counts); paper_inside: whether the published value lies inside "
        "it.\n\n" + _markdown(comparison),
    )
    written["tables"] += _ft_tuned(picks, out / "tables", head)
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
    written["figures"] += figures.miou_vs_ftrate(
        ftrate.curves(ours, reps, VALUE), out / "figures" / "miou_vs_ftrate", note
    )
    points, unit = cost_points(table, VALUE, read_params(params) if params else None)
    written["figures"] += figures.cost_pareto(points, unit, out / "figures" / "cost_pareto", note)
    checked = claims.with_published(
        claims.check_claims(ours, reps.cell_matrix(ours, VALUE)), claims.check_claims(paper)
    )
    atomic_write_text(out / "claims.json", json.dumps(checked, indent=1, default=str) + "\n")
    atomic_write_text(out / "claims.md", head + claims_table.to_markdown(checked))
    atomic_write_text(out / "claims.html", claims_table.to_html(checked, note))
    written["claims"] = [out / "claims.json", out / "claims.md", out / "claims.html"]
    return written


def _ft_tuned(picks: pd.DataFrame, folder: Path, head: str) -> list[Path]:
    """``ft_tuned.{csv,md}``: the FT-Rate picked on validation per model, fraction and t."""
    table = ftrate.ft_table(picks)
    _csv(table, folder / "ft_tuned.csv")
    atomic_write_text(
        folder / "ft_tuned.md",
        f"{head}Per model, label fraction and t: the FT-Rate with the best validation score "
        "(select_metric at each cell's selected epoch, mean over seeds; ties: the smaller "
        "FT-Rate), and that cell's test mIoU (%, paper convention) with its 95 % interval "
        "(test_low, test_high). best_test_ft_rate and best_test_miou_paper: the FT-Rate best on "
        "test, for reference only (choosing it would select on test).\n\n" + _markdown(table),
    )
    return [folder / "ft_tuned.csv", folder / "ft_tuned.md"]


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
        "--params",
        type=Path,
        help="the run's tables/params.csv (gfmtune params): trainable parameters in the cost "
        "figure (without it, that panel is empty)",
    )
    parser.add_argument(
        "--synthetic-data",
        action="store_true",
        help="the cells trained on synthetic data: say so on every table, figure and claim",
    )


def run(args: argparse.Namespace) -> int:
    write_results(
        args.cells, args.out, args.resamples, args.bootstrap_seed, args.synthetic_data, args.params
    )
    return 0
