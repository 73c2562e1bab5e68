"""Results: the published numbers through our table code give the paper's layout; aggregation,
seeds, comparison, figures and the claims check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gfmtune.pastis import CLASS_NAMES
from gfmtune.results import claims, claims_table, tables
from gfmtune.results.command import write_results
from gfmtune.results.published import published

PAPER = Path(__file__).resolve().parents[2] / "src" / "gfmtune" / "resources" / "published_miou.csv"


def _paper_summary() -> pd.DataFrame:
    return tables.summarize(published().rename(columns={"miou": "miou_paper"}))


def test_published_numbers_give_the_paper_layout() -> None:
    raw = pd.read_csv(PAPER)
    assert len(raw) == 140
    groups = tables.fraction_groups(list(raw.label_percent.unique()))
    assert groups == [[100, 50], [10, 1]]
    grid = tables.layout(_paper_summary(), [100, 50])
    assert grid.index.tolist() == ["CROMA 0.0", "CROMA 0.1", "CROMA 1.0", "DINO 0.0",
                                   "DINO 0.1", "DINO 1.0", "U-TAE"]  # fmt: skip
    assert [(p, t) for p, t in grid.columns] == [(p, t) for p in (100, 50)
                                                 for t in (1, 6, 15, 25, 35)]  # fmt: skip
    markdown = tables.to_markdown(grid).splitlines()
    assert markdown[0].startswith("| model | 100 % t=1 | 100 % t=6")
    # every value of the CSV appears in its place; the column maxima are the bold ones
    for row in raw.itertuples():
        label = row.model if pd.isna(row.ft_rate) else f"{row.model} {row.ft_rate:.1f}"
        if row.label_percent in (100, 50):
            assert grid.loc[label, (row.label_percent, row.timesteps)] == row.miou
    csv = pd.read_csv(pd.io.common.StringIO(tables.to_csv(tables.layout(_paper_summary(),
                                                                           [10, 1]))))  # fmt: skip
    values = [c for c in csv.columns[1:] if not c.endswith(("_low", "_high"))]
    assert csv[[f"{c}_{b}" for c in values for b in ("low", "high")]].isna().all().all()
    starred = {c: csv.model[csv[c].astype(str).str.endswith("*")].tolist() for c in values}
    for (p, t), col in zip([(p, t) for p in (10, 1) for t in (1, 6, 15, 25, 35)],
                           values, strict=True):  # fmt: skip
        cell = raw[(raw.label_percent == p) & (raw.timesteps == t)]
        top = cell[cell.miou == cell.miou.max()]
        names = [m if pd.isna(f) else f"{m} {f:.1f}" for m, f in zip(top.model, top.ft_rate,
                                                                        strict=True)]  # fmt: skip
        assert starred[col] == names
    assert "\\textbf{19.52}" in tables.to_latex(grid)


def test_claims_on_the_published_numbers() -> None:
    """No per-patch data: point verdicts, labelled as such."""
    checked = claims.check_claims(_paper_summary())
    verdicts = [c["verdict"] for c in checked]
    assert verdicts == ["true", "true", "true", "true", "true", "true", "true", "false"]
    assert all(c["basis"] == claims.POINT and c["interval"] is None for c in checked)
    md = claims_table.to_markdown(checked)
    assert md.startswith("Point estimates only") and md.count("(point estimate)") == 8
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 8


def _curves(gains: dict[float, float], t6: float = 40.0) -> pd.DataFrame:
    """Summary of CROMA 0.0 and U-TAE at t = 1, 6, 35 where mIoU changes by ``gains[p]`` (a
    fraction) from 6 to 35 frames at label fraction p; U-TAE 5 points lower."""
    rows = [
        {"model": model, "ft_rate": ft, "label_percent": p, "timesteps": t,
         "miou_paper": {1: base - 5.0, 6: base, 35: base * (1 + g)}[t]}
        for model, ft, base in (("CROMA", 0.0, t6), ("U-TAE", None, t6 - 5.0))
        for p, g in gains.items() for t in (1, 6, 35)
    ]  # fmt: skip
    return tables.summarize(pd.DataFrame(rows))


def _longer_series_claim(summary: pd.DataFrame) -> dict:
    (claim,) = [c for c in claims.check_claims(summary) if c["claim"].startswith("Longer series")]
    return claim


@pytest.mark.parametrize(
    "gains, verdict",
    [
        ({1: -0.19, 100: -0.21}, "false"),  # losses at both fractions (the demo's case)
        ({1: 0.40, 100: 0.10}, "true"),  # a clear gain, larger with scarce labels
        ({1: 0.10, 100: 0.40}, "false"),  # a gain, but larger with abundant labels
        ({1: 0.05, 100: -0.30}, "true"),  # helps only with scarce labels
    ],
)
def test_longer_series_claim_needs_a_positive_gain(gains: dict, verdict: str) -> None:
    claim = _longer_series_claim(_curves(gains))
    assert claim["verdict"] == verdict
    reported = list(claim["evidence"].values())
    assert reported == pytest.approx([100 * gains[1], 100 * gains[100]], abs=0.1)
    assert claim["rule"].endswith("> 0") and "gain (%)" in claim["rule"]


def test_every_claim_rule_states_its_sign() -> None:
    for claim in claims.check_claims(_paper_summary()):
        assert re.search(r"(>|<=) \d+( points)?\b", claim["rule"]), claim["rule"]


def test_claims_with_the_sign_against_them_are_false() -> None:
    """The frozen GFM above U-TAE at full labels and below it with scarce labels."""
    summary = _curves({1: 0.2, 100: 0.1})
    flipped = summary.assign(
        mean=summary["mean"].where(
            (summary.model == "CROMA") == (summary.label_percent == 1), summary["mean"] + 10
        )
    )
    by_claim = {c["claim"].split(",")[-1].strip(): c for c in claims.check_claims(flipped)}
    assert by_claim["frozen GFMs lose to U-TAE whenever t > 1."]["verdict"] == "false"
    scarce = by_claim["even frozen CROMA beats U-TAE."]
    assert scarce["verdict"] == "false" and scarce["evidence"]["difference"] < 0


def _fake_cell(folder: Path, model: str, ft, percent: str, t: int, seed: int, miou: float) -> Path:
    per_class = {n: {"iou": miou, "precision": 0.5, "recall": 0.5, "support": 1}
                 for n in CLASS_NAMES}  # fmt: skip
    metrics = {"cell": {"model": model, "ft_rate": ft, "label_percent": percent,
                        "timesteps": t, "seed": seed},
               "test": {"miou": miou, "miou_paper": 0.95 * miou, "oa": 0.5,
                        "per_class": per_class},
               "best_epoch": 3, "wall_seconds": 10.0, "gpu_hours": 0.01}  # fmt: skip
    path = folder / f"{model}_{ft}_{percent}_{t}_{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    return path


def test_write_results_with_seeds(tmp_path: Path) -> None:
    cells, rng = [], np.random.default_rng(0)
    for model, fts in (("croma", [0.0, 1.0]), ("utae", [None])):
        for ft in fts:
            for percent in ("100", "10"):
                for t in (1, 6):
                    for seed in (0, 1):
                        value = 0.2 + 0.01 * t + rng.uniform(0, 0.01)
                        cells.append(_fake_cell(tmp_path / "cells", model, ft, percent, t,
                                                seed, value))  # fmt: skip
    written = write_results(cells, tmp_path / "run")
    table = pd.read_csv(tmp_path / "run" / "tables" / "miou.csv")
    assert len(table) == 24 and set(table.model) == {"CROMA", "U-TAE"}
    assert table.loc[table.model == "U-TAE", "ft_rate"].isna().all()
    assert {"miou", "miou_paper", "oa", "gpu_hours", "seed", "iou_Meadow"} <= set(table.columns)
    md = (tmp_path / "run" / "tables" / "miou_100_10.md").read_text()
    assert "±" in md and md.count("**") >= 2 * 4  # mean ± std over seeds; a best per column
    comparison = pd.read_csv(tmp_path / "run" / "tables" / "comparison.csv")
    row = comparison[(comparison.model == "U-TAE") & (comparison.label_percent == 100)
                     & (comparison.timesteps == 6)].iloc[0]  # fmt: skip
    assert row.paper == 45.45 and row["diff"] == pytest.approx(row.ours - 45.45, abs=0.01)
    cost = pd.read_csv(tmp_path / "run" / "tables" / "cost.csv").set_index("model")
    assert cost.loc["total", "gpu_hours"] == pytest.approx(0.24)
    for figure in written["figures"]:
        assert figure.stat().st_size > 10_000
    assert len(json.loads((tmp_path / "run" / "claims.json").read_text())) == 8


def test_aggregate_rejects_unfinished_cells(tmp_path: Path) -> None:
    broken = tmp_path / "metrics.json"
    broken.write_text("{}")
    with pytest.raises(ValueError, match=r"metrics\.json"):
        write_results([broken], tmp_path / "run")


def test_claims_say_what_they_were_decided_on() -> None:
    """A run of one GFM decides "FT-Rate is worth tuning" on that model alone, and says so."""
    paper = _paper_summary()
    full = {c["claim"]: c for c in claims.check_claims(paper)}
    dino = {c["claim"]: c for c in claims.check_claims(paper[paper.model.isin(["DINO", "U-TAE"])])}
    ft = "FT-Rate is a hyperparameter worth tuning."
    assert full[ft]["decided_on"]["rows"] == [f"{m} {f}" for m in ("CROMA", "DINO")
                                              for f in ("0.0", "0.1", "1.0")]  # fmt: skip
    assert full[ft]["decided_on"]["cells"] == 2 * 3 * 4 * 5
    assert not full[ft]["decided_on"]["missing"]
    assert dino[ft]["decided_on"]["rows"] == ["DINO 0.0", "DINO 0.1", "DINO 1.0"]
    assert dino[ft]["decided_on"]["missing"] == ["CROMA"]
    assert claims_table.decided_on_text(dino[ft]["decided_on"]) == (
        "60 cells: DINO 0.0/0.1/1.0; 100 %, 50 %, 10 %, 1 %; t = 1, 6, 15, 25, 35; "
        "no CROMA cells in this run"
    )
    frozen = "With abundant labels (100 %), frozen GFMs lose to U-TAE whenever t > 1."
    assert full[frozen]["decided_on"]["timesteps"] == [6, 15, 25, 35]  # t > 1 only
    assert dino[frozen]["decided_on"]["rows"] == ["DINO 0.0", "U-TAE"]
    scarce = "With scarce labels (1 %), even frozen CROMA beats U-TAE."
    assert dino[scarce]["verdict"] == "undetermined"
    basis = claims_table.decided_on_text(dino[scarce]["decided_on"])
    assert basis == "no cells; no CROMA cells in this run"
    md = claims_table.to_markdown(list(dino.values()))
    assert md.count("no CROMA cells in this run") == 7  # all but "fully tuned DINO beats U-TAE"
    assert "| decided on |" in md


def test_published_column_says_what_its_number_is() -> None:
    paper = _paper_summary()
    checked = claims.with_published(claims.check_claims(paper), claims.check_claims(paper))
    assert {c["unit"] for c in checked} == {"points", "%"}
    md = claims_table.to_markdown(checked)
    assert f"| {claims_table.PUBLISHED} |" in md
    assert (
        "rule's statistic" in claims_table.PUBLISHED and "paper's numbers" in claims_table.PUBLISHED
    )
    frozen, *_, longer = md.splitlines()[-8:]
    assert "| true (0.96 points) |" in frozen and "| 0.96 points |" in frozen
    assert "| false (-0.34 %) |" in longer
    assert "then the rule's statistic computed on them, in the rule's unit" in md
