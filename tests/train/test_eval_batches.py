"""Evaluation in batches: the confusion matrix at eval batch 8 equals batch 1's (fp32), and
after an out-of-memory error in halves of the batches, to the same matrices."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.models.registry import build_model, get_spec
from gfmtune.train.feature_cache import ALL_FOLDS
from gfmtune.train.loop import evaluate
from gfmtune.train.settings import TrainSettings
from tests.train.conftest import out_of_memory_once

CPU = torch.device("cpu")


def _model(name: str) -> nn.Module:
    """``name`` with seeded weights moved away from the initialisation, which predicts one
    class everywhere."""
    torch.manual_seed(0)
    model = build_model(name, encoder_trainable=False, n_frames=6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _every_patch(train_data: Path) -> PastisZarrDataset:
    """Every patch of the store (40): batches of 8 and of 1 both cover all, no remainder."""
    return PastisZarrDataset(train_data / "s2.zarr", train_data / "timesteps" / "6.csv", ALL_FOLDS)


@pytest.mark.parametrize("name", ["croma_tiny", "dino_tiny", "utae_tiny"])
def test_batched_evaluation_gives_the_batch_1_confusion(train_data: Path, name: str) -> None:
    spec, model, data = get_spec(name), _model(name), _every_patch(train_data)
    matrices = [
        evaluate(model, spec, DataLoader(data, batch_size=b), CPU, None).numpy() for b in (1, 8)
    ]
    np.testing.assert_array_equal(matrices[1], matrices[0])
    assert matrices[0].sum() > 0 and np.count_nonzero(matrices[0].sum(0)) > 3  # predicted classes


@pytest.mark.parametrize("name", ["croma_tiny", "dino_tiny", "utae_tiny"])
def test_evaluation_out_of_memory_halves_the_batches_to_the_same_result(
    train_data: Path, name: str, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    spec, model, loader = get_spec(name), _model(name), DataLoader(_every_patch(train_data), 8)
    whole = evaluate(model, spec, loader, CPU, None, per_sample=True)
    sizes = out_of_memory_once(monkeypatch, model, "forward")
    with caplog.at_level(logging.WARNING):
        halved = evaluate(model, spec, loader, CPU, None, per_sample=True)
    # the failed call (CROMA: all windows of 8 samples), then halves of every batch
    assert sizes == [sizes[0]] + [sizes[0] // 2] * 10
    assert "out of GPU memory evaluating 8 samples at a time: 4 at a time from now on" in (
        caplog.text
    )
    np.testing.assert_array_equal(halved.numpy(), whole.numpy())
    np.testing.assert_array_equal(halved.per_sample_numpy(), whole.per_sample_numpy())


def test_evaluation_out_of_memory_at_one_sample_is_raised(
    train_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, model, sizes = get_spec("utae_tiny"), _model("utae_tiny"), []

    def never(x: torch.Tensor, *args: object) -> None:
        sizes.append(len(x))
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model, "forward", never)
    with pytest.raises(torch.OutOfMemoryError):
        evaluate(model, spec, DataLoader(_every_patch(train_data), 8), CPU, None)
    assert sizes == [8, 4, 2, 1]


def test_default_eval_batch_is_eight() -> None:
    assert TrainSettings().eval_batch_size == 8
