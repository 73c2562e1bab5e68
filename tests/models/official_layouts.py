"""Checkpoint key layouts as the publishers write them (docs/protocol.md, "Models"), not read
from our code."""

from __future__ import annotations

import torch


def croma_s2_encoder_shapes(dim: int, depth: int, bands: int = 12) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official ``s2_encoder`` sub-dict (CROMA_base.pt / CROMA_large.pt)."""
    shapes = {"linear_input.weight": (dim, 8 * 8 * bands), "linear_input.bias": (dim,)}
    for layer in range(depth):
        a, f = f"transformer.layers.{layer}.0", f"transformer.layers.{layer}.1"
        shapes |= {
            f"{a}.input_norm.weight": (dim,), f"{a}.input_norm.bias": (dim,),
            f"{a}.to_qkv.weight": (3 * dim, dim),
            f"{a}.to_out.weight": (dim, dim), f"{a}.to_out.bias": (dim,),
            f"{f}.input_norm.weight": (dim,), f"{f}.input_norm.bias": (dim,),
            f"{f}.net.0.weight": (4 * dim, dim), f"{f}.net.0.bias": (4 * dim,),
            f"{f}.net.3.weight": (dim, 4 * dim), f"{f}.net.3.bias": (dim,),
        }  # fmt: skip
    shapes |= {"transformer.norm_out.weight": (dim,), "transformer.norm_out.bias": (dim,)}
    return shapes


def vit_block_shapes(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    """timm ``Block`` naming, qkv with bias, MLP ratio 4."""
    return {
        f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
        f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.qkv.bias": (3 * dim,),
        f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
        f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
        f"{prefix}.mlp.fc1.weight": (4 * dim, dim), f"{prefix}.mlp.fc1.bias": (4 * dim,),
        f"{prefix}.mlp.fc2.weight": (dim, 4 * dim), f"{prefix}.mlp.fc2.bias": (dim,),
    }  # fmt: skip


def dino_vits16_shapes(bands: int = 13, dim: int = 384, depth: int = 12,
                       tokens: int = 197) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """Keys and shapes of the SSL4EO-S12 DINO ViT-S/16 backbone (timm / DINO naming)."""
    shapes = {
        "cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
        "patch_embed.proj.weight": (dim, bands, 16, 16), "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,), "norm.bias": (dim,),
    }  # fmt: skip
    for i in range(depth):
        shapes |= vit_block_shapes(f"blocks.{i}", dim)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes; small values so that stacked blocks stay finite."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
