"""One training cell: learns, follows the FT-Rate protocol, is deterministic and resumable."""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gfmtune.models import catalog, registry
from gfmtune.models.policies import InputPolicy
from gfmtune.models.registry import build_model, register_model
from gfmtune.train.cell_state import seed_everything
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.metrics import metrics_from_confusion
from tests.models.test_plugin_encoder import Stride16
from tests.train.conftest import FAST, inputs, kill_mid_training, train_argv


def _run(base: Path, out: Path, cell: Cell, settings=FAST, **kw) -> dict:
    percent, t = cell.label_percent, cell.timesteps
    return CellJob(cell, inputs(base, percent, t), settings, out, progress=False, **kw).run()


def test_utae_learns_and_beats_chance(train_data: Path, tmp_path: Path) -> None:
    settings = replace(FAST, epochs=8)
    metrics = _run(train_data, tmp_path, Cell("utae_tiny", None, "100", 6), settings)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.train_loss.iloc[-1] < 0.8 * history.train_loss.iloc[0]
    confusion = pd.read_csv(tmp_path / "confusion_test.csv", index_col=0).to_numpy()
    majority = np.zeros_like(confusion)
    majority[:, confusion.sum(1).argmax()] = confusion.sum(1)  # always the most common class
    chance = metrics_from_confusion(majority)["miou"]
    assert metrics["test"]["miou"] > 2 * chance, (metrics["test"]["miou"], chance)
    assert 1 <= metrics["best_epoch"] <= 8
    assert set(json.loads((tmp_path / "provenance.json").read_text())) >= {
        "git_revision", "packages", "device", "wall_seconds", "gpu_hours", "seed"}  # fmt: skip
    assert not (tmp_path / "state.pt").exists() and (tmp_path / "best.pt").exists()


def test_learning_rates_follow_ft_rate(train_data: Path, tmp_path: Path) -> None:
    settings = replace(FAST, epochs=5, milestones=(0.6, 0.9))
    _run(train_data, tmp_path, Cell("dino_tiny", 0.1, "100", 6), settings)
    history = pd.read_csv(tmp_path / "history.csv")
    np.testing.assert_allclose(history.lr_encoder, 0.1 * history.lr_decoder)
    # MultiStepLR per iteration: x0.1 after 60 % and 90 % of all iterations
    assert history.lr_decoder.iloc[0] == pytest.approx(1e-3)
    assert history.lr_decoder.iloc[-1] == pytest.approx(1e-5)


def test_frozen_encoder_is_bit_identical(train_data: Path, tmp_path: Path) -> None:
    cell = Cell("croma_tiny", 0.0, "100", 6)
    job = CellJob(cell, inputs(train_data), FAST, tmp_path, progress=False)
    job.run()
    seed_everything(cell.seed)
    fresh = build_model("croma_tiny")
    trained = job.model.encoder.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.encoder.state_dict().items())
    assert not any(k.startswith("encoder.") for k in torch.load(tmp_path / "best.pt"))
    history = pd.read_csv(tmp_path / "history.csv")
    assert "lr_encoder" not in history.columns


def test_two_runs_are_identical(train_data: Path, tmp_path: Path) -> None:
    cell = Cell("croma_tiny", 1.0, "10", 1)
    a = _run(train_data, tmp_path / "a", cell)
    b = _run(train_data, tmp_path / "b", cell)
    assert a["test"] == b["test"] and a["val_best"] == b["val_best"]
    ha, hb = (pd.read_csv(tmp_path / x / "history.csv") for x in "ab")
    assert ha.train_loss.tolist() == hb.train_loss.tolist()


def test_kill_and_resume_equals_uninterrupted(train_data: Path, tmp_path: Path) -> None:
    settings = replace(FAST, epochs=4)
    cell = Cell("dino_tiny", 0.1, "100", 6)
    reference = _run(train_data, tmp_path / "ref", cell, settings)

    out = tmp_path / "killed"
    (tmp_path / "settings.json").write_text(json.dumps(settings.to_dict()))
    kill_mid_training(train_argv(inputs(train_data), cell, tmp_path / "settings.json", out), out)
    saved = torch.load(out / "state.pt", weights_only=True)  # plain tensors and containers
    assert 1 <= saved["loop"]["epoch"] < 4, "the kill must land mid-training"
    assert not (out / "metrics.json").exists()

    resumed = CellJob(cell, inputs(train_data), settings, out, progress=False).run()
    assert resumed["test"] == reference["test"]
    assert resumed["best_epoch"] == reference["best_epoch"]
    ref_hist = pd.read_csv(tmp_path / "ref" / "history.csv")
    new_hist = pd.read_csv(out / "history.csv")
    assert ref_hist.train_loss.tolist() == new_hist.train_loss.tolist()
    assert resumed["attempts"] == 2 and resumed["wall_seconds"] > saved["loop"]["seconds"]


