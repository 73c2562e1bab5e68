"""``gfmtune params``: the paper's convention and the exact trained counts."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from gfmtune.cli import main
from tests.models.official_layouts import croma_s2_encoder_shapes


def test_params_table(tmp_path: Path) -> None:
    out = tmp_path / "params.csv"
    assert main(["params", "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("name")
    assert list(table.index) == ["croma", "dino", "utae", "utae_paper"]
    assert list(table.model) == ["CROMA", "DINO", "U-TAE", "U-TAE"]
    assert list(table.columns) == ["model", "decoder_only_m", "whole_network_m", "trainable_ft0",
                                   "trainable_ft_pos", "temporal", "temporal_params",
                                   "weights"]  # fmt: skip
    assert set(table.temporal) == {"ltae"}  # the paper's: a shared L-TAE (U-TAE: its own)
    # CROMA's sha256 and size were not read from the hub; DINO's were (Checkpoint.confirmed)
    assert list(table.weights) == ["unconfirmed", "confirmed", "none", "none"]

    official = croma_s2_encoder_shapes(1024, 24)
    full_encoder = sum(map(math.prod, official.values()))
    croma = table.loc["croma"]
    assert math.isclose(croma.whole_network_m - croma.decoder_only_m, full_encoder / 1e6,
                        abs_tol=0.011)  # fmt: skip
    used = {k: s for k, s in official.items()
            if not k.startswith("transformer.layers.") or int(k.split(".")[2]) <= 11}  # fmt: skip
    assert croma.trainable_ft_pos - croma.trainable_ft0 == sum(map(math.prod, used.values()))
    # frozen: decoder-only plus the classifier (512 x 20 + 20) and the shared L-TAE
    assert croma.trainable_ft0 > croma.decoder_only_m * 1e6 + 512 * 20 + 20

    for name, total in (("utae", 1_087_260), ("utae_paper", 1_085_852)):
        utae = table.loc[name]
        assert utae.trainable_ft0 == utae.trainable_ft_pos == total
        assert utae.whole_network_m == utae.decoder_only_m == 1.09


def test_params_of_the_models_a_run_trained(tmp_path: Path) -> None:
    out = tmp_path / "params.csv"
    assert main(["params", "--models", "croma_tiny", "utae_tiny", "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("name")
    assert list(table.index) == ["croma_tiny", "utae_tiny"]
    assert table.loc["croma_tiny", "trainable_ft_pos"] > table.loc["croma_tiny", "trainable_ft0"]
    utae = table.loc["utae_tiny"]
    assert utae.trainable_ft0 == utae.trainable_ft_pos < 1_000_000


def test_params_row_of_pooling_over_time(tmp_path: Path) -> None:
    """A decoder that pools over time saves the L-TAE's parameters, and the table says so:
    the pooled variant's row, and a run whose setting is ``temporal: max``."""
    out = tmp_path / "params.csv"
    assert main(["params", "--models", "dino_tiny", "dino_mean_tiny", "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("name")
    ltae, mean = table.loc["dino_tiny"], table.loc["dino_mean_tiny"]
    assert (ltae.temporal, mean.temporal, mean.temporal_params) == ("ltae", "mean", 0)
    assert ltae.temporal_params > 0 and mean.model == "DINO (mean over time)"
    for column in ("trainable_ft0", "trainable_ft_pos"):
        assert ltae[column] - mean[column] == ltae.temporal_params
    assert mean.decoder_only_m == ltae.decoder_only_m  # the paper's columns count no L-TAE

    argv = ["params", "--models", "dino_tiny", "--out", str(out), "--temporal"]
    assert main([*argv, "max"]) == 0
    row = pd.read_csv(out).iloc[0]
    assert (row.temporal, row.temporal_params, row.trainable_ft0) == ("max", 0, mean.trainable_ft0)
    assert main([*argv, "linear", "--frames", "6"]) == 0
    assert pd.read_csv(out).iloc[0].temporal_params == 6 + 1  # a weight per frame and a bias
    with pytest.raises(SystemExit, match="needs --frames"):
        main([*argv, "linear"])
