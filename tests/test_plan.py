"""``gfmtune plan``: the grid it prices is the workflow's, its FLOPs are train_epoch's and
evaluate's as FlopCounterMode counts them directly, measured times replace the estimate of their
rows, its disk is the arithmetic of the counted shapes, and a bad configuration stops it with
the workflow's own lines."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gfmtune.bench.grid import STEPS_PER_EPOCH
from gfmtune.bench.measure import REGIMES, Shape, counted, synthetic_batch
from gfmtune.cli import main
from gfmtune.config import ConfigError, validate_config
from gfmtune.models.registry import build_model, get_spec
from gfmtune.plan import command, cost, report
from gfmtune.plan.data import PASTIS, data_facts
from gfmtune.plan.disk import job_disk, megabytes
from gfmtune.plan.flop_table import shipped
from gfmtune.plan.flops import FlopKey, count
from gfmtune.plan.load import load_config, merged_config
from gfmtune.train.feature_cache import cached_levels
from gfmtune.train.loop import build_optimizer, build_scheduler, evaluate, train_epoch
from gfmtune.train.settings import TrainSettings
from tests.faults.test_config_faults import config_with
from tests.workflow_helpers import REPO

PRESET = REPO / "workflow_config.yaml"
DEMO = REPO / "config" / "demo.yaml"


def plan_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(["--preset", str(PRESET), *argv])


def jobs_of(*configfiles: Path, entries: tuple[str, ...] = ()) -> list[cost.Job]:
    config = load_config(PRESET, configfiles, entries)
    return cost.jobs(config, data_facts(config))


# ---- the grid ---------------------------------------------------------------------------------


def test_paper_preset_plans_140_jobs() -> None:
    jobs = jobs_of()
    assert len(jobs) == 140  # (2 GFMs x 3 FT-Rates + U-TAE) x 4 fractions x 5 lengths
    regimes = {(j.key.model, j.key.regime) for j in jobs}
    assert regimes == {("croma", "frozen"), ("croma", "finetune"), ("dino", "frozen"),
                       ("dino", "finetune"), ("utae", "scratch")}  # fmt: skip
    assert {j.train_steps for j in jobs} == {80 * s for s in STEPS_PER_EPOCH.values()}
    assert {j.eval_patches for j in jobs} == {81 * 489}  # 80 validations and the test
    assert {j.cache_kind for j in jobs if j.key.model == "dino" and j.key.regime == "frozen"} == {
        "features"
    }
    assert {j.cache_kind for j in jobs if j.key.model == "croma"} == {None}  # eval_cache off


def test_demo_plans_42_jobs_on_its_synthetic_data() -> None:
    jobs = jobs_of(DEMO)
    assert len(jobs) == 42  # as snakemake -n plans it (tests/test_workflow.py)
    assert {j.key.size for j in jobs} == {32} and {j.batch for j in jobs} == {4}
    # 100 patches, 20 per fold: 60 training patches; 10 % = 6, one step of 4 (drop_last)
    steps = {j.cell.label_percent: j.train_steps for j in jobs}
    assert steps == {"10": 20 * 1, "100": 20 * 15}
    assert {j.eval_patches for j in jobs} == {20 * 20 + 20}
    croma_frozen = {j.cache_kind for j in jobs if j.key == FlopKey("croma_tiny", "frozen", 1, 32)}
    assert croma_frozen == {"windows"}  # the demo's eval_cache


def test_variants_and_extra_seeds_add_their_jobs() -> None:
    variants = "manifests={split_variants: {rnd: {label_strategy: random}}}"
    assert len(jobs_of(entries=(variants,))) == 140 + 70  # the 1 % and 10 % cells again
    assert len(jobs_of(entries=("train={extra_seeds: [1, 2]}",))) == 140 + 2 * 70


def test_overlays_and_entries_merge_as_snakemake_merges_them() -> None:
    entries = ["run=x", "train={settings: {epochs: 3}}"]
    merged = merged_config(PRESET, [DEMO], entries)
    assert merged["run"] == "x" and merged["models"][0] == "croma_tiny"  # overlay, then entry
    assert merged["train"]["settings"]["epochs"] == "3"  # as snakemake --config parses it
    config = load_config(PRESET, [DEMO], entries)
    assert config["train"]["settings"]["epochs"] == 3  # as the workflow's validation reads it
    assert config["train"]["settings"]["batch_size"] == 4  # the overlay's, merged not replaced


@pytest.mark.parametrize(
    ("percent", "batch", "drop_last", "steps"),
    [("100", 8, True, 181), ("1", 8, True, 2), ("50", 16, True, 45), ("10", 16, False, 10)],
)
def test_steps_per_epoch(percent: str, batch: int, drop_last: bool, steps: int) -> None:
    s = TrainSettings(batch_size=batch, drop_last=drop_last)
    assert cost.steps_per_epoch(percent, PASTIS, s, "paper") == steps  # 727 // 16, ceil(145/16)


def test_validation_every_k_epochs_and_after_the_last() -> None:
    assert cost.val_passes(TrainSettings(epochs=80, val_every=3)) == 26 + 1
    assert cost.val_passes(TrainSettings(epochs=80, val_every=4)) == 20


# ---- FLOPs ------------------------------------------------------------------------------------


def direct_counts(
    model_name: str, regime: str, t: int, batch: int, cached: bool = False
) -> tuple[int, int]:
    """FlopCounterMode over one train_epoch step and one evaluate call on the CPU, from frames
    or (``cached``) from the frozen encoder's levels; attention in torch's math kernel (as on
    the meta device: its backward does not recompute the scores)."""
    torch.manual_seed(0)
    spec, cpu = get_spec(model_name), torch.device("cpu")
    model = build_model(model_name, encoder_trainable=regime != "frozen", n_frames=t)
    data = synthetic_batch(batch, Shape(batch, t, 32), cpu)
    if cached:
        data = {**data, "features": cached_levels(model, spec, data["image"], cpu, None)}
        del data["image"]
    s = TrainSettings()
    optimizer = build_optimizer(model, spec, REGIMES[regime], s)
    scheduler = build_scheduler(optimizer, 1, s)
    crops = torch.Generator().manual_seed(0)
    with sdpa_kernel(SDPBackend.MATH):
        step = counted(
            lambda: train_epoch(model, spec, [data], optimizer, scheduler, cpu, None, crops)
        )
        return step, counted(lambda: evaluate(model, spec, [data], cpu, None))


@pytest.mark.parametrize(
    ("model", "regime"),
    [("croma_tiny", "finetune"), ("dino_tiny", "frozen"), ("utae_tiny", "scratch")],
)
def test_counted_flops_equal_a_direct_count_of_train_epoch(model: str, regime: str) -> None:
    row = count(FlopKey(model, regime, 3, 32))
    step, evaluation = direct_counts(model, regime, 3, batch=4)
    assert row.train * 4 == step
    assert row.eval * 4 == evaluation
    if regime == "frozen":  # DINO's input is fixed: training and evaluation from its cache
        assert (row.cached_train * 4, row.cached_eval * 4) == direct_counts(
            model, regime, 3, batch=4, cached=True
        )


def test_shipped_table_matches_a_fresh_count() -> None:
    table = shipped()
    for key in (FlopKey("utae", "scratch", 1, 128), FlopKey("dino_tiny", "frozen", 6, 32)):
        assert table[key] == count(key), f"{key}: run python -m gfmtune.plan.flop_table"
    assert {job.key for job in jobs_of()} <= set(table)  # the paper preset needs no count


def test_paper_flops_reproduce_the_issue_table() -> None:
    """Issue 20's table (t = 35, batch 8) from the shipped counts, TFLOP to 3 digits."""
    table = shipped()

    def row(model: str, regime: str):
        return table[FlopKey(model, regime, 35, 128)]

    assert round(row("croma", "finetune").train * 8 / 1e12, 1) == 63.7
    assert round(row("croma", "finetune").eval / 1e12, 1) == 10.6  # 2 x 2 windows
    assert round(row("croma", "frozen").train * 8 / 1e12, 1) == 24.1
    assert round(row("dino", "finetune").train * 8 / 1e12, 1) == 10.1
    assert round(row("dino", "finetune").eval / 1e12, 2) == 0.43
    assert round(row("dino", "frozen").train * 8 / 1e12, 1) == 4.9
    assert round(row("dino", "frozen").cached_train * 8 / 1e12, 1) == 2.2
    assert round(row("utae", "scratch").train * 8 / 1e12, 1) == 2.5
    assert round(row("utae", "scratch").eval / 1e12, 2) == 0.11


