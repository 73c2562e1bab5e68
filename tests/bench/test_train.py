"""``gfmtune bench-train`` measures every (model, regime, t, path), and its ratios and grid hours
are the arithmetic of the measured values (no speed assertions: those live in its output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gfmtune.bench import grid, measure
from gfmtune.bench.train import JSON, MD, RATIO_KEYS
from gfmtune.cli import main
from gfmtune.models.registry import get_spec

MODELS = ("croma_tiny", "dino_tiny", "utae_tiny")
REGIMES = {"croma_tiny": ("frozen", "finetune"), "dino_tiny": ("frozen", "finetune"),
           "utae_tiny": ("scratch",)}  # fmt: skip
TIMESTEPS = (1, 2)  # 1 is a grid length (measured cells), 2 is not (the others scale from it)
ARGS = ["--models", *MODELS, "--timesteps", *map(str, TIMESTEPS), "--steps", "1", "--warmup",
        "1", "--size", "32", "--batch", "2", "--device", "cpu", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One run of the command on the tiny models: its JSON and Markdown."""
    out = tmp_path_factory.mktemp("bench_train")
    threads = torch.get_num_threads()
    try:
        assert main(["bench-train", "--out", str(out), *ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / JSON).read_text()), (out / MD).read_text()


def test_every_row_is_measured_and_reported(bench: tuple[dict[str, Any], str]) -> None:
    result, text = bench
    expected = {
        (m, r, t, p) for m in MODELS for r in REGIMES[m] for t in TIMESTEPS
        for p in ("default", "reference")
    }  # fmt: skip
    rows = {(r["model"], r["regime"], r["t"], r["path"]): r for r in result["rows"]}
    assert set(rows) == expected and len(result["rows"]) == len(expected)
    for (model, regime, t, path), row in rows.items():
        assert row["status"] == "measured"
        assert row["step_s"] > 0 and row["val_patch_s"] > 0 and row["train_flops"] > 0
        assert row["frames_per_s"] == pytest.approx(2 * t / row["step_s"])
        assert row["train_tflops"] == pytest.approx(row["train_flops"] / row["step_s"] / 1e12)
        assert row["peak_memory_gib"] is None  # CPU
        assert f"| {model} | {regime} | {t} | {path} |" in text
    # what distinguishes the paths
    assert rows["dino_tiny", "frozen", 1, "default"]["feature_cache"]
    assert not rows["dino_tiny", "frozen", 1, "reference"]["feature_cache"]
    assert not rows["croma_tiny", "frozen", 1, "default"]["feature_cache"]  # random crops
    assert not rows["croma_tiny", "frozen", 1, "default"]["eval_cache"]  # off by default
    assert not rows["croma_tiny", "frozen", 1, "reference"]["eval_cache"]
    assert not rows["croma_tiny", "finetune", 1, "default"]["eval_cache"]
    assert rows["croma_tiny", "finetune", 1, "reference"]["note"].startswith(
        "8 CROMA blocks computed, 4 used"
    )
    assert rows["croma_tiny", "finetune", 1, "default"]["note"] == ""
    assert {r["precision"] for r in result["rows"]} == {"float32"}
    assert {r["eval_batch"] for r in result["rows"] if r["path"] == "reference"} == {1}


def test_cpu_header_says_reduced_sizes(bench: tuple[dict[str, Any], str]) -> None:
    result, text = bench
    assert "**CPU, reduced sizes: not a GPU estimate.**" in text
    assert "## Paper grid (CPU, reduced sizes: not a GPU estimate)" in text
    assert result["config"]["reduced"] and result["machine"]["device_type"] == "cpu"
    assert "FlopCounterMode" in text


def test_ratios_are_default_over_reference(bench: tuple[dict[str, Any], str]) -> None:
    result, _ = bench
    rows = {(r["model"], r["regime"], r["t"], r["path"]): r for r in result["rows"]}
    assert len(result["ratios"]) == len(rows) // 2
    for q in result["ratios"]:
        default = rows[q["model"], q["regime"], q["t"], "default"]
        reference = rows[q["model"], q["regime"], q["t"], "reference"]
        for key in RATIO_KEYS:
            if default[key] is None:
                assert q[key] is None
            else:
                assert q[key] == pytest.approx(default[key] / reference[key])


def test_grid_hours_are_the_sum_of_measured_steps(bench: tuple[dict[str, Any], str]) -> None:
    result, _ = bench
    g = result["grid"]
    rows = {(r["model"], r["regime"], r["t"], r["path"]): r for r in result["rows"]}
    cells_per_path = (2 + 2 + 1) * len(grid.GRID_T) * len(grid.STEPS_PER_EPOCH)
    for path in ("default", "reference"):
        cells = [c for c in g["cells"] if c["path"] == path]
        builds = [b for b in g["cache_builds"] if b["path"] == path]
        assert len(cells) == cells_per_path
        total = 0.0
        for c in cells:
            row = rows.get((c["model"], c["regime"], c["t"], path))
            assert c["measured_t"] == (row is not None)
            measured = row or rows[c["model"], c["regime"], 2, path]  # scaled from t = 2
            scale = 1.0 if row else c["t"] / 2
            assert c["step_s"] == pytest.approx(measured["step_s"] * scale)
            assert c["val_patch_s"] == pytest.approx(measured["val_patch_s"] * scale)
            assert c["train_steps"] == grid.EPOCHS * grid.STEPS_PER_EPOCH[c["label_percent"]]
            assert c["loader_s"] == result["loaders"][path]["seconds"]
            seconds = c["runs"] * (
                c["train_steps"] * c["step_s"]
                + c["eval_patches"] * c["val_patch_s"]
                + c["loader_starts"] * c["loader_s"]
            )
            assert c["seconds"] == pytest.approx(seconds)
            total += seconds
        total += sum(b["patches"] * b["cache_patch_s"] for b in builds)
        assert g["hours"][path] == pytest.approx(total / 3600)
        # only the default path caches, and only the frozen DINO (CROMA crops at random)
        assert {b["model"] for b in builds} == ({"dino_tiny"} if path == "default" else set())
    finetune = [c for c in g["cells"] if c["regime"] == "finetune"]
    assert {c["runs"] for c in finetune} == {2}  # FT-Rates 0.1 and 1.0


