"""Evaluation in batches: the confusion matrix at eval batch 8 equals batch 1's (fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.models.registry import build_model, get_spec
from gfmtune.train.feature_cache import ALL_FOLDS
from gfmtune.train.loop import evaluate
from gfmtune.train.settings import TrainSettings


@pytest.mark.parametrize("name", ["croma_tiny", "dino_tiny", "utae_tiny"])
def test_batched_evaluation_gives_the_batch_1_confusion(train_data: Path, name: str) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = build_model(name, encoder_trainable=False, n_frames=6)
    with torch.no_grad():  # away from the initialisation, which predicts one class everywhere
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    # every patch of the store (40): batches of 8 and of 1, no remainder, so both cover all
    data = PastisZarrDataset(train_data / "s2.zarr", train_data / "timesteps" / "6.csv", ALL_FOLDS)
    matrices = [
        evaluate(model, spec, DataLoader(data, batch_size=b), torch.device("cpu"), None).numpy()
        for b in (1, 8)
    ]
    np.testing.assert_array_equal(matrices[1], matrices[0])
    assert matrices[0].sum() > 0 and np.count_nonzero(matrices[0].sum(0)) > 3  # predicted classes


def test_default_eval_batch_is_eight() -> None:
    assert TrainSettings().eval_batch_size == 8
