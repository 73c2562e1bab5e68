"""Per-patch test counts: a finished cell's test_patches.npz sums to its test metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.pastis import TEST_FOLD
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.metrics import ConfusionMatrix, miou_from_counts
from gfmtune.train.patch_counts import PATCH_FILE, load_patch_counts
from tests.train.conftest import FAST, inputs


def test_per_sample_matrices_sum_to_the_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 20, 8, 8, generator=g)
    target = torch.randint(0, 20, (5, 8, 8), generator=g)  # void (19) included: dropped
    matrix = ConfusionMatrix(per_sample=True)
    matrix.update(logits[:3], target[:3])
    matrix.update(logits[3:], target[3:])
    samples = matrix.per_sample_numpy()
    assert samples.shape == (5, 20, 20)
    np.testing.assert_array_equal(samples.sum(0), matrix.numpy())
    for i in range(5):
        one = ConfusionMatrix()
        one.update(logits[i : i + 1], target[i : i + 1])
        np.testing.assert_array_equal(samples[i], one.numpy())
    assert samples[:, 19].sum() == 0 and (target == 19).any()
    with pytest.raises(ValueError, match="per_sample"):
        ConfusionMatrix().per_sample_numpy()


def test_cell_writes_counts_that_give_its_test_metrics(train_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cell"
    metrics = CellJob(Cell("utae_tiny", None, "100", 6), inputs(train_data), FAST, out).run()
    counts = load_patch_counts(out / PATCH_FILE)
    test_fold = PastisZarrDataset.evaluation(
        train_data / "s2.zarr", train_data / "timesteps" / "6.csv", TEST_FOLD
    )
    np.testing.assert_array_equal(counts.patch_id, test_fold.patch_ids)
    miou, miou_paper = miou_from_counts(counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0))
    assert miou == pytest.approx(metrics["test"]["miou"], abs=1e-12)
    assert miou_paper == pytest.approx(metrics["test"]["miou_paper"], abs=1e-12)
    confusion = pd.read_csv(out / "confusion_test.csv", index_col=0).to_numpy()
    np.testing.assert_array_equal(counts.tp.sum(0), np.diag(confusion))
