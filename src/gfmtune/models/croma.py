"""CROMA optical (Sentinel-2) encoder with 2D-ALiBi attention (Fuller et al., NeurIPS 2023).

Own implementation of the published architecture; parameter names equal the official
checkpoint's ``s2_encoder`` sub-dict (``linear_input``, ``transformer.layers.{L}.{0,1}``,
``transformer.norm_out``) so ``CROMA_base.pt`` / ``CROMA_large.pt`` load with strict checks.
A ViT with 8 x 8 patches over 12 bands, no CLS token and no position embedding: position enters
as an attention bias -slope_h x (euclidean distance between patch grid points), which depends
only on the grid, so any image size divisible by 8 works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: CROMA's optical band order (B10 is not used); PASTIS lacks B1 and B9.
CROMA_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12",
)  # fmt: skip
PATCH = 8


@dataclass(frozen=True)
class CromaSize:
    dim: int
    depth: int
    heads: int = 16


SIZES = {
    "base": CromaSize(768, 12),
    "large": CromaSize(1024, 24),
    "tiny": CromaSize(64, 4, 4),  # same code, small dimensions, for CPU tests and the demo
}


def alibi_2d(heads: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Attention bias (1, heads, N, N): -slope_h x distance between row-major grid points."""
    slopes = torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    points = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
    dist = torch.cdist(points, points)
    return (-slopes[:, None, None] * dist[None]).unsqueeze(0).float()


class Attention(nn.Module):
    """Pre-norm multi-head self-attention, qkv without bias, additive position bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.input_norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.to_qkv(self.input_norm(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """Pre-norm MLP: Linear(dim, 4 dim), GELU, Linear(4 dim, dim) (keys net.0, net.3)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mult * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_norm(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads), FeedForward(dim)]) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)


class CromaOpticalEncoder(nn.Module):
    """CROMA's optical encoder returning the features after the blocks in ``out_indices``.

    Features are (B, dim, H/8, W/8). ``final_norm`` applies the final LayerNorm to the last
    returned level only (the paper's setting). The forward pass stops after the last block it
    needs; :meth:`truncate` also drops the unused blocks' parameters (after loading weights).
    """

    in_bands = CROMA_BANDS
    patch_size = PATCH

    def __init__(
        self,
        size: str = "large",
        out_indices: tuple[int, ...] = (3, 5, 7, 11),
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        spec = SIZES[size]
        if max(out_indices) >= spec.depth:
            raise ValueError(f"out_indices {out_indices} exceed CROMA-{size}'s {spec.depth} blocks")
        self.size, self.heads, self.out_indices = size, spec.heads, tuple(out_indices)
        self.final_norm = final_norm
        self.out_dims = [spec.dim] * len(out_indices)
        self.linear_input = nn.Linear(PATCH * PATCH * len(CROMA_BANDS), spec.dim)
        self.transformer = Transformer(spec.dim, spec.depth, spec.heads)
        self._bias: dict[tuple[int, int, str], torch.Tensor] = {}

    def attention_bias(self, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        key = (grid_h, grid_w, str(device))
        if key not in self._bias:
            self._bias[key] = alibi_2d(self.heads, grid_h, grid_w).to(device)
        return self._bias[key]

    def load_encoder_state(self, state: dict[str, torch.Tensor], where: str) -> list[str]:
        """Load the official ``s2_encoder`` tensors with strict key and shape checks."""
        from gfmtune.models.checkpoints import load_strict

        return load_strict(self, state, where)

    def truncate(self) -> None:
        """Drop the blocks after the last one whose output is used (saves memory, same output)."""
        keep = max(self.out_indices) + 1
        self.transformer.layers = self.transformer.layers[:keep]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, c, h, w = x.shape
        if c != len(CROMA_BANDS) or h % PATCH or w % PATCH:
            raise ValueError(f"CROMA expects (B, 12, H, W) with H, W multiples of 8, got {x.shape}")
        gh, gw = h // PATCH, w // PATCH
        # channel-major patches: (b, c, gh, 8, gw, 8) -> (b, gh*gw, c*8*8)
        patches = x.view(b, c, gh, PATCH, gw, PATCH).permute(0, 2, 4, 1, 3, 5)
        tokens = self.linear_input(patches.reshape(b, gh * gw, c * PATCH * PATCH))
        bias = self.attention_bias(gh, gw, x.device)
        features, last = [], max(self.out_indices)
        for i, (attn, ffn) in enumerate(self.transformer.layers):
            tokens = tokens + attn(tokens, bias)
            tokens = tokens + ffn(tokens)
            if i in self.out_indices:
                out = tokens
                if self.final_norm and i == last:
                    out = self.transformer.norm_out(out)
                features.append(out.transpose(1, 2).reshape(b, -1, gh, gw))
            if i == last:
                break
        return features
