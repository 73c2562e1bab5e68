"""U-TAE: U-Net with temporal attention encoder (Garnot & Landrieu, ICCV 2021).

Own implementation of the published architecture (reference code ``VSainteuf/utae-paps``).
A U-Net whose encoder runs on every frame of a Sentinel-2 series with shared weights; at the
lowest resolution a Lightweight Temporal Attention Encoder (L-TAE) collapses time per pixel, and
its attention masks (bilinearly upsampled) also collapse the skip connections: each head's
attention weights one group of channels (``att_group``). The decoder then works on 2D maps.

Defaults are the official semantic-segmentation configuration (1,087,260 parameters):
encoder [64, 64, 64, 128] with GroupNorm(4), decoder [32, 32, 64, 128] with BatchNorm,
out_conv [32, 20] (BatchNorm + ReLU after the last conv too, so the logits are >= 0),
strided conv k4 s2 p1, reflect padding, L-TAE (d_model 256, 16 heads, d_k 4, MLP [256, 128],
sinusoidal encoding of day offsets, period 1000). Padded frames are given by an explicit mask.
The paper ran ShapingFT's copy, whose down blocks have no normalisation (``down_norm=False``,
1,085,852 parameters: the registry's ``utae_paper``).

Known differences from the reference code (all equal when no frame is padded):
- the L-TAE input GroupNorm takes its statistics over real frames only (the reference includes
  the zero-filled padded frames); ``norm_includes_padding=True`` restores the reference form;
- padding comes from ``pad_mask``, not from detecting frames whose every value equals 0
  (``pad_mask_from_values`` offers that rule).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gfmtune.models.ltae import LTAE

Norm = Literal["group", "batch", "instance"] | None
AggMode = Literal["att_group", "att_mean", "mean"]

#: The official configuration (``utae-paps`` semantic defaults, 10 S2 bands, 20 PASTIS classes).
OFFICIAL_CONFIG: dict[str, Any] = {
    "in_channels": 10,
    "num_classes": 20,
    "encoder_widths": (64, 64, 64, 128),
    "decoder_widths": (32, 32, 64, 128),
    "out_conv": (32, 20),
    "n_head": 16,
    "d_model": 256,
    "d_k": 4,
}

#: Same code, small widths: for CPU tests and the demo.
TINY_CONFIG: dict[str, Any] = {
    **OFFICIAL_CONFIG,
    "encoder_widths": (16, 16, 16, 32),
    "decoder_widths": (16, 16, 16, 32),
    "out_conv": (16, 20),
    "n_head": 4,
    "d_model": 32,
}


def _norm_layer(kind: Norm, channels: int, n_groups: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "group":
        return nn.GroupNorm(n_groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}")


class ConvNormAct(nn.Sequential):
    """Conv2d, optional normalisation, optional ReLU."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        norm: Norm,
        kernel: int = 3,
        stride: int = 1,
        padding: int = 1,
        n_groups: int = 4,
        relu: bool = True,
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, padding, padding_mode=padding_mode),
            _norm_layer(norm, c_out, n_groups),
            nn.ReLU() if relu else nn.Identity(),
        )


class DownBlock(nn.Module):
    """Strided conv (halves the resolution), then conv and a residual conv."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        k: int,
        s: int,
        p: int,
        norm: Norm,
        n_groups: int,
        padding_mode: str,
    ) -> None:
        super().__init__()
        kw = {"norm": norm, "n_groups": n_groups, "padding_mode": padding_mode}
        self.down = ConvNormAct(c_in, c_in, kernel=k, stride=s, padding=p, **kw)
        self.conv1 = ConvNormAct(c_in, c_out, **kw)
        self.conv2 = ConvNormAct(c_out, c_out, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.down(x))
        return y + self.conv2(y)


class UpBlock(nn.Module):
    """Transposed conv (doubles the resolution), concatenation with the projected skip, then
    conv and a residual conv."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        c_skip: int,
        *,
        k: int,
        s: int,
        p: int,
        norm: Norm,
        n_groups: int,
        padding_mode: str,
    ) -> None:
        super().__init__()
        self.skip_proj = nn.Sequential(
            nn.Conv2d(c_skip, c_skip, 1), nn.BatchNorm2d(c_skip), nn.ReLU()
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, k, s, p), nn.BatchNorm2d(c_out), nn.ReLU()
        )
        kw = {"norm": norm, "n_groups": n_groups, "padding_mode": padding_mode}
        self.conv1 = ConvNormAct(c_out + c_skip, c_out, **kw)
        self.conv2 = ConvNormAct(c_out, c_out, **kw)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.cat([self.up(x), self.skip_proj(skip)], dim=1))
        return y + self.conv2(y)


