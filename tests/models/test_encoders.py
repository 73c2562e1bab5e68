"""CROMA and DINO encoders compute the published architecture and stop early without change."""

from __future__ import annotations

import math

import torch

from gfmtune.models.croma import CromaOpticalEncoder, alibi_2d
from gfmtune.models.dino import DinoEncoder
from tests.models.official_layouts import croma_s2_encoder_shapes


def test_alibi_bias_is_negative_slope_times_grid_distance() -> None:
    bias = alibi_2d(heads=16, grid_h=3, grid_w=4)[0]
    assert bias.shape == (16, 12, 12)
    # points i = row-major (r, c); patch 1 = (0, 1), patch 11 = (2, 3)
    dist = math.hypot(2 - 0, 3 - 1)
    for h in (0, 5, 15):
        slope = 2 ** (-0.5 * (h + 1))  # docs/protocol.md, "CROMA": 2^(-0.5 (h + 1))
        assert math.isclose(float(bias[h, 1, 11]), -slope * dist, rel_tol=1e-6)
    assert torch.all(bias.diagonal(dim1=1, dim2=2) == 0)


def _reference_croma(encoder: CromaOpticalEncoder, x: torch.Tensor) -> list[torch.Tensor]:
    """The official forward written out: explicit softmax attention, every block computed."""
    b, c, h, w = x.shape
    gh, gw = h // 8, w // 8
    tokens = x.reshape(b, c, gh, 8, gw, 8).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, -1)
    tokens = encoder.linear_input(tokens)
    heads = encoder.heads
    bias = alibi_2d(heads, gh, gw)
    outs = []
    for attn, ffn in encoder.transformer.layers:
        y = attn.input_norm(tokens)
        q, k, v = attn.to_qkv(y).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, tokens.shape[-1])
        tokens = tokens + attn.to_out(out)
        tokens = tokens + ffn.net(ffn.input_norm(tokens))
        outs.append(tokens)
    picked = [outs[i] for i in encoder.out_indices]
    picked[-1] = encoder.transformer.norm_out(picked[-1])
    return [p.transpose(1, 2).reshape(b, -1, gh, gw) for p in picked]


def test_croma_matches_reference_and_early_stop_is_exact() -> None:
    torch.manual_seed(0)
    encoder = CromaOpticalEncoder("tiny", out_indices=(0, 2)).eval()
    x = torch.randn(2, 12, 24, 32)  # non-square grid: 3 x 4 patches
    with torch.no_grad():
        expected = _reference_croma(encoder, x)
        full = encoder(x)
        encoder.truncate()
        assert len(encoder.transformer.layers) == 3
        early = encoder(x)
    assert [f.shape for f in full] == [(2, 64, 3, 4)] * 2
    for a, b in zip(expected, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(full, early, strict=True):
        assert torch.equal(a, b)


def test_croma_paper_configuration_shapes() -> None:
    encoder = CromaOpticalEncoder("large").eval()
    official = croma_s2_encoder_shapes(1024, 24)
    assert sum(p.numel() for p in encoder.parameters()) == sum(map(math.prod, official.values()))
    encoder.truncate()
    with torch.no_grad():
        for size in (120, 128):
            feats = encoder(torch.randn(1, 12, size, size))
            assert [f.shape for f in feats] == [(1, 1024, size // 8, size // 8)] * 4


def test_dino_features_are_intermediate_blocks_without_norm() -> None:
    torch.manual_seed(0)
    encoder = DinoEncoder("small", qkv_bias=False).eval()
    x = torch.randn(1, 13, 224, 224)
    with torch.no_grad():
        tokens = encoder.vit.patch_embed(x)
        tokens = encoder.vit._pos_embed(tokens)
        expected = []
        for i, block in enumerate(encoder.vit.blocks):
            tokens = block(tokens)
            if i in (3, 5, 7, 11):
                expected.append(tokens[:, 1:].transpose(1, 2).reshape(1, 384, 14, 14))
        feats = encoder(x)
        encoder.truncate()
        again = encoder(x)
    for a, b, c in zip(expected, feats, again, strict=True):
        torch.testing.assert_close(a, b)
        assert torch.equal(b, c)
    assert encoder.vit.blocks[0].attn.qkv.bias is None
    assert DinoEncoder("small", qkv_bias=True).vit.blocks[0].attn.qkv.bias is not None
