"""FT-Rate as a hyperparameter: any FT-Rate list through the results, the tuned row picked on
validation (never on test), mIoU against FT-Rate, and the cost figure's points and front."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gfmtune.cli import main
from gfmtune.models.params import parameter_table
from gfmtune.results import cost, ftrate, tables, uncertainty
from gfmtune.results.aggregate import collect
from gfmtune.results.command import write_results
from tests.results.test_results import _fake_cell
from tests.results.test_uncertainty import _cell, _predict, _targets

SWEEP = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0]
PAPER_ROWS = ["CROMA 0.0", "CROMA 0.1", "CROMA 1.0", "DINO 0.0", "DINO 0.1", "DINO 1.0", "U-TAE"]


def _with_val(path: Path, val: float, metric: str = "miou_paper") -> Path:
    """``path``'s metrics.json with a validation score ``val`` (fraction) of ``metric``."""
    metrics = json.loads(path.read_text())
    metrics |= {"val_best": {"miou": val, "miou_paper": val, "oa": val}, "select_metric": metric}
    path.write_text(json.dumps(metrics))
    return path


def _grid(folder: Path, rates: list[float], models=("croma_tiny", "dino_tiny")) -> list[Path]:
    """GFM cells at ``rates`` and U-TAE, fractions 100 and 10, t = 1 and 6, one seed; test and
    validation scores drawn independently."""
    rng, cells = np.random.default_rng(1), []
    for model, fts in [*((m, rates) for m in models), ("utae_tiny", [None])]:
        for ft in fts:
            for percent in ("100", "10"):
                for t in (1, 6):
                    test, val = rng.uniform(0.2, 0.6, size=2)
                    path = _fake_cell(folder, model, ft, percent, t, 0, float(test))
                    cells.append(_with_val(path, float(val)))
    return cells


def _layout_rows(run: Path, name: str = "miou_100_10.csv") -> list[str]:
    return pd.read_csv(run / "tables" / name).model.tolist()


def test_row_labels_print_ft_rates_exactly() -> None:
    labels = [tables.row_label("CROMA", f) for f in SWEEP]
    assert labels == ["CROMA 0.0", "CROMA 0.01", "CROMA 0.03", "CROMA 0.1", "CROMA 0.3",
                      "CROMA 1.0"]  # fmt: skip
    assert tables.row_label("U-TAE", -1.0) == "U-TAE"
    assert tables.row_label("DINO", tables.TUNED) == "DINO tuned"


def test_a_finer_ft_rate_axis_runs_through_every_output(tmp_path: Path) -> None:
    cells = _grid(tmp_path / "cells", SWEEP)
    params = tmp_path / "params.csv"
    parameter_table(["croma_tiny", "dino_tiny", "utae_tiny"]).to_csv(params, index=False)
    run = tmp_path / "run"
    args = ["results", "--cells", *map(str, cells), "--out", str(run), "--params", str(params)]
    assert main(args) == 0
    rows = _layout_rows(run)
    gfm = [tables.row_label(m, f) for m in ("CROMA", "DINO") for f in [*SWEEP, tables.TUNED]]
    assert rows == [*gfm[:7], *gfm[7:], "U-TAE"]
    table = pd.read_csv(run / "tables" / "miou.csv")
    assert {"val_miou", "val_miou_paper", "select_metric"} <= set(table.columns)
    comparison = pd.read_csv(run / "tables" / "comparison.csv")
    published = comparison[comparison.model != "U-TAE"].groupby("ft_rate").paper.count()
    assert published[published > 0].index.tolist() == [0.0, 0.1, 1.0]  # only the paper's
    assert len(comparison) == 2 * 6 * 2 * 2 + 4
    assert len(json.loads((run / "claims.json").read_text())) == 8
    tuned = pd.read_csv(run / "tables" / "ft_tuned.csv")
    assert len(tuned) == 2 * 2 * 2 and (tuned.candidates == 6).all()
    for name in ("miou_vs_ftrate", "cost_pareto", "heatmaps", "miou_vs_frames"):
        for suffix in (".png", ".pdf"):
            assert (run / "figures" / f"{name}{suffix}").stat().st_size > 10_000, name
    points, unit = cost.cost_points(collect(cells), "miou_paper", cost.read_params(params))
    assert unit == "GPU-hours" and len(points) == (2 * 6 + 1) * 2
    croma = points[(points.model == "CROMA") & (points.label_percent == 100)]
    frozen, tuned_encoder = croma.trainable.iloc[0], croma.trainable.iloc[1:]
    assert (tuned_encoder > frozen).all() and tuned_encoder.nunique() == 1


def test_the_paper_preset_tables_have_no_tuned_row(tmp_path: Path) -> None:
    cells = _grid(tmp_path / "cells", [0.0, 0.1, 1.0], models=("croma", "dino"))
    write_results(cells, tmp_path / "run")
    assert _layout_rows(tmp_path / "run") == PAPER_ROWS
    for suffix in (".md", ".tex"):
        assert "tuned" not in (tmp_path / "run" / "tables" / f"miou_100_10{suffix}").read_text()
    assert len(pd.read_csv(tmp_path / "run" / "tables" / "ft_tuned.csv")) == 2 * 2 * 2


