"""Temporal UPerNet: a ViT encoder run once on all B x T frames, a temporal module per level,
a Feature2Pyramid neck and a UPerNet head (Xiao et al. 2018) as configured in the paper.

Any encoder works that declares ``out_dims`` (channels per returned level) and returns a list of
(N, C, h, w) maps. Convolutions carry a bias and are followed by BatchNorm and ReLU, as in the
PANGAEA/ShapingFT decoder the paper used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gfmtune.models.ltae import LTAE


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Feature2Pyramid(nn.Module):
    """Rescales four same-resolution levels by x4, x2, x1 and x0.5."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        if len(dims) != 4:
            raise ValueError(f"Feature2Pyramid needs 4 levels, got {len(dims)}")
        d0, d1 = dims[0], dims[1]
        self.ops = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(d0, d0, 2, 2),
                    nn.BatchNorm2d(d0),
                    nn.GELU(),
                    nn.ConvTranspose2d(d0, d0, 2, 2),
                ),
                nn.ConvTranspose2d(d1, d1, 2, 2),
                nn.Identity(),
                nn.MaxPool2d(2, 2),
            ]
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip(self.ops, feats, strict=True)]


class PyramidPooling(nn.Module):
    """PSPNet pooling pyramid over the last level, concatenated with it."""

    def __init__(self, cin: int, channels: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(cin, channels, 1)) for s in scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(s(x), size=size, mode="bilinear", align_corners=False)
            for s in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


class UPerHead(nn.Module):
    """UPerNet head: PPM + bottleneck on the top level, FPN laterals, fused by fpn_bottleneck."""

    def __init__(
        self, dims: Sequence[int], channels: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(dims[-1], channels, pool_scales)
        self.bottleneck = conv_bn_relu(dims[-1] + len(pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList(conv_bn_relu(d, channels, 1) for d in dims[:-1])
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in dims[:-1])
        self.fpn_bottleneck = conv_bn_relu(len(dims) * channels, channels, 3)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.laterals, feats, strict=False)]
        lat.append(self.bottleneck(self.ppm(feats[-1])))
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat, strict=False)] + [lat[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


#: Values of the decoder's temporal module (``train.settings.temporal``); ``ltae`` is the paper's.
TEMPORAL_MODULES = ("ltae", "linear", "mean", "max")


def check_pad_mask(x: torch.Tensor, pad_mask: torch.Tensor | None) -> None:
    """``pad_mask`` (B, T), True on padded frames, must fit ``x`` (B, T, ...) and leave every
    series at least one real frame (as U-TAE requires)."""
    if pad_mask is None:
        return
    if pad_mask.shape != x.shape[:2]:
        raise ValueError(f"pad_mask {tuple(pad_mask.shape)} does not match (B, T) {x.shape[:2]}")
    if pad_mask.all(dim=1).any():
        raise ValueError("every series needs at least one unpadded frame")


class LinearTemporal(nn.Module):
    """The alternative temporal module: a learned linear map over T (fixed series length)."""

    def __init__(self, n_frames: int) -> None:
        super().__init__()
        self.map = nn.Linear(n_frames, 1)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, C, h, w). A weight per frame position: padded frames cannot
        be left out, so a mask with padding is refused."""
        check_pad_mask(x, pad_mask)
        if pad_mask is not None and pad_mask.any():
            raise ValueError("temporal='linear' weighs fixed frame positions; it cannot skip "
                             "padded frames (use ltae, mean or max)")  # fmt: skip
        return self.map(x.movedim(1, -1)).squeeze(-1)


class PoolTemporal(nn.Module):
    """Mean or max over time, per pixel and channel, without parameters: how torchgeo's PASTIS
    benchmark feeds single-image backbones' features to a decoder. Padded frames (``pad_mask``
    True) are left out, as the L-TAE's attention and input norm leave them out. The mean is
    taken in fp32 (under bf16 autocast the levels are bf16, as for the L-TAE's input norm)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("mean", "max"):
            raise ValueError(f"unknown pooling {mode!r} (mean | max)")
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C, h, w), pad_mask (B, T) True on padding -> (B, C, h, w)."""
        check_pad_mask(x, pad_mask)
        if self.mode == "max":
            if pad_mask is not None:
                x = x.masked_fill(pad_mask[:, :, None, None, None], float("-inf"))
            return x.amax(dim=1)
        x = x.float()
        if pad_mask is None:
            return x.mean(dim=1)
        valid = (~pad_mask).to(x.dtype)[:, :, None, None, None]
        return (x * valid).sum(dim=1) / valid.sum(dim=1)


class SharedLTAE(nn.Module):
    """The paper's temporal module: one L-TAE without date encoding, shared by all levels."""

    def __init__(self, dim: int, heads: int = 16) -> None:
        super().__init__()
        self.ltae = LTAE(
            in_channels=dim,
            d_model=dim,
            n_head=heads,
            d_k=4,
            mlp=(dim, dim),
            dropout=0.2,
            positional_encoding=False,
        )

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C, h, w), pad_mask (B, T) True on padding -> (B, C, h, w)."""
        check_pad_mask(x, pad_mask)
        return self.ltae(x, None, pad_mask)[0]


def autocast_levels(levels: list[torch.Tensor], device_type: str) -> list[torch.Tensor]:
    """``levels`` in autocast's dtype where autocast is on for ``device_type``, else as they
    are. Encoders differ there: timm's ViT (DINO) keeps its residual stream, hence its levels,
    in fp32, which would double the feature cache and what its batches move. Rounded here, in
    :meth:`TemporalUPerNet.encode`, the decoder gets the same values from the encoder as from
    the cache, which stores what ``encode`` returns."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta, where FLOPs are counted)
        return levels
    if not enabled:
        return levels
    dtype = torch.get_autocast_dtype(device_type)
    return [level.to(dtype) for level in levels]


