"""Lightweight Temporal Attention Encoder (L-TAE, Garnot & Landrieu 2020), applied per pixel.

Maps a feature-map series (B, T, C, H, W) to one map (B, C_out, H, W): a learned query per head
attends over time to keys computed from each frame; the values are the frame features split
into head groups. Used by U-TAE (with a sinusoidal encoding of the acquisition days) and by the
temporal UPerNet decoder (one shared L-TAE, no date encoding). Checked against the reference
implementation (``VSainteuf/utae-paps``) to 1e-7 when no frame is padded; the input GroupNorm
counts real frames only, so padding never changes the output (``norm_includes_padding=True``
restores the reference form).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


class SinusoidalDayEncoding(nn.Module):
    """Sinusoidal encoding of day offsets: ``d`` dims (sin on even, cos on odd indices, both of
    ``day / period^(2 floor(i/2) / d)``), tiled ``repeat`` times."""

    denom: torch.Tensor

    def __init__(self, d: int, period: float = 1000.0, repeat: int = 1) -> None:
        super().__init__()
        i = torch.arange(d, dtype=torch.float64)
        denom = torch.pow(torch.tensor(float(period), dtype=torch.float64), 2 * (i // 2) / d)
        self.register_buffer("denom", denom.float(), persistent=False)
        self.repeat = repeat

    def forward(self, days: torch.Tensor) -> torch.Tensor:
        """(B, T) days -> (B, T, d * repeat)."""
        angle = days.to(self.denom.dtype)[..., None] / self.denom
        even = torch.arange(angle.shape[-1], device=angle.device) % 2 == 0
        table = torch.where(even, torch.sin(angle), torch.cos(angle))
        return table.repeat(1, 1, self.repeat)


def _masked_group_norm(
    x: torch.Tensor, valid: torch.Tensor | None, norm: nn.GroupNorm
) -> torch.Tensor:
    """GroupNorm of (B, T, C, H, W) per pixel over (channel group, time), counting only frames
    where ``valid`` (B, T) is True (all frames if None).

    Computed in fp32 whatever the input's dtype (under bf16 autocast the encoder's features are
    bf16, whose 8-bit mantissa would round the mean and variance); returns fp32, as
    :class:`~torch.nn.GroupNorm` does under autocast. No op here is cast by autocast.
    """
    b, t, c, h, w = x.shape
    g = norm.num_groups
    xg = x.float().view(b, t, g, c // g, h, w)
    if valid is None:
        mean = xg.mean(dim=(1, 3), keepdim=True)
        var = xg.var(dim=(1, 3), unbiased=False, keepdim=True)
    else:
        m = valid.to(xg.dtype).view(b, t, 1, 1, 1, 1)
        n = (m.sum(dim=1, keepdim=True) * (c // g)).clamp_min(1.0)
        mean = (xg * m).sum(dim=(1, 3), keepdim=True) / n
        var = ((xg - mean).square() * m).sum(dim=(1, 3), keepdim=True) / n
    y = ((xg - mean) * torch.rsqrt(var + norm.eps)).view(b, t, c, h, w)
    return y * norm.weight.view(1, 1, c, 1, 1) + norm.bias.view(1, 1, c, 1, 1)


class LTAE(nn.Module):
    """Lightweight Temporal Attention Encoder applied to every pixel of a feature-map series.

    One learned query per head; keys from a linear map of the (normalised, projected, date-encoded)
    input; the values are the input split into ``n_head`` channel groups. Returns the pooled
    map (B, mlp[-1], H, W) and the attention (B, n_head, T, H, W).
    """

    def __init__(
        self,
        in_channels: int = 128,
        d_model: int = 256,
        n_head: int = 16,
        d_k: int = 4,
        mlp: Sequence[int] = (256, 128),
        dropout: float = 0.2,
        attn_dropout: float = 0.1,
        period: float = 1000.0,
        positional_encoding: bool = True,
        norm_includes_padding: bool = False,
    ) -> None:
        super().__init__()
        if d_model % n_head or in_channels % n_head or mlp[-1] % n_head:
            raise ValueError("d_model, in_channels and mlp[-1] must be divisible by n_head")
        if mlp[0] != d_model:
            raise ValueError(f"mlp[0] ({mlp[0]}) must equal d_model ({d_model})")
        self.n_head, self.d_k, self.d_model = n_head, d_k, d_model
        self.norm_includes_padding = norm_includes_padding
        self.in_norm = nn.GroupNorm(n_head, in_channels)
        self.in_proj = nn.Linear(in_channels, d_model)
        self.day_encoding = (
            SinusoidalDayEncoding(d_model // n_head, period, repeat=n_head)
            if positional_encoding
            else None
        )
        self.query = nn.Parameter(torch.randn(n_head, d_k) * math.sqrt(2.0 / d_k))
        self.key = nn.Linear(d_model, n_head * d_k)
        nn.init.normal_(self.key.weight, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.attn_dropout = nn.Dropout(attn_dropout)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(mlp):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.GroupNorm(n_head, mlp[-1])

    def forward(
        self, x: torch.Tensor, days: torch.Tensor, pad_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C, H, W), days (B, T), pad_mask (B, T) True on padding."""
        b, _, _, h, w = x.shape
        valid = None if pad_mask is None or self.norm_includes_padding else ~pad_mask
        z = _masked_group_norm(x, valid, self.in_norm).permute(0, 3, 4, 1, 2)  # B H W T C
        z = self.in_proj(z)
        if self.day_encoding is not None:
            z = z + self.day_encoding(days)[:, None, None]
        k = self.key(z).unflatten(-1, (self.n_head, self.d_k))  # B H W T heads d_k
        scores = torch.einsum("bywtnk,nk->bywtn", k, self.query) / math.sqrt(self.d_k)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, None, :, None], -1e3)
        attn = self.attn_dropout(torch.softmax(scores, dim=3))
        v = z.unflatten(-1, (self.n_head, self.d_model // self.n_head))
        out = torch.einsum("bywtn,bywtnd->bywnd", attn, v).reshape(b * h * w, self.d_model)
        out = self.out_norm(self.dropout(self.mlp(out)))
        return (
            out.view(b, h, w, -1).permute(0, 3, 1, 2),
            attn.permute(0, 4, 3, 1, 2),  # B heads T H W
        )