# ---- measured times, disk, the command --------------------------------------------------------


def bench_json(path: Path, batch: int = 8) -> Path:
    """A bench_train.json measuring U-TAE at t = 35 on the default path."""
    row = {"model": "utae", "regime": "scratch", "t": 35, "path": "default",
           "status": "measured", "step_s": 0.1, "val_patch_s": 0.01, "feature_cache": False,
           "eval_cache": False}  # fmt: skip
    result = {
        "machine": {"device": "NVIDIA H100"},
        "config": {"batch": batch, "size": 128},
        "rows": [row, {**row, "path": "reference", "step_s": 9.0}],
        "loaders": {"default": {"workers": 7, "seconds": 2.0, "persistent": True}},
    }
    path.write_text(json.dumps(result))
    return path


def test_measured_rows_replace_the_estimate(tmp_path: Path) -> None:
    plain = command.build(plan_args())
    plan = command.build(plan_args("--measured", str(bench_json(tmp_path / "b.json"))))
    utae, before = plan.totals[-2], plain.totals[-2]
    assert utae.model == "utae" and utae.measured == 4  # t = 35 at the four fractions
    steps = sum(80 * s for s in STEPS_PER_EPOCH.values())
    measured_s = steps * 0.1 + 4 * (81 * 489 * 0.01 + 3 * 2.0)  # 3 loader starts a job
    assert utae.measured_s == pytest.approx(measured_s)
    table, key = shipped(), FlopKey("utae", "scratch", 35, 128)
    replaced = sum(
        cost.price_job(job, table[key], None).flops for job in jobs_of() if job.key == key
    )
    rest_s = (before.flops - replaced) / (plan.peak * plan.mfu)
    assert utae.planned_hours(plan.peak, plan.mfu) == pytest.approx((measured_s + rest_s) / 3600)
    # the FLOP columns stay; a bench run at another batch does not apply
    assert [t.flops for t in plan.totals] == [t.flops for t in plain.totals]
    other = command.build(plan_args("--measured", str(bench_json(tmp_path / "c.json", 16))))
    assert other.totals[-1].measured == 0