class TemporalUPerNet(nn.Module):
    """Encoder on every frame -> temporal reduction per level -> neck -> UPerNet -> classes.

    An encoder whose ``joint_time`` attribute is True (``prithvi_time``) gets whole series
    (B, T, C, H, W) and the pad mask instead of frames, and still returns (B * T, C_l, h, w).

    ``temporal``: ``"ltae"`` (one L-TAE shared by all levels: 16 heads, d_k 4, d_model = C,
    mlp [C, C], dropout 0.2, no date encoding), ``"linear"`` (needs ``n_frames``), or
    ``"mean"`` / ``"max"`` (pooling over time, no parameters: :class:`PoolTemporal`).
    ``pad_mask`` (B, T), True on padded frames, reaches the temporal module (the workflow feeds
    exactly T frames, so it passes none).
    ``encoder_trainable=False`` runs the encoder without autograd (FT-Rate 0).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 20,
        channels: int = 512,
        temporal: str = "ltae",
        n_frames: int | None = None,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.0,
        ltae_heads: int = 16,
        encoder_trainable: bool = True,
    ) -> None:
        super().__init__()
        dims = list(encoder.out_dims)
        if len(set(dims)) != 1:
            raise ValueError(f"a shared temporal module needs equal level dims, got {dims}")
        self.encoder = encoder
        if temporal == "ltae":
            self.temporal: nn.Module = SharedLTAE(dims[0], ltae_heads)
        elif temporal == "linear":
            if not n_frames:
                raise ValueError("temporal='linear' needs n_frames")
            self.temporal = LinearTemporal(n_frames)
        elif temporal in ("mean", "max"):
            self.temporal = PoolTemporal(temporal)
        else:
            raise ValueError(
                f"unknown temporal module {temporal!r} ({' | '.join(TEMPORAL_MODULES)})"
            )
        self.neck = Feature2Pyramid(dims)
        self.head = UPerHead(dims, channels, pool_scales)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.set_encoder_trainable(encoder_trainable)
        self.set_memory_plan(None, False)

    def set_encoder_trainable(self, trainable: bool) -> None:
        self.encoder_trainable = trainable
        self.encoder.requires_grad_(trainable)

    def set_memory_plan(self, frames_per_call: int | None, checkpointing: bool) -> None:
        """Run the encoder on at most ``frames_per_call`` frames at a time and, when it trains,
        recompute each chunk's activations in the backward pass (activation checkpointing)."""
        self.frames_per_call, self.checkpointing = frames_per_call, checkpointing

    @property
    def joint_time(self) -> bool:
        """Whether the encoder takes whole series (B, T, C, H, W) and a pad mask (its
        ``joint_time`` attribute, e.g. ``prithvi_time``) instead of frames (N, C, H, W)."""
        return bool(getattr(self.encoder, "joint_time", False))

    def _encode_chunk(self, *inputs: torch.Tensor | None) -> list[torch.Tensor]:
        if self.checkpointing and self.encoder_trainable and torch.is_grad_enabled():
            return checkpoint(self.encoder, *inputs, use_reentrant=False)
        return self.encoder(*inputs)

    def _chunks(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> list[list[torch.Tensor]]:
        """The encoder's levels per call: frames (N, C, H, W) in runs of ``frames_per_call``,
        or for a joint-time encoder whole series with their pad mask, as many a call as fit in
        ``frames_per_call`` frames (at least one: a series is never split)."""
        if not self.joint_time:
            frames = x.flatten(0, 1)
            step = self.frames_per_call or len(frames)
            return [self._encode_chunk(frames[i : i + step]) for i in range(0, len(frames), step)]
        check_pad_mask(x, pad_mask)
        b, t = x.shape[:2]
        step = max(1, (self.frames_per_call or b * t) // t)
        masks = [None if pad_mask is None else pad_mask[i : i + step] for i in range(0, b, step)]
        return [self._encode_chunk(x[i : i + step], masks[i // step]) for i in range(0, b, step)]

    def encode(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encoder features of all frames: x (B, T, C, H, W) -> levels of (B, T, C_l, h, w),
        in autocast's dtype where it is on (:func:`autocast_levels`). ``pad_mask`` (B, T), True
        on padded frames, reaches only a joint-time encoder (frames alone do not see each
        other)."""
        b, t = x.shape[:2]
        with torch.set_grad_enabled(self.encoder_trainable and torch.is_grad_enabled()):
            chunks = self._chunks(x, pad_mask)
        feats = [torch.cat(level, dim=0) for level in zip(*chunks, strict=True)]
        feats = autocast_levels(feats, x.device.type)
        return [f.view(b, t, *f.shape[1:]) for f in feats]

    def decode(
        self,
        feats: Sequence[torch.Tensor],
        output_size: tuple[int, int],
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Temporal reduction (``pad_mask`` (B, T) True on padded frames), neck, head and
        classifier, upsampled to ``output_size``."""
        reduced = [self.temporal(f, pad_mask) for f in feats]
        logits = self.classifier(self.dropout(self.head(self.neck(reduced))))
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)

    def forward(
        self,
        x: torch.Tensor,
        output_size: tuple[int, int] | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C, H, W) -> logits (B, classes, *output_size) (default: H, W); ``pad_mask``
        (B, T) True on padded frames, which the temporal module (and a joint-time encoder's
        attention) leaves out."""
        return self.decode(self.encode(x, pad_mask), output_size or tuple(x.shape[-2:]), pad_mask)
