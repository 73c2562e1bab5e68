"""The L-TAE's masked GroupNorm under bf16 autocast: statistics in fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfmtune.models.ltae import LTAE, _masked_group_norm


def _features() -> tuple[torch.Tensor, torch.Tensor, nn.GroupNorm]:
    """bf16 features far from zero (mean 100, std 1: bf16 spacing there is 0.5), a pad mask
    and a GroupNorm with non-trivial affine parameters."""
    g = torch.Generator().manual_seed(0)
    x = (100 + torch.randn(2, 5, 8, 3, 3, generator=g)).bfloat16()
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    norm = nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(8, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(8, generator=g))
    return x, valid, norm


@pytest.mark.parametrize("masked", [False, True])
def test_group_norm_statistics_are_fp32_under_bf16_autocast(masked: bool) -> None:
    x, valid, norm = _features()
    valid = valid if masked else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _masked_group_norm(x, valid, norm)
    reference = _masked_group_norm(x.float(), valid, norm)  # the same bf16 values, in fp32
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    # the tolerance tells fp32 from bf16 statistics: a bf16 mean alone is off by far more
    mean_bf16 = x.view(2, 5, 4, 2, 3, 3).mean(dim=(1, 3))
    mean_fp32 = x.float().view(2, 5, 4, 2, 3, 3).mean(dim=(1, 3))
    assert (mean_bf16.float() - mean_fp32).abs().max() > 1e-2


def test_ltae_under_bf16_autocast_keeps_padding_out_of_the_statistics() -> None:
    """Through the module under autocast: changing a padded frame changes nothing."""
    torch.manual_seed(0)
    ltae = LTAE(in_channels=8, d_model=16, n_head=4, d_k=2, mlp=(16, 8)).eval()
    x, valid, _ = _features()
    days = torch.arange(5).mul(10).expand(2, 5)
    other = x.clone()
    other[1, 4] += 50
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, _ = ltae(x, days, ~valid)
        b, _ = ltae(other, days, ~valid)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
