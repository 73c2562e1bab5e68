"""Training curves: every main-split cell's history in one figure, variants left out."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gfmtune.cli import main
from gfmtune.results.training_curves import histories
from tests.results.test_results import _fake_cell


def _cell(root: Path, model: str, ft, t: int, split: str = "main") -> Path:
    path = _fake_cell(root / split, model, ft, "10", t, 0, 0.3)
    metrics = json.loads(path.read_text())
    metrics["cell"]["split"] = split
    path.write_text(json.dumps(metrics))
    pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [2.0, 1.5, 1.2 + t / 100],
            "val_miou_paper": [0.1, None, 0.2 + t / 100],  # validated every other epoch
        }
    ).to_csv(path.parent / "history.csv", index=False)
    return path


def test_histories_of_the_main_split_only(tmp_path: Path) -> None:
    cells = [_cell(tmp_path, "croma_tiny", ft, t) for ft in (0.0, 1.0) for t in (1, 6)]
    cells += [_cell(tmp_path, "utae_tiny", None, 6), _cell(tmp_path, "utae_tiny", None, 6, "alt")]
    history = histories(cells)
    assert len(history) == 5 * 3  # 5 main cells x 3 epochs; the variant's cell left out
    utae = history[history.model_name == "utae_tiny"]
    assert utae.ft_rate.isna().all() and utae.val_miou_paper.tolist()[2] == pytest.approx(0.26)
    croma = history[(history.ft_rate == 1.0) & (history.timesteps == 6)]
    assert croma.train_loss.tolist() == pytest.approx([2.0, 1.5, 1.26])

    out = tmp_path / "figures" / "training_curves"
    assert main(["training-curves", "--cells", *map(str, cells), "--out", str(out)]) == 0
    assert out.with_suffix(".png").stat().st_size > 10_000 and out.with_suffix(".pdf").exists()


def test_missing_history_names_the_file(tmp_path: Path) -> None:
    cell = _cell(tmp_path, "croma_tiny", 0.0, 1)
    (cell.parent / "history.csv").unlink()
    with pytest.raises(ValueError, match=r"history\.csv: cannot read"):
        histories([cell])
