"""Fault matrix, finiteness (issue 19, section 2): a cell that learned nothing, or was scored on
nothing, never becomes a number in the tables.

A diverging run (a huge learning rate, a plug-in encoder whose output is NaN, weights that
overflow) stops with an error naming the cell, epoch, step, learning rates and last finite loss,
records it in ``failed.json`` (no Snakemake retry) and leaves no ``metrics.json`` and no saved
non-finite tensor; a split or fold without a labelled pixel is refused before training; a batch
without one contributes no loss and no update; a ``metrics.json`` holding NaN or an infinity is
refused by ``gfmtune results``, naming it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn
from torch.utils.data import default_collate

from gfmtune.cli import main
from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.models import catalog, registry
from gfmtune.models.policies import InputPolicy
from gfmtune.models.registry import build_model, get_spec, register_model
from gfmtune.pastis import TEST_FOLD, TRAIN_FOLDS, VAL_FOLD, VOID_CLASS
from gfmtune.results import claims, claims_table, tables
from gfmtune.train import job
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.loop import build_optimizer, build_scheduler, labelled_loss, train_epoch
from gfmtune.train.patch_counts import PATCH_FILE, load_patch_counts, save_patch_counts
from tests.faults.test_train_faults import SETTINGS, cli_train, error_line, metrics, utae_inputs
from tests.train.conftest import inputs, train_argv
from tests.train.conftest import train_data as train_data  # the fixture, for this module

UTAE = Cell("utae_tiny", None, "100", 1)
NAN_MODEL = "nan_plugin"


class NanEncoder(nn.Module):
    """A plug-in encoder honouring the contract's shapes whose every output value is NaN."""

    out_dims = (8, 8, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(10, 8, 4, stride=4)

    def truncate(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x) * float("nan")
        return [h, h, h, h]


@pytest.fixture
def nan_plugin() -> Iterator[str]:
    """:class:`NanEncoder` registered as a plug-in model; unregistered afterwards."""
    register_model(NAN_MODEL, family="NanNet", policy=InputPolicy("native"),
                   build_encoder=NanEncoder, decoder_channels=16, ltae_heads=4)  # fmt: skip
    yield NAN_MODEL
    del registry.REGISTRY[NAN_MODEL], catalog.MODELS[NAN_MODEL]


def settings_file(folder: Path, **values: object) -> Path:
    path = folder / "settings.json"
    path.write_text(json.dumps(replace(SETTINGS, **values).to_dict()))
    return path


def all_finite(path: Path) -> bool:
    """Whether every tensor saved in ``path`` (a state.pt's model or a best.pt) is finite."""
    saved = torch.load(path, weights_only=True)
    tensors = saved.get("model", saved)
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def nan_epoch(calls: int) -> object:
    """A ``job.train_epoch`` that sets a trained parameter to NaN before its ``calls``-th pass."""
    train_epoch, done = job.train_epoch, []

    def epoch(model, *args, **kwargs) -> float:
        done.append(True)
        if len(done) == calls:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return train_epoch(model, *args, **kwargs)

    return epoch


def inf_epoch() -> object:
    """A ``job.train_epoch`` whose update overflows at its last step: finite loss, inf weights."""
    train_epoch = job.train_epoch

    def epoch(model, *args, **kwargs) -> float:
        loss = train_epoch(model, *args, **kwargs)
        with torch.no_grad():
            list(model.parameters())[-1].fill_(float("inf"))
        return loss

    return epoch


#: case -> (model, FT-Rate, settings changed, job.train_epoch replacement, words of the error)
DIVERGING = {
    "lr-1e6": ("utae_tiny", None, {"lr": 1e6}, None,
               ["epoch 1 step", "lr_decoder 1e+06", "last finite loss", "lower train.settings lr"]),
    "nan-plugin-frozen": (NAN_MODEL, 0.0, {}, None,
                          ["epoch 1 step 1 ", "not the learning rate", "encoder's output",
                           "no finite loss before it"]),
    "nan-plugin-finetuned": (NAN_MODEL, 1.0, {}, None,
                             ["epoch 1 step 1 ", "lr_decoder 0.001, lr_encoder 0.001",
                              "not the learning rate"]),
    "nan-weights-in-epoch-2": ("utae_tiny", None, {}, lambda: nan_epoch(2),
                               ["epoch 2 step 1 ", "last finite loss", "lr_decoder 0.001"]),
    "inf-weights-finite-loss": ("utae_tiny", None, {"epochs": 1}, inf_epoch,
                                ["non-finite weights", "after epoch 1 step 6",
                                 "every training loss was finite"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DIVERGING))
def test_divergence_stops_the_cell_and_is_not_retried(
    case: str, train_data: Path, tmp_path: Path, caplog, monkeypatch, request
) -> None:
    model, ft, values, epoch_fn, words = DIVERGING[case]
    if model == NAN_MODEL:
        request.getfixturevalue("nan_plugin")
    if epoch_fn is not None:
        monkeypatch.setattr(job, "train_epoch", epoch_fn())
    cell, out = Cell(model, ft, "100", 1), tmp_path / "cell"
    argv = train_argv(inputs(train_data, "100", 1), cell, settings_file(tmp_path, **values), out)

    with caplog.at_level(logging.ERROR):
        assert main(argv) == 1
    line = error_line(caplog)
    assert line.startswith(f"{out}: Cell(model='{model}', ft_rate={ft}") and "diverged" in line
    assert all(word in line for word in words), line
    assert not (out / "metrics.json").exists()
    failed = json.loads((out / "failed.json").read_text())
    assert failed == {"type": "DivergenceError", "error": line}
    for saved in ("state.pt", "best.pt"):  # only the healthy epochs before, if any
        assert not (out / saved).exists() or all_finite(out / saved)
    assert (out / "best.pt").exists() == (case == "nan-weights-in-epoch-2")

    caplog.clear()  # Snakemake's retry of the job stops at once: it would diverge again
    with caplog.at_level(logging.ERROR):
        assert main([*argv, "--attempt", "2"]) == 1
    assert "not retried: attempt 1 failed in a way a retry repeats (DivergenceError" in (
        error_line(caplog)
    )
    assert not (out / "metrics.json").exists()


def test_stop_signal_after_a_divergence_saves_no_state(
    train_data: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    """SIGINT mid-epoch once the loss is NaN: the divergence is reported, no state.pt saved."""
    train_epoch = job.train_epoch

    def interrupted(*args, **kwargs) -> float:
        on_step, steps = kwargs["on_step"], []

        def hook() -> None:
            on_step()
            steps.append(True)
            if len(steps) == 4:
                os.kill(os.getpid(), signal.SIGINT)

        return train_epoch(*args, **{**kwargs, "on_step": hook})

    monkeypatch.setattr(job, "train_epoch", interrupted)
    out = tmp_path / "cell"
    assert cli_train(utae_inputs(train_data), UTAE, out, replace(SETTINGS, lr=1e6)) == 1
    line = error_line(caplog)
    assert "diverged: non-finite training loss at epoch 1 step" in line and str(out) in line
    assert not any((out / name).exists() for name in ("state.pt", "best.pt", "metrics.json"))
    assert json.loads((out / "failed.json").read_text())["type"] == "DivergenceError"


def void_store(base: Path, tmp_path: Path, folds: tuple[int, ...], ids: list | None = None) -> Path:
    """A copy of the store whose patches in ``folds`` (only ``ids`` if given) are all void."""
    store = tmp_path / "s2.zarr"
    shutil.copytree(base / "s2.zarr", store)
    group = zarr.open_group(str(store), mode="r+")
    chosen = np.isin(group["fold"][:], folds)
    if ids is not None:
        chosen &= np.isin(group["patch_id"][:], ids)
    labels = group["label"][:]
    labels[chosen] = VOID_CLASS
    group["label"][:] = labels
    return store


#: case -> (folds made all void, the label split, words of the error)
UNSCORED = {
    "train-split": (TRAIN_FOLDS, "10", ["10.csv's", "folds (1, 2, 3)"]),
    "val-fold": ((VAL_FOLD,), "100", [f"of folds ({VAL_FOLD},)"]),
    "test-fold": ((TEST_FOLD,), "100", [f"of folds ({TEST_FOLD},)"]),
}


@pytest.mark.parametrize("case", list(UNSCORED))
def test_split_or_fold_without_a_labelled_pixel_is_refused_before_training(
    case: str, train_data: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    folds, percent, words = UNSCORED[case]
    data = inputs(train_data, percent, 1)
    ids = list(pd.read_csv(data.label_split).patch_id) if case == "train-split" else None
    data = replace(data, store=void_store(train_data, tmp_path, folds, ids))
    trained = []
    monkeypatch.setattr(job, "train_epoch", lambda *a, **k: trained.append(True))
    out = tmp_path / "cell"
    assert cli_train(data, replace(UTAE, label_percent=percent), out) == 1
    line = error_line(caplog)
    assert (
        line.startswith(f"{data.store}: no labelled pixel in the") and "every label is void" in line
    )
    assert all(word in line for word in words), line
    assert not trained and not (out / "metrics.json").exists() and not (out / "best.pt").exists()
    assert json.loads((out / "failed.json").read_text())["type"] == "ManifestError"


def test_one_unlabelled_patch_at_batch_size_1_trains_with_finite_losses(
    train_data: Path, tmp_path: Path
) -> None:
    data = inputs(train_data, "100", 1)
    first = int(pd.read_csv(data.label_split).patch_id.iloc[0])
    data = replace(data, store=void_store(train_data, tmp_path, TRAIN_FOLDS, [first]))
    out = tmp_path / "cell"
    assert cli_train(data, UTAE, out, replace(SETTINGS, batch_size=1)) == 0
    history = pd.read_csv(out / "history.csv")
    assert len(history) == SETTINGS.epochs and np.isfinite(history.train_loss).all()
    assert np.isfinite(metrics(out)["test"]["miou"]) and all_finite(out / "best.pt")


def one_batch(base: Path) -> dict:
    """One training patch as a batch of 1, frames normalised (the loop takes float frames as is)."""
    ds = PastisZarrDataset.training(base / "s2.zarr", base / "label_split" / "100.csv",
                                    base / "timesteps" / "1.csv")  # fmt: skip
    batch = default_collate([ds[0]])
    return batch | {"image": ds.normalise.tensor(batch["image"])}


def trained_on(batches: list[dict]) -> tuple[dict, float]:
    """U-TAE-tiny's weights after one pass over ``batches`` from one seeded start; the mean loss."""
    torch.manual_seed(0)
    model, spec = build_model("utae_tiny", n_frames=1), get_spec("utae_tiny")
    optimizer = build_optimizer(model, spec, None, SETTINGS)
    scheduler = build_scheduler(optimizer, 100, SETTINGS)  # no milestone within the pass
    crops = torch.Generator().manual_seed(1)
    loss = train_epoch(model, spec, batches, optimizer, scheduler, torch.device("cpu"), None, crops)
    return {k: v.clone() for k, v in model.state_dict().items()}, loss


@pytest.mark.parametrize("where", ["alone", "first", "last"])
def test_unlabelled_batch_contributes_no_loss_and_no_update(where: str, train_data: Path) -> None:
    labelled = one_batch(train_data)
    void = labelled | {"label": torch.full_like(labelled["label"], VOID_CLASS)}
    batches = {"alone": [void], "first": [void, labelled], "last": [labelled, void]}[where]
    weights, loss = trained_on(batches)
    reference, reference_loss = trained_on([labelled] if where != "alone" else [])
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    assert loss == reference_loss and np.isfinite(loss)


@pytest.mark.parametrize("crop", ["all-void", "labelled"])
def test_loss_of_an_unlabelled_crop_is_zero_with_zero_gradient(crop: str) -> None:
    """What a random crop without a labelled pixel gives (not told before the device)."""
    torch.manual_seed(0)
    logits = torch.randn(2, VOID_CLASS + 1, 8, 8, requires_grad=True)
    target = torch.randint(0, VOID_CLASS + 1, (2, 8, 8))
    if crop == "all-void":
        target.fill_(VOID_CLASS)
    loss = labelled_loss(logits, target)
    loss.backward()
    expected = torch.nn.functional.cross_entropy(logits, target, ignore_index=VOID_CLASS)
    if crop == "all-void":
        assert loss.item() == 0 and not logits.grad.any() and expected.isnan()
    else:
        assert torch.equal(loss, expected)  # the paper's mean, bit for bit


@pytest.fixture(scope="module")
def finished(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A healthy U-TAE cell folder."""
    out = tmp_path_factory.mktemp("finished") / "cell"
    CellJob(UTAE, utae_inputs(train_data), SETTINGS, out, progress=False).run()
    return out


#: case -> (keys to the value in metrics.json, the JSON text written there, the column named)
SPOILT = {
    "test-miou-nan": (["test", "miou"], "NaN", "miou"),
    "test-oa-nan": (["test", "oa"], "NaN", "oa"),
    "val-best-infinity": (["val_best", "miou_paper"], "Infinity", "val_miou_paper"),
    "class-iou-minus-infinity": (["test", "per_class", "Meadow", "iou"], "-Infinity", "iou_Meadow"),
    "overflowing-gpu-hours": (["gpu_hours"], "1e400", "gpu_hours"),
    "test-miou-null": (["test", "miou"], "null", "miou"),
}


def spoil(path: Path, keys: list[str], text: str) -> None:
    """Set a value of a JSON file to ``text`` (a JSON token Python's json reads, not a number)."""
    data = json.loads(path.read_text())
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = "@@"
    path.write_text(json.dumps(data).replace('"@@"', text))


@pytest.mark.parametrize("command", ["results", "training-curves"])
@pytest.mark.parametrize("case", list(SPOILT))
def test_non_finite_metrics_are_refused_by_results(
    case: str, command: str, finished: Path, tmp_path: Path, caplog
) -> None:
    cell = tmp_path / "cell"
    shutil.copytree(finished, cell)
    keys, text, column = SPOILT[case]
    spoil(cell / "metrics.json", keys, text)
    out = tmp_path / "run"
    args = [command, "--cells", str(cell / "metrics.json"), "--out", str(out)]
    assert main(args) == 1
    line = error_line(caplog)
    assert line.startswith(f"{cell / 'metrics.json'}: {column} not a finite number"), line
    assert "retrain it" in line
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(cell)]


def test_healthy_cell_gives_results(finished: Path, tmp_path: Path) -> None:
    """The same command on the cell before spoiling it: the refusal above is the values'."""
    out = tmp_path / "run"
    args = ["results", "--cells", str(finished / "metrics.json"), "--out", str(out)]
    assert main([*args, "--resamples", "100"]) == 0
    assert (out / "tables" / "miou.csv").is_file()


@pytest.mark.parametrize("patches", ["all", "all-but-one"])
def test_counts_scoring_nothing_are_refused_by_results(
    patches: str, finished: Path, tmp_path: Path, caplog
) -> None:
    """A test_patches.npz without a labelled pixel (its mIoU NaN) disagrees with any metrics.json:
    no interval is drawn from it."""
    cell = tmp_path / "cell"
    shutil.copytree(finished, cell)
    counts = load_patch_counts(cell / PATCH_FILE)
    emptied = slice(None) if patches == "all" else slice(1, None)
    for kind in (counts.tp, counts.fp, counts.fn):
        kind[emptied] = 0
    save_patch_counts(counts, cell / PATCH_FILE)
    out = tmp_path / "run"
    args = ["results", "--cells", str(cell / "metrics.json"), "--out", str(out)]
    assert main([*args, "--resamples", "100"]) == 1
    line = error_line(caplog)
    assert line.startswith(f"{cell / PATCH_FILE}: its counts give miou "), line
    assert not out.exists()


#: (mean, std, interval) -> the table's text: a value that is not finite is never a number
TABLE_TEXTS = {
    (float("nan"), float("nan"), (float("nan"), float("nan"))): tables.MISSING,
    (float("inf"), 1.0, (10.0, 20.0)): tables.MISSING,
    (-float("inf"), float("nan"), None): tables.MISSING,
    (12.0, float("nan"), (float("nan"), float("nan"))): "12.00",
    (12.0, float("inf"), (float("-inf"), 20.0)): "12.00",
    (12.0, 1.5, (10.0, float("nan"))): "12.00 ± 1.50",
    (12.0, 1.5, (10.0, 14.0)): "12.00 [10.00, 14.00]",
}


@pytest.mark.parametrize(("values", "text"), list(TABLE_TEXTS.items()), ids=str)
def test_paper_table_never_shows_a_non_finite_value(values: tuple, text: str) -> None:
    mean, std, bounds = values
    assert tables._text(mean, std, bounds) == text


@pytest.mark.parametrize(
    "stat",
    [[float("nan")], [float("nan"), 1.0, 2.0], [3.0, float("nan"), 2.0], [3.0, float("inf"), 2.0]],
    ids=["point-nan", "bootstrap-point-nan", "replicate-nan", "replicate-inf"],
)
def test_claim_on_a_non_finite_statistic_is_undetermined(stat: list[float]) -> None:
    claim = claims._claim(
        "it helps", ("gain", ">", 0.0, "mIoU points"), np.array(stat), {"cells": 1}, {"cells": 1}
    )
    assert claim["verdict"] == "undetermined" and claim["value"] is None
    assert claims_table._value(claim, "mIoU points") == "–" and claim["interval"] is None
