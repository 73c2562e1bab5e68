"""AdamW: fused where torch has it, and equal to the foreach form to rounding."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from gfmtune.models.registry import build_model, get_spec
from gfmtune.train.loop import build_optimizer
from gfmtune.train.settings import TrainSettings


@pytest.mark.parametrize(("name", "ft_rate"), [("utae_tiny", None), ("croma_tiny", 0.1)])
def test_fused_adamw_equals_foreach(name: str, ft_rate: float | None, caplog) -> None:
    """Five steps from the same gradients: the fused AdamW that build_optimizer picks on CPU and
    the foreach AdamW over the same groups end with the same parameters (to fp32 rounding)."""
    torch.manual_seed(0)
    spec, settings = get_spec(name), TrainSettings()
    model = build_model(name, encoder_trainable=ft_rate is not None)
    twin = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="gfmtune.train.loop"):
        fused = build_optimizer(model, spec, ft_rate, settings)
    assert fused.defaults["fused"] and "AdamW: fused" in caplog.text
    groups = [
        {k: v for k, v in g.items() if k in ("params", "lr")}
        for g in build_optimizer(twin, spec, ft_rate, settings).param_groups
    ]
    assert [g["lr"] for g in groups] == [g["lr"] for g in fused.param_groups]
    foreach = torch.optim.AdamW(
        groups, betas=settings.betas, weight_decay=settings.weight_decay, foreach=True
    )
    trained = [p for g in fused.param_groups for p in g["params"]]
    twins = [p for g in foreach.param_groups for p in g["params"]]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(trained, twins, strict=True):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        fused.step()
        foreach.step()
    for a, b in zip(trained, twins, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
