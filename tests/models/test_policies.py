"""Input policies: band adaptation, CROMA crops and sliding windows, DINO resizing (and the
authors' double resize of DINO's evaluation logits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gfmtune.config import ConfigError
from gfmtune.models.croma import CROMA_BANDS
from gfmtune.models.dino import DINO_BANDS, DinoEncoder
from gfmtune.models.policies import (
    InputPolicy,
    adapt_bands,
    band_index,
    stitch_windows,
    window_offsets,
)
from gfmtune.models.registry import build_model, get_spec
from gfmtune.models.upernet import TemporalUPerNet
from gfmtune.train.settings import TrainSettings
from tests.models.registry_cases import RESIZE_MODELS


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


def test_sliding_windows_stitch_the_full_frame_in_one_call() -> None:
    policy = InputPolicy("crop_windows", 120, None)
    x = torch.randn(2, 2, 10, 128, 128)
    calls = []

    def pointwise(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        calls.append(tuple(v.shape))
        return v[:, 0, :3] * 2  # a per-pixel "model": windows must stitch to the full output

    out = policy.predict(pointwise, x)
    assert out.shape == (2, 3, 128, 128) and calls == [(8, 2, 10, 120, 120)]
    torch.testing.assert_close(out, x[:, 0, :3] * 2)


def test_sliding_windows_average_overlaps() -> None:
    policy = InputPolicy("crop_windows", 120, None)

    def window_index(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # each window predicts its index among its sample's windows (rows first), + 10 x sample
        index = torch.arange(len(v), dtype=torch.float32)
        return (index % 4 + 10 * (index // 4)).view(-1, 1, 1, 1).expand(-1, 1, *size)

    out = policy.predict(window_index, torch.zeros(2, 1, 10, 128, 128))[:, 0]
    assert out[0, 0, 0] == 0 and out[0, 127, 127] == 3 and out[0, 0, 127] == 1
    assert out[0, 127, 0] == 2 and out[0, 64, 64] == 1.5  # centre: covered by all four
    assert out[1, 0, 0] == 10 and out[1, 64, 64] == 11.5


def _window_loop(forward, x: torch.Tensor, window: int) -> torch.Tensor:
    """The former evaluation: one forward per window, logits summed in their own dtype."""
    h, w = x.shape[-2:]
    total, count = 0, torch.zeros(h, w)
    for top in window_offsets(h, window):
        for left in window_offsets(w, window):
            logits = forward(x[..., top : top + window, left : left + window], (window, window))
            total = total + F.pad(logits, (left, w - window - left, top, h - window - top))
            count[top : top + window, left : left + window] += 1
    return total / count


def test_stacked_windows_equal_one_forward_per_window() -> None:
    """croma_tiny (24 px windows on 32 px patches): the batched windows give the former loop's
    logits to fp32 rounding, and the chunked encoder (memory plan) gives the same."""
    spec = get_spec("croma_tiny")
    torch.manual_seed(0)
    model = build_model("croma_tiny", encoder_trainable=False).eval()
    x = torch.randn(3, 4, 10, 32, 32)
    forward = lambda v, size: model(v, size)  # noqa: E731
    with torch.no_grad():
        loop = _window_loop(forward, adapt_bands(x, band_index(spec.policy.bands)), 24)
        stacked = spec.policy.predict(forward, x)
        model.set_memory_plan(5, False)
        chunked = spec.policy.predict(forward, x)
    assert stacked.dtype == torch.float32 and stacked.shape == (3, 20, 32, 32)
    torch.testing.assert_close(stacked, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, stacked, rtol=1e-5, atol=1e-5)


def test_window_logits_are_summed_in_fp32() -> None:
    """bf16 window logits: the sum is taken in fp32, so the average is the fp32 mean of the
    bf16 values (a bf16 sum would round 256 + 1 to 256)."""
    logits = torch.tensor([256.0, 1.0, 1.0, 1.0], dtype=torch.bfloat16).view(4, 1, 1, 1)
    out = stitch_windows(logits.expand(4, 1, 2, 2), (3, 3), 2)
    assert out.dtype == torch.float32
    assert out[0, 0, 1, 1] == 259 / 4  # all four windows
    assert out[0, 0, 0, 1] == 257 / 2  # windows 0 and 1


def test_cached_window_levels_decode_like_predict() -> None:
    """Encoder levels of the stacked windows, batched per sample as the feature cache stores
    them, decode to :meth:`predict`'s logits."""
    spec = get_spec("croma_tiny")
    torch.manual_seed(0)
    model = build_model("croma_tiny", encoder_trainable=False).eval()
    x = torch.randn(2, 3, 10, 32, 32)
    with torch.no_grad():
        direct = spec.policy.predict(lambda v, size: model(v, size), x)
        levels = [level.unflatten(0, (2, -1)) for level in model.encode(spec.policy.eval_input(x))]
        cached = spec.policy.eval_decoded(model.decode, levels, (32, 32))
    assert levels[0].shape[:3] == (2, 4, 3)  # (patches, windows, frames)
    torch.testing.assert_close(cached, direct, rtol=0, atol=0)
    with pytest.raises(ValueError, match="random crops"):
        spec.policy.encoder_input(x)


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


@pytest.mark.parametrize("name", RESIZE_MODELS)
def test_eval_resize_comes_from_the_settings_and_keeps_the_cache_key(name: str) -> None:
    settings = TrainSettings.from_mapping({"dino_eval_resize": "via_input"})
    assert TrainSettings().dino_eval_resize == "direct"
    authors = get_spec(name, eval_resize=settings.dino_eval_resize).policy
    assert authors.eval_resize == "via_input" and authors != get_spec(name).policy
    assert repr(authors) == repr(get_spec(name).policy)  # same encoder input, same cache


def test_eval_resize_refuses_unknown_values_and_leaves_other_policies_alone() -> None:
    with pytest.raises(ValueError, match="eval_resize"):
        get_spec("dino", eval_resize="twice")
    with pytest.raises(ConfigError, match="dino_eval_resize"):
        TrainSettings.from_mapping({"dino_eval_resize": "twice"})
    # policies without a resize evaluate at the output size whatever the setting
    utae = get_spec("utae", eval_resize="via_input").policy
    assert utae.eval_logits(lambda size: torch.zeros(1, 20, *size), (32, 32)).shape[-1] == 32
