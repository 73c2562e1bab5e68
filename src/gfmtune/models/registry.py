"""Model registry: a name maps to its encoder, decoder, input policy and checkpoint facts.

``croma``, ``dino`` and ``utae`` are the paper's models (``utae`` in its official form,
``utae_paper`` as the paper ran it, without normalisation in the down blocks); ``*_tiny`` are the
same code with small dimensions for CPU tests and the demo (no pretrained weights).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from torch import nn

from gfmtune.models.catalog import MODEL_CHECKPOINTS, Checkpoint
from gfmtune.models.checkpoints import locate, read_checkpoint
from gfmtune.models.croma import CROMA_BANDS, CromaOpticalEncoder
from gfmtune.models.dino import DINO_BANDS, DinoEncoder
from gfmtune.models.policies import InputPolicy
from gfmtune.models.upernet import TemporalUPerNet
from gfmtune.models.utae import utae_official, utae_tiny

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one of the study's models."""

    name: str
    family: str  # as in the paper's tables: CROMA, DINO, U-TAE
    policy: InputPolicy
    build_encoder: Callable[[], nn.Module] | None  # None: trained from scratch (U-TAE)
    checkpoint: Checkpoint | None = None
    decoder_channels: int = 512
    ltae_heads: int = 16  # heads of the decoder's shared L-TAE
    build_baseline: Callable[[], nn.Module] | None = None  # whole model, for U-TAE

    @property
    def has_encoder(self) -> bool:
        return self.build_encoder is not None


def _croma(size: str, out_indices: tuple[int, ...]) -> Callable[[], nn.Module]:
    return lambda: CromaOpticalEncoder(size, out_indices)


def _dino(arch: str, qkv_bias: bool, **kw: object) -> Callable[[], nn.Module]:
    return lambda: DinoEncoder(arch, qkv_bias=qkv_bias, **kw)


REGISTRY: dict[str, ModelSpec] = {
    "croma": ModelSpec(
        "croma",
        "CROMA",
        InputPolicy("crop_windows", 120, CROMA_BANDS),
        _croma("large", (3, 5, 7, 11)),
        MODEL_CHECKPOINTS["croma"],
    ),
    "croma_tiny": ModelSpec(
        "croma_tiny",
        "CROMA",
        InputPolicy("crop_windows", 24, CROMA_BANDS),
        _croma("tiny", (0, 1, 2, 3)),
        decoder_channels=32,
        ltae_heads=4,
    ),
    "dino": ModelSpec(
        "dino",
        "DINO",
        InputPolicy("resize", 224, DINO_BANDS),
        _dino("small", qkv_bias=False),
        MODEL_CHECKPOINTS["dino"],
    ),
    # corrected variants: CROMA at its native 128 px (no crops: cacheable when frozen), and DINO
    # with the checkpoint's qkv biases loaded instead of dropped
    "croma_native": ModelSpec(
        "croma_native",
        "CROMA (128 px)",
        InputPolicy("native", 128, CROMA_BANDS),
        _croma("large", (3, 5, 7, 11)),
        MODEL_CHECKPOINTS["croma_native"],
    ),
    "dino_qkv": ModelSpec(
        "dino_qkv",
        "DINO (qkv bias)",
        InputPolicy("resize", 224, DINO_BANDS),
        _dino("small", qkv_bias=True),
        MODEL_CHECKPOINTS["dino_qkv"],
    ),
    "utae": ModelSpec("utae", "U-TAE", InputPolicy("native"), None, build_baseline=utae_official),
    "utae_tiny": ModelSpec(
        "utae_tiny", "U-TAE", InputPolicy("native"), None, build_baseline=utae_tiny
    ),
    # the paper's U-TAE: ShapingFT's norm="gropu" typo left the down blocks without GroupNorm
    "utae_paper": ModelSpec(
        "utae_paper",
        "U-TAE",
        InputPolicy("native"),
        None,
        build_baseline=partial(utae_official, down_norm=False),
    ),
    "utae_paper_tiny": ModelSpec(
        "utae_paper_tiny",
        "U-TAE",
        InputPolicy("native"),
        None,
        build_baseline=partial(utae_tiny, down_norm=False),
    ),
    "dino_tiny": ModelSpec(
        "dino_tiny",
        "DINO",
        InputPolicy("resize", 64, DINO_BANDS),
        _dino("tiny_test", qkv_bias=False, img_size=64, out_indices=(0, 1, 2, 3)),
        decoder_channels=32,
        ltae_heads=4,
    ),
}


def get_spec(name: str, *, eval_resize: str = "direct") -> ModelSpec:
    """The registered model; ``eval_resize`` (``direct`` | ``via_input``, the training setting
    ``dino_eval_resize``) sets how a ``resize`` policy (DINO) brings its evaluation logits to
    the output size; other policies do not use it."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    return replace(spec, policy=replace(spec.policy, eval_resize=eval_resize))


def build_encoder(spec: ModelSpec, weights_dir: Path | None) -> nn.Module:
    """The encoder, with pretrained weights loaded when ``weights_dir`` is given."""
    encoder = spec.build_encoder()
    if weights_dir is not None:
        if spec.checkpoint is None:
            raise ValueError(f"model {spec.name!r} has no pretrained checkpoint to load")
        path = locate(spec.checkpoint, weights_dir)
        encoder.load_encoder_state(read_checkpoint(path, spec.checkpoint.layout), str(path))
        log.info("loaded %s from %s", spec.checkpoint.name, path)
    encoder.truncate()
    return encoder


def build_model(
    name: str,
    *,
    weights_dir: Path | None = None,
    encoder_trainable: bool = True,
    temporal: str = "ltae",
    n_frames: int | None = None,
) -> nn.Module:
    """A registered model ready to train (weights loaded when ``weights_dir`` is given).

    GFMs return a :class:`TemporalUPerNet` called as ``model(x, output_size)``; U-TAE is called
    as ``model(x, days, pad_mask)``.
    """
    spec = get_spec(name)
    if spec.build_baseline is not None:
        return spec.build_baseline()
    encoder = build_encoder(spec, weights_dir)
    return TemporalUPerNet(
        encoder,
        channels=spec.decoder_channels,
        temporal=temporal,
        n_frames=n_frames,
        ltae_heads=spec.ltae_heads,
        encoder_trainable=encoder_trainable,
    )
