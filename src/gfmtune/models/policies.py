"""Input policies: how a model sees PASTIS samples (bands, spatial size) in training and at test.

Band adaptation: the 10 PASTIS bands (already normalised) go to their places in the encoder's band
list; missing bands are filled with 0. Spatial handling is per model (docs/protocol.md, "Spatial
size"): CROMA takes a random 120 x 120 crop of image and target in training and averages logits over
2 x 2 sliding windows of 120 at evaluation (or runs at native 128); DINO resizes the image to 224
and resizes the logits back; U-TAE runs at 128 as is.

A ``resize`` policy's evaluation logits go from the decoder's resolution straight to the
output size (``eval_resize="direct"``: DINO's 56 -> 128), or, as the authors' sliding-inference
path did, first to the model's input size and then bilinearly (no antialiasing) to the output
size (``"via_input"``: 56 -> 224 -> 128). Training logits are the same either way.

Input scaling (``InputPolicy.scale``, applied where the store's int16 reflectance becomes float,
:func:`gfmtune.data.dataset.store_normaliser`): ``standardise`` (the default) is PASTIS's
per-band ``(x - mean) / std`` (``train.settings.norm``); ``reflectance`` (``moco_scaled``) is
``x / 10000``, the reflectance itself, on the scale of SSL4EO-S12's pretraining (L1C / 10000).
Missing bands are 0 on either scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gfmtune.pastis import BANDS

Forward = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]  # (x, output size) -> logits
LogitsAt = Callable[[tuple[int, int]], torch.Tensor]  # output size -> logits of a fixed input
Decode = Callable[[Sequence[torch.Tensor], tuple[int, int]], torch.Tensor]  # (levels, size)

#: Ways a ``resize`` policy brings evaluation logits to the output size (see the module doc).
EVAL_RESIZES = ("direct", "via_input")
#: Input scalings (see the module doc); the first is the default, every paper model's.
SCALES = ("standardise", "reflectance")


def band_index(target_bands: tuple[str, ...] | None) -> list[int] | None:
    """For each target band, its PASTIS index or -1 (filled with 0); None keeps PASTIS bands."""
    if target_bands is None:
        return None
    return [BANDS.index(b) if b in BANDS else -1 for b in target_bands]


def adapt_bands(x: torch.Tensor, index: list[int] | None) -> torch.Tensor:
    """(..., 10, H, W) -> (..., len(index), H, W) with zeros where the index is -1."""
    if index is None:
        return x
    out = x.new_zeros(*x.shape[:-3], len(index), *x.shape[-2:])
    for dst, src in enumerate(index):
        if src >= 0:
            out[..., dst, :, :] = x[..., src, :, :]
    return out


@dataclass(frozen=True)
class InputPolicy:
    """Spatial handling of one model: ``native``, ``crop_windows`` or ``resize``."""

    kind: str = "native"
    size: int = 128  # crop/window side for crop_windows, model input side for resize
    bands: tuple[str, ...] | None = None  # encoder band order (None = the 10 PASTIS bands)
    # evaluation logits of ``resize``: direct | via_input; out of the repr, which keys the
    # feature cache, since the encoder's input does not depend on it
    eval_resize: str = field(default="direct", repr=False)
    # standardise | reflectance (see the module doc); out of the repr, so that the existing
    # models' cache keys keep their policy text: the key names a non-default scale itself
    scale: str = field(default="standardise", repr=False)

    def __post_init__(self) -> None:
        if self.eval_resize not in EVAL_RESIZES:
            raise ValueError(f"eval_resize {self.eval_resize!r} is not one of {EVAL_RESIZES}")
        if self.scale not in SCALES:
            raise ValueError(f"scale {self.scale!r} is not one of {SCALES}")

    @property
    def deterministic_train_input(self) -> bool:
        """True when the training input does not depend on random draws (cacheable features)."""
        return self.kind != "crop_windows"

    def train_view(
        self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training input and target: x (B, T, C, H, W), target (B, H, W).

        ``crop_windows`` draws one random crop per sample (the paper's only augmentation).
        """
        x = adapt_bands(x, band_index(self.bands))
        if self.kind != "crop_windows":
            return x, target
        h, w = x.shape[-2:]
        if min(h, w) < self.size:
            raise ValueError(f"patches of {h} x {w} px are smaller than the {self.size} px crop")
        corners = torch.stack(
            [
                torch.randint(0, h - self.size + 1, (len(x),), generator=generator),
                torch.randint(0, w - self.size + 1, (len(x),), generator=generator),
            ],
            dim=1,
        ).tolist()
        s = self.size
        xs = torch.stack([x[i, ..., r : r + s, c : c + s] for i, (r, c) in enumerate(corners)])
        ys = torch.stack([target[i, r : r + s, c : c + s] for i, (r, c) in enumerate(corners)])
        return xs, ys

    def train_logits(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        """Logits at the training view's resolution."""
        out_size = tuple(x.shape[-2:])
        if self.kind == "resize":
            x = resize_frames(x, self.size)
        return forward(x, out_size)

    @property
    def windowed(self) -> bool:
        """True when evaluation runs on sliding windows (``crop_windows``)."""
        return self.kind == "crop_windows"

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of x (B, T, 10, H, W) when that does not depend on chance
        (``native``, ``resize``): the same in training and evaluation, hence cacheable."""
        if not self.deterministic_train_input:
            raise ValueError(f"the {self.kind} policy draws random crops: no fixed encoder input")
        return self.eval_input(x)

    def eval_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of x (B, T, 10, H, W) at evaluation, fixed for every policy:
        the frames, the resized frames, or ``crop_windows``' windows stacked on the batch axis
        (B * windows, T, C, size, size; each sample's windows together, see
        :func:`stack_windows`)."""
        x = adapt_bands(x, band_index(self.bands))
        if self.windowed:
            return stack_windows(x, self.size)
        return resize_frames(x, self.size) if self.kind == "resize" else x

    def eval_logits(self, logits_at: LogitsAt, size: tuple[int, int]) -> torch.Tensor:
        """Evaluation logits at ``size`` from ``logits_at``, the model's logits of its
        :meth:`eval_input` upsampled to a requested size: ``crop_windows`` requests its window
        size and averages the windows' logits; with ``via_input`` a ``resize`` policy requests
        its input size and resizes those logits to ``size``."""
        if self.windowed:
            return stitch_windows(logits_at((self.size, self.size)), size, self.size)
        if self.kind == "resize" and self.eval_resize == "via_input":
            logits = logits_at((self.size, self.size))
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits_at(size)

    def eval_decoded(
        self, decode: Decode, levels: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """Evaluation logits at ``size`` from cached encoder levels of :meth:`eval_input`,
        batched per sample (``crop_windows``: (B, windows, T, ...), flattened here)."""
        if self.windowed:
            levels = [level.flatten(0, 1) for level in levels]
        return self.eval_logits(functools.partial(decode, levels), size)

    def predict(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        """Evaluation logits at the input's full resolution: x (B, T, 10, H, W); one forward
        call (``crop_windows``: all windows of the batch in it)."""
        frames = self.eval_input(x)
        return self.eval_logits(lambda size: forward(frames, size), tuple(x.shape[-2:]))


def resize_frames(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of (B, T, C, H, W) frames to size x size."""
    b, t = x.shape[:2]
    out = F.interpolate(
        x.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out.view(b, t, *out.shape[1:])


def window_offsets(length: int, window: int) -> list[int]:
    """Window starts covering ``length``: 0 and length - window (e.g. {0, 8} for 128 / 120)."""
    if window >= length:
        return [0]
    return sorted({0, length - window})


def window_corners(size: tuple[int, int], window: int) -> list[tuple[int, int]]:
    """(top, left) of the windows covering a frame of ``size``, rows first."""
    return [
        (t, left)
        for t in window_offsets(size[0], window)
        for left in window_offsets(size[1], window)
    ]


def stack_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T, C, H, W) -> (B * windows, T, C, window, window): the windows of
    :func:`window_corners`, each sample's windows together."""
    corners = window_corners(tuple(x.shape[-2:]), window)
    views = [x[..., t : t + window, c : c + window] for t, c in corners]
    return torch.stack(views, dim=1).flatten(0, 1)


def stitch_windows(logits: torch.Tensor, size: tuple[int, int], window: int) -> torch.Tensor:
    """Window logits (B * windows, K, window, window), ordered as :func:`stack_windows` makes
    them, averaged where windows overlap: (B, K, *size), summed in fp32 (bf16 sums round)."""
    corners = window_corners(size, window)
    per_sample = logits.unflatten(0, (-1, len(corners)))
    total = logits.new_zeros(per_sample.shape[0], logits.shape[1], *size, dtype=torch.float32)
    count = total.new_zeros(1, 1, *size)
    for i, (t, c) in enumerate(corners):
        total[..., t : t + window, c : c + window] += per_sample[:, i].float()
        count[..., t : t + window, c : c + window] += 1
    return total / count
