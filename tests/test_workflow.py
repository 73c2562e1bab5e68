"""The Snakemake workflow: schema-validated config, planned jobs, and the demo's data stages."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr
import yaml
from jsonschema import Draft202012Validator

from gfmtune.config import config_schema, settings_schema
from gfmtune.train.settings import TrainSettings
from tests.data.test_store import assert_store_equals_source
from tests.report_browser import landing_page, rendered_figures
from tests.workflow_helpers import REPO, job_counts, readme_commands, run_snakemake


def test_paper_preset_plans_data_stages_offline(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["download"] == 1 and counts["store"] == 1
    assert counts["label_splits"] == 1 and counts["timestep_manifest"] == 5
    assert counts["weights"] == 2  # CROMA-large and SSL4EO DINO; U-TAE trains from scratch
    assert counts["train"] == 140  # (2 GFMs x 3 FT-Rates + U-TAE) x 4 fractions x 5 lengths
    assert counts["results"] == 1 and counts["params"] == 1
    assert not (tmp_path / "results").exists(), "a dry run must not write results"


def test_authors_overlay_plans_the_same_140_cells_with_every_switch(tmp_path: Path) -> None:
    overlay = REPO / "config" / "authors.yaml"
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(overlay))
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train"] == 140
    assert "--argsort avx2" in result.stdout
    settings = yaml.safe_load(overlay.read_text())["train"]["settings"]
    assert settings == {
        "precision": "fp32",
        "dino_eval_resize": "via_input",
        "frame_draw": "authors",
    }
    assert "model~utae_paper/" in result.stdout and "model~utae/" not in result.stdout


def test_resolved_config_replans_the_same_run(tmp_path: Path) -> None:
    """results/<run>/config.yaml holds every overlay and default: given alone as the overlay,
    it plans the same jobs and leaves itself up to date."""
    overlay = REPO / "config" / "demo.yaml"
    made = run_snakemake(tmp_path, "results/demo/config.yaml", "--cores", "1",
                         "--configfile", str(overlay))  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    resolved = tmp_path / "results" / "demo" / "config.yaml"
    text = yaml.safe_load(resolved.read_text())
    assert text["models"] == ["croma_tiny", "dino_tiny", "utae_tiny"]  # the demo overlay's
    assert text["results"]["bootstrap"]["resamples"] == 1000  # a schema default, filled in
    plans = [
        run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(path))
        for path in (overlay, resolved)
    ]
    assert all(plan.returncode == 0 for plan in plans), plans[1].stderr[-2000:]
    demo, again = (job_counts(plan.stdout) for plan in plans)
    assert demo == again and demo["train"] == 42 and "run_config" not in again


def test_ft_sweep_overlay_plans_six_ft_rates(tmp_path: Path) -> None:
    overlay = REPO / "config" / "ft_sweep.yaml"
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(overlay))
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 2 * 6 * 4 * 5 + 20  # 260: GFMs x FT-Rates x fractions x t + U-TAE
    assert counts["results"] == 1 and counts["params"] == 1
    for ft in ("0", "0.01", "0.03", "0.1", "0.3", "1"):
        assert f"results/ft_sweep/cells/model~dino/ft_rate~{ft}/label_percent~1/" in result.stdout
    assert "--params results/ft_sweep/tables/params.csv" in result.stdout


VARIANTS = {"split_variants": {"rnd": {"label_strategy": "random", "seed": 3},
                               "x2": {"argsort": "avx2"}}}  # fmt: skip


def test_split_variants_retrain_the_scarce_cells(tmp_path: Path) -> None:
    """Each variant trains the grid's 1 % and 10 % cells again on its own manifests."""
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", config={"manifests": VARIANTS})
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 140 and counts["train_variant"] == 2 * 70
    assert counts["label_splits"] == 1 and counts["label_split_variant"] == 2
    assert "--strategy random --seed 3 --argsort identity" in result.stdout
    assert "--strategy paper --seed 0 --argsort avx2" in result.stdout
    for percent in (1, 10):
        assert f"cells/split~rnd/model~croma/ft_rate~0.1/label_percent~{percent}/" in result.stdout
        assert f"manifests/label_split~x2/{percent}.csv' --timesteps" in result.stdout
    assert "split~rnd/model~croma/ft_rate~0.1/label_percent~50/" not in result.stdout
    assert "--split-name x2" in result.stdout and "--split-name main" in result.stdout