def test_tuned_row_picks_on_validation_when_test_disagrees(tmp_path: Path) -> None:
    """Validation (mean over two seeds) favours 0.03, test favours 0.3; one seed of 0.1 has the
    highest single validation score but the lower mean. The tuned row is 0.03's test value."""
    val = {0.0: (0.30, 0.30), 0.01: (0.40, 0.40), 0.03: (0.50, 0.48), 0.1: (0.55, 0.30),
           0.3: (0.35, 0.35), 1.0: (0.20, 0.20)}  # fmt: skip
    test = {0.0: 0.30, 0.01: 0.35, 0.03: 0.40, 0.1: 0.41, 0.3: 0.60, 1.0: 0.25}
    cells = [_with_val(_fake_cell(tmp_path / "c", "croma", ft, "1", 6, seed, test[ft]),
                       val[ft][seed])
             for ft in SWEEP for seed in (0, 1)]  # fmt: skip
    write_results(cells, tmp_path / "run")
    (row,) = pd.read_csv(tmp_path / "run" / "tables" / "ft_tuned.csv").to_dict("records")
    assert row["chosen_ft_rate"] == 0.03 and row["val_score"] == pytest.approx(49.0)
    assert row["test_miou_paper"] == pytest.approx(100 * 0.95 * 0.40, abs=0.01)
    assert (row["best_test_ft_rate"], row["seeds"]) == (0.3, 2)
    grid = pd.read_csv(tmp_path / "run" / "tables" / "miou_1.csv").set_index("model")
    assert grid.loc["CROMA tuned", "1%_t6"] == grid.loc["CROMA 0.03", "1%_t6"]
    assert grid.loc["CROMA 0.3", "1%_t6"].endswith("*")  # the column's best is still 0.3


def _summary(val: dict[float, float | None], metric: str = "miou_paper") -> pd.DataFrame:
    """miou.csv rows of CROMA at 1 %, t = 6, one seed per FT-Rate, test 40 % everywhere."""
    rows = [{"model": "CROMA", "ft_rate": ft, "label_percent": 1.0, "timesteps": 6, "seed": 0,
             "split": "main", "miou_paper": 40.0, "select_metric": metric,
             f"val_{metric}": np.nan if v is None else v} for ft, v in val.items()]  # fmt: skip
    return pd.DataFrame(rows)


def test_equal_validation_scores_go_to_the_smaller_ft_rate() -> None:
    table = _summary({1.0: 50.0, 0.03: 50.0, 0.1: 49.0})
    picks = ftrate.tuned(table, tables.summarize(table))
    assert picks.ft_rate.tolist() == [0.03]
    oa = _summary({0.3: 60.0, 0.1: 70.0}, metric="oa")  # selection on the cells' own metric
    assert ftrate.tuned(oa, tables.summarize(oa)).ft_rate.tolist() == [0.1]


def test_no_pick_without_every_validation_score_or_with_mixed_metrics() -> None:
    table = _summary({0.0: 50.0, 0.1: None})
    assert ftrate.tuned(table, tables.summarize(table)).empty
    mixed = pd.concat([_summary({0.0: 50.0}), _summary({0.1: 40.0}, metric="oa")])
    with pytest.raises(ValueError, match="different validation metrics"):
        ftrate.tuned(mixed, tables.summarize(mixed))


def test_tuned_interval_is_the_chosen_cells_and_curves_have_intervals(tmp_path: Path) -> None:
    targets, cells = _targets(), []
    for ft, accuracy, val in ((0.0, 0.5, 0.3), (0.1, 0.8, 0.2), (1.0, 0.6, 0.4)):
        for percent in ("1", "100"):
            path = _cell(tmp_path / "c", "croma", ft, percent, 0, _predict(targets, accuracy, 2))
            cells.append(_with_val(path, val))
    write_results(cells, tmp_path / "run", resamples=200)
    tuned = pd.read_csv(tmp_path / "run" / "tables" / "ft_tuned.csv").set_index("label_percent")
    comparison = pd.read_csv(tmp_path / "run" / "tables" / "comparison.csv")
    chosen = comparison[comparison.ft_rate == 1.0].set_index("label_percent")
    assert (tuned.chosen_ft_rate == 1.0).all() and (tuned.best_test_ft_rate == 0.1).all()
    for column, ours in (("test_low", "low"), ("test_high", "high")):
        assert tuned[column].to_numpy() == pytest.approx(chosen[ours].to_numpy(), abs=0.01)
    table = collect(cells)
    reps = uncertainty.bootstrap(cells, table, 200)
    ours = uncertainty.cell_intervals(tables.summarize(table), reps, "miou_paper")
    curves = ftrate.curves(ours, reps, "miou_paper")
    assert len(curves) == 6 and (curves.low <= curves["mean"]).all()
    assert (curves["mean"] <= curves.high).all()


def test_pareto_front_keeps_the_points_no_cheaper_point_matches() -> None:
    cost_ = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 0.5])
    value = np.array([50.0, 55.0, 52.0, 54.0, 60.0, 50.0])
    assert cost.pareto_front(cost_, value).tolist() == [5, 1, 4]


def test_cost_points_use_cpu_hours_without_a_gpu(tmp_path: Path) -> None:
    cells = _grid(tmp_path / "c", [0.0, 1.0], models=("croma",))
    for path in cells:
        metrics = json.loads(path.read_text()) | {"gpu_hours": 0.0, "wall_seconds": 1800.0}
        path.write_text(json.dumps(metrics))
    points, unit = cost.cost_points(collect(cells), "miou_paper")
    assert unit == "CPU-hours" and (points.hours == 0.5).all() and points.trainable.isna().all()
    bad = tmp_path / "params.csv"
    bad.write_text("name,model\ncroma,CROMA\n")
    with pytest.raises(ValueError, match=r"params\.csv: not a `gfmtune params` table"):
        cost.read_params(bad)
