"""``deterministic: true`` on CPU: the job runs (no op of ours raises there) and trains as the
default does; the process-wide flag follows each job's setting."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from gfmtune.train.job import Cell, CellJob
from tests.train.conftest import FAST, inputs


def test_deterministic_job_on_cpu_equals_the_default(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # restored after the test
    cell = Cell("utae_tiny", None, "100", 6)
    results = {}
    for deterministic in (True, False):
        settings = replace(FAST, epochs=1, deterministic=deterministic)
        out = tmp_path / str(deterministic)
        job = CellJob(cell, inputs(train_data), settings, out, progress=False)
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        results[deterministic] = (job.run()["test"], pd.read_csv(out / "history.csv").train_loss)
    assert results[True][0] == results[False][0]
    pd.testing.assert_series_equal(results[True][1], results[False][1])