def aggregate_skip(
    x: torch.Tensor,
    attn: torch.Tensor,
    pad_mask: torch.Tensor | None = None,
    mode: AggMode = "att_group",
) -> torch.Tensor:
    """Collapse time in a skip series x (B, T, C, H, W) with the L-TAE attention (B, heads, T,
    h, w), bilinearly resized to (H, W). ``att_group``: head n weights the n-th group of C /
    heads channels; ``att_mean``: head-averaged weights for all channels; ``mean``: plain mean
    over real frames."""
    b, t, c, hh, ww = x.shape
    valid = None if pad_mask is None else (~pad_mask).to(x.dtype)
    if mode == "mean":
        if valid is None:
            return x.mean(dim=1)
        weights = valid / valid.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.einsum("bt,btcyx->bcyx", weights, x)
    if mode == "att_mean":
        attn = attn.mean(dim=1, keepdim=True)
    elif mode != "att_group":
        raise ValueError(f"unknown aggregation mode {mode!r}")
    n = attn.shape[1]
    if attn.shape[-2:] != (hh, ww):
        a = F.interpolate(attn.flatten(1, 2), size=(hh, ww), mode="bilinear", align_corners=False)
        attn = a.view(b, n, t, hh, ww)
    if valid is not None:
        attn = attn * valid[:, None, :, None, None]
    out = torch.einsum("bntyx,btncyx->bncyx", attn, x.view(b, t, n, c // n, hh, ww))
    return out.reshape(b, c, hh, ww)


def pad_mask_from_values(x: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
    """The reference code's rule: a frame of x (B, T, C, H, W) is padding when every value
    equals ``pad_value``. Returns (B, T) bool."""
    return (x == pad_value).flatten(2).all(dim=2)


class UTAE(nn.Module):
    """U-TAE for semantic segmentation of image time series.

    Args:
        in_channels: input bands.
        num_classes: output classes; must equal ``out_conv[-1]``.
        encoder_widths / decoder_widths: channels per level, highest resolution first; the last
            entries must match.
        out_conv: widths of the output convs after the decoder (default
            ``(decoder_widths[0], num_classes)``).
        str_conv_k / str_conv_s / str_conv_p: strided (transposed) conv for down/up-sampling.
        agg_mode: temporal aggregation of the skips (``att_group``, ``att_mean``, ``mean``).
        encoder_norm / decoder_norm: normalisation in the encoder (GroupNorm with ``n_groups``)
            and in the decoder convs (BatchNorm).
        n_head, d_model, d_k, period, dropout, attn_dropout: L-TAE settings.
        padding_mode: spatial padding of the 3 x 3 and strided convs.
        down_norm: False drops normalisation in the encoder's down blocks: ShapingFT's copy
            passes ``norm="gropu"``, which the reference ``ConvLayer`` maps to no norm layer
            (conv + ReLU; ``in_conv`` keeps its GroupNorm); 1,085,852 parameters for the official
            configuration, the paper's U-TAE.
        logits_norm_act: True (reference) applies BatchNorm + ReLU after the last conv too.
        norm_includes_padding: True reproduces the reference L-TAE input norm, whose statistics
            include padded (zero) frames.
    """

    def __init__(
        self,
        in_channels: int = 10,
        num_classes: int = 20,
        encoder_widths: Sequence[int] = (64, 64, 64, 128),
        decoder_widths: Sequence[int] = (32, 32, 64, 128),
        out_conv: Sequence[int] | None = None,
        str_conv_k: int = 4,
        str_conv_s: int = 2,
        str_conv_p: int = 1,
        agg_mode: AggMode = "att_group",
        encoder_norm: Norm = "group",
        decoder_norm: Norm = "batch",
        n_groups: int = 4,
        n_head: int = 16,
        d_model: int = 256,
        d_k: int = 4,
        period: float = 1000.0,
        dropout: float = 0.2,
        attn_dropout: float = 0.1,
        padding_mode: str = "reflect",
        down_norm: bool = True,
        logits_norm_act: bool = True,
        norm_includes_padding: bool = False,
    ) -> None:
        super().__init__()
        enc, dec = list(encoder_widths), list(decoder_widths)
        if len(enc) != len(dec) or enc[-1] != dec[-1]:
            raise ValueError("encoder/decoder widths need equal length and equal last entry")
        out_conv = list(out_conv) if out_conv is not None else [dec[0], num_classes]
        if out_conv[-1] != num_classes:
            raise ValueError(f"out_conv[-1] ({out_conv[-1]}) must equal num_classes")
        if agg_mode != "mean" and any(c % n_head for c in enc[:-1]):
            raise ValueError("skip widths must be divisible by n_head for attention aggregation")
        self.num_classes = num_classes
        self.agg_mode: AggMode = agg_mode
        pm = padding_mode
        self.in_conv = nn.Sequential(
            ConvNormAct(in_channels, enc[0], norm=encoder_norm, n_groups=n_groups, padding_mode=pm),
            ConvNormAct(enc[0], enc[0], norm=encoder_norm, n_groups=n_groups, padding_mode=pm),
        )
        strided = {"k": str_conv_k, "s": str_conv_s, "p": str_conv_p}
        self.down_blocks = nn.ModuleList(
            DownBlock(
                enc[i],
                enc[i + 1],
                **strided,
                norm=encoder_norm if down_norm else None,
                n_groups=n_groups,
                padding_mode=pm,
            )
            for i in range(len(enc) - 1)
        )
        self.ltae = LTAE(
            in_channels=enc[-1],
            d_model=d_model,
            n_head=n_head,
            d_k=d_k,
            mlp=(d_model, enc[-1]),
            dropout=dropout,
            attn_dropout=attn_dropout,
            period=period,
            norm_includes_padding=norm_includes_padding,
        )
        self.up_blocks = nn.ModuleList(
            UpBlock(
                dec[i],
                dec[i - 1],
                enc[i - 1],
                **strided,
                norm=decoder_norm,
                n_groups=n_groups,
                padding_mode=pm,
            )
            for i in range(len(dec) - 1, 0, -1)
        )
        head: list[nn.Module] = []
        for a, b in itertools.pairwise([dec[0], *out_conv]):
            last = len(head) == len(out_conv) - 1
            act = logits_norm_act or not last  # the reference normalises the logits too
            head.append(ConvNormAct(a, b, norm="batch" if act else None, relu=act, padding_mode=pm))
        self.head = nn.Sequential(*head)

    def _encode(self, frames: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.in_conv(frames)]
        for block in self.down_blocks:
            maps.append(block(maps[-1]))
        return maps

    def forward(
        self,
        x: torch.Tensor,
        days: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C, H, W) float, days (B, T) days since 2018-09-01, pad_mask (B, T) bool True
        on padded frames (None: no padding). Returns logits (B, num_classes, H, W), and the
        L-TAE attention (B, n_head, T, H / 2^(L-1), W / 2^(L-1)) if ``return_attention``."""
        b, t = x.shape[:2]
        frames = x.flatten(0, 1)
        if pad_mask is not None and pad_mask.any():
            if pad_mask.all(dim=1).any():
                raise ValueError("every series needs at least one unpadded frame")
            keep = ~pad_mask.flatten()
            # padded frames are not encoded; their feature maps are zero (the reference's fill)
            maps = []
            for m in self._encode(frames[keep]):
                full = m.new_zeros((b * t, *m.shape[1:]))
                maps.append(full.index_put((keep,), m))
        else:
            pad_mask = None
            maps = self._encode(frames)
        maps = [m.unflatten(0, (b, t)) for m in maps]
        out, attn = self.ltae(maps[-1], days, pad_mask)
        for block, skip in zip(self.up_blocks, reversed(maps[:-1]), strict=True):
            out = block(out, aggregate_skip(skip, attn, pad_mask, self.agg_mode))
        logits = self.head(out)
        return (logits, attn) if return_attention else logits


def utae_official(**overrides: Any) -> UTAE:
    """The official configuration (1,087,260 parameters); ``down_norm=False`` gives the paper's
    form (1,085,852)."""
    return UTAE(**{**OFFICIAL_CONFIG, **overrides})


def utae_tiny(**overrides: Any) -> UTAE:
    """Same code with small widths, for CPU tests and the demo."""
    return UTAE(**{**TINY_CONFIG, **overrides})


def init_like_utae_paps(model: UTAE) -> UTAE:
    """Re-initialise like the reference training script (``model.apply(weight_init)`` in
    ``train_semantic.py``): xavier-normal conv/linear weights with N(0, 1) biases, BatchNorm
    weights N(0, 1) and biases 0, the L-TAE input projection (a Conv1d there) N(0, 1); GroupNorm
    and the L-TAE queries keep their construction values. Module construction alone (as in
    ShapingFT, which never calls it) gives PyTorch's defaults instead."""
    with torch.no_grad():
        for m in model.modules():
            if m is model.ltae.in_proj:
                nn.init.normal_(m.weight)
                nn.init.normal_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.normal_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.normal_(m.weight)
                nn.init.zeros_(m.bias)
    return model
