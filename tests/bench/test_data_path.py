"""``gfmtune bench-train``'s data path: what one loader worker delivers from a real Zarr store
and the epochs of kept against restarted workers (no speed assertions), and its report line."""

from __future__ import annotations

import math
from pathlib import Path

from gfmtune.bench import data_path, measure
from gfmtune.bench.train import _data_lines


def test_data_path_measures_a_real_store(tmp_path: Path) -> None:
    d = data_path.data_path(tmp_path, 16, [1, 6], batch=3, epochs=2)
    assert (tmp_path / "s2.zarr").is_dir() and (tmp_path / "timesteps" / "6.csv").is_file()
    assert [r["t"] for r in d["rates"]] == [1, 6]
    assert all(r["samples_per_s"] > 0 and r["float32_samples_per_s"] > 0 for r in d["rates"])
    reuse = d["reuse"]
    assert reuse["t"] == 6 and reuse["steps_per_epoch"] == 2 and reuse["workers"] >= 1
    assert len(reuse["kept"]) == len(reuse["restarted"]) == 2


def test_loader_start_follows_the_paths_persistence() -> None:
    default = data_path.loader_start(measure.DEFAULT, 1)
    reference = data_path.loader_start(measure.REFERENCE, 1)
    assert not reference["persistent"]
    assert default["persistent"] == (default["workers"] > 0)


def test_report_compares_consumption_with_one_workers_delivery() -> None:
    row = {"model": "utae_tiny", "regime": "scratch", "t": 6, "path": "default",
           "status": "measured", "step_s": 0.5, "val_patch_s": 0.1}  # fmt: skip
    result = {
        "config": {"batch": 8},
        "rows": [row, row | {"path": "reference"}],
        "data_path": {
            "size": 32, "batch": 8, "epochs": 3,
            "rates": [{"t": 6, "samples_per_s": 3.0, "float32_samples_per_s": 2.0}],
            "reuse": {"t": 6, "workers": 1, "steps_per_epoch": 2,
                      "kept": [1.0, 0.2, 0.2], "restarted": [1.0, 0.8, 0.8]},
        },
    }  # fmt: skip
    text = "\n".join(_data_lines(result))
    need = f"{math.ceil(16 / 3)}, {math.ceil(10 / 3)}"  # 8 / 0.5 and 1 / 0.1 samples/s
    assert f"| utae_tiny | scratch | 6 | 16 | 10 | 3 | 2 | {need} |" in text
    assert text.count("| utae_tiny |") == 1, "the default path's rows only"
    assert "0.25 x the time with workers restarted (0.600 s less per epoch)" in text