def test_at_t_interpolates_and_scales() -> None:
    measured = {6: 1.0, 35: 3.0}
    assert grid.at_t(measured, 6) == 1.0
    assert grid.at_t(measured, 15) == pytest.approx(1.0 + 2.0 * 9 / 29)
    assert grid.at_t(measured, 1) == pytest.approx(1 / 6)
    assert grid.at_t(measured, 40) == pytest.approx(3.0 * 40 / 35)


def test_loader_starts_per_epoch_unless_workers_persist() -> None:
    assert grid.loader_starts("reference", True) == grid.EPOCHS * 2 + 1
    assert grid.loader_starts("default", False) == grid.EPOCHS * 2 + 1
    assert grid.loader_starts("default", True) == 3


def test_out_of_memory_is_a_row_and_leaves_the_path_out_of_the_totals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def oom(*args: object) -> dict[str, Any]:
        raise RuntimeError("out of GPU memory") from torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(measure, "measure", oom)
    shape = measure.Shape(2, 1, 32)
    row = measure.measure_or_oom(
        get_spec("utae_tiny"), "scratch", shape, measure.REFERENCE, torch.device("cpu"), 1, 1
    )
    assert row["status"] == "out of memory"
    ok = {"model": "utae_tiny", "regime": "scratch", "t": 1, "path": "default",
          "status": "measured", "step_s": 1.0, "val_patch_s": 1.0,
          "feature_cache": False}  # fmt: skip
    loaders = {p: {"seconds": 0.0, "persistent": False} for p in ("default", "reference")}
    g = grid.grid([ok, row], loaders)
    assert g["hours"]["reference"] is None and g["hours"]["default"] > 0
    assert g["incomplete"] == ["utae_tiny scratch (reference)"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "nope"], "unknown models"),
        (["--models", "croma_tiny", "--size", "16"], "croma_tiny crops 24 px"),
        (["--models", "utae_tiny", "--warmup", "0"], "--warmup"),
        (["--models", "utae_tiny", "--batch", "1"], "--batch must be >= 2"),
    ],
)
def test_bad_arguments_end_with_one_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, args: list[str], message: str
) -> None:
    assert main(["bench-train", "--out", str(tmp_path), "--device", "cpu", *args]) == 1
    assert message in caplog.text
    assert not (tmp_path / JSON).exists()


def test_components_switch_one_choice_of_the_reference(tmp_path: Path) -> None:
    """On CPU (fp32 both ways) CROMA's early stop, the frozen DINO's feature cache, the frozen
    CROMA's evaluation cache and the evaluation batch change something; each is measured
    against the reference."""
    args = [*ARGS[ARGS.index("--steps") :], "--models", "croma_tiny", "dino_tiny",
            "--timesteps", "1", "--components"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main(["bench-train", "--out", str(tmp_path), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / JSON).read_text())
    rows = {(r["model"], r["regime"], r["path"]): r for r in result["rows"]}
    cells = [("croma_tiny", "frozen"), ("croma_tiny", "finetune"), ("dino_tiny", "frozen"),
             ("dino_tiny", "finetune")]  # fmt: skip
    assert {k for k in rows if k[2].startswith("reference+")} == {
        ("croma_tiny", "frozen", "reference+stop_early"),
        ("croma_tiny", "finetune", "reference+stop_early"),
        ("dino_tiny", "frozen", "reference+feature_cache"),
        ("croma_tiny", "frozen", "reference+eval_cache"),
        *((m, r, "reference+eval_batch") for m, r in cells),
    }
    assert len(result["components"]) == 8
    for c in result["components"]:
        row, ref = (
            rows[c["model"], c["regime"], c["path"]],
            rows[c["model"], c["regime"], "reference"],
        )
        assert c["step_s"] == pytest.approx(row["step_s"] / ref["step_s"])
        assert c["val_patch_s"] == pytest.approx(row["val_patch_s"] / ref["val_patch_s"])
    assert {c["path"] for c in result["grid"]["cells"]} == {"default", "reference"}
    assert "| croma_tiny | finetune | 1 | stop_early |" in (tmp_path / MD).read_text()
    read = result["data_path"]["cache_read"]  # the feature cache against the store, one run
    assert read["t"] == 1 and read["cache"]["samples_per_s"] > 0 < read["store"]["samples_per_s"]
    assert read["cache"]["bytes_per_sample"] == 4 * 384 * 14 * 14 * 2  # bf16 DINO, 1 frame
    assert read["ratio"] == pytest.approx(
        read["cache"]["samples_per_s"] / read["store"]["samples_per_s"]
    )
    assert "Feature cache read (t = 1" in (tmp_path / MD).read_text()