def test_feature_cache_disk_is_patches_times_levels() -> None:
    """DINO's cache: every patch, t frames of 4 levels of 384 x 14 x 14, fp32."""
    plan = command.build(plan_args())
    caches = {s.name: s for s in plan.disk}["feature caches"]
    assert caches.bytes == 2433 * (1 + 6 + 15 + 25 + 35) * 4 * 384 * 14 * 14 * 4
    assert {s.name: s for s in plan.disk}["best.pt"].bytes == sum(
        shipped()[job.key].trained_bytes for job in jobs_of()
    )


def test_job_disk_is_the_plan_per_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the rules ask for as disk_mb: the stages' bytes per job. A training job holds its
    best.pt, its state.pt and, if frozen DINO, its t's feature cache (the first job builds it);
    a job the shipped FLOP table lacks has no estimate (counting it takes seconds)."""
    config = load_config(PRESET)
    plan = command.build(plan_args())
    stage = {s.name: s.bytes for s in plan.disk}
    per_job = job_disk(config)
    assert (per_job.download, per_job.store, per_job.manifests) == (
        stage["download"], stage["store"], stage["manifests"])  # fmt: skip
    jobs, table = jobs_of(), shipped()
    own = {(j.split, j.cell): 2 * table[j.key].trained_bytes + table[j.key].optimizer_bytes
           for j in jobs}  # fmt: skip
    assert per_job.train.keys() == own.keys() and len(own) == 140
    caches = {(j.key.t, per_job.train[j.split, j.cell] - own[j.split, j.cell]) for j in jobs
              if j.cache_kind}  # fmt: skip
    assert len(caches) == 5 and sum(cache for _, cache in caches) == stage["feature caches"]
    assert all(per_job.train[key] == own[key] for key in own if key[1].model != "dino"
               or key[1].ft_rate != "0")  # fmt: skip
    assert megabytes(stage["download"]) == 35000 and megabytes(1) == 1
    monkeypatch.setattr("gfmtune.plan.disk.shipped", dict)
    assert job_disk(config).train == {}


def test_cli_prints_the_totals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "--preset", str(PRESET), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    total = next(line for line in text.splitlines() if line.startswith("total  "))
    assert total.split()[1:7] == ["140", "5", "10.5", "12.9", "0.00191", "8.12"]
    assert "feature caches" in text and "kept after the run" in text
    assert "fp32" not in text.split("disk")[0]  # bf16 autocast: the bf16 peak applies
    authors = str(REPO / "config" / "authors.yaml")
    assert main(["plan", "--preset", str(PRESET), "--configfile", authors]) == 0
    assert "precision fp32 (no TF32): give the GPU's fp32 rate as --peak" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["totals"][-1]["jobs"] == 140
    assert result["totals"][-1]["limit_h"] == pytest.approx(8.12, abs=0.005)


@pytest.mark.parametrize(
    ("argv", "overlay"),
    [
        (["--config", "run=my run"], {"run": "my run"}),
        (
            ["--config", "train={settings: {val_every: 0}}"],
            {"train": {"settings": {"val_every": 0}}},
        ),
    ],
)
def test_bad_config_stops_with_the_workflows_lines(
    argv: list[str], overlay: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as workflow:
        validate_config(config_with(overlay))
    with caplog.at_level(logging.ERROR):
        assert main(["plan", "--preset", str(PRESET), *argv]) == 1
    assert caplog.records[-1].getMessage() == str(workflow.value)


def test_bad_model_in_an_overlay_and_bad_seed_fractions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("models: [croma, cromma]\n")
    with caplog.at_level(logging.ERROR):
        assert main(["plan", "--preset", str(PRESET), "--configfile", str(overlay)]) == 1
        assert main(["plan", "--preset", str(PRESET), "--config",
                     "train={extra_seeds: [1], extra_seed_percents: [20]}"]) == 1  # fmt: skip
    messages = [r.getMessage() for r in caplog.records]
    assert "models[1]: 'cromma' is not a registered model (did you mean 'croma'?)" in messages[0]
    # what the workflow says (tests/test_workflow.py::test_extra_seeds_train_only_the_scarce_cells)
    assert messages[1].startswith("train.extra_seed_percents: 20 is not one of label_percents")


def test_performance_docs_show_the_paper_plan() -> None:
    """docs/performance.md quotes the command's output for the paper preset verbatim."""
    docs = (REPO / "docs" / "performance.md").read_text()
    assert f"```\n$ gfmtune plan\n{report.text(command.build(plan_args()))}```" in docs
