"""Lightweight Temporal Attention Encoder (L-TAE, Garnot & Landrieu 2020), applied per pixel.

Maps a feature-map series (B, C, T, H, W) to one map (B, C_out, H, W): a learned query per head
attends over time to keys computed from each frame; the values are the frame features split
into head groups. Used by U-TAE (with a sinusoidal encoding of the acquisition days) and by the
temporal UPerNet decoder (one shared L-TAE, no date encoding).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


class DayEncoding(nn.Module):
    """Sinusoidal encoding of day offsets, ``d`` channels repeated ``repeat`` times."""

    def __init__(self, d: int, period: float = 1000.0, repeat: int = 1) -> None:
        super().__init__()
        denom = period ** (2 * (torch.arange(d) // 2).float() / d)
        self.register_buffer("denom", denom, persistent=False)
        self.repeat = repeat

    def forward(self, days: torch.Tensor) -> torch.Tensor:
        table = days.float()[..., None] / self.denom
        table = torch.stack([table[..., 0::2].sin(), table[..., 1::2].cos()], dim=-1)
        return table.flatten(-2).repeat(*([1] * days.dim()), self.repeat)


class LTAE(nn.Module):
    """L-TAE over (B, C, T, H, W) with optional day encoding and pad mask."""

    def __init__(
        self,
        in_channels: int,
        n_head: int = 16,
        d_k: int = 4,
        mlp: tuple[int, ...] = (256, 128),
        dropout: float = 0.2,
        d_model: int | None = 256,
        period: float = 1000.0,
        date_encoding: bool = True,
    ) -> None:
        super().__init__()
        self.n_head, self.d_k = n_head, d_k
        self.d_model = d_model or in_channels
        if mlp[0] != self.d_model:
            raise ValueError(f"mlp must start at d_model={self.d_model}, got {mlp}")
        self.in_norm = nn.GroupNorm(n_head, in_channels)
        self.inconv = nn.Conv1d(in_channels, d_model, 1) if d_model else None
        self.days = DayEncoding(self.d_model // n_head, period, n_head) if date_encoding else None
        self.query = nn.Parameter(torch.randn(n_head, d_k) * math.sqrt(2.0 / d_k))
        self.key = nn.Linear(self.d_model, n_head * d_k)
        nn.init.normal_(self.key.weight, std=math.sqrt(2.0 / d_k))
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(mlp):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.attn_dropout = nn.Dropout(0.1)
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.GroupNorm(n_head, mlp[-1])

    def forward(
        self,
        x: torch.Tensor,
        days: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ):
        """x (B, C, T, H, W); days (B, T); pad_mask (B, T), True on padded frames.

        Returns (B, C_out, H, W), and with ``return_attention`` the attention (n_head, B, T, H, W).
        """
        b, c, t, h, w = x.shape
        seq = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)  # (BHW, T, C)
        seq = self.in_norm(seq.transpose(1, 2))
        if self.inconv is not None:
            seq = self.inconv(seq)
        seq = seq.transpose(1, 2)  # (BHW, T, d_model)
        if self.days is not None:
            if days is None:
                raise ValueError("this L-TAE encodes acquisition days: pass days (B, T)")
            enc = self.days(days)  # (B, T, d_model)
            seq = seq + enc[:, None, None].expand(b, h, w, t, -1).reshape(b * h * w, t, -1)
        keys = self.key(seq).view(b * h * w, t, self.n_head, self.d_k)
        scores = torch.einsum("hd,nthd->nht", self.query, keys) / math.sqrt(self.d_k)
        if pad_mask is not None:
            mask = pad_mask[:, None, None, None, :].expand(b, h, w, 1, t).reshape(b * h * w, 1, t)
            scores = scores.masked_fill(mask, -1e3)
        attn = self.attn_dropout(scores.softmax(dim=-1))  # (BHW, heads, T)
        values = seq.view(b * h * w, t, self.n_head, -1)
        out = torch.einsum("nht,nthd->nhd", attn, values).reshape(b * h * w, -1)
        out = self.out_norm(self.dropout(self.mlp(out)))
        out = out.view(b, h, w, -1).permute(0, 3, 1, 2)
        if return_attention:
            return out, attn.view(b, h, w, self.n_head, t).permute(3, 0, 4, 1, 2)
        return out
