"""The decoder's temporal module as a switch: mean and max over time beside the L-TAE
(torchgeo's PASTIS benchmark pools single-image backbones' features over time), padded frames
left out as the L-TAE leaves them out, and the registry's pooled variant."""

from __future__ import annotations

import re

import pytest
import torch

from gfmtune.models.registry import build_model, get_spec, temporal_module
from gfmtune.models.upernet import PoolTemporal, SharedLTAE, TemporalUPerNet

#: Two series of 5 frames; the second has its last two frames padded.
PAD = torch.tensor([[False] * 5, [False, False, False, True, True]])


def reference(x: torch.Tensor, pad_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Masked mean / max over time written out per series: only the real frames of each."""
    outs = []
    for b in range(x.shape[0]):
        real = x[b] if pad_mask is None else x[b][~pad_mask[b]]
        outs.append(real.mean(dim=0) if mode == "mean" else real.max(dim=0).values)
    return torch.stack(outs)


@pytest.mark.parametrize("mode", ["mean", "max"])
@pytest.mark.parametrize("pad_mask", [None, PAD], ids=["unpadded", "padded"])
def test_pooling_matches_a_masked_reference(mode: str, pad_mask: torch.Tensor | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, 3, 4)
    out = PoolTemporal(mode)(x, pad_mask)
    assert out.shape == (2, 8, 3, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(x, pad_mask, mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_padded_frames_do_not_change_the_pooled_map(mode: str) -> None:
    """Whatever a padded frame holds (zeros, huge values, NaN-free garbage), the output is that
    of the real frames alone, as for the L-TAE."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, 8, 3, 4)
    pooled = PoolTemporal(mode)
    garbage = x.clone()
    garbage[1, 3:] = 1e4
    torch.testing.assert_close(pooled(x, PAD), pooled(garbage, PAD))
    torch.testing.assert_close(pooled(x, PAD)[1], pooled(x[1:, :3]).squeeze(0))
    # without the mask the padding would count: the mask is what leaves it out
    assert not torch.allclose(pooled(garbage, None)[1], pooled(garbage, PAD)[1])


def test_ltae_path_leaves_padded_frames_out_too() -> None:
    """The same mask reaches the shared L-TAE: its output ignores what padded frames hold."""
    torch.manual_seed(2)
    ltae = SharedLTAE(8, heads=4).eval()
    x = torch.randn(2, 5, 8, 3, 4)
    garbage = x.clone()
    garbage[1, 3:] = 1e4
    with torch.no_grad():
        torch.testing.assert_close(ltae(x, PAD), ltae(garbage, PAD), rtol=1e-5, atol=1e-5)


def test_pooling_under_bf16_input() -> None:
    x = torch.randn(2, 5, 8, 3, 4).bfloat16()
    mean = PoolTemporal("mean")(x, PAD)
    assert mean.dtype == torch.float32  # averaged in fp32, as the L-TAE's input norm
    torch.testing.assert_close(mean, reference(x.float(), PAD, "mean"))
    assert PoolTemporal("max")(x, PAD).dtype == torch.bfloat16  # a max is exact in any dtype


def test_mask_errors() -> None:
    pooled, x = PoolTemporal("mean"), torch.randn(2, 5, 8, 3, 4)
    with pytest.raises(ValueError, match="at least one unpadded frame"):
        pooled(x, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        pooled(x, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown pooling"):
        PoolTemporal("median")
    linear = build_model("dino_tiny", temporal="linear", n_frames=5).temporal
    assert linear(x, torch.zeros(2, 5, dtype=torch.bool)).shape == (2, 8, 3, 4)
    with pytest.raises(ValueError, match="cannot skip padded frames"):
        linear(x, PAD)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_model_with_pooling_forward_and_mask(mode: str) -> None:
    torch.manual_seed(3)
    model = build_model("dino_tiny", temporal=mode).eval()
    assert isinstance(model, TemporalUPerNet) and isinstance(model.temporal, PoolTemporal)
    assert sum(p.numel() for p in model.temporal.parameters()) == 0
    x = torch.randn(2, 5, 13, 64, 64)
    with torch.no_grad():
        out = model(x, (32, 32))
        padded = x.clone()
        padded[1, 3:] = 0.0
        masked = model(padded, (32, 32), PAD)
        alone = model(x[1:, :3], (32, 32))
    assert out.shape == masked.shape == (2, 20, 32, 32)
    torch.testing.assert_close(masked[1:], alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=re.escape("(ltae | linear | mean | max)")):
        build_model("dino_tiny", temporal="median")


def test_pooled_variant_fixes_its_temporal_module() -> None:
    spec = get_spec("dino_mean_tiny")
    assert spec.family == "DINO (mean over time)" and spec.checkpoint is None
    assert temporal_module(spec, "ltae") == temporal_module(spec, "linear") == "mean"
    assert temporal_module(get_spec("dino_tiny"), "max") == "max"
    model = build_model("dino_mean_tiny")  # the run's setting (ltae) does not apply
    assert isinstance(model.temporal, PoolTemporal) and model.temporal.mode == "mean"
    ltae = build_model("dino_tiny")
    # same encoder and decoder otherwise: only the L-TAE's parameters are gone
    assert _count(ltae) - _count(model) == _count(ltae.temporal) > 0


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_schema_accepts_every_temporal_module() -> None:
    from gfmtune.config import ConfigError, settings_schema
    from gfmtune.models.upernet import TEMPORAL_MODULES
    from gfmtune.train.settings import TrainSettings

    assert settings_schema()["properties"]["temporal"]["enum"] == list(TEMPORAL_MODULES)
    for value in ("mean", "max", "ltae", "linear"):
        assert TrainSettings.from_mapping({"temporal": value}).temporal == value
    assert TrainSettings().temporal == "ltae"  # the paper's
    with pytest.raises(ConfigError, match="temporal"):
        TrainSettings.from_mapping({"temporal": "median"})