def test_clear_errors(train_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--weights-dir"):
        CellJob(Cell("croma", 0.1, "100", 6), inputs(train_data), FAST, tmp_path)
    with pytest.raises(ValueError, match="no FT-Rate"):
        CellJob(Cell("utae_tiny", 0.1, "100", 6), inputs(train_data), FAST, tmp_path)
    missing = replace(inputs(train_data), label_split=tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        CellJob(Cell("utae_tiny", None, "100", 6), missing, FAST, tmp_path).run()
    gone = replace(inputs(train_data), store=tmp_path / "none.zarr")
    with pytest.raises((FileNotFoundError, ValueError), match=r"none\.zarr"):
        CellJob(Cell("utae_tiny", None, "100", 6), gone, FAST, tmp_path).run()
    small = replace(FAST, batch_size=64)
    with pytest.raises(ValueError, match="make no batch"):
        CellJob(Cell("utae_tiny", None, "10", 6), inputs(train_data, "10"), small, tmp_path).run()


def test_out_of_memory_switches_to_checkpointing_then_explains(train_data, tmp_path, monkeypatch):
    from gfmtune.models import upernet

    calls = {"n": 0}
    encode = upernet.TemporalUPerNet.encode

    def flaky(self, x, pad_mask=None):
        calls["n"] += 1
        if calls["n"] == 1 and torch.is_grad_enabled():
            # the activations of the step that runs out of memory
            failed_step = encode(self, x, pad_mask)
            calls["activations"] = weakref.ref(failed_step[-1])
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if calls["n"] == 2:  # the retry: the failed step's activations must be free by now
            calls["alive_at_retry"] = calls["activations"]() is not None
        return encode(self, x, pad_mask)

    monkeypatch.setattr(upernet.TemporalUPerNet, "encode", flaky)
    job = CellJob(Cell("croma_tiny", 1.0, "100", 6), inputs(train_data), replace(FAST, epochs=1),
                  tmp_path / "a", progress=False)  # fmt: skip
    job.run()
    assert job.model.checkpointing and job.model.frames_per_call == 4 * 6 // 4
    assert calls["alive_at_retry"] is False

    def always(self, x, pad_mask=None):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(upernet.TemporalUPerNet, "encode", always)
    with pytest.raises(RuntimeError, match="activation_checkpointing: true"):
        CellJob(Cell("croma_tiny", 1.0, "100", 6), inputs(train_data), replace(FAST, epochs=1),
                tmp_path / "b", progress=False).run()  # fmt: skip


def test_job_log_names_the_device_and_has_a_line_per_epoch(
    train_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gfmtune.train.job"):
        CellJob(Cell("utae_tiny", None, "100", 6), inputs(train_data), FAST, tmp_path).run()
    lines = [r.getMessage() for r in caplog.records]
    (start,) = [line for line in lines if "steps per epoch" in line]
    assert f"on cpu ({torch.get_num_threads()} threads) (fp32)" in start
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    history = pd.read_csv(tmp_path / "history.csv")
    last = history.iloc[-1]
    assert (
        f"loss {last.train_loss:.4f}, val miou_paper {100 * last.val_miou_paper:.2f} %"
        in (epochs[-1])
    )
    assert "lr_decoder" in epochs[-1] and epochs[-1].endswith(" s")


def test_plugin_with_a_small_token_grid_trains_with_a_warning(
    train_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stride-16 plug-in on the 32 px store: a 2 x 2 grid, named in the job's log."""
    register_model("grid2_plugin", family="ConvNet", policy=InputPolicy("native"),
                   build_encoder=Stride16, decoder_channels=16, ltae_heads=4)  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="gfmtune.models.contract"):
            _run(train_data, tmp_path, Cell("grid2_plugin", 1.0, "100", 1), replace(FAST, epochs=1))
    finally:
        del registry.REGISTRY["grid2_plugin"], catalog.MODELS["grid2_plugin"]
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "model 'grid2_plugin': its encoder gives a 2 x 2 token grid on 32 x 32 px" in message
    assert (tmp_path / "metrics.json").exists()
