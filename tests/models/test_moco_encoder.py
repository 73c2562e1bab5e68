"""SSL4EO-S12 MoCo v3 ViT-S/16 (torchgeo's SENTINEL2_ALL_MOCO): strict loading of a file with
torchgeo's key names, the contract's output, the parameter table, one training epoch and the
workflow's weights download."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from gfmtune.cli import main
from gfmtune.models.catalog import MOCO_TORCHGEO, MODELS
from gfmtune.models.checkpoints import CheckpointError, read_checkpoint
from gfmtune.models.registry import build_encoder, get_spec
from gfmtune.train.job import Cell, CellJob
from tests.models.official_layouts import dino_vits16_shapes, random_state
from tests.train.conftest import FAST, inputs, train_data  # noqa: F401 (the fixture)
from tests.workflow_helpers import job_counts, run_snakemake


def published_file(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """``state`` saved under the catalog's file name, as torchgeo saves a state dict."""
    path = folder / MOCO_TORCHGEO.filename
    torch.save(state, path)
    return path


def test_torchgeo_layout_loads_strictly_and_gives_four_levels(tmp_path, monkeypatch) -> None:
    """torchgeo loads the file into timm's ViT-S/16 (13 bands, qkv bias) missing only head.*:
    the keys of ``dino_vits16_shapes``. Loaded through the catalog (size and sha256 checked)."""
    backbone = random_state(dino_vits16_shapes(), seed=5)
    path = published_file(tmp_path, backbone)
    data = path.read_bytes()
    ckpt = replace(MOCO_TORCHGEO, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(MODELS, "moco", replace(MODELS["moco"], checkpoint=ckpt))

    encoder = build_encoder(get_spec("moco"), tmp_path).eval()

    state = encoder.vit.state_dict()
    for key in ("blocks.0.attn.qkv.bias", "blocks.11.mlp.fc2.weight", "pos_embed", "cls_token"):
        assert torch.equal(state[key], backbone[key]), key
    assert "norm.weight" not in state  # truncated: the features skip the final norm
    with torch.no_grad():
        levels = encoder(torch.randn(1, 13, 224, 224))
    assert [tuple(level.shape) for level in levels] == [(1, 384, 14, 14)] * 4
    assert encoder.out_dims == [384] * 4


def test_qkv_biases_are_loaded_not_dropped(tmp_path: Path) -> None:
    backbone = random_state(dino_vits16_shapes(), seed=6)
    path = published_file(tmp_path, backbone)
    encoder = get_spec("moco").build_encoder()
    assert encoder.load_encoder_state(read_checkpoint(path, MOCO_TORCHGEO.layout), str(path)) == []
    assert torch.equal(encoder.vit.blocks[7].attn.qkv.bias, backbone["blocks.7.attn.qkv.bias"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("blocks.3.attn.qkv.bias"), r"missing 1 tensor\(s\).*blocks\.3\.attn\.qkv"),
        (lambda s: s.update({"fc_norm.weight": torch.ones(384)}), r"unexpected 1 tensor\(s\)"),
        (lambda s: s.update({"pos_embed": torch.zeros(1, 50, 384)}), r"pos_embed: file"),
    ],
    ids=["missing", "extra", "misshaped"],
)
def test_file_that_does_not_fit_is_named(tmp_path: Path, change, message: str) -> None:
    backbone = random_state(dino_vits16_shapes(), seed=7)
    change(backbone)
    path = published_file(tmp_path, backbone)
    encoder = get_spec("moco").build_encoder()
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + message):
        encoder.load_encoder_state(read_checkpoint(path, MOCO_TORCHGEO.layout), str(path))


def test_params_lists_moco_as_dino_plus_qkv_biases(tmp_path: Path) -> None:
    out = tmp_path / "params.csv"
    assert main(["params", "--models", "dino", "moco", "moco_tiny", "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("name")
    assert list(table.index) == ["dino", "moco", "moco_tiny"]
    assert list(table.model) == ["DINO", "MoCo", "MoCo"]
    dino, moco = table.loc["dino"], table.loc["moco"]
    assert moco.trainable_ft0 == dino.trainable_ft0  # same decoder
    assert moco.trainable_ft_pos - dino.trainable_ft_pos == 12 * 3 * 384  # the qkv biases
    assert table.loc["moco_tiny", "trainable_ft_pos"] > table.loc["moco_tiny", "trainable_ft0"]


def test_moco_tiny_trains_its_encoder(train_data: Path, tmp_path: Path) -> None:  # noqa: F811
    job = CellJob(Cell("moco_tiny", 0.1, "100", 6), inputs(train_data), replace(FAST, epochs=1),
                  tmp_path, progress=False)  # fmt: skip
    metrics = job.run()
    assert 0 <= metrics["test"]["miou"] <= 1
    fresh = get_spec("moco_tiny").build_encoder()
    trained = job.model.encoder.vit.state_dict()
    assert not torch.equal(fresh.vit.state_dict()["blocks.0.attn.qkv.bias"],
                           trained["blocks.0.attn.qkv.bias"])  # fmt: skip


def test_workflow_plans_the_moco_weights_download(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", config={"models": ["moco"]})
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["weights"] == 1 and counts["train"] == 3 * 4 * 5  # FT-Rates x fractions x t
    assert f"--checkpoint {MOCO_TORCHGEO.name} " in result.stdout