def test_extra_seeds_train_only_the_scarce_cells(tmp_path: Path) -> None:
    train = {"extra_seeds": [1, 2]}
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", config={"train": train})
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train"] == 140 + 2 * 70  # 1 % and 10 %: 3 seeds
    assert "model~dino/ft_rate~0/label_percent~1/timesteps~6/seed~2/" in result.stdout
    assert "label_percent~50/timesteps~6/seed~1/" not in result.stdout
    train["extra_seed_percents"] = [100]
    result = run_snakemake(tmp_path, "-n", "--cores", "1", config={"train": train})
    assert job_counts(result.stdout)["train"] == 140 + 2 * 35
    train["extra_seed_percents"] = [20]
    result = run_snakemake(tmp_path, "-n", config={"train": train})
    assert result.returncode != 0
    assert "train.extra_seed_percents: 20 is not one of label_percents" in result.stdout


@pytest.mark.parametrize(
    "manifests, message",
    [
        ({"split_variants": {"main": {"argsort": "avx2"}}}, "'main' should not be valid"),
        ({"split_variants": {"R": {}}}, "does not match"),
        ({**VARIANTS, "variant_percents": [5]}, "5 is not one of label_percents"),
    ],
)
def test_bad_split_variants_are_rejected(tmp_path: Path, manifests: dict, message: str) -> None:
    result = run_snakemake(tmp_path, "-n", config={"manifests": manifests})
    assert result.returncode != 0 and message in result.stdout + result.stderr


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


def test_schema_documents_every_training_setting_with_its_default() -> None:
    """The schema's train.settings (what snakemake -n checks) and TrainSettings (what a job uses)
    have the same keys and defaults."""
    Draft202012Validator.check_schema(config_schema())
    properties = settings_schema()["properties"]
    defaults = TrainSettings().to_dict()
    assert set(properties) == set(defaults)
    for key, value in defaults.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert properties[key]["default"] == expected, key
    assert TrainSettings.from_mapping(defaults) == TrainSettings()


def table_lines(markdown: str) -> list[str]:
    """The lines of the first Markdown table in ``markdown``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def documented_table() -> list[str]:
    """The demo's ``tables/miou_100_10.md`` table as docs/demo.md quotes it."""
    text = (REPO / "docs" / "demo.md").read_text()
    return table_lines(text[text.index("Its `tables/miou_100_10.md`") :])


