"""Input policies: band adaptation, CROMA crops and sliding windows, DINO resizing (and the
authors' double resize of DINO's evaluation logits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gfmtune.config import ConfigError
from gfmtune.models.croma import CROMA_BANDS
from gfmtune.models.dino import DINO_BANDS, DinoEncoder
from gfmtune.models.policies import InputPolicy, adapt_bands, band_index, window_offsets
from gfmtune.models.registry import get_spec
from gfmtune.models.upernet import TemporalUPerNet
from gfmtune.train.settings import TrainSettings


def test_band_adaptation_fills_missing_bands_with_zero() -> None:
    x = torch.arange(1, 11, dtype=torch.float32).view(1, 1, 10, 1, 1).expand(1, 1, 10, 2, 2)
    croma = adapt_bands(x, band_index(CROMA_BANDS))[0, 0, :, 0, 0].tolist()
    # CROMA: B1, B2..B8, B8A, B9, B11, B12 with B1 and B9 filled
    assert croma == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 10]
    dino = adapt_bands(x, band_index(DINO_BANDS))[0, 0, :, 0, 0].tolist()
    assert dino == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 9, 10]
    assert adapt_bands(x, band_index(None)) is x


def test_window_offsets_match_paper() -> None:
    assert window_offsets(128, 120) == [0, 8]
    assert window_offsets(128, 128) == [0]


def test_sliding_windows_stitch_the_full_frame() -> None:
    policy = InputPolicy("crop_windows", 120, None)
    x = torch.randn(1, 2, 10, 128, 128)
    calls = []

    def pointwise(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        calls.append(tuple(v.shape[-2:]))
        return v[:, 0, :3] * 2  # a per-pixel "model": windows must stitch to the full output

    out = policy.predict(pointwise, x)
    assert out.shape == (1, 3, 128, 128) and calls == [(120, 120)] * 4
    torch.testing.assert_close(out, x[:, 0, :3] * 2)


def test_sliding_windows_average_overlaps() -> None:
    policy = InputPolicy("crop_windows", 120, None)
    offsets = iter([0.0, 1.0, 2.0, 3.0])  # each window predicts a constant

    def constant(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.full((1, 1, *size), next(offsets))

    out = policy.predict(constant, torch.zeros(1, 1, 10, 128, 128))[0, 0]
    assert out[0, 0] == 0 and out[127, 127] == 3 and out[0, 127] == 1 and out[127, 0] == 2
    assert out[64, 64] == 1.5  # centre: covered by all four windows


def test_random_crop_keeps_image_and_target_aligned() -> None:
    policy = InputPolicy("crop_windows", 120, None)
    grid = torch.arange(128 * 128).view(128, 128)
    x = grid.float().expand(16, 1, 10, 128, 128)
    gen = torch.Generator().manual_seed(3)
    xv, yv = policy.train_view(x, grid.expand(16, 128, 128), gen)
    assert xv.shape[-2:] == (120, 120) and yv.shape == (16, 120, 120)
    assert torch.equal(xv[:, 0, 0].long(), yv)
    assert len({int(y[0, 0]) for y in yv}) > 1, "each sample gets its own crop"
    assert not policy.deterministic_train_input


def test_resize_policy_returns_logits_at_label_size() -> None:
    policy = InputPolicy("resize", 224, DINO_BANDS)
    seen = []

    def model(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        seen.append(tuple(v.shape))
        return torch.zeros(v.shape[0], 20, *size)

    assert policy.predict(model, torch.randn(2, 3, 10, 128, 128)).shape == (2, 20, 128, 128)
    assert seen == [(2, 3, 13, 224, 224)] and policy.deterministic_train_input


def test_dino_eval_logits_via_input_resize_like_the_authors() -> None:
    """``via_input``: decoder logits 56 -> 224 -> 128 (the authors' sliding inference); the
    default goes 56 -> 128. Both bilinear, align_corners False, no antialiasing."""
    torch.manual_seed(0)
    model = TemporalUPerNet(DinoEncoder("small"), channels=32, ltae_heads=4).eval()
    native: list[torch.Tensor] = []
    model.classifier.register_forward_hook(lambda m, i, out: native.append(out))
    x = torch.randn(1, 1, 10, 128, 128)
    authors, direct = (get_spec("dino", eval_resize=r).policy for r in ("via_input", "direct"))

    def bilinear(v: torch.Tensor, side: int) -> torch.Tensor:
        return F.interpolate(v, size=(side, side), mode="bilinear", align_corners=False)

    with torch.no_grad():
        out = authors.predict(lambda v, size: model(v, size), x)
        (l56,) = native
        # cached encoder features (the feature cache's path) through the same policy method
        feats = model.encode(direct.encoder_input(x))
        cached = authors.eval_logits(lambda size: model.decode(feats, size), (128, 128))
        out_direct = direct.eval_logits(lambda size: model.decode(feats, size), (128, 128))
    assert l56.shape == (1, 20, 56, 56)
    torch.testing.assert_close(out, bilinear(bilinear(l56, 224), 128), rtol=0, atol=0)
    torch.testing.assert_close(cached, out)
    torch.testing.assert_close(out_direct, bilinear(l56, 128))
    assert (out - out_direct).abs().max() > 1e-4


def test_eval_resize_comes_from_the_settings_and_keeps_the_cache_key() -> None:
    settings = TrainSettings.from_mapping({"dino_eval_resize": "via_input"})
    assert TrainSettings().dino_eval_resize == "direct"
    for name in ("dino", "dino_qkv", "dino_tiny"):
        authors = get_spec(name, eval_resize=settings.dino_eval_resize).policy
        assert authors.eval_resize == "via_input" and authors != get_spec(name).policy
        assert repr(authors) == repr(get_spec(name).policy)  # same encoder input, same cache
    with pytest.raises(ValueError, match="eval_resize"):
        get_spec("dino", eval_resize="twice")
    with pytest.raises(ConfigError, match="dino_eval_resize"):
        TrainSettings.from_mapping({"dino_eval_resize": "twice"})
    # policies without a resize evaluate at the output size whatever the setting
    utae = get_spec("utae", eval_resize="via_input").policy
    assert utae.eval_logits(lambda size: torch.zeros(1, 20, *size), (32, 32)).shape[-1] == 32
