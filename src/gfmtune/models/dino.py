"""SSL4EO-S12 ViT-S/16 (Wang et al. 2023) on timm, as a multi-level feature encoder: the DINO
and the MoCo v3 weights (``dino*`` and ``moco*`` models) share its architecture and key names.

Equals timm ``vit_small_patch16_224(in_chans=13, num_classes=0)``. Features after blocks
3, 5, 7, 11, without the final norm, CLS dropped, as (B, 384, 14, 14). The paper built the ViT
without qkv bias, silently dropping the checkpoint's biases: ``qkv_bias=False`` keeps that (the
dropped tensors are logged), ``qkv_bias=True`` is the corrected setting. The final norm
(``norm.*``) is never used, so a checkpoint without it loads (the absence is logged).
"""

from __future__ import annotations

import torch
from torch import nn

#: SSL4EO-S12's 13 Sentinel-2 L1C bands; PASTIS lacks B1, B9 and B10.
DINO_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)  # fmt: skip

#: Key prefixes of tensors the features never pass through (the final norm): optional in a file.
UNUSED: tuple[str, ...] = ("norm.",)

#: timm architecture and overrides; ``tiny_test`` is ViT-S/16's code at toy size.
ARCHS: dict[str, tuple[str, dict]] = {
    "small": ("vit_small_patch16_224", {}),
    "tiny_test": ("vit_small_patch16_224", {"embed_dim": 64, "depth": 4, "num_heads": 4}),
}


class DinoEncoder(nn.Module):
    """timm ViT returning intermediate blocks as (B, C, h, w) maps."""

    in_bands = DINO_BANDS
    patch_size = 16

    def __init__(
        self,
        arch: str = "small",
        out_indices: tuple[int, ...] = (3, 5, 7, 11),
        qkv_bias: bool = False,
        img_size: int = 224,
    ) -> None:
        import timm  # here, not at the top: it costs ~1.7 s, which CROMA and U-TAE jobs skip

        super().__init__()
        name, overrides = ARCHS[arch]
        self.vit = timm.create_model(
            name,
            pretrained=False,
            in_chans=len(DINO_BANDS),
            num_classes=0,
            qkv_bias=qkv_bias,
            img_size=img_size,
            **overrides,
        )
        self.out_indices = tuple(out_indices)
        self.out_dims = [self.vit.embed_dim] * len(out_indices)
        self.qkv_bias = qkv_bias

    def load_encoder_state(self, state: dict[str, torch.Tensor], where: str) -> list[str]:
        from gfmtune.models.checkpoints import load_strict

        ignore = () if self.qkv_bias else ("attn.qkv.bias",)
        return load_strict(self.vit, state, where, ignore=ignore, optional=UNUSED)

    def truncate(self) -> None:
        """Drop blocks after the last one used and the unused final norm."""
        self.vit.prune_intermediate_layers(list(self.out_indices), prune_norm=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.vit.forward_intermediates(
            x,
            indices=list(self.out_indices),
            norm=False,
            output_fmt="NCHW",
            intermediates_only=True,
            stop_early=True,
        )