def test_demo_docs_quote_a_table_of_the_whole_grid() -> None:
    table = documented_table()
    assert table[0].startswith("| model | 100 % t=1 |") and len(table) == 2 + 7, table


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_end_to_end_with_report(tmp_path: Path) -> None:
    """The README's first command, its snakemake steps as written: the demo overlay through
    every stage (~8 min on 2 cores), with U-TAE's mIoU rising with frames and with labels, then
    the report."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "demo.yaml", tmp_path / "config" / "demo.yaml")
    demo, report_step = [
        shlex.split(step)[1:] for step in readme_commands()[0] if step.startswith("snakemake ")
    ]
    result = run_snakemake(tmp_path, *demo, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results" / "demo"
    assert_store_equals_source(run / "data" / "s2.zarr", run / "raw" / "pastis")
    assert xr.open_zarr(run / "data" / "s2.zarr").attrs["source"]["source"] == "synthetic"
    for t in (1, 6, 15):
        assert len(pd.read_csv(run / "manifests" / "timesteps" / f"{t}.csv")) == 100

    table = pd.read_csv(run / "tables" / "miou.csv")
    assert len(table) == 2 * 3 * 2 * 3 + 2 * 3  # GFMs x FT-Rates x fractions x frames + U-TAE
    utae = table[table.model == "U-TAE"].set_index(["label_percent", "timesteps"]).miou_paper
    for percent in (10, 100):
        assert utae[percent, 1] < utae[percent, 6] < utae[percent, 15], utae
    for t in (1, 6, 15):
        assert utae[100, t] > utae[10, t], utae
    # portable CPU numerics: every x86-64 CPU with AVX2 prints the table docs/demo.md shows
    assert table_lines((run / "tables" / "miou_100_10.md").read_text()) == documented_table()
    for name in ("miou_100_10.md", "miou_100_10.tex", "comparison.md", "cost.csv", "params.csv",
                 "params_paper.csv"):  # fmt: skip
        assert (run / "tables" / name).stat().st_size > 0, name
    params = pd.read_csv(run / "tables" / "params.csv")
    assert params.name.tolist() == ["croma_tiny", "dino_tiny", "utae_tiny"]  # the run's models
    figures = ("miou_vs_frames", "heatmaps", "predictions", "training_curves", "miou_vs_ftrate",
               "cost_pareto")  # fmt: skip
    for figure in figures:
        assert {f.suffix for f in (run / "figures").glob(f"{figure}.*")} == {".png", ".pdf"}
    assert {d.name for d in (run / "maps").iterdir() if d.is_dir()} == {
        "croma", "dino", "u-tae", "labels"
    }  # fmt: skip
    assert "| claim |" in (run / "claims.md").read_text()
    assert "<table>" in (run / "claims.html").read_text()
    assert "<table>" in (run / "tables" / "miou_100_10.html").read_text()

    made = run_snakemake(tmp_path, *report_step)
    assert made.returncode == 0, made.stderr[-2000:]
    report = tmp_path / report_step[report_step.index("--report") + 1]
    results = ["miou_vs_frames.png", "heatmaps.png", "miou_vs_ftrate.png"]
    widths = rendered_figures(report, "Results", results, "Figures")
    widths |= rendered_figures(report, "Training", ["training_curves.png"])
    widths |= rendered_figures(report, "Cost", ["cost_pareto.png"])
    widths |= rendered_figures(report, "Maps", ["predictions.png"])
    assert len(widths) == 6 and all(width > 500 for width in widths.values()), widths
    # the landing page says the data are synthetic and shows the paper's table and the claims;
    # every listing labels its entries, the data among them
    shown = landing_page(report, "Results", "Tables")
    assert "Synthetic data" in shown["caveat"] and "not the paper's findings" in shown["caveat"]
    assert "not PASTIS-HD" in shown["text"]
    assert "on PASTIS-HD Sentinel-2 series" not in shown["text"]
    layout, claims = shown["tables"]
    assert layout["shown"] and claims["shown"] and layout["width"] > 300, shown["tables"]
    assert not layout["cut"] and not claims["cut"], shown["tables"]  # the page gives them room
    assert [row[0] for row in layout["rows"][2:]] == [
        "CROMA 0.0", "CROMA 0.1", "CROMA 1.0", "DINO 0.0", "DINO 0.1", "DINO 1.0", "U-TAE"
    ]  # fmt: skip
    assert "decided on" in claims["rows"][0] and len(claims["rows"]) == 1 + 8
    listing = shown["listing"]
    assert [h.lower() for h in listing["head"][:2]] == ["output", "data"], listing
    assert {row[1] for row in listing["rows"]} == {"synthetic (embedded generator, not PASTIS-HD)"}
    assert any(row[0].startswith("miou_100_10.html: ") for row in listing["rows"]), listing

    again = run_snakemake(tmp_path, *demo)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_split_variant_and_seeds_end_to_end(tmp_path: Path) -> None:
    """U-TAE-tiny at 10 % and 100 %, two seeds, one random split variant: the variant's cells
    record their split, stay out of the paper tables, and the spread table compares them."""
    mini = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    mini |= {"run": "mini", "models": ["utae_tiny"]}
    mini["manifests"] = {
        "label_percents": [10, 100],
        "timesteps": [1],
        "split_variants": {"rnd": {"label_strategy": "random", "seed": 3}},
    }
    mini["train"] |= {"seeds": [0, 1]}
    mini["train"]["settings"] |= {"epochs": 2}  # fmt: skip
    result = run_snakemake(tmp_path, "--cores", "2", "--until", "results", config=mini,
                           timeout=800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results" / "mini"
    variant = run / "cells" / "split~rnd" / "model~utae_tiny" / "ft_rate~none"
    assert {p.name for p in variant.iterdir()} == {"label_percent~10"}
    metrics = variant / "label_percent~10" / "timesteps~1" / "seed~1" / "metrics.json"
    assert '"split": "rnd"' in metrics.read_text()
    table = pd.read_csv(run / "tables" / "miou.csv")
    assert sorted(table.split) == ["main"] * 4 + ["rnd"] * 2
    layout = (run / "tables" / "miou_100_10.md").read_text()
    main10 = table[(table.split == "main") & (table.label_percent == 10)].miou_paper
    assert f"| **{main10.mean():.2f} [" in layout  # the main split's mean, with its interval
    moved = pd.read_csv(run / "tables" / "split_spread.csv").set_index("label_percent")
    assert moved.loc[10.0, "runs"] == 4 and moved.loc[10.0, "splits"] == "main, rnd"
    assert moved.loc[100.0, "runs"] == 2 and pd.isna(moved.loc[100.0, "split_range"])


def _one_epoch_run(
    tmp_path: Path, run: str, models: list[str], timesteps: int, ft_rates: list[float]
) -> Path:
    """The demo preset for ``models`` at 100 % of the labels, ``timesteps`` frames and
    ``ft_rates``, one epoch, run to its tables (the folder returned)."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config |= {"run": run, "models": models}
    config["manifests"] = {"label_percents": [100], "timesteps": [timesteps]}
    config["train"] |= {"ft_rates": ft_rates}
    config["train"]["settings"] |= {"epochs": 1}
    result = run_snakemake(tmp_path, "--cores", "2", "--until", "results",
                           config=config, timeout=800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "results" / run / "tables"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_new_encoders_run_through_the_workflow(tmp_path: Path) -> None:
    """The tiny MoCo and Prithvi models train on the synthetic data and reach the tables."""
    tables = _one_epoch_run(tmp_path, "enc", ["moco_tiny", "prithvi_tiny"], 1, [0.0, 0.1])
    miou = pd.read_csv(tables / "miou.csv")
    assert sorted(zip(miou.model, miou.ft_rate, strict=True)) == [
        ("MoCo", 0.0), ("MoCo", 0.1), ("Prithvi", 0.0), ("Prithvi", 0.1)
    ]  # fmt: skip
    assert miou.miou_paper.between(0, 100).all()
    params = pd.read_csv(tables / "params.csv")
    assert params.name.tolist() == ["moco_tiny", "prithvi_tiny"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_feeding_variants_run_through_the_workflow(tmp_path: Path) -> None:
    """The tiny forms of the feeding variants (MoCo on its pretraining scale, Prithvi at 224 px
    and over time, DINO with the mean over time) train on the demo's data, fine-tuned on 6
    frames, and reach the tables as rows of their own."""
    models = ["moco_scaled_tiny", "prithvi_224_tiny", "prithvi_time_tiny", "dino_mean_tiny"]
    tables = _one_epoch_run(tmp_path, "feed", models, 6, [0.1])
    miou = pd.read_csv(tables / "miou.csv")
    assert len(miou) == 4 and set(miou.timesteps) == {6}
    assert miou.model.nunique() == 4, miou.model.tolist()  # a row of its own each
    assert miou.miou_paper.between(0, 100).all()
    assert sorted(pd.read_csv(tables / "params.csv").name) == sorted(models)


def test_aggregator_overlay_plans_a_pooled_row_beside_the_ltae(tmp_path: Path) -> None:
    """config/aggregator.yaml on the demo: dino_mean_tiny's cells beside dino_tiny's in one run,
    and the run's params table with the temporal module of each."""
    overlays = [str(REPO / "config" / name) for name in ("demo.yaml", "aggregator.yaml")]
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", *overlays)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 2 * 3 * 2 * 3 + 6  # GFMs x FT-Rates x fractions x t + U-TAE
    assert counts["params"] == 1 and counts["results"] == 1
    for model in ("dino_tiny", "dino_mean_tiny"):
        assert f"results/aggregator/cells/model~{model}/ft_rate~0/label_percent~10/" in (
            result.stdout
        )
    assert "model~croma_tiny/" not in result.stdout
    assert "--models dino_tiny dino_mean_tiny utae_tiny --temporal ltae --frames 15" in (
        result.stdout
    )
