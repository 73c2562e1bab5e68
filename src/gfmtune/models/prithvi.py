"""Prithvi-EO-2.0-300M (IBM/NASA/Jülich, Szwarcman et al. 2024, arXiv:2412.02732) as a
multi-level frame encoder; own implementation of the published architecture.

Facts (sources: the model card and ``config.json`` of HF
``ibm-nasa-geospatial/Prithvi-EO-2.0-300M``, TerraTorch's
``terratorch/models/backbones/prithvi_mae.py``, the authors' TerraTorch configs in
NASA-IMPACT/Prithvi-EO-2.0):

- ViT-L MAE encoder: embed 1024, depth 24, heads 16, MLP ratio 4, qkv bias, ``nn.LayerNorm``
  (eps 1e-5; not timm's 1e-6 default), a CLS token; 3D patch embedding ``Conv3d(6, 1024,
  kernel=stride=(1, 16, 16))`` (tubelet 1); a fixed 3D sin-cos position embedding for the
  pretraining grid (4 frames x 14 x 14 at 224 px) with a zero row for the CLS token: per token
  (frame t, row h, column w, row-major in t, h, w) the concatenation of 1D sin-cos codes of w
  (6/16 of the channels), h (6/16) and t (4/16), each ``[sin(p * omega), cos(p * omega)]`` with
  ``omega_i = 10000^(-i / (d / 2))``.
- Bands (HLS): Blue, Green, Red, Narrow NIR, SWIR 1, SWIR 2 (``config.json``: B02 B03 B04 B05
  B06 B07 of HLS L30, i.e. B02 B03 B04 B8A B11 B12 of HLS S30); HLS mean
  1087, 1342, 1433, 2734, 1958, 1363 and std 2248, 2179, 2178, 1850, 1242, 1049 (reflectance
  x 10000). The 300M model (not "-TL") has no temporal or location coordinate encoders
  (``coords_encoding: []``): it takes pixels only.
- Checkpoint ``Prithvi_EO_V2_300M.pt``: a plain state dict of 398 float32 tensors, 294 under
  ``encoder.`` (``patch_embed.proj``, ``cls_token``, ``pos_embed`` (1, 785, 1024), 24
  ``blocks.{i}`` of timm naming, ``norm``) and 104 under ``decoder.`` (the MAE decoder:
  ``mask_token``, ``decoder_pos_embed``, ``decoder_embed``, 8 ``decoder_blocks`` of width 512,
  ``decoder_norm``, ``decoder_pred``); 330,419,712 parameters and 1,205,760 position-embedding
  elements. Layout ``prithvi_mae`` (:func:`gfmtune.models.checkpoints.encoder_state`) keeps the
  encoder part; the decoder is dropped by name and logged.
- Segmentation recipe (TerraTorch ``SelectIndices`` for ``prithvi_eo_v2_300``): blocks 5, 11,
  17, 23; TerraTorch's ``forward_features`` applies the final norm to the last block's output
  only, so the fourth level (block 23) is normalised and the others are not.

In this study (the encoder contract, docs/add-an-encoder.md): bands are PASTIS's Sentinel-2
B2, B3, B4, B8A, B11, B12 for HLS Blue, Green, Red, NIR narrow, SWIR 1, SWIR 2; values are
PASTIS-standardised upstream (a per-band z-score, as HLS's mean/std is, with PASTIS's own
statistics). ``prithvi``: each frame runs on its own with T = 1 (the Conv3d over a time axis of
length 1 and the position embedding of frame 0): the decoder's L-TAE aggregates time, as for
CROMA and DINO, and Prithvi's own attention across frames is not used. ``prithvi_time``
(``joint_time=True``): the encoder takes a cell's series (B, T, C, H, W) at once, as Prithvi was
pretrained (4 frames) and as TerraTorch feeds it: one token sequence of a CLS token and T x h x w
patch tokens (row-major in t, h, w, as the Conv3d's output flattens), the 3D embedding of frame
t at every frame's tokens, attention across all of them; padded frames (``pad_mask`` (B, T),
True on padding, at the end of a shorter series) are masked as attention keys, so the real
frames' tokens do not see them. It returns every frame's tokens as (B * T, dim, h, w), so the
decoder's temporal module reduces time as for the other models. The position embedding is
recomputed exactly (same formula) for the input's T and grid, so PASTIS's native 128 px (8 x 8
tokens) needs no interpolation (TerraTorch recomputes it for T but interpolates the pretraining
14 x 14 grid bicubically); at 224 px and T <= 4 it equals the checkpoint's first T frames (the
file's own ``pos_embed`` is checked against the formula when loading, then dropped). Outputs:
(N, dim, H / 16, W / 16), N = B x T.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from gfmtune.models.upernet import check_pad_mask

log = logging.getLogger(__name__)

#: PASTIS band names for HLS Blue, Green, Red, NIR narrow, SWIR 1, SWIR 2 (Prithvi's order).
PRITHVI_BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B8A", "B11", "B12")
PATCH = 16
#: Pretraining grid (frames, rows, columns): num_frames 4 at 224 px.
PRETRAIN_GRID = (4, 14, 14)


@dataclass(frozen=True)
class PrithviSize:
    dim: int
    depth: int
    heads: int


SIZES = {
    "300m": PrithviSize(1024, 24, 16),
    "tiny": PrithviSize(64, 4, 4),  # same code, small dimensions, for CPU tests and the demo
}


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M, dim) float64: [sin(p * omega), cos(p * omega)], omega_i = 10000^(-i / (dim / 2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double().reshape(-1, 1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Prithvi's fixed 3D position embedding (t * h * w, dim), float64, tokens row-major in
    (t, h, w), channels [w code (6/16), h code (6/16), t code (4/16)]; no CLS row."""
    if dim % 16:
        raise ValueError(f"the 3D sin-cos embedding needs a width divisible by 16, got {dim}")
    tt, hh, ww = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    parts = [(dim // 16 * 6, ww), (dim // 16 * 6, hh), (dim // 16 * 4, tt)]
    return torch.cat([sincos_1d(d, p.flatten()) for d, p in parts], dim=1)


class PrithviEncoder(nn.Module):
    """Prithvi-EO-2.0's ViT encoder returning the blocks in ``out_indices`` as (N, dim, h, w).

    Parameter names equal the checkpoint's ``encoder.*`` keys without the prefix (the position
    embedding is computed, not stored). The forward pass stops after the last block it needs;
    :meth:`truncate` drops the blocks after it (after loading weights).
    """

    in_bands = PRITHVI_BANDS
    patch_size = PATCH

    def __init__(
        self,
        size: str = "300m",
        out_indices: tuple[int, ...] = (5, 11, 17, 23),
        joint_time: bool = False,
    ) -> None:
        from timm.models.vision_transformer import Block  # lazy, as in dino.py (~1.7 s)

        super().__init__()
        spec = SIZES[size]
        if list(out_indices) != sorted(set(out_indices)) or out_indices[0] < 0:
            raise ValueError(f"out_indices must be increasing block indices, got {out_indices}")
        if out_indices[-1] >= spec.depth:
            raise ValueError(
                f"out_indices {out_indices} exceed Prithvi-{size}'s {spec.depth} blocks"
            )
        self.size, self.depth, self.out_indices = size, spec.depth, tuple(out_indices)
        #: True: forward takes series (B, T, C, H, W) and a pad mask, attending across frames
        #: (the contract's joint-time form, which TemporalUPerNet honours)
        self.joint_time = joint_time
        self.out_dims = [spec.dim] * len(out_indices)
        kernel = (1, PATCH, PATCH)
        self.patch_embed = nn.ModuleDict(
            {"proj": nn.Conv3d(len(PRITHVI_BANDS), spec.dim, kernel, stride=kernel)}
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            Block(spec.dim, spec.heads, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(spec.depth)
        )
        self.norm = nn.LayerNorm(spec.dim)
        self._pos: dict[tuple[int, int, int, str], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"size={self.size!r}, out_indices={self.out_indices}, joint_time={self.joint_time}"

    def position_embedding(
        self, grid_h: int, grid_w: int, device: torch.device, frames: int = 1
    ) -> torch.Tensor:
        """(1, frames * grid_h * grid_w, dim) float32: the sin-cos embedding of frames
        0 .. frames - 1 of this grid (frame 0 alone by default)."""
        key = (frames, grid_h, grid_w, str(device))
        if key not in self._pos:
            pos = sincos_3d(self.out_dims[0], (frames, grid_h, grid_w))
            self._pos[key] = pos.float().unsqueeze(0).to(device)
        return self._pos[key]

    def load_encoder_state(self, state: dict[str, torch.Tensor], where: str) -> list[str]:
        """Load the ``encoder.*`` tensors (prefix stripped by the ``prithvi_mae`` layout) with
        strict key and shape checks; the file's fixed ``pos_embed`` must equal the sin-cos
        formula on the pretraining grid and is then dropped (it is recomputed per grid)."""
        from gfmtune.models.checkpoints import CheckpointError, load_strict

        state = dict(state)
        stored, dim = state.pop("pos_embed", None), self.out_dims[0]
        expected = torch.cat([torch.zeros(1, dim), sincos_3d(dim, PRETRAIN_GRID)])  # CLS row: 0
        if stored is None or tuple(stored.shape) != (1, *expected.shape):
            shape = None if stored is None else tuple(stored.shape)
            raise CheckpointError(
                f"{where}: encoder pos_embed is {shape}, expected {(1, *expected.shape)} "
                f"(CLS row + the {PRETRAIN_GRID} pretraining grid)"
            )
        if not torch.allclose(stored[0].double(), expected, atol=1e-5):
            raise CheckpointError(
                f"{where}: encoder pos_embed is not Prithvi's 3D sin-cos embedding of the "
                f"{PRETRAIN_GRID} grid; not a Prithvi-EO-2.0 checkpoint of this layout"
            )
        return [*load_strict(self, state, where), "pos_embed"]

    def truncate(self) -> None:
        """Drop the blocks after the last one whose output is used (same output, less memory)."""
        self.blocks = self.blocks[: self.out_indices[-1] + 1]

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Frames (N, C, H, W), each alone (T = 1), or with ``joint_time`` series (B, T, C, H,
        W) whose frames attend to each other, padded frames (``pad_mask`` (B, T) True) masked
        as keys; levels (N, dim, H / 16, W / 16), N = B x T, frames in input order."""
        if x.ndim == 4 and pad_mask is None:
            series = x.unsqueeze(2)  # (N, C, 1, H, W): each frame alone, T = 1
        elif x.ndim == 5 and self.joint_time:
            series = x.transpose(1, 2)  # (B, C, T, H, W), the Conv3d's layout
        else:
            form = "(B, T, C, H, W) series and optional pad_mask, or " if self.joint_time else ""
            raise ValueError(f"Prithvi-{self.size} takes {form}(N, C, H, W) frames without a "
                             f"pad_mask, got {tuple(x.shape)}")  # fmt: skip
        n, c, t, h, w = series.shape
        if c != len(PRITHVI_BANDS) or h % PATCH or w % PATCH:
            raise ValueError(
                f"Prithvi expects (N, {len(PRITHVI_BANDS)}, H, W) with H, W multiples of {PATCH}, "
                f"got {tuple(x.shape)}"
            )
        gh, gw = h // PATCH, w // PATCH
        # (N, C, T, H, W) -> (N, dim, T, gh, gw) -> (N, T * gh * gw, dim), row-major in t, h, w
        tokens = self.patch_embed["proj"](series).flatten(2).transpose(1, 2)
        tokens = tokens + self.position_embedding(gh, gw, x.device, t).to(tokens.dtype)
        # the CLS token's position embedding is the zero row
        tokens = torch.cat([self.cls_token.to(tokens.dtype).expand(n, -1, -1), tokens], dim=1)
        check_pad_mask(x, pad_mask)
        keys = key_mask(pad_mask, gh * gw)
        features = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens) if keys is None else block(tokens, attn_mask=keys)
            if i in self.out_indices:
                out = self.norm(tokens) if i == self.depth - 1 else tokens
                features.append(frame_levels(out[:, 1:], t, gh, gw))
            if i == self.out_indices[-1]:
                break
        return features


def key_mask(pad_mask: torch.Tensor | None, tokens_per_frame: int) -> torch.Tensor | None:
    """The attention mask (B, 1, 1, 1 + T * tokens) of a pad mask (B, T), True on padding
    (checked by :func:`check_pad_mask`): True where a key may be attended (the CLS token and
    every real frame's tokens); None without padding (the unmasked attention, bit for bit)."""
    if pad_mask is None or not bool(pad_mask.any()):
        return None
    real = (~pad_mask.bool()).repeat_interleave(tokens_per_frame, dim=1)
    cls = real.new_ones(len(real), 1)
    return torch.cat([cls, real], dim=1)[:, None, None, :]


def frame_levels(tokens: torch.Tensor, t: int, gh: int, gw: int) -> torch.Tensor:
    """Patch tokens (N, T * gh * gw, dim) as frame maps (N * T, dim, gh, gw), frames in order
    (a layout change only: T = 1 gives each frame's map as it is)."""
    n, _, dim = tokens.shape
    return tokens.unflatten(1, (t, gh * gw)).transpose(2, 3).reshape(n * t, dim, gh, gw)
