"""The Snakemake workflow: schema-validated config, planned jobs, and the demo's data stages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from tests.data.test_store import assert_store_equals_source
from tests.report_browser import rendered_figures
from tests.workflow_helpers import job_counts, run_snakemake


def test_paper_preset_plans_data_stages_offline(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["download"] == 1 and counts["zarr_store"] == 1
    assert counts["label_splits"] == 1 and counts["timestep_manifest"] == 5
    assert counts["weights"] == 2  # CROMA-large and SSL4EO DINO; U-TAE trains from scratch
    assert counts["train"] == 140  # (2 GFMs x 3 FT-Rates + U-TAE) x 4 fractions x 5 lengths
    assert counts["results"] == 1 and counts["params"] == 1
    assert not (tmp_path / "results").exists(), "a dry run must not write results"


def test_lint_is_clean(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_config_is_rejected(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, "-n", config={"data": {"source": "ftp"}})
    assert result.returncode != 0
    assert "'ftp' is not one of" in result.stdout + result.stderr


def test_schema_defaults_fill_missing_keys(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, "-n", "--cores", "1",
                           config={"run": "mini", "manifests": {"timesteps": [6]}})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["timestep_manifest"] == 1
    assert "results/mini/manifests/label_split/100.csv" in result.stdout


@pytest.mark.slow
def test_demo_end_to_end_with_report(tmp_path: Path) -> None:
    overlay = {
        "run": "e2e",
        "models": ["croma_tiny", "utae_tiny"],
        "manifests": {"label_percents": [100], "timesteps": [1, 6]},
        "train": {"ft_rates": [0.0], "gpus": 0,
                  "settings": {"epochs": 1, "batch_size": 2, "workers": 0}},
        "data": {"source": "synthetic",
                 "synthetic": {"patches": 15, "size": 32, "frames_per_tile": [7, 12]}},
        "store": {"threads": 2},
    }  # fmt: skip
    result = run_snakemake(tmp_path, "--cores", "2", config=overlay)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results" / "e2e"
    assert_store_equals_source(run / "data" / "s2.zarr", run / "raw" / "pastis")
    ds = xr.open_zarr(run / "data" / "s2.zarr")
    assert ds.attrs["source"]["source"] == "synthetic"
    for t in (1, 6):
        assert len(pd.read_csv(run / "manifests" / "timesteps" / f"{t}.csv")) == 15
    assert len(pd.read_csv(run / "manifests" / "label_split" / "100.csv")) > 0
    cells = sorted((run / "cells").rglob("metrics.json"))
    assert len(cells) == 4  # (croma_tiny at FT-Rate 0 + utae_tiny) x 2 frame counts
    assert {json.loads(c.read_text())["cell"]["model"] for c in cells} == {
        "croma_tiny",
        "utae_tiny",
    }
    assert len(pd.read_csv(run / "tables" / "miou.csv")) == 4
    assert (run / "claims.md").exists() and (run / "figures" / "heatmaps.pdf").exists()
    assert list(pd.read_csv(run / "tables" / "params.csv").model) == ["CROMA", "DINO", "U-TAE"]
    report = tmp_path / "report.html"
    made = run_snakemake(tmp_path, "--report", str(report), config=overlay)
    assert made.returncode == 0, made.stderr[-2000:]
    widths = rendered_figures(report, "Figures", ["miou_vs_frames.png", "heatmaps.png"])
    assert all(width > 500 for width in widths.values()), widths

    again = run_snakemake(tmp_path, "--cores", "2", config=overlay)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
