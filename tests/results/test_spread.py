"""Label-split variants and seeds: the spread table, and variants kept out of the paper tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gfmtune.results import spread
from gfmtune.results.command import write_results
from tests.results.test_results import _fake_cell

#: miou_paper (percent) of CROMA 0.0 at 1 %, t = 6, per (split, seed).
RUNS = {("main", 0): 30.0, ("main", 1): 34.0, ("avx2", 0): 22.0, ("avx2", 1): 23.0}


def _table(runs: dict = RUNS) -> pd.DataFrame:
    rows = [{"model": "CROMA", "ft_rate": 0.0, "label_percent": 1.0, "timesteps": 6,
             "split": split, "seed": seed, "miou_paper": value}
            for (split, seed), value in runs.items()]  # fmt: skip
    rows.append({"model": "U-TAE", "ft_rate": None, "label_percent": 100.0, "timesteps": 6,
                 "split": "main", "seed": 0, "miou_paper": 50.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_spread_of_a_cell_over_splits_and_seeds() -> None:
    (row,) = spread.split_spread(_table()).to_dict("records")
    assert (row["model"], row["label_percent"], row["timesteps"]) == ("CROMA", 1.0, 6)
    assert row["runs"] == 4 and row["seeds"] == 2 and row["splits"] == "main, avx2"
    assert (row["min"], row["max"], row["range"]) == (22.0, 34.0, 12.0)
    assert row["split_range"] == pytest.approx(32.0 - 22.5)  # the splits' means
    assert row["seed_range"] == pytest.approx(4.0)  # main's seeds differ most
    assert row["mean"] == pytest.approx(27.25)


def test_cells_that_ran_once_have_no_spread() -> None:
    one_run = spread.split_spread(_table({("main", 0): 30.0}))
    assert one_run.empty
    text = spread.to_markdown(one_run, lambda frame: "unused")
    assert "Every cell ran once" in text and "split_variants" in text


def test_summary_names_the_cell_that_moves_most() -> None:
    runs = RUNS | {("main", 2): 40.0}
    table = pd.concat([_table(runs), _table(RUNS).assign(timesteps=35)], ignore_index=True)
    (line,) = spread.summary_lines(spread.split_spread(table))
    assert line.startswith("- 1 % of the labels: 2 cells")
    assert "largest 18.00 (CROMA FT-Rate 0, t = 6)" in line


def _variant_cell(folder: Path, split: str, seed: int, miou: float) -> Path:
    path = _fake_cell(folder / split, "croma", 0.0, "1", 6, seed, miou)
    metrics = json.loads(path.read_text())
    metrics["cell"]["split"] = split
    path.write_text(json.dumps(metrics))
    return path


def test_variants_count_in_the_spread_and_cost_but_not_in_the_paper_tables(
    tmp_path: Path,
) -> None:
    cells = [_fake_cell(tmp_path / "old", "croma", 0.0, "1", 6, 0, 0.40)]  # no "split": main
    cells += [_variant_cell(tmp_path, "avx2", seed, 0.20) for seed in (0, 1)]
    write_results(cells, tmp_path / "run")
    tables = tmp_path / "run" / "tables"
    miou = pd.read_csv(tables / "miou.csv")
    assert miou.split.tolist() == ["main", "avx2", "avx2"]
    assert "| CROMA 0.0 | **38.00** |" in (tables / "miou_1.md").read_text()  # main alone
    comparison = pd.read_csv(tables / "comparison.csv")
    assert comparison.ours.tolist() == [38.0] and comparison.n.tolist() == [1]
    moved = pd.read_csv(tables / "split_spread.csv").iloc[0]
    assert (moved.runs, moved["range"], moved.split_range) == (3, 19.0, 19.0)
    assert (
        "1 % of the labels: 1 cell, median range 19.00" in (tables / "split_spread.md").read_text()
    )
    cost = pd.read_csv(tables / "cost.csv").set_index("model")
    assert cost.loc["total", "cells"] == 3


def test_synthetic_runs_say_so_and_cpu_time_is_counted(tmp_path: Path) -> None:
    """A run of tiny models on synthetic data says what its numbers cannot show in every
    Markdown table, the claims and the LaTeX; cells without a GPU count as CPU-hours."""
    cells = [_fake_cell(tmp_path / "c", "croma_tiny", 0.0, p, 6, 0, 0.3) for p in ("1", "100")]
    write_results(cells, tmp_path / "run", synthetic=True)
    note = "On synthetic data and tiny randomly initialised models: these numbers test"
    tables = tmp_path / "run" / "tables"
    for path in (tables / "miou_100_1.md", tables / "comparison.md", tmp_path / "run" / "claims.md",
                 tables / "split_spread.md"):  # fmt: skip
        assert path.read_text().startswith(f"**{note}"), path
    assert (tables / "miou_100_1.tex").read_text().startswith(f"% {note}")
    write_results(cells, tmp_path / "real")  # not synthetic, but the models are tiny
    claims = (tmp_path / "real" / "claims.md").read_text()
    assert claims.startswith("**On tiny randomly initialised models: these numbers test")
    cost = pd.read_csv(tables / "cost.csv").set_index("model")
    assert cost.loc["total", "gpu_hours"] == pytest.approx(0.02)  # the fake cells' GPU-hours
    assert cost.loc["total", "cpu_hours"] == 0
    cpu = [_fake_cell(tmp_path / "cpu", "utae", None, "1", 6, 0, 0.3)]
    metrics = json.loads(cpu[0].read_text()) | {"gpu_hours": 0.0, "wall_seconds": 7200.0}
    cpu[0].write_text(json.dumps(metrics))
    write_results(cpu, tmp_path / "cpu_run")
    cost = pd.read_csv(tmp_path / "cpu_run" / "tables" / "cost.csv").set_index("model")
    assert (cost.loc["total", "gpu_hours"], cost.loc["total", "cpu_hours"]) == (0, 2.0)
    assert not (tmp_path / "cpu_run" / "claims.md").read_text().startswith("**On")
