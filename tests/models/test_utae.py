"""U-TAE: parameter counts, shapes, padding invariance, gradients, day encoding, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from gfmtune.models.catalog import facts, family_of
from gfmtune.models.ltae import SinusoidalDayEncoding
from gfmtune.models.registry import build_model
from gfmtune.models.utae import (
    UTAE,
    init_like_utae_paps,
    pad_mask_from_values,
    utae_official,
    utae_tiny,
)

NORMS = (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def series(b: int, t: int, hw: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 10, hw, hw, generator=g)
    days = torch.sort(torch.randint(0, 430, (b, t), generator=g), dim=1).values
    return x, days


def test_parameter_counts() -> None:
    assert n_params(utae_official()) == 1_087_260  # official utae-paps configuration
    assert n_params(utae_official(down_norm=False)) == 1_085_852  # ShapingFT typo form
    assert n_params(utae_official(logits_norm_act=False)) == 1_087_260 - 2 * 20
    assert n_params(UTAE()) == 1_087_260  # the class defaults are the official configuration


def _norms(module: torch.nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules() if isinstance(m, NORMS)]


@pytest.mark.parametrize("name, tiny", [("utae_paper", "utae_paper_tiny"), ("utae", "utae_tiny")])
def test_registry_u_tae_forms(name: str, tiny: str) -> None:
    """``utae_paper``: ShapingFT's norm="gropu" left the down blocks with conv + ReLU only (the
    reference ConvLayer adds no norm layer for an unknown name); ``utae`` is the official form."""
    paper = name == "utae_paper"
    for model in (build_model(name), build_model(tiny)):
        assert _norms(model.in_conv) == ["GroupNorm"] * 2
        down = [_norms(block) for block in model.down_blocks]
        assert down == [[] if paper else ["GroupNorm"] * 3] * 3
        assert _norms(model.up_blocks) == ["BatchNorm2d"] * 4 * 3  # the decoder keeps its norms
    assert n_params(build_model(name)) == (1_085_852 if paper else 1_087_260)
    assert family_of(name) == family_of(tiny) == "U-TAE"  # one table row for both forms
    assert facts(name).from_scratch and facts(tiny).from_scratch


@pytest.mark.parametrize("t", [1, 6, 35])
def test_forward_shapes(t: int) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        x, days = series(1, t, 128)
        out = utae_tiny().eval()(x, days)
        assert out.shape == (1, 20, 128, 128)
        x, days = series(1, t, 32)
        out, attn = utae_official().eval()(x, days, return_attention=True)
        assert out.shape == (1, 20, 32, 32)
        assert attn.shape == (1, 16, t, 4, 4)
        torch.testing.assert_close(attn.sum(dim=2), torch.ones(1, 16, 4, 4))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("agg_mode", ["att_group", "att_mean", "mean"])
def test_padding_invariance(agg_mode: str) -> None:
    torch.manual_seed(0)
    model = utae_tiny(agg_mode=agg_mode).eval()
    x, days = series(2, 6, 32)
    lengths = [6, 4]
    xp, dp = x.clone(), days.clone()
    xp[1, 4:], dp[1, 4:] = 0.0, 0  # pad value 0, as a collate function pads
    pad = torch.arange(6)[None] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        padded = model(xp, dp, pad)
        for i, n in enumerate(lengths):
            alone = model(x[i : i + 1, :n], days[i : i + 1, :n])
            torch.testing.assert_close(padded[i : i + 1], alone, rtol=1e-4, atol=1e-5)
        # what sits in a padded frame does not matter
        xj = xp.clone()
        xj[1, 4:] = torch.randn_like(xj[1, 4:]) * 5
        dj = dp.clone()
        dj[1, 4:] = 999
        torch.testing.assert_close(model(xj, dj, pad), padded, rtol=1e-4, atol=1e-5)


def test_reference_norm_is_not_padding_invariant() -> None:
    """The reference L-TAE input GroupNorm counts padded (zero) frames in its statistics."""
    torch.manual_seed(0)
    model = utae_tiny(norm_includes_padding=True).eval()
    x, days = series(1, 4, 32)
    xp = torch.cat([x, torch.zeros_like(x[:, :2])], dim=1)
    dp = torch.cat([days, torch.zeros_like(days[:, :2])], dim=1)
    with torch.no_grad():
        padded = model(xp, dp, pad_mask_from_values(xp))
        alone = model(x, days)
    assert not torch.allclose(padded, alone, rtol=1e-4, atol=1e-5)


def test_pad_mask_from_values() -> None:
    x = torch.randn(2, 3, 10, 4, 4)
    x[0, 2] = 0.0
    x[1, 1, 0] = 0.0  # one zero band is not padding
    expected = torch.tensor([[False, False, True], [False, False, False]])
    assert torch.equal(pad_mask_from_values(x), expected)


def test_fully_padded_series_is_rejected() -> None:
    x, days = series(2, 3, 32)
    pad = torch.tensor([[False, False, True], [True, True, True]])
    with pytest.raises(ValueError, match="unpadded"):
        utae_tiny()(x, days, pad)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = utae_tiny().train()
    x, days = series(2, 5, 32)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    target = torch.randint(0, 20, (2, 32, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(x, days, pad), target, ignore_index=19)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_day_encoding_matters() -> None:
    torch.manual_seed(0)
    model = utae_tiny().eval()
    x, days = series(1, 6, 32)
    with torch.no_grad():
        out = model(x, days)
        assert not torch.allclose(out, model(x, days + 30), atol=1e-5)
        assert not torch.allclose(out, model(x, days.flip(1)), atol=1e-5)
        torch.testing.assert_close(model(x, days.float()), out)  # int and float days agree


def test_sinusoidal_day_encoding_values() -> None:
    enc = SinusoidalDayEncoding(4, period=1000.0, repeat=2)
    table = enc(torch.tensor([[0.0, 100.0]]))
    assert table.shape == (1, 2, 8)
    torch.testing.assert_close(table[0, 0], torch.tensor([0.0, 1.0, 0.0, 1.0] * 2))
    s = math.sqrt(1000.0)  # period ** (2 * 1 / 4) for dims 2 and 3
    expected = [math.sin(100.0), math.cos(100.0), math.sin(100.0 / s), math.cos(100.0 / s)]
    torch.testing.assert_close(table[0, 1], torch.tensor(expected * 2))


def test_determinism() -> None:
    x, days = series(1, 6, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = utae_tiny().train()  # dropout active: the seed fixes it too
        outs.append(model(x, days))
    assert torch.equal(outs[0], outs[1])


def test_reference_head_gives_nonnegative_logits() -> None:
    torch.manual_seed(0)
    x, days = series(1, 3, 32)
    with torch.no_grad():
        assert (utae_tiny().eval()(x, days) >= 0).all()  # BatchNorm + ReLU after the last conv
        assert (utae_tiny(logits_norm_act=False).eval()(x, days) < 0).any()


def test_config_errors_and_init() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        utae_tiny(out_conv=(16, 19))
    with pytest.raises(ValueError, match="last entry"):
        UTAE(encoder_widths=(64, 64, 64, 128), decoder_widths=(32, 32, 64, 64))
    torch.manual_seed(0)
    model = init_like_utae_paps(utae_tiny())
    bn = model.head[0][1]
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
